"""Backend outages: every replica keeps serving from memory, alerts' metrics show it, all recover alone.

File backend: the keyset directory is replaced by a regular file, or moved away (as when a shared volume
is unmounted and an empty mount point shows), then restored. Tests run as root, so chmod would not block
a read: the directory itself is taken away. KMS: the moto gate is closed (connections refused).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import KeysvcProcess, backend_syncs, base_config, wait_for, write_config
from tests.kms_server import MotoServer

pytestmark = pytest.mark.system

REPLICAS = 3
FAILED_SYNCS = 6  # the outage lasts until every replica has failed this many more refreshes


def metric(proc: KeysvcProcess, name: str, keyset: str = "zapier") -> float:
    """One sample of a keyset-labelled metric from /metrics."""
    text = httpx.get(proc.internal + "/metrics", timeout=5).text
    prefix = f'{name}{{keyset="{keyset}"}} '
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line[len(prefix):])


def start_replicas(config_path: Path, n: int, env: dict[str, str] | None = None) -> list[KeysvcProcess]:
    return [KeysvcProcess(config_path, name=f"outage{i}", env=dict(env or {})).start() for i in range(n)]


def serve_through_outage(
    replicas: list[KeysvcProcess], before: dict[str, httpx.Response], kid: str, *, signs: bool
) -> None:
    """Until every replica has failed FAILED_SYNCS more refreshes, round after round on every replica:
    JWKS 200 with the same bytes and ETag, /readyz 200, signing 200 with the same kid (file) or 503 +
    Retry-After (KMS), keysvc_backend_up 0. Every answer is checked; how many rounds fit in the outage
    depends on the machine's speed and is not what the test is about."""
    for r in replicas:
        wait_for(lambda r=r: metric(r, "keysvc_backend_up") == 0.0, 10, f"{r.name} to report the backend down")
    failed_at_start = {r.name: backend_syncs(r, failed=True) for r in replicas}

    def one_round() -> bool:
        for r in replicas:
            served = r.jwks()
            assert (served.status_code, served.content) == (200, before[r.public].content)
            assert served.headers["etag"] == before[r.public].headers["etag"]
            assert httpx.get(r.public + "/readyz", timeout=5).status_code == 200
            answer = r.sign()
            if signs:
                assert answer.status_code == 200, answer.text
                assert answer.json()["kid"] == kid
            else:
                assert answer.status_code == 503, answer.text
                assert int(answer.headers["Retry-After"]) >= 1
            assert metric(r, "keysvc_backend_up") == 0.0
        return all(backend_syncs(r, failed=True) >= failed_at_start[r.name] + FAILED_SYNCS for r in replicas)

    wait_for(one_round, 60, f"every replica to fail {FAILED_SYNCS} more refreshes while serving")


def recovered(replicas: list[KeysvcProcess], jwks_before: bytes) -> None:
    """Without a restart: backend_up back to 1, signing 200, the same JWKS."""
    for r in replicas:
        wait_for(lambda r=r: metric(r, "keysvc_backend_up") == 1.0, 15, f"{r.name} to see the backend again")
        wait_for(lambda r=r: r.sign().status_code == 200, 15, f"{r.name} to sign again")
        assert r.jwks().content == jwks_before


def file_config(tmp_path: Path) -> Path:
    config = base_config(tmp_path / "keys")
    config["backend"]["refresh_interval"] = "500ms"
    config["log"] = {"access": False}
    return write_config(tmp_path / "outage.yaml", config)


def replace_with_file(directory: Path) -> Callable[[], None]:
    """The keyset directory becomes a regular file; returns the restore."""
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)
    directory.write_bytes(b"not a directory\n")

    def restore() -> None:
        directory.unlink()
        aside.rename(directory)

    return restore


def move_away(directory: Path) -> Callable[[], None]:
    """The keyset directory disappears (an unmounted volume); returns the restore."""
    aside = directory.with_name(directory.name + ".aside")
    directory.rename(aside)

    def restore() -> None:
        if directory.exists():  # whatever a replica may have written meanwhile is evidence of a bug
            leftovers = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else ["<file>"]
            shutil.rmtree(directory, ignore_errors=True)
            raise AssertionError(f"a replica wrote into the vanished key directory: {leftovers}")
        aside.rename(directory)

    return restore


@pytest.mark.parametrize("outage", [replace_with_file, move_away], ids=["dir-is-a-file", "dir-vanished"])
def test_file_backend_outage_every_replica_serves_from_memory(
    tmp_path: Path, outage: Callable[[Path], Callable[[], None]]
) -> None:
    """3 replicas on one key directory; the keyset directory is taken away until each has failed six
    refreshes: every replica keeps answering the JWKS (200, same bytes and ETag) and /readyz from memory,
    keeps signing with the same active key, shows keysvc_backend_up 0 — and never creates a key in place
    of the vanished ones; once restored, every replica reports the backend up and serves the same JWKS,
    without a restart."""
    replicas = start_replicas(file_config(tmp_path), REPLICAS)
    try:
        before = {r.public: r.jwks() for r in replicas}
        kid = replicas[0].sign().json()["kid"]
        restore = outage(tmp_path / "keys" / "zapier")
        try:
            serve_through_outage(replicas, before, kid, signs=True)
        finally:
            restore()
        recovered(replicas, before[replicas[0].public].content)
    finally:
        for r in replicas:
            r.stop()


def test_kms_outage_every_replica_serves_jwks_and_shows_backend_down(
    tmp_path: Path, moto_server: MotoServer, kms_alias_prefix: str
) -> None:
    """2 replicas on KMS; KMS unreachable until each has failed six refreshes: every replica serves the
    JWKS and /readyz from memory, answers every /v1/sign 503 with Retry-After (a remote key cannot sign
    without KMS), and shows keysvc_backend_up 0; all recover without a restart."""
    from tests.kms_server import REGION, aws_env

    config = base_config(tmp_path / "unused")
    config["backend"] = {"type": "kms", "region": REGION, "endpoint_url": moto_server.endpoint_url,
                         "alias_prefix": kms_alias_prefix, "deletion_window": "7d", "refresh_interval": "500ms"}
    config["log"] = {"access": False}
    path = write_config(tmp_path / "kms-outage.yaml", config)
    replicas = start_replicas(path, 1, aws_env())
    replicas.append(KeysvcProcess(path, name="outage1", env=aws_env()).start())
    try:
        for r in replicas:
            wait_for(lambda r=r: httpx.get(r.public + "/readyz", timeout=2).status_code == 200, 30, "readiness")
        before = {r.public: r.jwks() for r in replicas}
        kid = replicas[0].sign().json()["kid"]
        moto_server.stop()
        try:
            serve_through_outage(replicas, before, kid, signs=False)
        finally:
            moto_server.start()
        recovered(replicas, before[replicas[0].public].content)
    finally:
        for r in replicas:
            r.stop()
