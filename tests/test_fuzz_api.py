"""Hostile input against a live server: schemathesis driven by our own /openapi.json, and hand-made abuse.

schemathesis (CLI, `st run`) generates valid and invalid requests for every operation of the document,
once as the admin client (every operation reachable) and once with no credentials; every response must
be a documented status with a documented body, header set and content type, and never a 5xx. The request
count comes from the server's own `keysvc_http_requests_total`, not from the fuzzer.

The abuse table covers what a schema cannot express: header floods, invalid UTF-8, bodies larger than
declared, absurd Content-Length values, methods no route knows.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.exchange_support import serve
from tests.helpers import KeysvcProcess, api_key, base_config, remember_secret, write_config
from tests.partner_server import PartnerServer, PartnerState

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
MIN_REQUESTS = 1000
KNOWN_APP: dict[str, str] = {}  # the fake Partner API's app, by the gateway's internal URL (tests/fuzz_hooks.py)
CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_headers_conformance",
    "response_schema_conformance", "negative_data_rejection", "unsupported_method", "ignored_auth",
])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """keysvc with every internal operation enabled (token exchange against a local partner)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    state = PartnerState(jwks_url="http://127.0.0.1:9/unset", issuer=ISSUER)
    remember_secret(state.client_secret)
    partner = PartnerServer(state)
    with serve(partner.app()) as partner_url:
        secret_file = tmp / "partner-secret"
        secret_file.write_text(state.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["admin"]["token_exchange"] = True
        config["clients"]["admin"]["zapier"] = True
        config["token_exchange"] = {
            "keyset": "zapier", "token_url": f"{partner_url}/oauth/token", "client_id": state.client_id,
            "client_secret_file": str(secret_file), "total_timeout": "3s", "max_attempts": 1,
            "api_url": partner_url,  # no Partner API there: valid gateway calls end in a documented 404
            "trigger_inbox_url": f"{partner_url}/trigger-inbox/v1",  # nor a Trigger Inbox API: 404 too
            "run_wait_max": "100ms", "lease_wait_max": "100ms",  # stated by the document: generated waits stay short
            # schema-valid gateway calls now reach the (absent) Partner API: a budget that never makes them wait
            "api_rate_limit": {"per_minute": 600000, "burst": 1000},
        }
        config["log"] = {"access": False}
        with KeysvcProcess(write_config(tmp / "keysvc.yaml", config), name="fuzz") as proc:
            partner.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
            yield proc


def internal_requests(proc: KeysvcProcess) -> dict[str, float]:
    """keysvc_http_requests_total of the internal listener, by status."""
    text = httpx.get(proc.internal + "/metrics", timeout=10).text
    by_status: dict[str, float] = {}
    for m in re.finditer(r'^keysvc_http_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("listener") == "internal":
            by_status[labels["status"]] = by_status.get(labels["status"], 0) + float(m.group(2))
    return by_status


def test_openapi_document_is_valid_and_lists_every_route(live: KeysvcProcess) -> None:
    """GET /openapi.json is a valid OpenAPI 3 document covering every internal route."""
    doc = httpx.get(live.internal + "/openapi.json").json()
    validate(doc)
    assert set(doc["paths"]) == {
        "/v1/sign", "/v1/token-exchange", "/v1/keys", "/v1/keysets/{name}/rotate", "/v1/keys/{kid}/revoke",
        "/metrics", "/healthz", "/openapi.json",
        "/v1/zapier/apps", "/v1/zapier/connections", "/v1/zapier/connect", "/v1/zapier/connect/complete",
        "/v1/zapier/actions", "/v1/zapier/actions/{key}/inputs", "/v1/zapier/actions/{key}/inputs/{input_id}/choices",
        "/v1/zapier/action-runs", "/v1/zapier/action-runs/{run_id}",
        "/v1/zapier/trigger-inboxes", "/v1/zapier/trigger-inboxes/{inbox}", "/v1/zapier/trigger-inboxes/{inbox}/pause",
        "/v1/zapier/trigger-inboxes/{inbox}/resume", "/v1/zapier/trigger-inboxes/{inbox}/lease",
        "/v1/zapier/trigger-inboxes/{inbox}/ack", "/v1/zapier/trigger-inboxes/{inbox}/release",
    }


def schemathesis(
    live: KeysvcProcess, *extra: str, examples: int, phases: str = "coverage,fuzzing"
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{live.internal}/openapi.json", "--url", live.internal,
        "--checks", CHECKS, "--max-examples", str(examples), "--seed", "8", "--mode", "all",
        "--phases", phases, "--workers", "1", "--request-timeout", "10",
        "--suppress-health-check", "all", "--no-shrink", *extra,
    ]
    workdir = live.config_path.parent  # schemathesis writes its cache (.schemathesis/) in the cwd
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False, cwd=workdir,
                          env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                               "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                               "KEYSVC_FUZZ_APP": KNOWN_APP.get(live.internal, "")})


def test_schemathesis_thousand_requests_zero_5xx_all_conforming(live: KeysvcProcess) -> None:
    """>= 1,000 generated requests across every operation, as the admin client and unauthenticated:
    schemathesis finds no undocumented status, header, content type or body and no 5xx; the server's own
    request counter agrees (no 5xx at all) and shows the volume."""
    before = internal_requests(live)
    auth = ("-H", f"Authorization: Bearer {api_key('admin')}")
    admin = schemathesis(live, *auth, "--exclude-path-regex", "^/v1/zapier/", examples=250)
    assert admin.returncode == 0, admin.stdout[-6000:] + admin.stderr[-2000:]
    # the gateway's operations (trigger inboxes too): fewer examples each, so the whole run stays within its timeout
    gateway = schemathesis(live, *auth, "--include-path-regex", "^/v1/zapier/", examples=20)
    assert gateway.returncode == 0, gateway.stdout[-6000:] + gateway.stderr[-2000:]
    # unauthenticated, every request stops at the 401: no need for the coverage phase's edge cases
    anonymous = schemathesis(live, examples=60, phases="fuzzing")
    assert anonymous.returncode == 0, anonymous.stdout[-6000:] + anonymous.stderr[-2000:]
    after = internal_requests(live)
    delta = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    total = sum(delta.values())
    assert not {s: n for s, n in delta.items() if s.startswith("5") and n}, delta
    assert total >= MIN_REQUESTS, delta
    assert delta.get("200", 0) > 0 and delta.get("401", 0) > 0 and delta.get("400", 0) > 0, delta
    print(f"\nschemathesis: {int(total)} requests, by status {dict(sorted(delta.items()))}")


# ------------------------------------------------------------------------------------- raw-socket abuse


def raw(proc: KeysvcProcess, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the internal listener; the whole answer (until the server closes or times out)."""
    host, port = proc.internal.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: keysvc", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def test_header_floods_are_refused_with_431(live: KeysvcProcess) -> None:
    """Many headers, or one huge header, past 16 KiB of request head are answered 431 and the connection
    closed, instead of being buffered without bound (uvicorn does not bound httptools); a head just under
    the limit is served; the server keeps serving."""
    many = [(f"X-Flood-{i}", "x" * 40) for i in range(2000)]
    huge = [("X-Huge", "y" * 1_000_000)]
    for headers in (many, huge):
        answer = raw(live, request("GET", "/healthz", headers))
        assert status_of(answer) == 431, answer[:300]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "invalid_request"
    fits = raw(live, request("GET", "/healthz", [(f"X-Fits-{i}", "z" * 40) for i in range(200)]))
    assert status_of(fits) == 200
    assert httpx.get(live.internal + "/healthz").status_code == 200
    answer = raw(live, request("GET", "/.well-known/jwks.json", many).replace(b"Host", b"Host", 1))
    assert status_of(answer) == 431  # the same bound on this port as on the public one (same server code)


@pytest.mark.parametrize(("case", "body", "length", "status"), [
    ("invalid utf-8", b'{"claims": {"aud": "connect.zapier.com", "sub": "\xc3\x28"}}', None, 400),
    ("lone surrogate escape", b'{"claims": {"aud": "connect.zapier.com", "sub": "\\ud800"}}', None, 400),
    ("duplicate top-level key", b'{"claims": {"aud": "x"}, "claims": {"aud": "y"}}', None, 400),
    ("huge exponent", b'{"claims": {"aud": "connect.zapier.com", "n": 1e99999}}', None, 400),
    ("body longer than the limit", b'{"claims": {"aud": "connect.zapier.com"}}' + b" " * 70_000, None, 413),
    ("content-length with a sign", b"{}", "+2", 400),  # refused by the HTTP parser
    ("content-length of 40 digits", b"", "9" * 40, 400),  # refused by the HTTP parser
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_bodies_get_documented_4xx(
    live: KeysvcProcess, case: str, body: bytes, length: str | None, status: int
) -> None:
    """Bodies a JSON library would accept, or framing a lenient server would guess at, are refused with
    the documented status (h11 itself may refuse broken framing first: a 400 too)."""
    headers = [("Authorization", f"Bearer {api_key('signer')}"), ("Content-Type", "application/json"),
               ("Content-Length", length if length is not None else str(len(body)))]
    answer = raw(live, request("POST", "/v1/sign", headers, body))
    assert status_of(answer) == status, answer[:400]
    if b"application/json" in answer.split(b"\r\n\r\n", 1)[0]:
        doc = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert set(doc) == {"error", "error_description"}


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "OPTIONS", "FOO"])
def test_wrong_methods_are_405_with_allow(live: KeysvcProcess, method: str) -> None:
    """Every standard method a route does not serve is 405 with Allow and a JSON error; a method the HTTP
    parser does not know (FOO) is refused by it with 400 before any route sees it."""
    for path in ("/v1/sign", "/v1/keys", "/v1/keysets/zapier/rotate", "/metrics"):
        answer = httpx.request(method, live.internal + path, timeout=5)
        if method == "FOO":
            assert answer.status_code == 400, (method, path, answer.text)
            continue
        assert answer.status_code == 405, (method, path, answer.text)
        assert answer.headers["allow"] and answer.json()["error"] == "method_not_allowed"


# ------------------------------------------------------------- the gateway against the fake Partner API


@pytest.fixture(scope="module")
def gateway_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """keysvc whose gateway talks to the fake Partner API (tests/zapier_fake), so generated requests that
    pass validation reach Zapier's side and its answers, not only a 404."""
    from tests.trigger_inbox_fake import partner_tokens, running_trigger_inbox
    from tests.zapier_fake import running_zapier

    tmp = tmp_path_factory.mktemp("fuzz-gateway")
    with running_zapier() as zapier, running_trigger_inbox(tokens=partner_tokens(zapier.partner)) as inbox_api:
        remember_secret(zapier.partner.client_secret)
        zapier.budget.per_ip = zapier.budget.per_partner = None
        secret_file = tmp / "partner-secret"
        secret_file.write_text(zapier.partner.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["admin"]["zapier"] = True
        config["clients"]["admin"]["token_exchange"] = True
        config["token_exchange"] = {
            "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
            "client_id": zapier.partner.client_id, "client_secret_file": str(secret_file), "total_timeout": "3s",
            "max_attempts": 1, "run_wait_max": "2s", "api_rate_limit": {"per_minute": 60000, "burst": 10000},
            "trigger_inbox_url": inbox_api.api_url, "lease_wait_max": "2s",
        }
        config["log"] = {"access": False}
        slack = zapier.add_app("Slack")
        zapier.add_action(slack, "send", "Send", "WRITE")
        with KeysvcProcess(write_config(tmp / "keysvc.yaml", config), name="fuzz-gateway") as proc:
            zapier.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
            KNOWN_APP[proc.internal] = slack.id
            yield proc


def test_schemathesis_every_zapier_route_all_checks(gateway_live: KeysvcProcess) -> None:
    """Every /v1/zapier/* operation of the OpenAPI document and POST /v1/token-exchange, with every
    schemathesis check (`--checks all`, `positive_data_acceptance` included: a schema-valid request is never
    refused with a 400, because each field's rule is in its schema) against the fake Partner API and Trigger
    Inbox API: 0 failures, and the server's own counter shows no 500.

    One exception, for one operation: POST /v1/zapier/connect/complete runs without positive_data_acceptance.
    Its `state` must be a state keysvc sealed in /v1/zapier/connect for this user (its MAC, its user and its
    expiry): a value a schema can only call a non-empty string, so a generated one is rightly a 400. Every
    other rule of that body is in its schema (the `error` codes, exactly one of authentication_id and error).
    A generated `app` UUID stands for the app the fake holds (tests/fuzz_hooks.py): which apps exist is the
    partner's data, not a rule."""
    before = internal_requests(gateway_live)
    auth = ("-H", f"Authorization: Bearer {api_key('admin')}")
    every = schemathesis_all(gateway_live, *auth, "--include-path-regex",
                             "^/v1/(zapier/(?!connect/complete$)|token-exchange$)", examples=25)
    assert every.returncode == 0, every.stdout[-6000:] + every.stderr[-2000:]
    assert "Tested: 18" in every.stdout, every.stdout[-3000:]  # 17 gateway operations and the token exchange
    complete = schemathesis_all(gateway_live, *auth, "--exclude-checks", "positive_data_acceptance",
                                "--include-path-regex", "^/v1/zapier/connect/complete$", examples=25)
    assert complete.returncode == 0, complete.stdout[-6000:] + complete.stderr[-2000:]
    after = internal_requests(gateway_live)
    delta = {s: after.get(s, 0) - before.get(s, 0) for s in after}
    assert delta.get("500", 0) == 0 and sum(delta.values()) > 200, delta
    print(f"\nschemathesis (gateway, all checks): {int(sum(delta.values()))} requests, {dict(sorted(delta.items()))}")


def schemathesis_all(live: KeysvcProcess, *extra: str, examples: int) -> subprocess.CompletedProcess[str]:
    """schemathesis with `--checks all` (what `extra` excludes aside); a generated `app` UUID is the fake's
    app (tests/fuzz_hooks.py)."""
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{live.internal}/openapi.json", "--url", live.internal,
        "--checks", "all", "--max-examples", str(examples), "--seed", "8", "--mode", "all",
        "--phases", "coverage,fuzzing", "--workers", "1", "--request-timeout", "10",
        "--suppress-health-check", "all", "--no-shrink", *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False, cwd=live.config_path.parent,
                          env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
                               "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
                               "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
                               "KEYSVC_FUZZ_APP": KNOWN_APP.get(live.internal, "")})
