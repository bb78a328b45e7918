"""The clients' token endpoint over httpx: one RFC 8693 exchange, client authentication, bounded retries
(keysvc.client.retry), and the mapping of the partner's answers onto keysvc's errors (keysvc.client.oauth,
shared with the server's aiohttp way out, keysvc.partner.outbound).

    partner says                                  we answer
    2xx with access_token                         TokenResponse
    invalid_client (any status)                   502 upstream_error: OUR credentials are wrong
    unauthorized_client, unsupported_grant_type   502 upstream_error: our registration is wrong
    400 invalid_request/_grant/_target/_scope     400 with the partner's code (PartnerError)
    401, 403, access_denied                       403 with the partner's code (PartnerError)
    429, 503 (after retries)                      503 unavailable, Retry-After
    other 5xx, other 4xx, malformed 2xx           502 upstream_error
    timeout, connection failure                   503 unavailable, Retry-After
    an answer over 4 MiB (declared or streamed)   502 upstream_error, nothing more of it read
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import logging
import time
from collections.abc import Awaitable, Callable

import httpx

from keysvc.client.oauth import (
    Answer,
    AnswerTooLarge,
    ExchangeObserver,
    FormBuilder,
    NullObserver,
    TokenResponse,
    read_bounded,
    token_form,
    token_outcome,
    too_large,
)
from keysvc.client.retry import Failure, with_retries
from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import Unavailable

log = logging.getLogger("keysvc.exchange")


def token_endpoint_client() -> httpx.AsyncClient:
    """The HTTP client of the exchanges: no redirects followed (the client secret and the user's JWT go to
    `token_url` only) and no cookie stored, so a cookie set on one user's exchange never rides on another's."""
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(follow_redirects=False, cookies=no_cookies)


class PartnerClient:
    """Posts exchange requests to `settings.token_url` over httpx; retries 429/5xx/timeouts within
    `total_timeout` (a `TokenEndpoint` of keysvc.client.exchanger)."""

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

        async def attempt(deadline: float) -> TokenResponse | Failure:
            form = await build_form()
            return await self._attempt(form, requested_type, deadline)

        s = self._settings
        return await with_retries(attempt, tries=s.max_attempts, total_timeout=s.total_timeout, clock=self._clock,
                                  sleep=self._sleep, backoff=self._backoff, observe=self._observer.upstream,
                                  failed=_warn)

    async def aclose(self) -> None:
        """Close the httpx client."""
        await self._client.aclose()

    async def _attempt(self, form: dict[str, str], requested_type: str, deadline: float) -> TokenResponse | Failure:
        """One request: the answer, or why it failed and whether trying again may help."""
        remaining = deadline - self._clock()
        try:
            async with asyncio.timeout(remaining):
                status, retry_after, content = await self._post(form, remaining)
        except AnswerTooLarge:
            return too_large("the partner's token endpoint")
        except (httpx.TimeoutException, TimeoutError):
            return Failure(Unavailable("the partner's token endpoint timed out", retry_after=1), True, "timeout")
        except httpx.TransportError as exc:
            kind = type(exc).__name__
            unreachable = Unavailable(f"the partner's token endpoint is unreachable ({kind})", retry_after=1)
            return Failure(unreachable, True, "unreachable")
        return token_outcome(Answer(status, retry_after, content), requested_type)

    async def _post(self, form: dict[str, str], remaining: float) -> tuple[int, str | None, bytes]:
        """Status, Retry-After and body; AnswerTooLarge past MAX_ANSWER bytes (declared or streamed)."""
        s = self._settings
        data, headers = token_form(s, form)
        timeout = httpx.Timeout(
            connect=min(s.connect_timeout, remaining),
            read=min(s.read_timeout, remaining),
            write=min(s.read_timeout, remaining),
            pool=min(s.connect_timeout, remaining),
        )
        request = self._client.build_request("POST", s.token_url, data=data, headers=headers, timeout=timeout)
        response = await self._client.send(request, stream=True)
        try:
            content = await read_bounded(response.headers.get("Content-Length"), response.aiter_bytes())
            return response.status_code, response.headers.get("Retry-After"), content
        finally:
            await response.aclose()


def _warn(attempt: int, failure: Failure) -> None:
    log.warning("token exchange attempt %d failed: %s", attempt, failure.error.description)
