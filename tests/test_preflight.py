"""`keysvc check-config --connect` against real components: moto's server for KMS and S3, real (and
read-only) directories, loopback HTTP and HTTPS servers, a port nobody listens on; and the pure decisions
of keysvc.preflight."""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest

from keysvc import operations, preflight
from keysvc.backends.registry import open_backend
from keysvc.config import parse_settings
from keysvc.preflight import Check
from tests.helpers import base_config, run_cli, write_config
from tests.kms_server import REGION, MotoServer, free_port
from tests.test_kms_service import kms_config
from tests.test_mtls import Pki, pki  # noqa: F401 - the CA and 127.0.0.1 server certificate fixture

pytestmark = pytest.mark.system


def lines(result: Any) -> list[str]:
    """The check lines of a `check-config --connect` run (the first line is the config summary)."""
    return str(result.stdout).splitlines()[1:]


# --- pure decisions ---------------------------------------------------------------------------------------


def test_slot_aliases_keeps_only_numbered_slots_sorted() -> None:
    """`<prefix>/<keyset>/<seq>` aliases are slots, sorted by seq; other names under the prefix are not."""
    prefix = "alias/keysvc/prod"
    names = [f"{prefix}/zapier/10", f"{prefix}/zapier/2", f"{prefix}/zapier/notes", f"{prefix}/other/1",
             f"{prefix}/loose", "alias/keysvc/production/zapier/1"]

    assert {"zapier": [(2, f"{prefix}/zapier/2"), (10, f"{prefix}/zapier/10")],
            "other": [(1, f"{prefix}/other/1")]} == preflight.slot_aliases(names, prefix)


def test_exit_status_fails_only_on_a_failed_check() -> None:
    """Warnings and skips exit 0; a single FAIL exits 1."""
    passed = [Check("ok", "kms", "x"), Check("warn", "s3", "y"), Check("skip", "kms", "z")]

    assert (preflight.exit_status(passed), preflight.exit_status([*passed, Check("FAIL", "s3", "w")])) == (0, 1)


def test_transport_reason_names_the_certificate_error_under_the_wrapper() -> None:
    """The certificate error two causes down (as httpx raises it) is what the line reports."""
    cert = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED]")
    cert.verify_message = "self-signed certificate"
    outer = ConnectionError("wrapper")
    outer.__cause__ = OSError("middle")
    outer.__cause__.__cause__ = cert

    assert preflight.transport_reason(outer) == "certificate verify failed: self-signed certificate"
    assert preflight.transport_reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"


def test_partner_urls_fill_the_canary_keyset_and_drop_queries_when_printed() -> None:
    """Every keyset gets its canary URL when the template has {keyset}; printed URLs lose the query."""
    cfg = base_config(Path("/unused"), algs={"a": "ES256", "b": "ES256"})
    cfg["canary"] = {"jwks_url": "https://keys.example.com/keysets/{keyset}/jwks.json"}
    settings = parse_settings(cfg)

    assert preflight.partner_urls(settings) == [("canary.jwks_url", "https://keys.example.com/keysets/a/jwks.json"),
            ("canary.jwks_url", "https://keys.example.com/keysets/b/jwks.json")]
    assert preflight.printable_url("https://h.example/p?sig=abc#f") == "https://h.example/p"


# --- file backend -----------------------------------------------------------------------------------------


