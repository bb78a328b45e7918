"""Who signs the partner JWT: a `TokenSigner`. keysvc itself signs in-process over its keyring
(keysvc.partner.keyring_signer.KeyringSigner);
any other service calls keysvc's `POST /v1/sign` through `RemoteSigner` and never holds a private key.

A signer sets `iss`, `iat`, `nbf` (= iat), `exp`, `jti` and the `kid` header; callers pass the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Protocol

import httpx

from keysvc.client.oauth import json_object, oauth_text, parse_retry_after
from keysvc.config import Secret
from keysvc.errors import Forbidden, InvalidRequest, RateLimited, RequestError, Unavailable, UpstreamError
from keysvc.records import SignedToken


class TokenSigner(Protocol):
    """Signs claims with the active key of a keyset (the client's only keyset when None)."""

    async def sign(self, claims: Mapping[str, Any], ttl: int, keyset: str | None = None) -> SignedToken: ...


# keysvc's own answers, by status; 401 is handled apart (it is this service's API key that is wrong).
_SIGN_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequest,
    403: Forbidden,
    429: RateLimited,
    503: Unavailable,
}


class RemoteSigner:
    """A `TokenSigner` that asks a keysvc over HTTP (`POST {base_url}/v1/sign`, Bearer API key)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | Secret,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._url = base_url.rstrip("/") + "/v1/sign"
        self._api_key = api_key if isinstance(api_key, Secret) else Secret(api_key)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:
        return f"RemoteSigner({self._url!r})"

    async def sign(self, claims: Mapping[str, Any], ttl: int, keyset: str | None = None) -> SignedToken:
        """Sign through keysvc; keysvc's errors come back as the same keysvc error classes."""
        body: dict[str, Any] = {"claims": dict(claims), "ttl": ttl}
        if keyset is not None:
            body["keyset"] = keyset
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}", "Accept": "application/json"}
        try:
            response = await self._client.post(self._url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"keysvc {self._url} unreachable ({type(exc).__name__})", retry_after=1) from None
        if response.status_code == 200:
            return _signed_token(response)
        raise _sign_error(response)

    async def aclose(self) -> None:
        """Close the HTTP client if this signer created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> RemoteSigner:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _signed_token(response: httpx.Response) -> SignedToken:
    body = json_object(response.content)
    token, kid, alg, expires_at = (body.get(k) for k in ("token", "kid", "alg", "expires_at"))
    if not (isinstance(token, str) and token and isinstance(kid, str) and isinstance(alg, str)):
        raise UpstreamError("keysvc /v1/sign answered 200 without token, kid and alg")
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        raise UpstreamError("keysvc /v1/sign answered 200 without an integer expires_at")
    return SignedToken(token, kid, alg, expires_at)


def _sign_error(response: httpx.Response) -> RequestError:
    body = json_object(response.content)
    status = response.status_code
    text = oauth_text(body.get("error_description")) or f"HTTP {status}"
    if status == 401:
        return UpstreamError("keysvc rejected this service's API key (invalid_client); check its configuration")
    error_class = _SIGN_ERRORS.get(status)
    if error_class is None:
        return UpstreamError(f"keysvc /v1/sign failed: {text}")
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if error_class in (RateLimited, Unavailable):
        return error_class(f"keysvc /v1/sign: {text}", retry_after=retry_after or 1)
    return error_class(f"keysvc /v1/sign: {text}")
