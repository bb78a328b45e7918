"""One RFC 8693 exchange at the partner's token endpoint: client authentication, bounded retries, and the
mapping of the partner's answers onto keysvc's errors.

    partner says                                  we answer
    2xx with access_token                         TokenResponse
    invalid_client (any status)                   502 upstream_error: OUR credentials are wrong
    unauthorized_client, unsupported_grant_type   502 upstream_error: our registration is wrong
    400 invalid_request/_grant/_target/_scope     400 with the partner's code (PartnerError)
    401, 403, access_denied                       403 with the partner's code (PartnerError)
    429, 503 (after retries)                      503 unavailable, Retry-After
    other 5xx, other 4xx, malformed 2xx           502 upstream_error
    timeout, connection failure                   503 unavailable, Retry-After
"""

from __future__ import annotations

import asyncio
import base64
import http.cookiejar
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote_plus

import httpx

from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import RequestError, Unavailable, UpstreamError
from keysvc.exchange.errors import PartnerError, json_object, oauth_code, oauth_text, parse_retry_after

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
RETRYABLE = frozenset({429, 500, 502, 503, 504})
CALLER_CODES = frozenset({"invalid_request", "invalid_grant", "invalid_target", "invalid_scope"})
CONFIG_CODES = frozenset({"unauthorized_client", "unsupported_grant_type"})
DEFAULT_RETRY_AFTER = 5
MAX_BACKOFF = 5.0

log = logging.getLogger("keysvc.exchange")


def token_endpoint_client() -> httpx.AsyncClient:
    """The HTTP client of the exchanges: no redirects followed (the client secret and the user's JWT go to
    `token_url` only) and no cookie stored, so a cookie set on one user's exchange never rides on another's."""
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(follow_redirects=False, cookies=no_cookies)


FormBuilder = Callable[[], Awaitable[dict[str, str]]]


@dataclass(frozen=True)
class TokenResponse:
    """The partner's successful answer (RFC 8693 §2.2.1); `expires_in` is None when not given."""

    access_token: str = field(repr=False)
    issued_token_type: str
    expires_in: int | None


class ExchangeObserver(Protocol):
    """Where the exchange reports what it does (keysvc feeds Prometheus; the default drops it)."""

    def upstream(self, outcome: str, seconds: float) -> None:
        """One request to the partner: outcome ok|rejected|denied|upstream_error|unavailable|timeout|
        unreachable, and its latency."""

    def cache(self, result: str) -> None:
        """One access-token cache lookup: hit|miss|joined (waited for a request already in flight)."""


class NullObserver:
    """Reports nothing."""

    def upstream(self, outcome: str, seconds: float) -> None:
        """Drop it."""

    def cache(self, result: str) -> None:
        """Drop it."""


@dataclass(frozen=True)
class _Failure:
    error: RequestError
    retryable: bool
    label: str