def test_file_backend_directory_that_exists_and_one_to_create(tmp_path: Path) -> None:
    """An existing key directory (with a keyset's lock file) and a missing one under a writable parent both
    pass, and the probe leaves no file behind; exit 0."""
    keys = tmp_path / "keys"
    (keys / "zapier").mkdir(parents=True)
    (keys / "zapier" / ".lock").touch()
    existing = run_cli("check-config", "--connect", config=write_config(tmp_path / "a.yaml", base_config(keys)))
    missing = run_cli("check-config", "--connect",
                      config=write_config(tmp_path / "b.yaml", base_config(tmp_path / "new" / "keys")))

    assert (existing.returncode, missing.returncode) == (0, 0), existing.stdout + existing.stderr + missing.stderr
    assert [f"ok   file: {keys} exists; created and removed a temp file in {keys}",
            f"ok   file: POSIX lock (lockf) taken and released in {keys}",
            f"ok   file: {keys / 'zapier' / '.lock'} locked and released"] == lines(existing)
    assert f"{tmp_path / 'new' / 'keys'} does not exist yet; {tmp_path} is where it would be created" in missing.stdout
    assert sorted(p.name for p in keys.rglob("*")) == [".lock", "zapier"]
    assert not (tmp_path / "new").exists()


def _read_only(directory: Path, argv: list[str]) -> list[str]:
    """`argv` run where `directory` is read-only: chmod for a normal user; a read-only bind mount in a
    private mount namespace for root (root writes through any mode bits)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        return argv
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("running as root without unshare(1): cannot make a read-only directory")
    d = str(directory)
    script = f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}" && exec "$@"'
    return [unshare, "-rm", "sh", "-c", script, "sh", *argv]


def test_file_backend_read_only_directory_fails(tmp_path: Path) -> None:
    """A key directory on a read-only file system: one FAIL line naming the directory and why, exit 1."""
    import subprocess
    import sys

    keys = tmp_path / "keys"
    keys.mkdir()
    path = write_config(tmp_path / "c.yaml", base_config(keys))
    argv = _read_only(keys, [sys.executable, "-m", "keysvc", "check-config", "--connect", "--config", str(path)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,
                            cwd=Path(__file__).resolve().parent.parent)
    keys.chmod(0o700)

    assert result.returncode == 1, result.stdout + result.stderr
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert [f"FAIL file: {keys} exists; cannot create a file in {keys}: {reason}"] == lines(result)


def test_connect_and_offline_are_mutually_exclusive(tmp_path: Path) -> None:
    """`--connect --offline` is a usage error (2), nothing is checked."""
    result = run_cli("check-config", "--connect", "--offline",
                     config=write_config(tmp_path / "d.yaml", base_config(tmp_path / "keys")))

    assert result.returncode == 2 and "not allowed with argument" in result.stderr
    assert not (tmp_path / "keys").exists()


# --- KMS and the S3 mirror (moto's server) -------------------------------------------------------------------


def _create_keys(config: dict[str, Any]) -> None:
    """Create the keysets' pending and active keys the way the service does (reconcile on the backend)."""
    settings = parse_settings(config)
    backend = open_backend(settings.backend, "test")
    for keyset in settings.keysets.values():
        operations.reconcile(backend, keyset, time.time, "test")
    backend.close()


