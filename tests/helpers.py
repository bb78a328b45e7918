"""Test harness: configs on real directories and real `keysvc serve` processes on ephemeral ports."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = Path(os.environ.get("KEYSVC_TEST_LOGS", "/tmp/keysvc-test-logs"))

# Every secret a test creates is registered here; the secrets-hygiene test scans all logs for them.
SECRETS_FILE = LOG_DIR / "secrets.txt"

T = TypeVar("T")


def remember_secret(value: str) -> str:
    """Record a secret so the hygiene check can prove it never reached a log line."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with SECRETS_FILE.open("a") as out:
        out.write(value + "\n")
    return value


def api_key(name: str) -> str:
    """A deterministic-per-name but unguessable-looking API key for tests."""
    return remember_secret("ks_test_" + hashlib.sha256(f"keysvc-test:{name}".encode()).hexdigest()[:40])


def sha256_hex(value: str) -> str:
    """Hex SHA-256, as `api_key_sha256` holds it."""
    return hashlib.sha256(value.encode()).hexdigest()


FAST_TIMINGS: dict[str, Any] = {
    # satisfies the invariants with small numbers: A >= max(M+W, C) + I + S = max(1+0, 1) + 0.5 + 0.2
    "jwks": {"max_age": 1, "stale_while_revalidate": 0, "stale_if_error": 60, "verifier_cache": 1},
    "refresh_interval": "500ms",
    "clock_skew": "200ms",
    "keyset": {"rotation_period": "4s", "publish_ahead": "2s", "retain_after": "2s", "max_token_ttl": "1s"},
}


def base_config(keys_dir: Path, *, algs: Mapping[str, str] | None = None, fast: bool = False) -> dict[str, Any]:
    """A valid config: file backend in `keys_dir`, ephemeral ports, one keyset per alg, clients:
    `signer` (all keysets, audience connect.zapier.com), `admin` (admin), `other` (first keyset only)."""
    algs = dict(algs or {"zapier": "ES256"})
    timings = (
        FAST_TIMINGS["keyset"]
        if fast
        else {"rotation_period": "30d", "publish_ahead": "2d", "retain_after": "1d", "max_token_ttl": "5m"}
    )
    keysets = {
        name: {"issuer": f"https://issuer.example/{name}", "alg": alg, **timings, "default": i == 0}
        for i, (name, alg) in enumerate(algs.items())
    }
    names = list(keysets)
    config: dict[str, Any] = {
        "listen": {"public": "127.0.0.1:0", "internal": "127.0.0.1:0"},
        "backend": {"type": "file", "path": str(keys_dir), "refresh_interval": "500ms" if fast else "30s"},
        "clock_skew": "200ms" if fast else "60s",
        "jwks": FAST_TIMINGS["jwks"]
        if fast
        else {"max_age": "5m", "stale_while_revalidate": "1m", "stale_if_error": "1d", "verifier_cache": "10m"},
        "keysets": keysets,
        "clients": {
            "signer": {
                "api_key_sha256": sha256_hex(api_key("signer")),
                "keysets": names,
                "audiences": ["connect.zapier.com", "other.example"],
                "max_ttl": "5m",
            },
            "admin": {
                "api_key_sha256": sha256_hex(api_key("admin")),
                "keysets": names,
                "audiences": ["connect.zapier.com"],
                "max_ttl": "5m",
                "admin": True,
            },
            "other": {
                "api_key_sha256": sha256_hex(api_key("other")),
                "keysets": names[:1],
                "audiences": ["other.example"],
                "max_ttl": "1m",
            },
        },
    }
    return config


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    """Write a config dict as YAML."""
    path.write_text(yaml.safe_dump(copy.deepcopy(dict(config)), sort_keys=False))
    return path


@dataclass
class KeysvcProcess:
    """A real `keysvc serve` process. `public` and `internal` are base URLs once started."""

    config_path: Path
    name: str = "keysvc"
    env: dict[str, str] = field(default_factory=dict)
    module: str = "keysvc"  # what `python -m` runs (bench/stub_signature.py is a bench-only variant)
    proc: subprocess.Popen[bytes] | None = None
    public: str = ""
    internal: str = ""
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{self.name}-{os.getpid()}-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 20.0) -> KeysvcProcess:
        """Start and wait for the 'serving' log line (fails the test with the log if it never comes)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.config_path.parent),
            )
        proc = self.proc

        def serving_or_exited() -> dict[str, Any] | bool:
            serving = next((line for line in self.lines() if line.get("event") == "serving"), None)
            return serving or proc.poll() is not None

        try:
            found = wait_for(serving_or_exited, timeout, "the 'serving' line", interval=0.05)
        except AssertionError:
            found = False
        if isinstance(found, dict):
            self.public = "http://" + found["public"]
            self.internal = "http://" + found["internal"]
            return self
        raise AssertionError(f"keysvc did not start; log:\n{self.log_text()[-4000:]}")

    def lines(self) -> Iterator[dict[str, Any]]:
        """The JSON log lines written so far."""
        for raw in self.log_text().splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                yield doc

    def log_text(self) -> str:
        """The whole log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the process (SIGTERM: graceful; SIGKILL: crash)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill(self) -> None:
        """kill -9."""
        self.stop(signal.SIGKILL)

    def sign(self, client: str = "signer", claims: Mapping[str, Any] | None = None, **body: Any) -> httpx.Response:
        """POST /v1/sign as a test client."""
        payload = {"claims": dict(claims or {"sub": "u-1", "aud": "connect.zapier.com"}), **body}
        return httpx.post(
            f"{self.internal}/v1/sign", json=payload, headers={"Authorization": f"Bearer {api_key(client)}"}, timeout=10
        )

    def jwks(self, keyset: str | None = None) -> httpx.Response:
        """GET the JWKS of a keyset (default keyset when None)."""
        path = "/.well-known/jwks.json" if keyset is None else f"/keysets/{keyset}/jwks.json"
        return httpx.get(self.public + path, timeout=10)

    def __enter__(self) -> KeysvcProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(
    *args: str,
    config: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m keysvc ARGS` (black box)."""
    cmd = [sys.executable, "-m", "keysvc", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=str(cwd or ROOT),
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"cli-{os.getpid()}.log").open("a") as out:
        out.write(result.stdout + result.stderr)
    return result


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """The suite's one polling helper: call `check` every `interval` s until it returns something truthy,
    and return that; fail the test naming `what` after `timeout` seconds. An exception from `check` (an
    assertion about what was seen meanwhile) ends the wait at once."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def backend_syncs(proc: KeysvcProcess, *, failed: bool) -> float:
    """How many backend syncs (reconcile + load) `proc` has completed so far: the failed ones (whatever
    the outcome) or the successful ones. Tests measure an outage, or "within one refresh interval", in
    syncs rather than in seconds of wall clock."""
    prefix = 'keysvc_backend_operations_total{operation="sync",outcome="'
    text = httpx.get(proc.internal + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix) and line.startswith(prefix + 'ok"') != failed
    )


@dataclass
class SteppedTime:
    """A monotonic clock (call it) whose `sleep` moves it forward instead of waiting, and yields to the event
    loop once; `slept` records every sleep asked for (back-off and Retry-After tests)."""

    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
