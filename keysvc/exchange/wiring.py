"""How a keysvc process serves the exchange: an in-process signer over its keyring, Prometheus reporting,
and the `POST /v1/token-exchange` route of the internal listener.

    exchange_routes(settings, keyring, metrics, api) -> [Route("/v1/token-exchange")]   (a RouteSource once bound)
        client API key (Bearer), client flag `token_exchange: true`, optional `exchange_scopes: [...]`
    exchange_command(args, settings) -> exit status of `keysvc exchange`
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keysvc.backends.registry import open_backend
from keysvc.clock import SystemClock
from keysvc.config import KeysetSettings, Settings
from keysvc.errors import ConfigError, Forbidden
from keysvc.exchange.cli import run_exchange_async
from keysvc.exchange.client import TokenExchanger
from keysvc.exchange.endpoint import exchange_request
from keysvc.exchange.signer import SignedToken
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics

TOKEN_EXCHANGE_ACTOR = "token_exchange"  # noqa: S105  # nosec B105 - a client label of audit lines, not a secret


class LocalSigner:
    """A `TokenSigner` over this process's keyring: the private key never leaves keysvc."""

    def __init__(self, keyring: Keyring, keysets: Mapping[str, KeysetSettings], default_keyset: str) -> None:
        self._keyring = keyring
        self._keysets = keysets
        self._default = default_keyset

    def __repr__(self) -> str:
        return f"LocalSigner(default_keyset={self._default!r})"

    async def sign(self, claims: Mapping[str, Any], ttl: int, keyset: str | None = None) -> SignedToken:
        """Sign with the keyset's active key; the lifetime is capped by the keyset's max_token_ttl."""
        name = keyset or self._default
        ttl = min(ttl, int(self._keysets[name].max_token_ttl))
        # every partner JWT gets its token.sign audit line (kid, jti, exp) like a /v1/sign token; the
        # token.exchange line that follows names the client and the user
        audit = {"client": TOKEN_EXCHANGE_ACTOR, "keyset": name, "sub": claims.get("sub"), "aud": claims.get("aud")}
        token = await self._keyring.sign(name, claims, ttl, audit=audit)
        return SignedToken(token.token, token.kid, token.alg, token.expires_at)


class PrometheusObserver:
    """Feeds the exchange's upstream calls and cache lookups to keysvc's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def upstream(self, outcome: str, seconds: float) -> None:
        """One request to the partner."""
        self._metrics.exchange_calls.labels(outcome).inc()
        self._metrics.exchange_latency.observe(seconds)

    def cache(self, result: str) -> None:
        """One access-token cache lookup."""
        self._metrics.exchange_cache.labels(result).inc()


def exchange_routes(settings: Settings, keyring: Keyring, metrics: Metrics, api: RouteContext) -> list[Route]:
    """The internal listener's token-exchange route, for `settings.token_exchange`.

    Authentication, the client's rate limit (one budget shared with /v1/sign) and strict JSON body reading
    are the internal API's own.
    """
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    signer = LocalSigner(keyring, settings.keysets, exchange.keyset)
    exchanger = TokenExchanger(exchange, signer, observer=PrometheusObserver(metrics))

    async def token_exchange(request: Request) -> Response:
        """POST /v1/token-exchange"""
        client = api.client(request)
        if not client.token_exchange:
            raise Forbidden("this client may not call /v1/token-exchange (token_exchange is not set)")
        scopes = None if client.exchange_scopes is None else frozenset(client.exchange_scopes)
        answer = await exchange_request(exchanger, client.name, scopes, await api.body(request))
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    return [Route("/v1/token-exchange", token_exchange, methods=["POST"])]


def exchange_command(args: argparse.Namespace, settings: Settings) -> int:
    """`keysvc exchange`: sign in this process with the configured backend's active key, exchange once."""
    if settings.token_exchange is None:
        raise ConfigError("token_exchange", "not configured: `keysvc exchange` needs a token_exchange section")
    exchange = settings.token_exchange

    async def run() -> int:
        keyring = Keyring(settings, open_backend(settings.backend, "cli"), SystemClock(), "cli")
        try:
            await keyring.refresh(exchange.keyset)
            signer = LocalSigner(keyring, settings.keysets, exchange.keyset)
            return await run_exchange_async(args, exchange, signer)
        finally:
            keyring.close()

    return asyncio.run(run())
