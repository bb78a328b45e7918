"""The HTTP client of Zapier's Partner API (`token_exchange.api_url`): the budget asked before every request,
bounded retries of reads, envelope handling, and the mapping of the partner's errors onto keysvc's.

    partner says                         we answer
    2xx JSON object (or [object])        the object
    400, 422                             400 invalid_request, the partner's detail sanitised
    401                                  PartnerUnauthorized (502): the gateway drops the token, tries once more
    403 / 404 / 409                      403 forbidden / 404 not_found / 409 conflict
    429                                  503 unavailable + Retry-After (60 s when Zapier sends none, its
                                         documented cooldown); the budget cools down until then
    503, timeout, unreachable            503 unavailable + Retry-After (reads retried first)
    other 5xx, other 4xx, malformed 2xx  502 upstream_error (reads retried first on 5xx)

A read (`retry=True`: GETs, and the POSTs that only read, inputs and choices) is tried up to
`max_attempts` times within `total_timeout`. Creating an action run is tried once: a second POST could
run the action twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

import orjson

from keysvc.client.oauth import Answer, oauth_text, parse_retry_after
from keysvc.client.retry import Failure, with_retries
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
from keysvc.partner.budget import COOLDOWN_WITHOUT_RETRY_AFTER, ApiBudget, Budget, ReplicaBudget, admit
from keysvc.partner.outbound import PartnerHttp

RETRYABLE = frozenset({500, 502, 503, 504})
DEFAULT_RETRY_AFTER = 5
PARTNER_API = "the Zapier Partner API"  # what errors and logs call it; the Trigger Inbox API has its own name
MAX_DEPTH = 64  # levels of a Partner API answer (its documented shapes nest fewer than 10)
BEARER = re.compile(r"[\x21-\x7e]+")  # visible ASCII (RFC 6750's b64token is a subset): safe in a header

log = logging.getLogger("keysvc.zapier")

_STATUS_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequest, 422: InvalidRequest, 403: Forbidden, 404: NotFound, 409: Conflict,
}  # fmt: skip
_OUTCOMES = {400: "rejected", 422: "rejected", 401: "unauthorized", 403: "forbidden", 404: "not_found",
             409: "conflict", 429: "throttled", 503: "unavailable"}  # fmt: skip


class PartnerUnauthorized(UpstreamError):
    """The partner refused the user's access token (401): revoked or expired early."""


class PartnerAuthRefused(InvalidRequest):
    """Zapier refused the call for the connection (its error's `code` is `authentication`, or its `source`
    points at `/data/authentication`): the gateway marks the connection expired (reconnect_required)."""


def refuses_authentication(body: Any) -> bool:
    """Whether a Partner API error body blames the connection (`authentication`)."""
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    source = first.get("source")
    pointer = source.get("pointer") if isinstance(source, dict) else None
    return first.get("code") == "authentication" or pointer == "/data/authentication"