def test_kms_lists_describes_and_reads_the_newest_public_key(
    tmp_path: Path, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """With keys under the prefix: ListAliases counts them, DescribeKey covers every slot, GetPublicKey reads
    the newest; nothing is created (the alias count is the same afterwards); exit 0."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix)
    _create_keys(config)
    kms = boto3.client("kms", region_name=REGION, endpoint_url=moto_server.direct_url)

    def aliases() -> list[str]:
        pages = kms.get_paginator("list_aliases").paginate()
        names = (a["AliasName"] for p in pages for a in p["Aliases"])
        return sorted(n for n in names if n.startswith(kms_alias_prefix))

    before = aliases()
    result = run_cli("check-config", "--connect", config=write_config(tmp_path / "k.yaml", config))

    assert result.returncode == 0, result.stdout + result.stderr
    assert [f"ok   kms: ListAliases under {kms_alias_prefix} (2 aliases)",
            f"ok   kms: DescribeKey {kms_alias_prefix}/zapier/* (2 Enabled)",
            f"ok   kms: GetPublicKey {kms_alias_prefix}/zapier/2 (ECC_NIST_P256)"] == lines(result)
    assert before == aliases() and len(before) == 2


def test_kms_access_denied_fails_naming_the_operation_and_alias(
    tmp_path: Path, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """DescribeKey denied by IAM: one FAIL line per slot with AWS's error code, exit 1."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix)
    _create_keys(config)
    moto_server.fault("DescribeKey", "AccessDeniedException")

    result = run_cli("check-config", "--connect", config=write_config(tmp_path / "k.yaml", config))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL kms: DescribeKey {kms_alias_prefix}/zapier/1: AccessDeniedException" in lines(result)
    assert f"FAIL kms: DescribeKey {kms_alias_prefix}/zapier/2: AccessDeniedException" in lines(result)


def test_kms_without_keys_yet_and_kms_unreachable(
    tmp_path: Path, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """A fresh prefix: ListAliases passes and the key checks are skipped (exit 0). KMS on a port nobody
    listens on: ListAliases fails with the connection error (exit 1)."""
    config = kms_config(tmp_path, moto_server, kms_alias_prefix)
    fresh = run_cli("check-config", "--connect", config=write_config(tmp_path / "k.yaml", config))
    config["backend"]["endpoint_url"] = f"http://127.0.0.1:{free_port()}"
    down = run_cli("check-config", "--connect", config=write_config(tmp_path / "down.yaml", config))

    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert lines(fresh)[0] == f"ok   kms: ListAliases under {kms_alias_prefix} (0 aliases)"
    assert lines(fresh)[1].startswith(f"skip kms: no key under {kms_alias_prefix}/zapier/ yet")
    assert down.returncode == 1
    assert [f"FAIL kms: ListAliases under {kms_alias_prefix}: EndpointConnectionError"] == lines(down)


def test_s3_mirror_probe_is_put_then_deleted(tmp_path: Path, moto_server: MotoServer, kms_alias_prefix: str) -> None:
    """The probe object goes under the mirror's key_prefix and is deleted again; a missing bucket fails."""
    bucket = "probe-" + kms_alias_prefix.rsplit("/", 1)[1]
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=moto_server.direct_url)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})  # type: ignore[typeddict-item]
    config = base_config(tmp_path / "keys")
    config["mirror"] = {"bucket": bucket, "key_prefix": "public/", "region": REGION,
                        "endpoint_url": moto_server.endpoint_url}
    good = run_cli("check-config", "--connect", config=write_config(tmp_path / "m.yaml", config))
    config["mirror"]["bucket"] = bucket + "-missing"
    missing = run_cli("check-config", "--connect", config=write_config(tmp_path / "n.yaml", config))

    assert good.returncode == 0, good.stdout + good.stderr
    assert [f"ok   s3: PutObject s3://{bucket}/public/.keysvc-probe",
            f"ok   s3: DeleteObject s3://{bucket}/public/.keysvc-probe (probe removed)"] == lines(good)[-2:]
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert missing.returncode == 1
    assert f"FAIL s3: PutObject s3://{bucket}-missing/public/.keysvc-probe: NoSuchBucket" == lines(missing)[-1]


