"""What every internal route gets from the listener: who calls (authenticated, rate-limited), and the
strict JSON body they sent.

A feature (keysvc.feature: the partner side's token exchange and gateway) adds its routes through one seam:
its `Feature.routes`, a `RouteSource` (a function from the `RouteContext` to its routes), which
`build_internal_app(..., features=[...])` calls:

    def zapier_routes(ctx: RouteContext) -> list[BaseRoute]:
        async def apps(request: Request) -> Response:
            client = ctx.client(request)         # 401 / 429 as RequestErrors
            ...
        return [Mount("/v1/zapier", routes=[Route("/apps", apps, methods=["GET"]), ...])]

Its handlers raise keysvc RequestErrors; the listener answers them (keysvc.http.error_answers), logs the request
and counts it by the handler's name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import Scope

from keysvc.config import ClientSettings, Settings
from keysvc.errors import Forbidden, RateLimited
from keysvc.http.auth import Authenticator
from keysvc.http.common import read_json
from keysvc.metrics import Metrics
from keysvc.ratelimit import TokenBucket, retry_after
from keysvc.tls import client_identities


class RouteContext(Protocol):
    """The internal listener's services to a route handler."""

    def client(self, request: Request) -> ClientSettings:
        """The authenticated caller (API key or client certificate), past its rate limit."""

    async def body(self, request: Request, *, optional: bool = False) -> Any:
        """The strict JSON body (application/json, <= 64 KiB); `optional`: none sent is {}."""


RouteSource = Callable[[RouteContext], Sequence[BaseRoute]]


class InternalApi:
    """The RouteContext of the internal listener: authentication, per-client rate limits, body reading."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.metrics = metrics
        self.auth = Authenticator(settings.clients)
        self.buckets = {
            c.name: TokenBucket(c.rate_limit.rate, c.rate_limit.burst)
            for c in settings.clients.values()
            if c.rate_limit
        }

    def authorize(self, scope: Scope, authorization: str | None) -> ClientSettings:
        """Authenticate (API key or verified client certificate) and rate-limit the caller of a request;
        the client's name goes to the request state for the access log, 429s included."""
        client = self.auth.authenticate(authorization, client_identities(scope))
        scope.setdefault("state", {})["client"] = client.name
        bucket = self.buckets.get(client.name)
        if bucket is not None and (wait := bucket.take(time.monotonic())) > 0:
            self.metrics.client_rate_limited(client.name)  # refusals only: not the hot path
            raise RateLimited("too many requests for this client", retry_after=retry_after(wait))
        return client

    def client(self, request: Request) -> ClientSettings:
        """Authenticate and rate-limit the caller (Starlette routes)."""
        return self.authorize(request.scope, request.headers.get("authorization"))

    def admin(self, request: Request) -> ClientSettings:
        """Authenticate a caller who must be an admin client (of at least one keyset)."""
        client = self.client(request)
        if not client.admin_keysets:
            raise Forbidden("this operation needs an admin client")
        return client

    async def body(self, request: Request, *, optional: bool = False) -> Any:
        """The JSON body of a Starlette route's request (see read_json); `optional`: none sent is {}."""
        if optional and request.headers.get("content-length") in (None, "0") and "content-type" not in request.headers:
            return {}
        return await read_json(request.receive, request.headers.get("content-type"),
                               request.headers.get("content-length"))