class PartnerClient:
    """Posts exchange requests to `settings.token_url`; retries 429/5xx/timeouts within `total_timeout`."""

    def __init__(
        self,
        settings: TokenExchangeSettings,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ExchangeObserver | None = None,
        backoff: float = 0.25,
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self._sleep = sleep
        self._observer = observer or NullObserver()
        self._backoff = backoff

    async def exchange(self, build_form: FormBuilder, requested_type: str) -> TokenResponse:
        """Run one exchange. `build_form` is called per attempt, so every attempt carries a fresh JWT."""
        deadline = self._clock() + self._settings.total_timeout
        for attempt in range(1, self._settings.max_attempts + 1):
            form = await build_form()
            started = time.perf_counter()
            outcome = await self._attempt(form, requested_type, deadline)
            label = outcome.label if isinstance(outcome, _Failure) else "ok"
            self._observer.upstream(label, time.perf_counter() - started)
            if isinstance(outcome, TokenResponse):
                return outcome
            log.warning("token exchange attempt %d failed: %s", attempt, outcome.error.description)
            delay = max(float(outcome.error.retry_after or 0), self._pause(attempt))
            last = attempt == self._settings.max_attempts or self._clock() + delay >= deadline
            if last or not outcome.retryable:
                raise outcome.error
            await self._sleep(delay)
        raise AssertionError("unreachable: max_attempts >= 1")

    async def _attempt(self, form: dict[str, str], requested_type: str, deadline: float) -> TokenResponse | _Failure:
        """One request: the answer, or why it failed and whether trying again may help."""
        remaining = deadline - self._clock()
        try:
            async with asyncio.timeout(remaining):
                response = await self._post(form, remaining)
        except (httpx.TimeoutException, TimeoutError):
            return _Failure(Unavailable("the partner's token endpoint timed out", retry_after=1), True, "timeout")
        except httpx.TransportError as exc:
            kind = type(exc).__name__
            unreachable = Unavailable(f"the partner's token endpoint is unreachable ({kind})", retry_after=1)
            return _Failure(unreachable, True, "unreachable")
        error: RequestError
        try:
            if response.is_success:
                return token_response(response, requested_type)
            error = partner_error(response)
        except RequestError as exc:
            error = exc
        label = {400: "rejected", 403: "denied"}.get(error.status, error.code)
        return _Failure(error, response.status_code in RETRYABLE, label)

    def _pause(self, attempt: int) -> float:
        # Jitter spreads replicas' retries apart; it is not a security decision.
        jitter = random.uniform(0.5, 1.0)  # noqa: S311  # nosec B311 - retry jitter, not a secret
        return min(self._backoff * 2.0 ** (attempt - 1), MAX_BACKOFF) * jitter

    async def _post(self, form: dict[str, str], remaining: float) -> httpx.Response:
        s = self._settings
        data = {"grant_type": GRANT_TYPE, **form}
        headers = {"Accept": "application/json"}
        if s.client_auth == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
            pair = f"{quote_plus(s.client_id)}:{quote_plus(s.client_secret.reveal())}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            data |= {"client_id": s.client_id, "client_secret": s.client_secret.reveal()}
        timeout = httpx.Timeout(
            connect=min(s.connect_timeout, remaining),
            read=min(s.read_timeout, remaining),
            write=min(s.read_timeout, remaining),
            pool=min(s.connect_timeout, remaining),
        )
        return await self._client.post(s.token_url, data=data, headers=headers, timeout=timeout)


def token_response(response: httpx.Response, requested_type: str) -> TokenResponse:
    """Read a 2xx answer; anything malformed is the partner's fault (502)."""
    body = json_object(response)
    token = body.get("access_token")
    issued = body.get("issued_token_type", requested_type)
    expires_in = body.get("expires_in")
    if not isinstance(token, str) or not token or not isinstance(issued, str):
        raise UpstreamError(f"the partner answered HTTP {response.status_code} without an access_token")
    if expires_in is not None and (not isinstance(expires_in, int) or isinstance(expires_in, bool)):
        raise UpstreamError("the partner answered with a non-integer expires_in")
    return TokenResponse(token, issued, None if expires_in is None else max(0, expires_in))


def partner_error(response: httpx.Response) -> RequestError:
    """Map a non-2xx answer onto keysvc's errors (table in the module docstring)."""
    body = json_object(response)
    status = response.status_code
    code = oauth_code(body.get("error"))
    said = oauth_text(body.get("error_description"))
    detail = f"{code}: {said}" if code and said else code or f"HTTP {status}"
    if code == "invalid_client":
        return UpstreamError(
            "the partner rejected keysvc's own client credentials (invalid_client); the caller is not at "
            "fault: check token_exchange.client_id, the client secret and client_auth"
        )
    if code in CONFIG_CODES:
        return UpstreamError(f"the partner refuses keysvc's client registration ({detail})")
    if status == 400 and code in CALLER_CODES:
        return PartnerError(400, code, f"the partner refused the exchange ({detail})")
    if status in (401, 403) or code == "access_denied":
        return PartnerError(403, code or "access_denied", f"the partner denied the exchange ({detail})")
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("Retry-After")) or DEFAULT_RETRY_AFTER
        return Unavailable(f"the partner's token endpoint is busy ({detail})", retry_after=retry_after)
    if status >= 500:
        return UpstreamError(f"the partner's token endpoint failed ({detail})")
    return UpstreamError(f"the partner's token endpoint answered an unexpected error ({detail})")
