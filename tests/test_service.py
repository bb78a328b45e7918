"""keysvc.service: a Service starts what it built and closes all of it, the S3 mirror included."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from keysvc import service as service_module
from keysvc.config import Settings, parse_settings
from keysvc.feature import Feature
from keysvc.keyring import Keyring
from keysvc.partner.wiring import Partner
from keysvc.service import build_service
from tests.helpers import base_config, wait_for
from tests.kms_server import AWS_ENV, REGION, MotoServer

pytestmark = pytest.mark.system


def keysvc_threads() -> set[str]:
    """Names of the live threads keysvc's own pools started (keysvc-io, keysvc-mirror, keysvc-keygen...)."""
    return {t.name.rsplit("_", 1)[0] for t in threading.enumerate() if t.name.startswith("keysvc-")}


def test_close_releases_the_schedule_the_pools_and_the_mirror(
    tmp_path: Path, moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started with an S3 mirror (moto's S3), a Service writes the JWKS there; closed, its scheduler,
    its I/O pool and the mirror's writer thread are gone."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    bucket = f"jwks-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_server.direct_url)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})  # type: ignore[typeddict-item]
    config = base_config(tmp_path / "keys")
    config["mirror"] = {"bucket": bucket, "key_prefix": "public/", "region": REGION,
                        "endpoint_url": moto_server.direct_url}
    service = build_service(parse_settings(config))
    before = keysvc_threads()

    async def run() -> None:
        await service.start()
        wait_for(lambda: "Contents" in s3.list_objects_v2(Bucket=bucket), 15, "the mirror's first write")
        assert {"keysvc-io", "keysvc-mirror"} <= keysvc_threads()
        await service.aclose()

    asyncio.run(run())
    assert service.scheduler is None
    wait_for(lambda: not ({"keysvc-io", "keysvc-mirror"} & (keysvc_threads() - before)), 10,
             "keysvc's threads to end")


def test_close_releases_the_partner_sides_http_client(tmp_path: Path) -> None:
    """With token_exchange configured, the service builds one partner side (exchanger, gateway, their HTTP
    client) and its aclose() closes that client: no connection pool outlives the service."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cr3t\n")
    config = base_config(tmp_path / "keys")
    config["token_exchange"] = {"keyset": "zapier", "token_url": "http://127.0.0.1:9/oauth/token",
                                "api_url": "http://127.0.0.1:9", "client_id": "keysvc",
                                "client_secret_file": str(secret)}
    service = build_service(parse_settings(config))
    feature = service.feature("partner")
    assert feature is not None and isinstance(feature.part, Partner)
    partner = feature.part
    assert not partner.http.is_closed

    async def run() -> None:
        await service.start()
        await service.aclose()

    asyncio.run(run())
    assert partner.http.is_closed and service.scheduler is None


def _partner_config(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "client-secret"
    secret.write_text("s3cr3t\n")
    config = base_config(tmp_path / "keys")
    config["token_exchange"] = {"keyset": "zapier", "token_url": "http://127.0.0.1:9/oauth/token",
                                "api_url": "http://127.0.0.1:9", "client_id": "keysvc",
                                "client_secret_file": str(secret)}
    return config


def test_a_build_failing_halfway_closes_what_it_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a feature fails to build after others were built, build_service closes what it had opened (the
    partner side's session, the keyring's I/O pool) before the error propagates: nothing leaks."""
    built: list[tuple[Feature, Keyring]] = []
    build_partner = dict(service_module.FEATURES)["token_exchange"]

    def partner(settings: Settings, keyring: Keyring) -> Feature:
        feature = build_partner(settings, keyring)
        built.append((feature, keyring))
        return feature

    def broken(settings: Settings, keyring: Keyring) -> Feature:
        raise RuntimeError("this feature cannot be built")

    monkeypatch.setattr(service_module, "FEATURES", (("token_exchange", partner), ("token_exchange", broken)))
    with pytest.raises(RuntimeError, match="cannot be built"):
        build_service(parse_settings(_partner_config(tmp_path)))

    feature, keyring = built[0]
    assert isinstance(feature.part, Partner) and feature.part.http.is_closed
    with pytest.raises(RuntimeError):  # shut down: it takes no more work
        keyring.executor.submit(print)
