"""The server's ONE way out to the partner: one aiohttp session per replica (opened on the first call) for
every partner base URL (the token endpoint, the Partner API, next the Trigger Inbox API), one mapping of
transport failures onto keysvc's errors, and the one retry loop (keysvc.client.retry).

    http = PartnerHttp()
    answer = await http.send("GET", api_url + "/v2/authentications", headers=..., params=..., body=None,
                             connect=2.0, read=5.0)
    answer.status, answer.retry_after, answer.content      (keysvc.client.oauth.Answer, the body read whole)
    outcome = await http.attempt(what, "GET", url, ..., deadline=..., connect=..., read=...)  # Answer | Failure
    endpoint = AiohttpTokenEndpoint(settings, http, observer=...)   # the token endpoint (a TokenEndpoint)
    await http.aclose()

aiohttp, not httpx: httpx's client cost about 1 ms of keysvc's CPU per Partner API call on the
reference machine, aiohttp about a quarter of it, and the gateway makes one call per request.

What the session never does: store or send a cookie (the Partner API is bearer-token based, and a cookie
one user's call received must never ride on another user's call), follow a redirect (a 3xx is an
answer, and the token goes to `api_url` only), or hold an answer over MAX_ANSWER bytes (AnswerTooLarge,
declared or streamed: nothing more is read). What it keeps from the service's httpx clients: the same
TLS trust (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else certifi's bundle), the proxy the environment names for
each URL's host (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; read once per base URL, not per
call), idle connections closed after 5 s. The session never sends a header of its own choosing that
carries a secret: the caller passes the Authorization header (Bearer for the APIs, client authentication
for the token endpoint), and it goes to the URL the caller names only.

Timeouts per call: `connect` bounds waiting for a pooled connection and opening one, `read` each wait
for the partner's bytes once the request is sent; the caller bounds the whole call by its deadline, which
is also what bounds writing a body (aiohttp has no per-write timeout; bodies are at most about the 64 KiB
the internal listener accepts).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp

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
from keysvc.partner.budget import COOLDOWN_WITHOUT_RETRY_AFTER, Budget, BudgetObserver, admit
from keysvc.tls import outbound_context

KEEPALIVE = 5.0  # seconds an idle connection is kept: httpx's default, below common server idle timeouts


log = logging.getLogger("keysvc.exchange")


class PartnerHttp:
    """Requests to the partner over one pooled session (see the module docstring)."""

    def __init__(self, *, keepalive: float = KEEPALIVE) -> None:
        self._keepalive = keepalive
        self._proxies: dict[str, str | None] = {}
        self._session: aiohttp.ClientSession | None = None
        self.is_closed = False

    def __repr__(self) -> str:
        return f"PartnerHttp(open={self._session is not None})"

    async def send(self, method: str, url: str, *, headers: Mapping[str, str],
                   params: Mapping[str, str] | None = None, body: bytes | Mapping[str, str] | None = None,
                   connect: float, read: float) -> Answer:
        """One request; aiohttp's errors (TimeoutError, aiohttp.ClientError) and AnswerTooLarge pass
        through (`attempt` maps them). A mapping body is sent form-urlencoded, bytes as they are."""
        timeout = aiohttp.ClientTimeout(connect=connect, sock_read=read)
        async with self._open().request(method, url, params=params, data=body, headers=headers,
                                        timeout=timeout, allow_redirects=False, proxy=self._proxy(url)) as response:
            content = await read_bounded(response.content_length, response.content.iter_any())
        return Answer(response.status, response.headers.get("Retry-After"), content)

    async def attempt(self, what: str, method: str, url: str, *, headers: Mapping[str, str],
                      params: Mapping[str, str] | None = None, body: bytes | Mapping[str, str] | None = None,
                      deadline: float, connect: float, read: float,
                      clock: Callable[[], float] = time.monotonic) -> Answer | Failure:
        """One request bounded by `deadline`, transport failures mapped (the one table of them): a timeout
        or an unreachable partner is 503 and worth retrying, an answer over 4 MiB is 502 and is not.
        `what` names the partner end in the error ("the Zapier Partner API")."""
        remaining = max(0.001, deadline - clock())
        try:
            async with asyncio.timeout(remaining):
                return await self.send(method, url, headers=headers, params=params, body=body,
                                       connect=min(connect, remaining), read=min(read, remaining))
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors too
            return Failure(Unavailable(f"{what} timed out", retry_after=1), True, "timeout")
        except aiohttp.ClientError as exc:
            return Failure(Unavailable(f"{what} is unreachable ({type(exc).__name__})", retry_after=1), True,
                           "unreachable")
        except AnswerTooLarge:
            return too_large(what)

    async def aclose(self) -> None:
        """Close the session and its connections (a no-op if no call was made)."""
        self.is_closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        # Opened inside the event loop that serves the calls, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=outbound_context(), keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _proxy(self, url: str) -> str | None:
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]  # scheme://host[:port], read from the environment once
        if origin not in self._proxies:
            self._proxies[origin] = env_proxy(url)
        return self._proxies[origin]


class AiohttpTokenEndpoint:
    """The partner's token endpoint over the server's one session: keysvc.client.oauth's form, answer and
    error rules (the same as the clients' httpx PartnerClient), retries of 429/5xx/timeouts within
    `total_timeout` through the one retry loop. A `TokenEndpoint` of keysvc.client.exchanger.

    With a `budget` (the Partner API's), every attempt asks it first: a token exchange waits out a 429's
    cooldown like any other call to Zapier (nothing goes to Zapier during one) and counts against the
    per-minute budget; a 429 of the token endpoint starts the cooldown too."""

    def __init__(
        self,
        settings: TokenExchangeSettings,
        http: PartnerHttp,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ExchangeObserver | None = None,
        backoff: float = 0.25,
        budget: Budget | None = None,
        budget_observer: BudgetObserver | None = None,
    ) -> None:
        self._settings = settings
        self._http = http
        self._budget = budget
        self._budget_observer = budget_observer
        self._clock = clock
        self._sleep = sleep
        self._observer = observer or NullObserver()
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"AiohttpTokenEndpoint({self._settings.token_url!r})"

    async def exchange(self, build_form: FormBuilder, requested_type: str) -> TokenResponse:
        """Run one exchange. `build_form` is called per attempt, so every attempt carries a fresh JWT."""
        s = self._settings

        async def attempt(deadline: float) -> TokenResponse | Failure:
            data, headers = token_form(s, await build_form())
            answer = await self._http.attempt("the partner's token endpoint", "POST", s.token_url,
                                              headers=headers, body=data, deadline=deadline,
                                              connect=s.connect_timeout, read=s.read_timeout, clock=self._clock)
            if isinstance(answer, Failure):
                return answer
            outcome = token_outcome(answer, requested_type)
            if answer.status == 429 and self._budget is not None and isinstance(outcome, Failure):
                await self._budget.cool_down(float(outcome.error.retry_after or COOLDOWN_WITHOUT_RETRY_AFTER))
            return outcome

        return await with_retries(attempt, tries=s.max_attempts, total_timeout=s.total_timeout, clock=self._clock,
                                  sleep=self._sleep, backoff=self._backoff, observe=self._observer.upstream,
                                  failed=_warn, admit=None if self._budget is None else self._admit)

    async def _admit(self, deadline: float) -> None:
        assert self._budget is not None  # nosec B101 - only passed when there is one
        await admit(self._budget, deadline, clock=self._clock, sleep=self._sleep,
                    observer=self._budget_observer or _NoBudgetObserver())

    async def aclose(self) -> None:
        """The session is the service's (closed by the feature that opened it): nothing of its own."""


class _NoBudgetObserver:
    def budget(self, result: str, kind: str = "local") -> None:
        """Drop it."""


def _warn(attempt: int, failure: Failure) -> None:
    log.warning("token exchange attempt %d failed: %s", attempt, failure.error.description)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, as httpx reads it: `<scheme>_PROXY`, else `ALL_PROXY`;
    none for a host `NO_PROXY` covers."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")
