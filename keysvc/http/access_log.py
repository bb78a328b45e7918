"""The internal listener's access log: request id in and out, one JSON access line and one count per request."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import Receive, Scope, Send

from keysvc.http.common import request_id
from keysvc.logs import LOG, event
from keysvc.metrics import Metrics

ASGIApp = Any  # an ASGI callable (scope, receive, send)


class AccessLog:
    """ASGI middleware. The request id (the caller's X-Request-ID when sane, else a fresh one) goes to
    `scope["state"]["request_id"]` and back as X-Request-ID; each request is counted in
    keysvc_http_requests_total{listener="internal", route, status} and, when `enabled`, logged."""

    def __init__(self, app: ASGIApp, metrics: Metrics, *, enabled: bool) -> None:
        self.app, self.enabled = app, enabled
        self._requests = metrics.http_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)  # the first
        rid = request_id(None if given is None else given.decode("latin-1"))
        rid_header = (b"x-request-id", rid.encode())
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = 500  # no answer at all (the app failed before starting one)

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = state.get("route") or route_label(scope)
            self._requests.inc(("internal", route, str(status)))
            if self.enabled:
                event(LOG, "access", {
                    "listener": "internal", "method": scope["method"], "route": route, "status": status,
                    "request_id": rid, "client": state.get("client"),
                    "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                })


def route_label(scope: Scope) -> str:
    """The Starlette handler's name (bounded), never the raw path (a caller could make labels unbounded)."""
    return str(getattr(scope.get("endpoint"), "__name__", "unmatched"))
