"""End to end on KMS: real `keysvc serve` processes, moto's server over HTTP, PyJWT as the verifier."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import jwt
import pytest

from keysvc.backends.kms import TAG
from tests.helpers import KeysvcProcess, api_key, backend_syncs, base_config, wait_for
from tests.kms_server import REGION, MotoServer

pytestmark = pytest.mark.system

Start = Callable[..., KeysvcProcess]
AUD = "connect.zapier.com"


def kms_config(tmp_path: Path, server: MotoServer, prefix: str, **kw: Any) -> dict[str, Any]:
    """The helpers' base config with the KMS backend on moto instead of the file backend."""
    config = base_config(tmp_path / "unused", **kw)
    refresh = config["backend"]["refresh_interval"]
    config["backend"] = {
        "type": "kms",
        "region": REGION,
        "endpoint_url": server.endpoint_url,
        "alias_prefix": prefix,
        "deletion_window": "7d",
        "refresh_interval": refresh,
    }
    return config


def ready(proc: KeysvcProcess) -> bool:
    try:
        return httpx.get(proc.public + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


ALGS = {
    "es256": ("ES256", 2000),
    "es384": ("ES384", 500),
    "es512": ("ES512", 500),
    "rs256": ("RS256", 10),
    "rs384": ("RS384", 10),
    "rs512": ("RS512", 10),
    "ps256": ("PS256", 10),
    "ps384": ("PS384", 10),
    "ps512": ("PS512", 10),
}


def test_tokens_of_every_algorithm_verify_with_pyjwk_client(
    tmp_path: Path, keysvc: Start, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """Tokens minted through POST /v1/sign on KMS keys verify with PyJWT's PyJWKClient reading our JWKS
    URL: every alg, 2,000 ES256 and 500 ES384/ES512 (the R||S leading-zero bug hits ~1% on P-256), and
    signing makes one KMS Sign per token while the JWKS path makes none."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix, algs={k: a for k, (a, _) in ALGS.items()})
    proc = keysvc(config)
    wait_for(lambda: ready(proc), 60, "readiness")
    clients = {k: jwt.PyJWKClient(f"{proc.public}/keysets/{k}/jwks.json") for k in ALGS}
    jobs = [(k, i) for k, (_, n) in ALGS.items() for i in range(n)]
    moto_server.reset_calls()
    local = threading.local()
    opened: list[httpx.Client] = []

    def mint_and_verify(job: tuple[str, int]) -> str:
        keyset, i = job
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=30)  # one keep-alive connection per worker thread
            opened.append(local.http)
        answer = local.http.post(
            f"{proc.internal}/v1/sign",
            json={"keyset": keyset, "claims": {"sub": f"u-{i}", "aud": AUD}},
            headers={"Authorization": f"Bearer {api_key('signer')}"},
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["token"]
        key = clients[keyset].get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token, key, algorithms=[ALGS[keyset][0]], audience=AUD, issuer=f"https://issuer.example/{keyset}"
        )
        assert claims["sub"] == f"u-{i}"
        return keyset

    try:
        with ThreadPoolExecutor(8) as pool:
            done = list(pool.map(mint_and_verify, jobs))
    finally:
        for client in opened:
            client.close()
    assert len(done) == len(jobs)
    for _ in range(100):
        assert proc.jwks("es256").status_code == 200
    calls = moto_server.calls()
    assert calls.get("Sign") == len(jobs)
    assert calls.get("GetPublicKey") is None


def test_kms_outage_jwks_from_memory_sign_503_then_recovery(
    tmp_path: Path, keysvc: Start, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """KMS unreachable mid-run: the JWKS keeps answering 200 with the same body (from memory) and
    /readyz stays 200, /v1/sign answers 503 with Retry-After; both recover by themselves when KMS
    returns."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix)
    config["backend"]["refresh_interval"] = "500ms"
    proc = keysvc(config)
    wait_for(lambda: ready(proc), 30, "readiness")
    before = proc.jwks()
    assert before.status_code == 200 and proc.sign().status_code == 200
    moto_server.stop()
    try:
        answer = proc.sign()
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "unavailable"
        assert int(answer.headers["Retry-After"]) > 0
        failed = backend_syncs(proc, failed=True)

        def still_serving() -> bool:
            served = proc.jwks()
            assert (served.status_code, served.content) == (200, before.content)
            assert httpx.get(proc.public + "/readyz", timeout=2).status_code == 200
            return backend_syncs(proc, failed=True) >= failed + 4

        wait_for(still_serving, 60, "four refreshes to fail while the JWKS is served", interval=0.2)
    finally:
        moto_server.start()
    wait_for(lambda: proc.sign().status_code == 200, 30, "signing to recover")
    assert proc.jwks().content == before.content


def test_s3_mirror_equals_served_jwks_after_each_change(
    tmp_path: Path, keysvc: Start, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """With a mirror configured, the S3 objects (keyset path and, for the default keyset, the well-known
    path) hold exactly the served JWKS bytes with the same Cache-Control, after start-up and after a
    rotation."""
    bucket = "jwks-" + kms_alias_prefix.rsplit("/", 1)[1]
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_server.direct_url)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})  # type: ignore[typeddict-item]
    config = kms_config(tmp_path, moto_server, kms_alias_prefix)
    config["mirror"] = {"bucket": bucket, "key_prefix": "public/", "endpoint_url": moto_server.endpoint_url}
    proc = keysvc(config)
    wait_for(lambda: ready(proc), 30, "readiness")

    def mirrored(key: str) -> bytes | None:
        try:
            return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    for _round in range(2):
        served = proc.jwks()
        for key in ("public/zapier/jwks.json", "public/.well-known/jwks.json"):
            wait_for(lambda k=key: mirrored(k) == proc.jwks().content, 15, f"{key} to match")  # type: ignore[misc]
            head = s3.head_object(Bucket=bucket, Key=key)
            assert (head["CacheControl"], head["ContentType"]) == (
                served.headers["Cache-Control"],
                "application/json",
            )
        rotated = httpx.post(
            f"{proc.internal}/v1/keysets/zapier/rotate",
            json={"force": True},
            headers={"Authorization": f"Bearer {api_key('admin')}"},
            timeout=30,
        )
        assert rotated.status_code == 200, rotated.text
        wait_for(lambda s=served: proc.jwks().content != s.content, 15, "the JWKS to change")  # type: ignore[misc]


