"""keysvc.http.error_answers: one error table for every route of both listeners, and the JSON 500 contract.

The apps are driven in-process as ASGI callables (exact headers, no server in between) over hand-written
keyring fakes; what the server adds (date, connection) is out of the picture.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from keysvc.config import Settings, parse_settings
from keysvc.errors import (
    ClientClosedRequest,
    Conflict,
    Forbidden,
    InvalidClient,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    Unavailable,
    UnsupportedMediaType,
    UpstreamError,
)
from keysvc.feature import Feature
from keysvc.http.context import RouteContext
from keysvc.http.error_answers import INTERNAL_ERROR, error_answer
from keysvc.http.internal import build_internal_app
from keysvc.http.public import PublicApp
from keysvc.metrics import Metrics
from tests.conftest import LogStream
from tests.helpers import api_key, base_config

pytestmark = pytest.mark.unit

SECRET = "sk-live-4f1c9e-must-never-be-logged"  # what an exception's message might quote


@dataclass
class FakeKeyring:
    """The keyring surface the apps touch. Nothing is loaded (`view` None, not ready); `fail`, when set,
    is raised by every call instead, as a bug deep in the keyring would be."""

    settings: Settings
    fail: Exception | None = None
    calls: list[str] = field(default_factory=list)

    def view(self, name: str) -> None:
        self.calls.append(f"view {name}")
        if self.fail is not None:
            raise self.fail

    def ready(self) -> bool:
        self.calls.append("ready")
        if self.fail is not None:
            raise self.fail
        return False

    async def sign(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("sign")
        raise self.fail if self.fail is not None else Unavailable("no key loaded", retry_after=5)


@dataclass
class Answer:
    """One ASGI answer."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header_names(self) -> list[str]:
        return [name for name, _ in self.headers]

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


def call(app: Any, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b"") -> Answer:
    """Send one HTTP request through an ASGI app and collect its answer."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8081),
    }
    messages: list[dict[str, Any]] = []
    sent_body = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return sent_body.pop() if sent_body else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    assert [m["type"] for m in messages].count("http.response.start") == 1
    return Answer(
        start["status"],
        [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]],
        b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"),
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of one ES256 keyset `zapier` and the signer/admin/other clients."""
    return parse_settings(base_config(tmp_path / "keys"))


def failing_feature(ctx: RouteContext) -> list[BaseRoute]:
    """A feature route (through the RouteContext seam) with a bug: it raises a plain exception."""

    async def explode(request: Request) -> Response:
        ctx.client(request)
        raise RuntimeError(f"token {SECRET} rejected")

    return [Route("/v1/explode", explode, methods=["POST"])]


def internal(settings: Settings, keyring: FakeKeyring) -> Any:
    feature = Feature("explode", routes=failing_feature)
    return build_internal_app(settings, keyring, Metrics(), [feature])  # type: ignore[arg-type]


def public(settings: Settings, keyring: FakeKeyring, metrics: Metrics | None = None) -> PublicApp:
    return PublicApp(keyring, metrics or Metrics())  # type: ignore[arg-type]


TABLE: list[tuple[RequestError, int, str, dict[str, str]]] = [
    (InvalidRequest("bad"), 400, "invalid_request", {}),
    (InvalidClient("who"), 401, "invalid_client", {"www-authenticate": 'Bearer realm="keysvc"'}),
    (Forbidden("no"), 403, "forbidden", {}),
    (NotFound("none"), 404, "not_found", {}),
    (MethodNotAllowed("no", allow="GET, HEAD"), 405, "method_not_allowed", {"allow": "GET, HEAD"}),
    (Conflict("later"), 409, "conflict", {}),
    (PayloadTooLarge("big"), 413, "payload_too_large", {}),
    (UnsupportedMediaType("json"), 415, "unsupported_media_type", {}),
    (ClientClosedRequest("gone"), 499, "client_closed_request", {}),
    (RateLimited("slow", retry_after=3), 429, "rate_limited", {"retry-after": "3"}),
    (UpstreamError("partner"), 502, "upstream_error", {}),
    (Unavailable("later", retry_after=5), 503, "unavailable", {"retry-after": "5"}),
]


