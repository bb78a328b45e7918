"""`TokenExchanger`: a user and tenant in, a partner access token or connect token out.

access:  partner JWT --exchange--> access token            (cached per user, tenant, scope, audience)
connect: access token --exchange--> connect token          (connect_from: access_token)
         partner JWT  --exchange--> connect token          (connect_from: jwt, the older flow)
Connect tokens are single use and never cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from keysvc.client.cache import SingleFlightCache
from keysvc.client.connect import connect_url, resource_url
from keysvc.client.oauth import ExchangeObserver, NullObserver, PartnerError, TokenEndpoint, TokenResponse
from keysvc.config.exchange import SCOPE_TOKEN, TokenExchangeSettings
from keysvc.errors import InvalidRequest

# Zapier: a connect token asks only for the scope Connect needs, not the access token's full scope
CONNECT_SCOPE = "connection:write"

if TYPE_CHECKING:
    import httpx

    from keysvc.client.signer import TokenSigner

CacheKey = tuple[str, str, str, str]  # user, tenant, scope, audience


@dataclass(frozen=True)
class ExchangeResult:
    """What the caller gets; `connect_url` only for connect tokens. The token is hidden from repr."""

    access_token: str = field(repr=False)
    issued_token_type: str
    expires_in: int | None
    connect_url: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The body of a `/v1/token-exchange` answer."""
        body: dict[str, Any] = {
            "access_token": self.access_token,
            "issued_token_type": self.issued_token_type,
        }
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if self.connect_url is not None:
            body["connect_url"] = self.connect_url
        return body


def normalise_scope(scope: str) -> str:
    """Scope tokens deduplicated and sorted, so equal scopes share one cache entry."""
    tokens = sorted(set(scope.split()))
    bad = [t for t in tokens if not SCOPE_TOKEN.fullmatch(t)]
    if not tokens or bad:
        raise InvalidRequest("scope must be space-separated RFC 6749 scope tokens")
    return " ".join(tokens)


