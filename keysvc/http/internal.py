"""The internal listener: /v1/sign, admin key operations, feature routes, /metrics. Never exposed outside the
cluster.

    FastRoutes                 exact paths to raw endpoints, everything else to Starlette
      ├── /v1/sign             AccessLog.raw(SignEndpoint)                      keysvc.http.sign
      └── (fallback)           AccessLog.asgi(Starlette): admin routes, features' routes, /metrics,
                               /healthz, /openapi.json; errors through keysvc.http.error_answers; an unknown
                               path (a trailing-slash variant too) is a JSON 404, never a redirect

The access log (request id, access line, request counter: keysvc.http.access_log) is the same for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from keysvc.config import Settings
from keysvc.feature import Feature
from keysvc.http.access_log import AccessLog
from keysvc.http.admin import AdminRoutes
from keysvc.http.common import refuse_websocket
from keysvc.http.context import InternalApi
from keysvc.http.error_answers import STARLETTE_HANDLERS
from keysvc.http.sign import SignEndpoint
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics
from keysvc.openapi import openapi_endpoint


class FastRoutes:
    """A router in front of Starlette: a request whose path is one of `routes` (exact match) goes to that
    app, everything else to `fallback`. A WebSocket handshake is refused here, on every path."""

    def __init__(self, routes: Mapping[str, ASGIApp], fallback: ASGIApp) -> None:
        self.routes, self.fallback = dict(routes), fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await refuse_websocket(receive, send)
            return
        fast = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if fast is not None:
            await fast(scope, receive, send)
            return
        # Starlette answers an unexpected exception (the JSON 500, logged by keysvc.http.error_answers) and then
        # re-raises it for the server, which would log its message and traceback: it stops here
        with contextlib.suppress(Exception):
            await self.fallback(scope, receive, send)


def no_slash_redirects(router: Router) -> None:
    """Turn off Starlette's `redirect_slashes` in `router` and every router mounted in it: it would answer
    `/v1/keys/` with a 307 to `/v1/keys` on whatever host the caller named in `Host` (an open redirect,
    before any authentication). An unknown path is a JSON 404 instead."""
    router.redirect_slashes = False
    for route in router.routes:
        inner = getattr(route, "app", None)
        if isinstance(route, Mount) and isinstance(inner, Router):
            no_slash_redirects(inner)


async def healthz(request: Request) -> Response:
    """GET /healthz on the internal port (for probes that only reach this port)."""
    return JSONResponse({"status": "ok"})


def build_internal_app(settings: Settings, keyring: Keyring, metrics: Metrics,
                       features: Sequence[Feature] = ()) -> ASGIApp:
    """The internal ASGI app. Each of `features` (keysvc.feature) adds its routes, built on the listener's
    RouteContext (authentication, rate limits, strict JSON bodies; see keysvc.http.context), and its
    OpenAPI part to /openapi.json."""
    api = InternalApi(settings, metrics)

    async def metrics_endpoint(request: Request) -> Response:
        """GET /metrics (Prometheus exposition)"""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        *AdminRoutes(api, settings, keyring).routes(),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(settings, [f.openapi for f in features]), methods=["GET"]),
        *(route for feature in features if feature.routes is not None for route in feature.routes(api)),
    ]
    app = Starlette(routes=routes, exception_handlers=STARLETTE_HANDLERS)
    no_slash_redirects(app.router)
    log = AccessLog(metrics, enabled=settings.access_log)
    sign = SignEndpoint(api, settings, keyring, metrics)
    return FastRoutes({"/v1/sign": log.raw(sign, "sign")}, log.asgi(app))
