"""The audit trail is a record, not chatter: a real `keysvc serve` at KEYSVC_LOG_LEVEL=error (and warning)
still writes every audit line (key operations at start-up and over the admin API, token.sign, the
gateway's zapier.* lines), while its info lines are silenced."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, wait_for, write_config

pytestmark = pytest.mark.system


def free_port() -> int:
    """A port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def quiet_server(tmp_path: Path) -> Iterator[Callable[[str], KeysvcProcess]]:
    """Factory: a server at a log level, embed gateway on (its partner URLs point at a closed port), on fixed
    ports: at `error` no info line says `serving`, so readiness is polled instead."""
    started: list[KeysvcProcess] = []

    def start(level: str) -> KeysvcProcess:
        config = base_config(tmp_path / f"keys-{level}")
        public, internal = free_port(), free_port()
        config["listen"] = {"public": f"127.0.0.1:{public}", "internal": f"127.0.0.1:{internal}"}
        config["clients"]["signer"].update(zapier=True, token_exchange=True)
        closed = "http://127.0.0.1:9"
        config["token_exchange"] = {"keyset": "zapier", "client_id": "cid", "client_secret_env": "HOME",
                                    "token_url": f"{closed}/oauth/token", "api_url": closed,
                                    "max_attempts": 1, "total_timeout": "2s"}
        path = write_config(tmp_path / f"{level}.yaml", config)
        proc = KeysvcProcess(path, name=f"audit-{level}", env={"KEYSVC_LOG_LEVEL": level})
        proc.public, proc.internal = f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}"
        with proc.log_path.open("ab") as log:
            proc.proc = subprocess.Popen([sys.executable, "-m", "keysvc", "serve", "--config", str(path)],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **proc.env})
        started.append(proc)

        def ready() -> bool:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-2000:]
            try:
                return httpx.get(proc.public + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 20, "the server to be ready")
        return proc

    yield start
    for proc in started:
        proc.stop()


def audited(proc: KeysvcProcess) -> list[dict[str, Any]]:
    return [line for line in proc.lines() if line.get("audit") is True]


@pytest.mark.parametrize("level", ["error", "warning"])
def test_audit_lines_are_written_at_every_log_level(quiet_server: Callable[[str], KeysvcProcess], level: str) -> None:
    """At KEYSVC_LOG_LEVEL=error or warning: key.create (start-up reconcile), token.sign (POST /v1/sign),
    key.rotate (admin API), zapier.complete (a refused state, no partner call) and token.exchange (the
    partner unreachable) are all written, with the fields they have at the default level; no info line
    (serving, access lines) is."""
    proc = quiet_server(level)
    signed = proc.sign()
    assert signed.status_code == 200, signed.text
    admin = {"Authorization": f"Bearer {api_key('admin')}"}
    rotated = httpx.post(proc.internal + "/v1/keysets/zapier/rotate", headers=admin, json={"force": True})
    assert rotated.status_code == 200, rotated.text
    complete = {"user_id": "u-1", "tenant_id": "t-1", "state": "not-a-state", "authentication_id": "123"}
    refused = httpx.post(proc.internal + "/v1/zapier/connect/complete", json=complete,
                         headers={"Authorization": f"Bearer {api_key('signer')}"})
    assert refused.status_code == 400, refused.text
    exchange = httpx.post(proc.internal + "/v1/token-exchange", json={"user_id": "u-1", "tenant_id": "t-1",
                                                                     "token": "access"},
                          headers={"Authorization": f"Bearer {api_key('signer')}"}, timeout=10)
    assert exchange.status_code in (502, 503), exchange.text  # the partner's port is closed

    wanted = {"key.create", "token.sign", "key.rotate", "zapier.complete", "token.exchange"}
    wait_for(lambda: wanted <= {line["event"] for line in audited(proc)}, 10, "the audit lines")
    lines = audited(proc)
    sign = next(line for line in lines if line["event"] == "token.sign")
    assert (sign["client"], sign["kid"], sign["level"], sign["logger"]) == (
        "signer", signed.json()["kid"], "info", "keysvc.audit")
    rotate = next(line for line in lines if line["event"] == "key.rotate")
    assert (rotate["keyset"], rotate["actor"]) == ("zapier", "client:admin")
    exchanged = next(line for line in lines if line["event"] == "token.exchange")
    assert (exchanged["client"], exchanged["outcome"]) == ("signer", exchange.json()["error"])
    assert [line for line in proc.lines() if line.get("level") == "info" and not line.get("audit")] == []