@pytest.mark.parametrize(("exc", "status", "code", "own"), TABLE, ids=[t[2] for t in TABLE])
def test_the_table_maps_each_error_to_its_status_headers_and_body(
    exc: RequestError, status: int, code: str, own: dict[str, str]
) -> None:
    """Each RequestError: its status, JSON + no-store, exactly its own extra headers, the JSON error body."""
    answer = error_answer(exc)
    expected = [("content-type", "application/json"), ("cache-control", "no-store"), *own.items()]
    assert (answer.status, [(k.decode(), v.decode()) for k, v in answer.headers]) == (status, expected)
    assert json.loads(answer.body) == {"error": code, "error_description": exc.description}


def test_anything_else_is_the_fixed_internal_error_answer() -> None:
    """An exception that is not a RequestError answers 500 internal_error, never its message."""
    answer = error_answer(KeyError(SECRET))
    assert answer is INTERNAL_ERROR
    assert json.loads(answer.body) == {"error": "internal_error", "error_description": "internal error"}
    assert SECRET.encode() not in answer.body


def _shape(answer: Answer) -> list[tuple[str, str]]:
    """The headers an error answer must share across routes (x-request-id is per request)."""
    return [(n, v if n not in ("content-length", "allow") else "*") for n, v in answer.headers if n != "x-request-id"]


def test_the_same_error_has_the_same_headers_on_every_route(settings: Settings) -> None:
    """405 and 401 from the public app, the /v1/sign fast route and a Starlette route have the same header
    names in the same order and the same values (Allow names each resource's own methods)."""
    keyring = FakeKeyring(settings)
    inner, outer = internal(settings, keyring), public(settings, keyring)
    by_public = call(outer, "POST", "/.well-known/jwks.json")
    by_sign = call(inner, "GET", "/v1/sign")
    by_starlette = call(inner, "POST", "/v1/keys")
    assert [a.status for a in (by_public, by_sign, by_starlette)] == [405, 405, 405]
    assert _shape(by_public) == _shape(by_sign) == _shape(by_starlette)
    assert [by_public.header("allow"), by_sign.header("allow"), by_starlette.header("allow")] == [
        "GET, HEAD", "POST", "GET, HEAD"]
    assert {a.json()["error"] for a in (by_public, by_sign, by_starlette)} == {"method_not_allowed"}
    assert all(a.header_names()[-1] == "x-request-id" for a in (by_public, by_sign, by_starlette))

    unauthenticated_sign = call(inner, "POST", "/v1/sign", [("content-type", "application/json")], b"{}")
    unauthenticated_admin = call(inner, "GET", "/v1/keys")
    assert [unauthenticated_sign.status, unauthenticated_admin.status] == [401, 401]
    assert unauthenticated_sign.headers[:-1] == unauthenticated_admin.headers[:-1]
    assert unauthenticated_sign.header("www-authenticate") == 'Bearer realm="keysvc"'

    not_found_public, not_found_internal = call(outer, "GET", "/nope"), call(inner, "GET", "/nope")
    assert [not_found_public.status, not_found_internal.status] == [404, 404]
    assert _shape(not_found_public) == _shape(not_found_internal)


def test_the_first_of_repeated_headers_counts_on_every_route(settings: Settings) -> None:
    """A header sent twice: the first counts, on the public app as on the internal listener."""
    keyring = FakeKeyring(settings)
    ids = [("x-request-id", "first-id"), ("x-request-id", "second-id")]
    assert call(public(settings, keyring), "GET", "/healthz", ids).header("x-request-id") == "first-id"
    assert call(internal(settings, keyring), "GET", "/healthz", ids).header("x-request-id") == "first-id"
    auth = [("authorization", f"Bearer {api_key('signer')}"), ("authorization", "Bearer wrong"),
            ("content-type", "application/json")]
    body = json.dumps({"claims": {"sub": "u-1", "aud": "connect.zapier.com"}}).encode()
    signed = call(internal(settings, keyring), "POST", "/v1/sign", auth, body)
    assert (signed.status, signed.json()["error"]) == (503, "unavailable")  # authenticated: the first key
    assert keyring.calls == ["sign"]


