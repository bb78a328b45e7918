"""The HTTP client of Zapier's Partner API (`token_exchange.api_url`): the budget asked before every request,
bounded retries of reads, envelope handling, and the mapping of the partner's errors onto keysvc's.

    partner says                         we answer
    2xx JSON object (or [object])        the object
    400, 422                             400 invalid_request, the partner's detail sanitised
    401                                  PartnerUnauthorized (502): the gateway drops the token, tries once more
    403 / 404 / 409                      403 forbidden / 404 not_found / 409 conflict
    429                                  503 unavailable + Retry-After; the budget cools down until then
    503, timeout, unreachable            503 unavailable + Retry-After (reads retried first)
    other 5xx, other 4xx, malformed 2xx  502 upstream_error (reads retried first on 5xx)

A read (`retry=True`: GETs, and the POSTs that only read, inputs and choices) is tried up to
`max_attempts` times within `total_timeout`. Creating an action run is tried once: a second POST could
run the action twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RequestError,
    Unavailable,
    UpstreamError,
)
from keysvc.exchange.errors import oauth_text, parse_retry_after
from keysvc.zapier.budget import ApiBudget, Refused
from keysvc.zapier.partner_http import Answer, AnswerTooLarge, PartnerHttp

RETRYABLE = frozenset({500, 502, 503, 504})
DEFAULT_RETRY_AFTER = 5
MAX_BACKOFF = 5.0
MAX_BUDGET_WAIT = 5.0  # the longest a request waits for a token of the budget before answering 503
BEARER = re.compile(r"[\x21-\x7e]+")  # visible ASCII (RFC 6750's b64token is a subset): safe in a header

log = logging.getLogger("keysvc.zapier")

_STATUS_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequest, 422: InvalidRequest, 403: Forbidden, 404: NotFound, 409: Conflict,
}  # fmt: skip
_OUTCOMES = {400: "rejected", 422: "rejected", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             409: "conflict", 429: "throttled", 503: "unavailable"}  # fmt: skip


class PartnerUnauthorized(UpstreamError):
    """The partner refused the user's access token (401): revoked or expired early."""


class ApiObserver(Protocol):
    """Where the client reports what it does (keysvc feeds Prometheus; the default drops it)."""

    def call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One request: our fixed endpoint name, its outcome and latency."""

    def budget(self, result: str) -> None:
        """The budget made a request wait (`waited`) or refused it (`refused`, `cooling` after a 429)."""


class NullApiObserver:
    """Reports nothing."""

    def call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Drop it."""

    def budget(self, result: str) -> None:
        """Drop it."""


@dataclass(frozen=True)
class _Failure:
    error: RequestError
    retryable: bool
    outcome: str