class ApiObserver(Protocol):
    """Where the client reports what it does (keysvc feeds Prometheus; the default drops it)."""

    def call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One request: our fixed endpoint name, its outcome and latency."""

    def budget(self, result: str, kind: str = "local") -> None:
        """The budget made a request wait (`waited`) or refused it (`refused`, `cooling` after a 429);
        `kind` is the budget's: `shared` (every replica's, in the store) or `local`."""


class NullApiObserver:
    """Reports nothing."""

    def call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """Drop it."""

    def budget(self, result: str, kind: str = "local") -> None:
        """Drop it."""


class PartnerApi:
    """Requests to the Partner API for one replica, within one budget (this replica's ApiBudget, or the
    shared Budget of every replica: keysvc.partner.budget)."""

    def __init__(
        self,
        settings: TokenExchangeSettings,
        http: PartnerHttp,
        budget: ApiBudget | Budget,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ApiObserver | None = None,
        backoff: float = 0.25,
        base_url: str | None = None,
        name: str = PARTNER_API,
        reauth_codes: frozenset[str] = frozenset(),
    ) -> None:
        """`base_url` is `settings.api_url` unless given: another Bearer-token API of the partner (the
        Trigger Inbox API) is another PartnerApi over the same session and budget, its own base URL and
        `name` (what its errors and logs call it); a 400 whose first error code is in `reauth_codes` is a
        refused access token like a 401 (the Trigger Inbox's `unauthenticated`)."""
        self._name = name
        self._reauth_codes = reauth_codes
        self._settings = settings
        self._base = (base_url or settings.api_url).rstrip("/")
        self._http = http
        self._budget: Budget = ReplicaBudget(budget, clock) if isinstance(budget, ApiBudget) else budget
        self._clock = clock
        self._sleep = sleep
        self._observer = observer or NullApiObserver()
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"PartnerApi({self._name!r}, {self._http!r}, {self._budget!r})"

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
        """One call, with its retries (keysvc.client.retry); `endpoint` is our fixed name for it (metrics, logs)."""
        retry_reads = retry

        def observe(outcome: str, seconds: float) -> None:
            self._observer.call(endpoint, outcome, seconds)

        def failed(attempt: int, failure: Failure) -> None:
            log.warning("partner API call failed", extra={
                "endpoint": endpoint, "attempt": attempt, "outcome": failure.outcome,
                "reason": failure.error.description,
            })

        async def attempt(deadline: float) -> dict[str, Any] | Failure:
            return await self._attempt(method, path, token, params, body, deadline)

        return await with_retries(attempt, tries=self._settings.max_attempts if retry_reads else 1,
                                  total_timeout=self._settings.total_timeout, clock=self._clock, sleep=self._sleep,
                                  backoff=self._backoff, admit=self._admit, observe=observe, failed=failed)

    async def _admit(self, deadline: float) -> None:
        await admit(self._budget, deadline, clock=self._clock, sleep=self._sleep, observer=self._observer)

    async def _attempt(self, method: str, path: str, token: str, params: Mapping[str, str] | None,
                       body: Mapping[str, Any] | None, deadline: float) -> dict[str, Any] | Failure:
        if not BEARER.fullmatch(token):
            malformed = UpstreamError("the partner issued an access token that cannot be sent in a header")
            return Failure(malformed, False, "malformed")
        s = self._settings
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = orjson.dumps(body)
        answer = await self._http.attempt(self._name, method, self._base + path, headers=headers,
                                          params=params, body=content, deadline=deadline,
                                          connect=s.connect_timeout, read=s.read_timeout, clock=self._clock)
        if isinstance(answer, Failure):
            return answer
        if answer.status == 204:
            return {}
        if 200 <= answer.status < 300:
            try:
                return envelope(answer, self._name)
            except UpstreamError as exc:
                return Failure(exc, False, "malformed")
        problem = _json(answer.content)
        status = 401 if answer.status == 400 and _first_code(problem) in self._reauth_codes else answer.status
        error = api_error(status, answer.retry_after, problem, self._name)
        if answer.status == 429:
            await self._budget.cool_down(float(error.retry_after or COOLDOWN_WITHOUT_RETRY_AFTER))
        outcome = _OUTCOMES.get(status, "upstream_error")
        return Failure(error, answer.status in RETRYABLE, outcome)


def _json(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return None


def _first_code(body: Any) -> str | None:
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    code = first.get("code")
    return code if isinstance(code, str) else None


def envelope(answer: Answer, name: str = PARTNER_API) -> dict[str, Any]:
    """A 2xx answer's JSON object; the Partner API's document types some lists as `[{links, meta, data}]`,
    so a one-element array around an object is the object."""
    body = _json(answer.content)
    if isinstance(body, list) and len(body) == 1:
        body = body[0]
    if not isinstance(body, dict):
        raise UpstreamError(f"{name} answered HTTP {answer.status} without a JSON object")
    if _too_deep(body, MAX_DEPTH):
        raise UpstreamError(f"{name} answered JSON nested deeper than {MAX_DEPTH} levels")
    return body


def _too_deep(value: Any, most: int) -> bool:
    """True when `value` nests deeper than `most` levels (walked without recursion): what keysvc answers
    is encoded again by orjson, which refuses more than 255."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > most:
            return True
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
    return False


def partner_detail(body: Any) -> str:
    """The first error's `detail` (or `title`, or `code`) of a `{"errors": [...]}` body, sanitised."""
    errors = body.get("errors") if isinstance(body, dict) else None
    first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else {}
    for name in ("detail", "title", "code"):
        text = oauth_text(first.get(name))
        if text:
            return text
    return ""


def api_error(status: int, retry_after_header: str | None, body: Any, name: str = PARTNER_API) -> RequestError:
    """Map a non-2xx answer onto keysvc's errors (table in the module docstring)."""
    detail = partner_detail(body)
    said = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status == 401:
        return PartnerUnauthorized(f"{name} refused the user's access token ({said})")
    if status in (429, 503):
        fallback = COOLDOWN_WITHOUT_RETRY_AFTER if status == 429 else DEFAULT_RETRY_AFTER
        retry_after = parse_retry_after(retry_after_header) or fallback
        return Unavailable(f"{name} is busy ({said})", retry_after=retry_after)
    if status in (400, 403, 422) and refuses_authentication(body):
        return PartnerAuthRefused(f"{name} refused the connection ({said})")
    error_class = _STATUS_ERRORS.get(status)
    if error_class is not None:
        return error_class(f"{name} refused the request ({said})")
    if status >= 500:
        return UpstreamError(f"{name} failed ({said})")
    return UpstreamError(f"{name} answered an unexpected error ({said})")


_T = TypeVar("_T")


class AccessTokens(Protocol):
    """What a flow needs of the token exchanger: a user's access token, and forgetting a refused one."""

    async def access_token(self, user_id: str, tenant_id: str) -> Any: ...

    def forget_access_token(self, user_id: str, tenant_id: str) -> None: ...


async def with_access_token(tokens: AccessTokens, user_id: str, tenant_id: str,
                            step: Callable[[str], Awaitable[_T]]) -> _T:
    """Run `step` with the user's access token; after the partner refused it, once more with a new token."""
    token = await tokens.access_token(user_id, tenant_id)
    try:
        return await step(token.access_token)
    except PartnerUnauthorized:
        tokens.forget_access_token(user_id, tenant_id)
    token = await tokens.access_token(user_id, tenant_id)
    return await step(token.access_token)
