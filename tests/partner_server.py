"""A local RFC 8693 token server that behaves as Zapier's token endpoint is documented to, for the tests.

It verifies the partner JWT the way a partner does: fetches the partner's JWKS over HTTP with PyJWT's
`PyJWKClient`, picks the key by `kid`, checks the signature (RS/ES 256/384/512 only), `iss`, `aud`, `exp`
(no more than 5 minutes after `iat`), `nbf`, and requires sub/iss/aud/iat/nbf/exp and the tenant claim.
It authenticates the client (client_secret_post or client_secret_basic, whichever it is told to expect),
answers RFC 8693 responses, counts calls, and can be switched into error modes.

    POST /oauth/token
      subject_token_type = external-jwt  -> JWT verified as above
      subject_token_type = access-token  -> an access token this server issued
      requested_token_type = access-token                      -> {"access_token": "at-N", ...}
      requested_token_type = connect-token (resource required) -> {"access_token": "ct-N", ...}

Error modes (`PartnerState.mode`, for `failures` calls then back to "ok"; None = forever):
    invalid_client  401 invalid_client           rate_limited  429 with Retry-After
    unavailable     503 with Retry-After         server_error  500
    invalid_grant   400 invalid_grant
A slow partner: `PartnerState.delay` seconds before every answer.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import jwt
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512"]
MAX_JWT_LIFETIME = 300
EXTERNAL_JWT = "urn:ietf:params:oauth:token-type:external-jwt"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access-token"
CONNECT_TOKEN = "urn:ietf:params:oauth:token-type:connect-token"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"


@dataclass(frozen=True)
class Grant:
    """Who an issued token is for."""

    sub: str
    tenant: str
    scope: str
    token_type: str = ""  # set when issued (_issue), read by the Partner API fake
    expires_at: float = 0.0  # epoch seconds, set when issued


@dataclass
class PartnerState:
    """What the partner expects and how it behaves; tests change it between calls."""

    jwks_url: str
    issuer: str
    audience: str = "connect.zapier.com"
    tenant_claim: str = "org_id"
    client_id: str = "keysvc-test-client"
    client_secret: str = "s3cr3t/with+special&chars"
    client_auth: str = "client_secret_post"
    scopes: frozenset[str] = frozenset(
        {"external", "connection:read", "connection:write", "zap", "zap:write", "action:run"}
    )
    connect_prefix: str = "https://connect.zapier.com/to/"
    access_expires_in: int = 3600
    connect_expires_in: int = 360
    mode: str = "ok"
    failures: int | None = None
    retry_after: str = "1"
    delay: float = 0.0
    calls: list[dict[str, str]] = field(default_factory=list)
    issued: dict[str, Grant] = field(default_factory=dict)
    _counter: itertools.count[int] = field(default_factory=itertools.count)

    def reset(self) -> None:
        """Back to normal behaviour and zero counts (the JWKS client keeps its cache, as a partner's does)."""
        self.mode, self.failures, self.retry_after, self.delay = "ok", None, "1", 0.0
        self.client_auth, self.access_expires_in = "client_secret_post", 3600
        self.calls.clear()
        self.issued.clear()

    def calls_for(self, requested_token_type: str) -> int:
        """How many requests asked for this token type."""
        return sum(1 for c in self.calls if c.get("requested_token_type") == requested_token_type)


def oauth_error(status: int, error: str, description: str = "", **headers: str) -> JSONResponse:
    """An RFC 6749 §5.2 error response."""
    body = {"error": error, **({"error_description": description} if description else {})}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **headers})