def test_three_replicas_rotating_on_kms(
    tmp_path: Path, keysvc: Start, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """3 replicas share one alias prefix with fast timings through several rotations: every token minted
    by any replica verifies against the JWKS of any replica as a verifier caching it for C; each slot has
    exactly one KMS key (one alias) and every other key the replicas created is pending deletion."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix, fast=True)
    replicas = [keysvc(config, name=f"replica{i}") for i in range(3)]
    for r in replicas:
        wait_for(lambda r=r: ready(r), 30, "readiness")  # type: ignore[misc]
    cache_for = float(config["jwks"]["verifier_cache"])
    cached: dict[str, Any] = {"at": 0.0, "keys": {}}
    kids_seen: set[str] = set()
    failures: list[str] = []

    def sign_and_verify() -> bool:
        """One token from a random replica, verified against the cached JWKS; True once three active keys
        have signed (rotation period 4 s: several rotations, however slow the machine)."""
        nonlocal cached
        if time.monotonic() - cached["at"] >= cache_for:
            jwks = random.choice(replicas).jwks().json()
            cached = {"at": time.monotonic(), "keys": {k["kid"]: jwt.PyJWK(k) for k in jwks["keys"]}}
        answer = random.choice(replicas).sign()
        if answer.status_code != 200:
            failures.append(f"sign {answer.status_code} {answer.text}")
            return False
        token = answer.json()["token"]
        kid = jwt.get_unverified_header(token)["kid"]
        kids_seen.add(kid)
        if kid not in cached["keys"]:
            failures.append(f"kid {kid} not in the cached JWKS")
            return False
        try:
            # leeway: with max_token_ttl 1 s and whole-second iat, a token can expire within ms of minting
            jwt.decode(token, cached["keys"][kid].key, algorithms=["ES256"], audience=AUD, leeway=2)
        except jwt.PyJWTError as exc:
            failures.append(f"verify: {exc}")
        return len(kids_seen) >= 3

    wait_for(sign_and_verify, 120, "tokens from three active keys", interval=0.02)
    assert failures == [], failures[:5]
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_server.direct_url)

    def slot_violations() -> list[str]:
        """Aliases naming one key twice, and keys of this prefix neither aliased nor pending deletion."""
        aliases = [a for page in kms.get_paginator("list_aliases").paginate() for a in page["Aliases"]
                   if a["AliasName"].startswith(kms_alias_prefix + "/")]
        aliased = {a["TargetKeyId"] for a in aliases}
        found = [] if len(aliased) == len(aliases) else ["a key in two slots"]  # one key per slot
        for page in kms.get_paginator("list_keys").paginate():
            for k in page["Keys"]:
                tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=k["KeyId"])["Tags"]}
                if tags.get(TAG + "prefix") == kms_alias_prefix and k["KeyId"] not in aliased:
                    state = kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"]
                    if state != "PendingDeletion":
                        found.append(f"{k['KeyId']} {state}, not aliased")
        return found

    # The replicas keep rotating: a key whose alias is being written (or a race's loser about to schedule
    # its deletion) is briefly neither; the invariant must hold once such a step has finished.
    wait_for(lambda: not slot_violations(), 10, "every key of the prefix to be aliased or pending deletion")


@pytest.fixture(autouse=True)
def _kms_env(moto_server: MotoServer) -> None:
    """Every test here needs moto's dummy credentials in the environment the services inherit."""
