"""No secret in any log: named to sort last, so that it sees the logs of the whole run.

Two checks: (1) a server of its own is fed secrets in headers, bodies, paths and malformed requests, and
its log holds none of them; (2) every log file under tests.helpers.LOG_DIR written during this pytest run
(every `keysvc serve` process and CLI run of the suite) holds no secret recorded with `remember_secret`,
nothing shaped like a signed JWT and no PEM private key.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import LOG_DIR, SECRETS_FILE, KeysvcProcess, api_key, base_config, remember_secret, wait_for

JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
PEM_PRIVATE = "PRIVATE KEY-----"


def leaks(text: str, secrets: list[str]) -> list[str]:
    """What in `text` must not be there (described without repeating the secret)."""
    found = [f"recorded secret #{i} ({len(s)} chars)" for i, s in enumerate(secrets) if s in text]
    found += [f"JWT-shaped string at offset {m.start()}" for m in JWT.finditer(text)]
    if PEM_PRIVATE in text:
        found.append("PEM private key")
    return found


def recorded_secrets() -> list[str]:
    """Every secret the suite registered (short strings would match by chance: they are not secrets)."""
    if not SECRETS_FILE.exists():
        return []
    return sorted({s for s in SECRETS_FILE.read_text().splitlines() if len(s) >= 12})


def run_started_at() -> float:
    """When this pytest process started (Linux /proc), so older runs' logs are not judged; 0 elsewhere."""
    try:
        ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK") - 1.0
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


@pytest.mark.system
def test_a_server_fed_secrets_logs_none_of_them(tmp_path: Path, keysvc: Callable[..., KeysvcProcess]) -> None:
    """Signing (the token comes back), wrong and JWT-shaped API keys, secrets in claim values, in a
    malformed body, in an unknown public path and in a broken HTTP request: the access, audit and error
    lines are all written, and none of them holds a secret, a token or key material."""
    proc = keysvc(base_config(tmp_path / "keys"), name="hygiene")
    wrong_key = remember_secret("ks_test_wrong_" + os.urandom(16).hex())
    in_body = remember_secret("body-secret-" + os.urandom(16).hex())
    signed = proc.sign(claims={"sub": "u-1", "aud": "connect.zapier.com", "note": "x"})
    assert signed.status_code == 200
    token = remember_secret(signed.json()["token"])
    internal = proc.internal
    headers = {"Authorization": f"Bearer {api_key('signer')}", "X-Request-ID": "hygiene-1"}
    answers = [
        httpx.post(f"{internal}/v1/sign", json={"claims": {"aud": "connect.zapier.com"}},
                   headers={"Authorization": f"Bearer {wrong_key}"}, timeout=10).status_code,
        httpx.post(f"{internal}/v1/sign", json={"claims": {"aud": "connect.zapier.com"}},
                   headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code,
        httpx.post(f"{internal}/v1/sign", json={"claims": {"aud": "connect.zapier.com", "exp": in_body}},
                   headers=headers, timeout=10).status_code,
        httpx.post(f"{internal}/v1/sign", content=f'{{"claims": {{"x": "{in_body}"', timeout=10,
                   headers={**headers, "Content-Type": "application/json"}).status_code,
        httpx.post(f"{internal}/v1/sign", json={"claims": {"aud": in_body}}, headers=headers, timeout=10).status_code,
        httpx.get(f"{internal}/v1/keys", headers={"Authorization": f"Bearer {api_key('signer')}"},
                  timeout=10).status_code,
        httpx.get(f"{proc.public}/keysets/{token}/jwks.json", timeout=10).status_code,
        httpx.get(f"{proc.public}/{in_body}", headers={"X-Request-ID": token}, timeout=10).status_code,
    ]
    assert answers == [401, 401, 400, 400, 403, 403, 404, 404]
    host, port = proc.internal.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(f"POST /v1/sign HTTP/1.1\r\nAuthorization: Bearer {wrong_key}\r\nbroken {token}\r\n\r\n".encode())
        raw.recv(1024)
    wait_for(lambda: any(line.get("event") == "Invalid HTTP request received." for line in proc.lines()), 10,
             "the malformed request's log line")
    proc.stop()

    lines = list(proc.lines())
    events = [line.get("event") for line in lines]
    assert events.count("access") >= len(answers) + 1
    audit = [line for line in lines if line.get("event") == "token.sign"]
    assert audit and audit[0]["audit"] is True and audit[0]["kid"] == signed.json()["kid"]
    assert {"client", "keyset", "sub", "aud", "jti", "exp"} <= audit[0].keys()
    assert any(line.get("request_id") == "hygiene-1" for line in lines)
    broken = [line for line in lines if line.get("event") == "Invalid HTTP request received."]
    assert broken and broken[0]["logger"] == "uvicorn.error"  # uvicorn's own error path, without a traceback
    assert leaks(proc.log_text(), [wrong_key, in_body, token, api_key("signer"), api_key("admin")]) == []


@pytest.mark.system  # it scans the logs the run's processes wrote: nothing to scan without them
def test_no_log_of_the_whole_run_holds_a_secret_token_or_private_key() -> None:
    """Every log file written during this run (all `keysvc serve` processes, CLI runs, partner servers) is
    free of recorded secrets (API keys, client secrets), signed JWTs and PEM private keys."""
    secrets = recorded_secrets()
    since = run_started_at()
    scanned, dirty = 0, {}
    for path in sorted(LOG_DIR.glob("**/*")):
        if not path.is_file() or path == SECRETS_FILE or path.stat().st_mtime < since:
            continue
        scanned += 1
        found = leaks(path.read_text(errors="replace"), secrets)
        if found:
            dirty[path.name] = found[:5]
    assert scanned >= 1
    assert dirty == {}
