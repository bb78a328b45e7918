"""A hostile partner against a real `keysvc serve` process: every token-endpoint and Partner API answer the
gateway reads, mutated the way an attacker (or a broken partner) would (wrong types, huge numbers and
strings, deep nesting, bad URLs, huge bodies, slow bodies), served as raw bytes by the fake
(`ZapierFake.serve_raw`). Proves: not one answer is a 500, every error is the JSON error shape, the
server's log holds no traceback, no known secret (client secret, tokens issued, API keys) is in any answer
or log line, and huge bodies leave the replica's memory bounded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import KeysvcProcess, api_key, base_config, remember_secret, sha256_hex, write_config
from tests.partner_server import ACCESS_TOKEN
from tests.zapier_fake import App, RawAnswer, ZapierFake, running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
PLANTED = remember_secret("Pl4" * 12 + "n")  # a 37-character access token the hostile token endpoint issues
DEEP = b"[" * 3000 + b"]" * 3000
MiB = 1024 * 1024
CLIENT_SECRET = "s3cr3t/with+special&chars"  # the fake's (PartnerState.client_secret)


@dataclass
class Hostile:
    """The replica, the fake, the app every call names, and every answer seen."""

    proc: KeysvcProcess
    zapier: ZapierFake
    app: App
    answers: list[httpx.Response] = field(default_factory=list)
    users: int = 0

    def call(self, route: str, *, fresh: bool = False) -> httpx.Response:
        """One caller request of `route`; `fresh`: for a new user (so the token exchange runs)."""
        self.users += fresh
        user = {"user_id": f"hostile-{self.users}", "tenant_id": "t-1"}
        action = {**user, "app": self.app.id, "action_type": "WRITE", "connection": None}
        method, path, kw = {
            "apps": ("GET", "/v1/zapier/apps", {"params": user}),
            "connections": ("GET", "/v1/zapier/connections", {"params": {**user, "app": self.app.id}}),
            "connect": ("POST", "/v1/zapier/connect", {"json": {**user, "app": self.app.id,
                                                                 "connect_app": self.app.slug}}),
            "actions": ("GET", "/v1/zapier/actions", {"params": {**user, "app": self.app.id}}),
            "inputs": ("POST", "/v1/zapier/actions/send/inputs", {"json": action}),
            "choices": ("POST", "/v1/zapier/actions/send/inputs/channel/choices", {"json": action}),
            "run": ("POST", "/v1/zapier/action-runs", {"json": {**action, "action": "send", "wait": 1}}),
            "run_status": ("GET", "/v1/zapier/action-runs/run-1", {"params": user}),
            "exchange": ("POST", "/v1/token-exchange", {"json": {"user_id": user["user_id"],
                                                                  "tenant_id": "t-1"}}),
        }[route]
        headers = {"Authorization": f"Bearer {api_key('web')}"}
        response = httpx.request(method, self.proc.internal + path, headers=headers, timeout=30, **kw)
        self.answers.append(response)
        return response

    def rss(self) -> int:
        """The replica's resident memory, bytes."""
        assert self.proc.proc is not None
        status = Path(f"/proc/{self.proc.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    """One replica against the fake; total_timeout 3 s, read_timeout 1 s, two attempts."""
    tmp = tmp_path_factory.mktemp("zapier-hostile")
    with running_zapier() as zapier:
        assert zapier.partner.client_secret == CLIENT_SECRET
        remember_secret(zapier.partner.client_secret)
        secret_file = tmp / "client-secret"
        secret_file.write_text(zapier.partner.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["web"] = {
            "api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": True, "token_exchange": True,
        }
        config["token_exchange"] = {
            "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
            "client_id": zapier.partner.client_id, "client_secret_file": str(secret_file),
            "run_wait_max": "5s", "total_timeout": "3s", "read_timeout": "1s", "max_attempts": 2,
            "api_rate_limit": {"per_minute": 6000, "burst": 5000},  # the budget is not under test here
        }
        app = zapier.add_app("Slack")
        zapier.add_action(app, "send", "Send", "WRITE")
        zapier.check_scopes = False
        zapier.budget.per_ip = zapier.budget.per_partner = None  # the fake's own rate limit is not under test
        path = write_config(tmp / "keysvc.yaml", config)
        with KeysvcProcess(path, name="zapier-hostile") as proc:
            zapier.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
            yield Hostile(proc, zapier, app)


def j(body: Any, status: int = 200, **headers: str) -> RawAnswer:
    return RawAnswer.json(body, status, **headers)


HUGE = [
    RawAnswer(chunks=(b" " * 65536,), repeat=160),  # 10 MiB streamed, no Content-Length
    RawAnswer(headers=(("content-type", "application/json"), ("content-length", "314572800")), chunks=(b"{",)),
]
# What a hostile Partner API answers, whatever it was asked.
API_MUTATIONS: list[RawAnswer] = [
    j({"data": 5}), j({"data": "x", "links": 7}), j([1, 2]), j("text"), j(None), j({}),
    j({"data": [1, "x", None, {"id": 5, "key": ["a"], "title": {"t": 1}, "is_expired": "no", "app": [1]}]}),
    j({"data": {"id": ["r"], "status": ["success"], "errors": 7, "results": {"x": [1]}}}),
    j({"data": {"id": "r", "status": {"a": 1}, "errors": "many"}}),
    j({"data": {"id": "r", "status": "pending", "errors": [{"delay": 10**400}, {"delay": "9" * 500}, 5]}}),
    j({"data": [], "links": {"next": "http://[::1/v2/authentications?offset=10"}}),
    j({"data": [], "links": {"next": "https://x.example/a?offset=" + "9" * 5000}}),
    j({"data": [], "links": {"next": ["x"]}}), j({"data": [], "links": {"next": "x" * 100_000}}),
    j({"data": [], "meta": {"page": 10**400}}),
    j(b'{"data": [' + DEEP + b"]}"), j(b'{"data": [{"id": ' + b"9" * 5000 + b"}]}"),
    j(b'{"data": [{"id": "' + b"a" * (3 * MiB) + b'"}]}'),
    j({}, 503, **{"Retry-After": "\u00b2"}), j({}, 503, **{"Retry-After": "9" * 5000}),
    j({"errors": "x"}, 400), j({"errors": [{"detail": ["x"], "title": 5, "code": {"c": 1}}]}, 422),
    j({"errors": [{"detail": "\u0000\u202e" * 1000}]}, 409), j({"errors": [DEEP.decode()]}, 404),
    j(b"<html>oops</html>", 500), j(b"", 200), j(b"not json", 200), j(b"{}", 302, Location="http://evil.example/"),
    j(b"", 204), j(b"{}", 401), j(b"{}", 418), j(b"{}", 999),
    RawAnswer(chunks=(b'{"data": ', b"[]}"), pause=0.7),  # slower than read_timeout between chunks
]
TOKEN_MUTATIONS: list[RawAnswer] = [
    j({"access_token": 5}), j({"access_token": ["a"]}), j({"access_token": "a" * 20_000}),
    j({"access_token": "to\u0000ken\n"}), j({"access_token": "t" * 12, "expires_in": 10**401}),
    j({"access_token": "t" * 12, "expires_in": "3600"}), j({"access_token": "t" * 12, "expires_in": -5}),
    j({"access_token": "t" * 12, "issued_token_type": 7}), j([{"access_token": "x"}]), j(b"" + DEEP),
    j({"error": "invalid_request", "error_description": f"client {CLIENT_SECRET} is {CLIENT_SECRET[:20]}"}, 400),
    j({"error": ["x"], "error_description": {"d": 1}}, 400), j({"error": "x" * 5000}, 403),
    j({}, 503, **{"Retry-After": "-1"}), j({}, 503, **{"Retry-After": "9" * 5000}),
    j(b"<html/>", 502), j(b"{}", 302, Location="http://evil.example/"),
    RawAnswer(chunks=(b'{"access_token": ', b'"x"}'), pause=0.7),
]
API_ENDPOINTS = {  # the Partner API endpoint poisoned -> the caller route that reaches it
    "GET /v2/apps": "apps", "GET /v2/authentications": "connections", "GET /v2/actions": "actions",
    "POST /v2/actions/": "inputs", "POST /v2/action-runs": "run", "GET /v2/action-runs/": "run_status",
}


def check(hostile: Hostile, response: httpx.Response, case: str) -> None:
    assert response.status_code != 500, (case, response.text[:300])
    assert response.status_code < 500 or response.status_code in (502, 503), (case, response.status_code)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "error_description"}, (case, body)


def serve(hostile: Hostile, endpoint: str, answer: RawAnswer) -> None:
    hostile.zapier.raw_next.clear()
    hostile.zapier.serve_raw(endpoint, answer, times=2)  # both attempts of a retried read


def test_huge_partner_bodies_leave_memory_bounded(hostile: Hostile) -> None:
    """10 MiB streamed and 300 MB declared, from the token endpoint and from each Partner API read, each
    sent several times: 502 every time, and the replica's RSS grows by less than 64 MiB (unbounded, a
    300 MB body took a replica from 244 to 969 MiB)."""
    hostile.call("apps")  # warm: the session, the signer, the first exchange
    before = hostile.rss()
    for _ in range(3):
        for answer in HUGE:
            for endpoint, route in [("POST /oauth/token", "apps"), *API_ENDPOINTS.items()]:
                serve(hostile, endpoint, answer)
                response = hostile.call(route, fresh=endpoint.endswith("/oauth/token"))
                check(hostile, response, f"huge {endpoint}")
    hostile.zapier.raw_next.clear()
    grown = hostile.rss() - before
    print(f"\nRSS {before / MiB:.0f} MiB -> {(before + grown) / MiB:.0f} MiB after 42 huge answers")
    assert grown < 64 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"


@pytest.mark.parametrize("endpoint", list(API_ENDPOINTS))
def test_every_partner_api_answer_mutated(hostile: Hostile, endpoint: str) -> None:
    """Each mutation of the answer of `endpoint`: an answer that is never a 500, errors in the JSON shape."""
    for n, answer in enumerate(API_MUTATIONS):
        if answer.pause and endpoint not in ("GET /v2/apps", "POST /v2/action-runs"):
            continue  # slow bodies: two endpoints are enough (each costs the deadline)
        serve(hostile, endpoint, answer)
        check(hostile, hostile.call(API_ENDPOINTS[endpoint]), f"{endpoint} #{n}")
    hostile.zapier.raw_next.clear()
    assert hostile.call("apps").status_code == 200  # no cooldown: every mutation reached the replica's reading


@pytest.mark.parametrize("route", ["apps", "connect", "exchange"])
def test_every_token_endpoint_answer_mutated(hostile: Hostile, route: str) -> None:
    """Each mutation of the token endpoint's answer, reached through the gateway, the Connect flow (connect
    token) and /v1/token-exchange: never a 500."""
    for n, answer in enumerate(TOKEN_MUTATIONS):
        serve(hostile, "POST /oauth/token", answer)
        check(hostile, hostile.call(route, fresh=True), f"token {route} #{n}")
    hostile.zapier.raw_next.clear()
    assert hostile.call("apps", fresh=True).status_code == 200  # no cooldown: every mutation was read


def test_a_planted_token_echoed_back_is_redacted(hostile: Hostile) -> None:
    """The token endpoint issues a 37-character token, then the Partner API's error echoes it and a
    36-character prefix of the client secret: neither reaches the answer."""
    secret = hostile.zapier.partner.client_secret
    hostile.zapier.raw_next.clear()
    hostile.zapier.serve_raw("POST /oauth/token", j({"access_token": PLANTED, "issued_token_type": ACCESS_TOKEN,
                                                     "expires_in": 600}))
    hostile.zapier.serve_raw("GET /v2/apps", j({"errors": [{"detail": f"bad {PLANTED} for {secret[:36]}"}]}, 400))
    response = hostile.call("apps", fresh=True)
    assert response.status_code == 400, response.text
    assert PLANTED not in response.text and secret[:20] not in response.text


def test_zy_a_429_with_a_retry_after_of_any_size(hostile: Hostile) -> None:
    """429 (token endpoint, Partner API) with a Retry-After of 5000 digits or a malformed date: 503 with a
    bounded Retry-After (the replica's budget then cools down for as long as the partner asked, at most an
    hour, so this runs last: every later Partner API call is a 503 without reaching Zapier)."""
    cases = [("POST /oauth/token", j({}, 429, **{"Retry-After": "Wed, 99 Foo 99999 99:99:99 GMT"})),
             ("GET /v2/apps", j({}, 429, **{"Retry-After": "Wed, 99 Foo 99999 99:99:99 GMT"})),
             ("GET /v2/apps", j({}, 429, **{"Retry-After": "9" * 5000}))]
    for endpoint, answer in cases:
        serve(hostile, endpoint, answer)
        response = hostile.call("apps", fresh=True)
        check(hostile, response, "429")
        assert response.status_code == 503 and 1 <= int(response.headers["Retry-After"]) <= 3600
    before = len(hostile.zapier.log)
    assert hostile.call("connections").status_code == 503 and len(hostile.zapier.log) == before
    hostile.zapier.raw_next.clear()


def test_zz_no_traceback_and_no_secret_in_any_answer_or_log(hostile: Hostile) -> None:
    """After the whole corpus: no traceback in the replica's log, and no known secret (the client secret,
    every token issued by the fake or planted, the API key) in any answer or log line."""
    log = hostile.proc.log_text()
    assert "Traceback" not in log
    for line in log.splitlines():
        json.loads(line)  # every line is one JSON object
    secrets = [hostile.zapier.partner.client_secret, PLANTED, api_key("web")]
    secrets += [t for t in hostile.zapier.partner.issued if len(t) >= 12]
    texts = [r.text for r in hostile.answers] + [log]
    leaks = [(s[:6], n) for s in secrets for n, text in enumerate(texts) if s in text]
    assert leaks == []
    assert not any(r.status_code == 500 for r in hostile.answers)
