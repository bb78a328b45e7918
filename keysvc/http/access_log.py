"""The internal listener's access log: request id in and out, one JSON access line and one count per request.

Two ways to put an endpoint behind it, the same line and count either way:

    access_log.asgi(app)                 any ASGI app (Starlette): X-Request-ID is added to its answer and
                                         the status read from it through a wrapped `send`
    access_log.raw(endpoint, "sign")     a RawEndpoint on a hot path: it is handed the request headers and
                                         the X-Request-ID header to send, and returns its status, so no
                                         wrapper sits between it and the server
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from keysvc.http.common import Headers, first_headers, request_id
from keysvc.logs import LOG, REQUEST_ID, event
from keysvc.metrics import Metrics


class RawEndpoint(Protocol):
    """A raw ASGI endpoint that answers with `tail` (X-Request-ID) among its headers and returns its status."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                       tail: Headers) -> int:
        """Answer one request; `headers`: the first of each name (keysvc.http.common.first_headers)."""


class AccessLog:
    """The request id (the caller's X-Request-ID when sane, else a fresh one) goes to
    `scope["state"]["request_id"]`, to keysvc.logs.REQUEST_ID for the time of the request (so every line
    logged while answering it carries it) and back as X-Request-ID; each request is counted in
    keysvc_http_requests_total{listener="internal", route, status} and, when `enabled`, logged."""

    def __init__(self, metrics: Metrics, *, enabled: bool) -> None:
        self.enabled = enabled
        self._metrics = metrics

    def asgi(self, app: ASGIApp) -> ASGIApp:
        """`app` behind the access log; its route is the matched Starlette handler's name."""

        async def logged(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            rid = self._begin(scope, first_headers(scope))
            rid_header = (b"x-request-id", rid.encode())
            status = 500  # no answer at all (the app failed before starting one)

            async def send_with_id(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", ()), rid_header]
                await send(message)

            token = REQUEST_ID.set(rid)
            try:
                await app(scope, receive, send_with_id)
            finally:
                REQUEST_ID.reset(token)
                self._done(scope, route_label(scope), status, rid, started)

        return logged

    def raw(self, endpoint: RawEndpoint, route: str) -> ASGIApp:
        """A RawEndpoint behind the access log, as an ASGI app; `route` is its label."""

        async def logged(scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            headers = first_headers(scope)
            rid = self._begin(scope, headers)
            token = REQUEST_ID.set(rid)
            try:
                status = await endpoint(scope, receive, send, headers, [(b"x-request-id", rid.encode())])
            finally:
                REQUEST_ID.reset(token)
            self._done(scope, route, status, rid, started)

        return logged

    def _begin(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        given = headers.get(b"x-request-id")
        rid = request_id(None if given is None else given.decode("latin-1"))
        scope.setdefault("state", {})["request_id"] = rid
        return rid

    def _done(self, scope: Scope, route: str, status: int, rid: str, started: float) -> None:
        self._metrics.answered("internal", route, status)
        if self.enabled:
            event(LOG, "access", {
                "listener": "internal", "method": scope["method"], "route": route, "status": status,
                "request_id": rid, "client": scope["state"].get("client"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            })


def route_label(scope: Scope) -> str:
    """The Starlette handler's name (bounded), never the raw path (a caller could make labels unbounded)."""
    return str(getattr(scope.get("endpoint"), "__name__", "unmatched"))