class PartnerApi:
    """Requests to the Partner API for one replica, within one `ApiBudget`."""

    def __init__(
        self,
        settings: TokenExchangeSettings,
        http: PartnerHttp,
        budget: ApiBudget,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ApiObserver | None = None,
        backoff: float = 0.25,
    ) -> None:
        self._settings = settings
        self._http = http
        self._budget = budget
        self._clock = clock
        self._sleep = sleep
        self._observer = observer or NullApiObserver()
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"PartnerApi({self._http!r}, {self._budget!r})"

    async def get(self, endpoint: str, path: str, token: str,
                  params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET a JSON object; retried."""
        return await self.request("GET", endpoint, path, token, params=params, retry=True)

    async def post(self, endpoint: str, path: str, token: str, body: Mapping[str, Any], *, retry: bool,
                   params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST a JSON body; retried only when `retry` (the call reads, it changes nothing)."""
        return await self.request("POST", endpoint, path, token, params=params, body=body, retry=retry)

    async def request(self, method: str, endpoint: str, path: str, token: str, *, retry: bool,
                      params: Mapping[str, str] | None = None, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One call, with its retries; `endpoint` is our fixed name for it (metrics, logs)."""
        deadline = self._clock() + self._settings.total_timeout
        attempts = self._settings.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            await self._admit(deadline)
            started = time.perf_counter()
            outcome = await self._attempt(method, path, token, params, body, deadline)
            label = outcome.outcome if isinstance(outcome, _Failure) else "ok"
            self._observer.call(endpoint, label, time.perf_counter() - started)
            if not isinstance(outcome, _Failure):
                return outcome
            log.warning("partner API call failed", extra={
                "endpoint": endpoint, "attempt": attempt, "outcome": label, "reason": outcome.error.description,
            })
            delay = max(float(outcome.error.retry_after or 0), self._pause(attempt))
            if attempt == attempts or not outcome.retryable or self._clock() + delay >= deadline:
                raise outcome.error
            await self._sleep(delay)
        raise AssertionError("unreachable: attempts >= 1")

    async def _admit(self, deadline: float) -> None:
        now = self._clock()
        decision = self._budget.admit(now, min(MAX_BUDGET_WAIT, max(0.0, deadline - now)))
        if isinstance(decision, Refused):
            self._observer.budget("cooling" if decision.cooling else "refused")
            why = "answered 429 (too many requests)" if decision.cooling else "budget of this replica is spent"
            raise Unavailable(f"the Zapier Partner API {why}; try again later", retry_after=decision.retry_after)
        if decision > 0:
            self._observer.budget("waited")
            await self._sleep(decision)

    async def _attempt(self, method: str, path: str, token: str, params: Mapping[str, str] | None,
                       body: Mapping[str, Any] | None, deadline: float) -> dict[str, Any] | _Failure:
        if not BEARER.fullmatch(token):
            malformed = UpstreamError("the partner issued an access token that cannot be sent in a header")
            return _Failure(malformed, False, "malformed")
        s = self._settings
        remaining = max(0.001, deadline - self._clock())
        content = None if body is None else orjson.dumps(body)
        try:
            async with asyncio.timeout(remaining):
                answer = await self._http.send(method, path, token, params=params, body=content,
                                               connect=min(s.connect_timeout, remaining),
                                               read=min(s.read_timeout, remaining))
        except TimeoutError:  # aiohttp's connect and read timeouts are TimeoutErrors too
            return _Failure(Unavailable("the Zapier Partner API timed out", retry_after=1), True, "timeout")
        except aiohttp.ClientError as exc:
            unreachable = Unavailable(f"the Zapier Partner API is unreachable ({type(exc).__name__})", retry_after=1)
            return _Failure(unreachable, True, "unreachable")
        except AnswerTooLarge:
            return _Failure(UpstreamError("the Zapier Partner API answered more than 4 MiB"), False, "malformed")
        if 200 <= answer.status < 300:
            try:
                return envelope(answer)
            except UpstreamError as exc:
                return _Failure(exc, False, "malformed")
        error = api_error(answer.status, answer.retry_after, _json(answer.content))
        if answer.status == 429:
            self._budget.cool_down(self._clock(), float(error.retry_after or DEFAULT_RETRY_AFTER))
        outcome = _OUTCOMES.get(answer.status, "upstream_error")
        return _Failure(error, answer.status in RETRYABLE, outcome)

    def _pause(self, attempt: int) -> float:
        # Jitter spreads replicas' retries apart; it is not a security decision.
        jitter = random.uniform(0.5, 1.0)  # noqa: S311  # nosec B311 - retry jitter, not a secret
        return min(self._backoff * 2.0 ** (attempt - 1), MAX_BACKOFF) * jitter


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def envelope(answer: Answer) -> dict[str, Any]:
    """A 2xx answer's JSON object; the Partner API's document types some lists as `[{links, meta, data}]`,
    so a one-element array around an object is the object."""
    body = _json(answer.content)
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise UpstreamError(f"the Zapier Partner API answered HTTP {answer.status} without a JSON object")
    return body


def partner_detail(body: Any) -> str:
    """The first error's `detail` (or `title`, or `code`) of a `{"errors": [...]}` body, sanitised."""
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    for name in ("detail", "title", "code"):
        text = oauth_text(first.get(name))
        if text:
            return text
    return ""


def api_error(status: int, retry_after_header: str | None, body: Any) -> RequestError:
    """Map a non-2xx answer onto keysvc's errors (table in the module docstring)."""
    detail = partner_detail(body)
    said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 401:
        return PartnerUnauthorized(f"the Zapier Partner API refused the user's access token ({said})")
    if status in (429, 503):
        retry_after = parse_retry_after(retry_after_header) or DEFAULT_RETRY_AFTER
        return Unavailable(f"the Zapier Partner API is busy ({said})", retry_after=retry_after)
    error_class = _STATUS_ERRORS.get(status)
    if error_class is not None:
        return error_class(f"the Zapier Partner API refused the request ({said})")
    if status >= 500:
        return UpstreamError(f"the Zapier Partner API failed ({said})")
    return UpstreamError(f"the Zapier Partner API answered an unexpected error ({said})")
