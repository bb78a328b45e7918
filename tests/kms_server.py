"""pytest plugin: a real moto server (KMS, S3) over HTTP for the KMS backend tests.

Enable with `pytest_plugins = ["tests.kms_server"]` in tests/conftest.py.

`moto_server` (session) runs tests/moto_launcher.py — moto with fidelity patches — in a subprocess on
127.0.0.1, behind tests/tcp_gate.py, a TCP forwarder in its own subprocess. `endpoint_url` points at the
gate. `stop()` kills the gate: the port refuses connections at once (as when KMS is unreachable) while
moto keeps every key, so `start()` (the gate again, same port) brings the same keys back. Pausing moto
with SIGSTOP was rejected: clients would hang until their read timeout instead of failing fast, and a
stopped process holding half-read requests makes recovery timing depend on the kernel's backlog.

`kms_alias_prefix` gives each test its own alias prefix, so tests sharing the server never see each
other's keys.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

HERE = Path(__file__).resolve().parent
REGION = "eu-west-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_ENV_UNSET = ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ROLE_ARN")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_for(listening, timeout, f"something to listen on {port}", interval=0.05)


@dataclass
class MotoServer:
    """A moto server subprocess behind a killable TCP gate."""

    moto_port: int = field(default_factory=free_port)
    gate_port: int = field(default_factory=free_port)
    region: str = REGION
    _moto: subprocess.Popen[bytes] | None = None
    _gate: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        """The URL clients use (through the gate)."""
        return f"http://127.0.0.1:{self.gate_port}"

    @property
    def direct_url(self) -> str:
        """moto itself, bypassing the gate (control endpoint, checks made while the gate is down)."""
        return f"http://127.0.0.1:{self.moto_port}"

    def launch(self) -> None:
        """Start moto and the gate."""
        self._moto = subprocess.Popen(
            [sys.executable, str(HERE / "moto_launcher.py"), str(self.moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.moto_port, self._moto)
        self.start()

    def start(self) -> None:
        """(Re)open the gate on the same port: KMS is reachable again, with the same keys."""
        if self._gate is not None and self._gate.poll() is None:
            return
        self._gate = subprocess.Popen(
            [sys.executable, str(HERE / "tcp_gate.py"), str(self.gate_port), str(self.moto_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(self.gate_port, self._gate)

    def stop(self) -> None:
        """Close the gate: connections to `endpoint_url` are refused until `start()`."""
        if self._gate is not None and self._gate.poll() is None:
            self._gate.kill()
            self._gate.wait()

    def shutdown(self) -> None:
        """Stop both processes."""
        self.stop()
        if self._moto is not None and self._moto.poll() is None:
            self._moto.terminate()
            try:
                self._moto.wait(5)
            except subprocess.TimeoutExpired:
                self._moto.kill()
                self._moto.wait()

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the launcher's test-control endpoint (`calls`, `calls/reset`, `fault`, `fault/clear`)."""
        req = urllib.request.Request(
            f"{self.direct_url}/_keysvc/{path}", data=json.dumps(body or {}).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def calls(self) -> dict[str, int]:
        """KMS calls per operation since the last `reset_calls()`."""
        return dict(self.control("calls"))

    def reset_calls(self) -> None:
        """Zero the call counters."""
        self.control("calls/reset")

    def fault(self, op: str, code: str = "ThrottlingException", count: int = -1, mode: str = "error") -> None:
        """Make the next `count` calls of `op` fail with `code` (-1: until `clear_faults()`).
        `mode="lose_response"`: the call takes effect but its answer is lost (HTTP 500)."""
        self.control("fault", {"op": op, "code": code, "count": count, "mode": mode})

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.control("fault/clear")


def running_moto() -> Iterator[MotoServer]:
    """Launch a moto server, with dummy AWS credentials in the environment while it runs."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        for name in AWS_ENV_UNSET:
            mp.delenv(name, raising=False)
        server = MotoServer()
        server.launch()
        try:
            yield server
        finally:
            server.shutdown()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session."""
    yield from running_moto()


@pytest.fixture
def kms_alias_prefix(moto_server: MotoServer) -> Iterator[str]:
    """A fresh alias prefix for one test; the gate is open and no fault injected when the test starts."""
    moto_server.start()
    moto_server.clear_faults()
    yield f"alias/keysvc-test/{uuid.uuid4().hex[:12]}"
    moto_server.start()
    moto_server.clear_faults()


def aws_env() -> dict[str, str]:
    """The environment for a subprocess that talks to moto (the dummy credentials)."""
    env = {k: v for k, v in os.environ.items() if k not in AWS_ENV_UNSET}
    env.update(AWS_ENV)
    return env