class TokenExchanger:
    """Exchanges partner JWTs (signed by `signer`) for the partner's tokens, as `settings` say."""

    def __init__(
        self,
        settings: TokenExchangeSettings,
        signer: TokenSigner,
        *,
        client: httpx.AsyncClient | None = None,
        endpoint: TokenEndpoint | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ExchangeObserver | None = None,
    ) -> None:
        """`endpoint` carries the requests (the server passes its aiohttp one); without it, an httpx
        PartnerClient over `client` (or over a client of its own, closed by `aclose`)."""
        self.settings = settings
        self._signer = signer
        self._clock = clock
        observer = observer or NullObserver()
        self._owns_endpoint = endpoint is None and client is None
        if endpoint is None:
            from keysvc.client.token_endpoint import PartnerClient, token_endpoint_client  # httpx: clients only

            endpoint = PartnerClient(settings, client or token_endpoint_client(), clock=clock, sleep=sleep,
                                     observer=observer)
        self._partner: TokenEndpoint = endpoint
        self._cache: SingleFlightCache[CacheKey, tuple[TokenResponse, float | None]] = SingleFlightCache(
            clock=clock, on_lookup=observer.cache
        )

    def __repr__(self) -> str:
        return f"TokenExchanger(token_url={self.settings.token_url!r}, keyset={self.settings.keyset!r})"

    def partner_claims(self, user_id: str, tenant_id: str) -> dict[str, Any]:
        """The claims we choose; the signer adds iss, iat, nbf, exp, jti and the kid header."""
        return {"sub": user_id, self.settings.tenant_claim: tenant_id, "aud": self.settings.audience}

    async def access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> ExchangeResult:
        """A partner access token for the user, from the cache while it has `cache_margin` left."""
        response, expires_at = await self._access(user_id, tenant_id, scope)
        expires_in = None if expires_at is None else max(0, round(expires_at - self._clock()))
        return ExchangeResult(response.access_token, response.issued_token_type, expires_in)

    def forget_access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> None:
        """Drop the cached access token of the user (the partner answered 401 to it: revoked or expired)."""
        self._cache.invalidate(self._key(user_id, tenant_id, scope))

    async def connect_token(self, user_id: str, tenant_id: str, app: str, scope: str | None = None) -> ExchangeResult:
        """A fresh single-use connect token for `app`, with the Connect URL that carries it."""
        s = self.settings
        scope = normalise_scope(scope or CONNECT_SCOPE)  # only what Connect needs, not the access token's scope
        resource = resource_url(app, s.connect_url)
        if s.connect_from == "jwt":
            extra = {"resource": resource}
            build = self._jwt_form(user_id, tenant_id, scope, s.connect_token_type, extra)
            response = await self._partner.exchange(build, s.connect_token_type)
        else:
            response = await self._connect_from_access(user_id, tenant_id, scope, resource)
        url = connect_url(app, response.access_token, template=self.settings.connect_url)
        return ExchangeResult(response.access_token, response.issued_token_type, response.expires_in, url)

    async def aclose(self) -> None:
        """Close the token endpoint's HTTP client if this exchanger created it."""
        if self._owns_endpoint:
            await self._partner.aclose()

    async def __aenter__(self) -> TokenExchanger:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _key(self, user_id: str, tenant_id: str, scope: str | None) -> CacheKey:
        return (user_id, tenant_id, normalise_scope(scope or self.settings.scope), self.settings.audience)

    async def _access(self, user_id: str, tenant_id: str, scope: str | None) -> tuple[TokenResponse, float | None]:
        key = self._key(user_id, tenant_id, scope)

        async def fetch() -> tuple[tuple[TokenResponse, float | None], float | None]:
            started = self._clock()
            response = await self._partner.exchange(
                self._jwt_form(user_id, tenant_id, key[2], self.settings.access_token_type),
                self.settings.access_token_type,
            )
            if response.expires_in is None:
                return (response, None), None  # no stated lifetime: never reuse it
            expires_at = started + response.expires_in
            return (response, expires_at), expires_at - self.settings.cache_margin

        return await self._cache.get(key, fetch)

    async def _connect_from_access(self, user_id: str, tenant_id: str, scope: str, resource: str) -> TokenResponse:
        for attempt in (1, 2):
            access, _ = await self._access(user_id, tenant_id, None)  # the configured scope's access token
            form = {
                "subject_token": access.access_token,
                "subject_token_type": self.settings.access_token_type,
                "requested_token_type": self.settings.connect_token_type,
                "scope": scope,
                "resource": resource,
            }
            try:
                return await self._partner.exchange(_fixed(form), self.settings.connect_token_type)
            except PartnerError as exc:
                if exc.code != "invalid_grant" or attempt == 2:
                    raise
                # The cached access token may have been revoked upstream: once, start from a new one.
                self._cache.invalidate(self._key(user_id, tenant_id, None))
        raise AssertionError("unreachable")

    def _jwt_form(
        self, user_id: str, tenant_id: str, scope: str, requested: str, extra: dict[str, str] | None = None
    ) -> Callable[[], Awaitable[dict[str, str]]]:
        async def build() -> dict[str, str]:
            # A fresh JWT (new jti, new exp) for every attempt, so a retry is never a replay.
            signed = await self._signer.sign(
                self.partner_claims(user_id, tenant_id), self.settings.jwt_ttl, self.settings.keyset
            )
            return {
                "subject_token": signed.token,
                "subject_token_type": self.settings.subject_token_type,
                "requested_token_type": requested,
                "scope": scope,
                **(extra or {}),
            }

        return build


def _fixed(form: dict[str, str]) -> Callable[[], Awaitable[dict[str, str]]]:
    """A form builder for a form that does not change between attempts (no JWT to refresh)."""

    async def build() -> dict[str, str]:
        return form

    return build