def test_an_unexpected_exception_on_the_public_port_is_the_json_500(settings: Settings,
                                                                     log_stream: LogStream) -> None:
    """A bug behind a JWKS route or /readyz answers the JSON 500 (no-store, the request id), is counted,
    and logs one error line with the request id and the exception type, never its message."""
    metrics = Metrics()
    app = public(settings, FakeKeyring(settings, fail=RuntimeError(f"cannot use {SECRET}")), metrics)
    for path, rid in (("/.well-known/jwks.json", "req-jwks"), ("/readyz", "req-ready")):
        answer = call(app, "GET", path, [("x-request-id", rid)])
        assert (answer.status, answer.json()) == (500, {"error": "internal_error",
                                                        "error_description": "internal error"})
        assert answer.header("cache-control") == "no-store" and answer.header("content-type") == "application/json"
        assert answer.header("x-request-id") == rid
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert [(e["event"], e["request_id"], e["error_type"], e["listener"]) for e in errors] == [
        ("unexpected error", "req-jwks", "RuntimeError", "public"),
        ("unexpected error", "req-ready", "RuntimeError", "public"),
    ]
    assert SECRET not in log_stream.getvalue()
    assert metrics.http_requests.values[("public", "unexpected", "500")] == 2


def test_an_unexpected_exception_on_the_internal_port_is_the_json_500(settings: Settings,
                                                                       log_stream: LogStream) -> None:
    """A bug in a feature's Starlette route and one in the /v1/sign fast route answer the same JSON 500,
    each logged once with its request id and type only; nothing reaches the server as an exception."""
    keyring = FakeKeyring(settings, fail=RuntimeError(f"backend said {SECRET}"))
    app = internal(settings, keyring)
    auth = [("authorization", f"Bearer {api_key('signer')}"), ("content-type", "application/json")]
    body = json.dumps({"claims": {"sub": "u-1", "aud": "connect.zapier.com"}}).encode()
    feature = call(app, "POST", "/v1/explode", [*auth, ("x-request-id", "req-feature")], b"{}")
    fast = call(app, "POST", "/v1/sign", [*auth, ("x-request-id", "req-sign")], body)
    assert feature.status == fast.status == 500
    assert feature.body == fast.body == INTERNAL_ERROR.body
    assert _shape(feature) == _shape(fast)
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    errors = [(e["request_id"], e["error_type"]) for e in lines if e["level"] == "error"]
    assert errors == [("req-feature", "RuntimeError"), ("req-sign", "RuntimeError")]
    access = [(e["route"], e["status"], e["request_id"]) for e in lines if e["event"] == "access"]
    assert access == [("explode", 500, "req-feature"), ("sign", 500, "req-sign")]
    assert SECRET not in log_stream.getvalue()


def test_jwks_404_and_503_are_counted_with_bounded_labels(settings: Settings) -> None:
    """An unknown keyset path counts keyset="-" (never the caller's path); a keyset not loaded yet counts
    its own 503."""
    metrics = Metrics()
    app = public(settings, FakeKeyring(settings), metrics)
    for path in ("/keysets/caller-chosen-name/jwks.json", "/keysets/other/jwks.json"):
        assert call(app, "GET", path).status == 404
    unavailable = call(app, "GET", "/.well-known/jwks.json")
    assert (unavailable.status, unavailable.header("retry-after")) == (503, "5")
    assert call(app, "GET", "/keysets/zapier/jwks.json").status == 503
    assert metrics.jwks_requests.values == {("-", "404"): 2, ("zapier", "503"): 2}


def test_websocket_scopes_are_closed_and_upgrade_headers_change_nothing(settings: Settings,
                                                                       log_stream: LogStream) -> None:
    """A `websocket` scope (a server that upgrades) is closed before it is accepted by both apps; an HTTP
    request carrying `Upgrade: websocket` (a server that does not upgrade) gets the route's own answer or
    404. Nothing is logged at error level."""
    keyring = FakeKeyring(settings)
    apps = {"public": public(settings, keyring), "internal": internal(settings, keyring)}

    async def handshake(app: Any) -> list[dict[str, Any]]:
        inbox = [{"type": "websocket.connect"}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return inbox.pop() if inbox else {"type": "websocket.disconnect", "code": 1006}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws", "path": "/v1/sign",
                 "raw_path": b"/v1/sign", "query_string": b"", "root_path": "", "headers": [],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8081), "subprotocols": []}
        await app(scope, receive, send)
        return sent

    for app in apps.values():
        assert asyncio.run(handshake(app)) == [{"type": "websocket.close", "code": 1008}]
    upgrade = [("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-version", "13")]
    assert call(apps["public"], "GET", "/healthz", upgrade).status == 200
    assert call(apps["public"], "GET", "/ws", upgrade).status == 404
    assert call(apps["internal"], "GET", "/healthz", upgrade).status == 200
    assert call(apps["internal"], "GET", "/ws", upgrade).status == 404
    assert '"level":"error"' not in log_stream.getvalue().replace(" ", "")
