"""How a keysvc process serves the exchange: an in-process signer over its keyring, Prometheus reporting,
and the `POST /v1/token-exchange` route of the internal listener.

    exchange_routes(settings, keyring, metrics) -> [Route("/v1/token-exchange")]
        client API key (Bearer), client flag `token_exchange: true`, optional `exchange_scopes: [...]`
    exchange_command(args, settings) -> exit status of `keysvc exchange`
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keysvc.backends.registry import open_backend
from keysvc.clock import SystemClock
from keysvc.config import ClientSettings, KeysetSettings, Settings
from keysvc.errors import ConfigError, Forbidden, PayloadTooLarge, RateLimited
from keysvc.exchange.cli import run_exchange_async
from keysvc.exchange.client import TokenExchanger
from keysvc.exchange.endpoint import exchange_request
from keysvc.exchange.signer import SignedToken
from keysvc.http.common import MAX_BODY, check_content_type, check_length, parse_json
from keysvc.http.internal import Authenticator
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics
from keysvc.ratelimit import TokenBucket, retry_after


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
        token = await self._keyring.sign(name, claims, ttl)
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


def client_gate(settings: Settings, metrics: Metrics) -> Callable[[Request], ClientSettings]:
    """Authenticate the API key and apply the client's `rate_limit` (its own bucket for this route)."""
    auth = Authenticator(settings.clients)
    buckets = {
        c.name: TokenBucket(c.rate_limit.rate, c.rate_limit.burst) for c in settings.clients.values() if c.rate_limit
    }

    def gate(request: Request) -> ClientSettings:
        client = auth.authenticate(request.headers.get("authorization"))
        request.state.client = client.name
        bucket = buckets.get(client.name)
        if bucket is not None and (wait := bucket.take(time.monotonic())) > 0:
            metrics.rate_limited.labels(client.name).inc()
            raise RateLimited("too many requests for this client", retry_after=retry_after(wait))
        return client

    return gate


def exchange_routes(
    settings: Settings,
    keyring: Keyring,
    metrics: Metrics,
    authenticate: Callable[[Request], ClientSettings] | None = None,
) -> list[Route]:
    """The internal listener's token-exchange route, for `settings.token_exchange`.

    `authenticate` maps a request to its client or raises (InvalidClient, RateLimited); pass the internal
    API's own to share its rate-limit buckets with /v1/sign.
    """
    exchange = settings.token_exchange
    signer = LocalSigner(keyring, settings.keysets, exchange.keyset)
    exchanger = TokenExchanger(exchange, signer, observer=PrometheusObserver(metrics))
    gate = authenticate or client_gate(settings, metrics)

    async def token_exchange(request: Request) -> Response:
        """POST /v1/token-exchange"""
        client = gate(request)
        if not client.token_exchange:
            raise Forbidden("this client may not call /v1/token-exchange (token_exchange is not set)")
        scopes = None if client.exchange_scopes is None else frozenset(client.exchange_scopes)
        answer = await exchange_request(exchanger, client.name, scopes, await _json_body(request))
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


async def _json_body(request: Request) -> Any:
    check_content_type(request.headers.get("content-type"))
    check_length(request.headers.get("content-length"))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))