class DenyDeleteS3(http.server.BaseHTTPRequestHandler):
    """A hand-written S3 endpoint where PutObject succeeds and DeleteObject is denied (as an IAM policy
    granting s3:PutObject only would); it remembers the keys put."""

    stored: ClassVar[list[str]] = []

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.stored.append(self.path)
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_DELETE(self) -> None:
        body = b"<?xml version='1.0'?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def deny_delete_s3() -> Iterator[str]:
    """The URL of a DenyDeleteS3 server on 127.0.0.1."""
    DenyDeleteS3.stored = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DenyDeleteS3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_s3_probe_left_when_delete_is_denied(tmp_path: Path, deny_delete_s3: str) -> None:
    """DeleteObject denied: a warning saying the probe object was left, and exit 0 (the mirror only puts)."""
    config = base_config(tmp_path / "keys")
    config["mirror"] = {"bucket": "jwks-mirror", "key_prefix": "jwks/", "region": REGION,
                        "endpoint_url": deny_delete_s3}

    result = run_cli("check-config", "--connect", config=write_config(tmp_path / "m.yaml", config),
                     env={"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})

    assert result.returncode == 0, result.stdout + result.stderr
    assert lines(result)[-1] == (
        "warn s3: DeleteObject s3://jwks-mirror/jwks/.keysvc-probe: AccessDenied: the probe object was left "
        "(keysvc itself never deletes)"
    )
    assert DenyDeleteS3.stored == ["/jwks-mirror/jwks/.keysvc-probe"]


# --- partner URLs (loopback HTTP and HTTPS) ---------------------------------------------------------------------


class Teapot(http.server.BaseHTTPRequestHandler):
    """Answers every GET with 418: any status proves the endpoint reachable."""

    def do_GET(self) -> None:
        self.send_response(418)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback(pki: Pki) -> Iterator[tuple[int, int]]:  # noqa: F811
    """(https port, http port) of two Teapot servers on 127.0.0.1; the https one has a certificate for
    127.0.0.1 issued by the test CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.server)
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), Teapot) for _ in range(2)]
    servers[0].socket = context.wrap_socket(servers[0].socket, server_side=True)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers[0].server_address[1], servers[1].server_address[1]
    for s, t in zip(servers, threads, strict=True):
        s.shutdown()
        s.server_close()
        t.join()


def _url_config(tmp_path: Path, https_port: int, http_port: int, dead_port: int) -> Path:
    config = base_config(tmp_path / "keys")
    config["token_exchange"] = {"client_id": "c", "client_secret_env": "PREFLIGHT_TEST_SECRET",
                                "token_url": f"https://127.0.0.1:{https_port}/oauth/token?x=1",
                                "api_url": f"http://127.0.0.1:{http_port}"}
    config["canary"] = {"jwks_url": f"https://127.0.0.1:{dead_port}/.well-known/jwks.json"}
    return write_config(tmp_path / "u.yaml", config)


def test_partner_urls_reachable_untrusted_and_refused(tmp_path: Path, pki: Pki, loopback: tuple[int, int]) -> None:  # noqa: F811
    """Trusting the test CA (SSL_CERT_FILE, as the service's HTTP client does): the https URL passes its
    handshake with HTTP 418, the http one too; without it, the certificate error is the reason; a port nobody
    listens on fails with the connection error. Exit 1 whenever one fails."""
    https_port, http_port = loopback
    path = _url_config(tmp_path, https_port, http_port, free_port())
    env = {"PREFLIGHT_TEST_SECRET": "s3cr3t-never-printed"}
    trusted = run_cli("check-config", "--connect", config=path, env={**env, "SSL_CERT_FILE": str(pki.ca)})
    untrusted = run_cli("check-config", "--connect", config=path, env={**env, "SSL_CERT_FILE": ""})

    token_url = f"https://127.0.0.1:{https_port}/oauth/token"
    assert (trusted.returncode, untrusted.returncode) == (1, 1)
    assert lines(trusted)[2:4] == [
        f"ok   tls: token_exchange.token_url {token_url}: TLS handshake ok, HTTP 418",
        f"ok   http: token_exchange.api_url http://127.0.0.1:{http_port}: plain http, HTTP 418",
    ]
    assert lines(trusted)[4].startswith("FAIL tls: canary.jwks_url https://127.0.0.1:")
    assert lines(trusted)[4].endswith(": Connection refused")
    assert (f"FAIL tls: token_exchange.token_url {token_url}: certificate verify failed: "
            "unable to get local issuer certificate") == lines(untrusted)[2]
    assert "s3cr3t" not in trusted.stdout + trusted.stderr + untrusted.stdout + untrusted.stderr