class PartnerServer:
    """The token endpoint; `app()` is what uvicorn serves."""

    def __init__(self, state: PartnerState) -> None:
        self.state = state
        self.jwks = jwt.PyJWKClient(state.jwks_url, cache_keys=False, lifespan=300, timeout=5)

    def trust(self, jwks_url: str, issuer: str) -> None:
        """Verify JWTs from `issuer` against the JWKS at `jwks_url` from now on (a fresh JWKS cache)."""
        self.state.jwks_url, self.state.issuer = jwks_url, issuer
        self.jwks = jwt.PyJWKClient(jwks_url, cache_keys=False, lifespan=300, timeout=5)

    def app(self) -> Starlette:
        """The ASGI app: POST /oauth/token."""
        return Starlette(routes=[Route("/oauth/token", self.token, methods=["POST"])])

    async def token(self, request: Request) -> JSONResponse:
        """One RFC 8693 exchange."""
        st = self.state
        if request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return oauth_error(400, "invalid_request", "the body must be form-encoded")
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        st.calls.append({k: v for k, v in form.items() if k not in ("client_secret", "subject_token")})
        if st.delay:
            await asyncio.sleep(st.delay)
        failure = self._failure()
        if failure is not None:
            return failure
        if not self._client_ok(request, form):
            return oauth_error(401, "invalid_client", "client authentication failed", **{"WWW-Authenticate": "Basic"})
        if form.get("grant_type") != GRANT_TYPE:
            return oauth_error(400, "unsupported_grant_type")
        try:
            grant = await self._subject(form)
        except ValueError as exc:
            return oauth_error(400, "invalid_grant", str(exc))
        scope = form.get("scope", "")
        if not scope or not set(scope.split()) <= st.scopes:
            return oauth_error(400, "invalid_scope", f"unknown scope in {scope!r}")
        requested = form.get("requested_token_type")
        if requested == ACCESS_TOKEN:
            return self._issue("at", Grant(grant.sub, grant.tenant, scope), ACCESS_TOKEN, st.access_expires_in)
        if requested == CONNECT_TOKEN:
            resource = form.get("resource", "")
            if not resource.startswith(st.connect_prefix) or len(resource) == len(st.connect_prefix):
                return oauth_error(400, "invalid_target", "resource must be a Connect URL")
            return self._issue("ct", grant, CONNECT_TOKEN, st.connect_expires_in)
        return oauth_error(400, "invalid_request", "unsupported requested_token_type")

    def _failure(self) -> JSONResponse | None:
        st = self.state
        if st.mode == "ok" or st.failures == 0:
            return None
        if st.failures is not None:
            st.failures -= 1
        retry = {"Retry-After": st.retry_after}
        return {
            "invalid_client": oauth_error(401, "invalid_client", "client authentication failed"),
            "rate_limited": oauth_error(429, "slow_down", "too many requests", **retry),
            "unavailable": oauth_error(503, "temporarily_unavailable", "maintenance", **retry),
            "server_error": oauth_error(500, "server_error"),
            "invalid_grant": oauth_error(400, "invalid_grant", "subject token rejected"),
        }[st.mode]

    def _client_ok(self, request: Request, form: dict[str, str]) -> bool:
        st = self.state
        header = request.headers.get("authorization", "")
        if st.client_auth == "client_secret_basic":
            if "client_secret" in form or not header.startswith("Basic "):
                return False
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (unquote_plus(user), unquote_plus(password)) == (st.client_id, st.client_secret)
        if header:
            return False
        return (form.get("client_id"), form.get("client_secret")) == (st.client_id, st.client_secret)

    async def _subject(self, form: dict[str, str]) -> Grant:
        token, kind = form.get("subject_token", ""), form.get("subject_token_type")
        if kind == EXTERNAL_JWT:
            claims = await run_in_threadpool(self.verify_jwt, token)
            return Grant(claims["sub"], claims[self.state.tenant_claim], "")
        if kind == ACCESS_TOKEN and token in self.state.issued:
            return self.state.issued[token]
        raise ValueError(f"unsupported or unknown subject token ({kind})")

    def verify_jwt(self, token: str) -> dict[str, Any]:
        """Verify as a partner: key by kid from the JWKS URL, every check explicit. ValueError if bad."""
        st = self.state
        try:
            if not jwt.get_unverified_header(token).get("kid"):
                raise ValueError("the JWT has no kid header")
            key = self.jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=st.audience,
                issuer=st.issuer,
                leeway=5,
                options={
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "require": ["sub", "iss", "aud", "iat", "nbf", "exp", st.tenant_claim],
                },
            )
        except jwt.PyJWTError as exc:  # PyJWKClientError is one too
            raise ValueError(f"JWT rejected: {exc}") from None
        if claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME:
            raise ValueError("JWT rejected: exp is more than 5 minutes after iat")
        return claims

    def _issue(self, prefix: str, grant: Grant, token_type: str, expires_in: int) -> JSONResponse:
        token = f"{prefix}-{next(self.state._counter)}"
        self.state.issued[token] = replace(grant, token_type=token_type, expires_at=time.time() + expires_in)
        body = {
            "access_token": token,
            "issued_token_type": token_type,
            "token_type": "Bearer" if token_type == ACCESS_TOKEN else "N_A",
            "expires_in": expires_in,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
