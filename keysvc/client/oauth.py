"""The partner's OAuth rules, transport-free: shared by the clients' httpx token endpoint
(keysvc.client.token_endpoint) and the server's aiohttp way out (keysvc.partner.outbound).

What an answer is (`Answer`: status, Retry-After, body bytes), the token-endpoint form (`token_form`), the
reading of a 2xx (`token_response`), the mapping of a refusal onto keysvc's errors (`partner_error`), the
helpers that make a partner's text safe to repeat, and the error of the exchange:

    RequestError (keysvc.errors)
    └── PartnerError      the partner refused for a reason that is the caller's: carries the partner's
                          RFC 6749 `error` code (invalid_grant, invalid_scope, ...) and our status (400/403)

Every other upstream failure uses keysvc's own classes: UpstreamError (502) when the fault is ours or the
partner's (bad client credentials, malformed answers, 5xx), Unavailable (503, Retry-After) when trying
again later helps (timeouts, 429, 503).
"""

from __future__ import annotations

import base64
import collections
import json
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote_plus

from keysvc.client.retry import Failure
from keysvc.errors import RequestError, Unavailable, UpstreamError

if TYPE_CHECKING:
    from keysvc.config.exchange import TokenExchangeSettings

MAX_RETRY_AFTER = 3600
MAX_EXPIRES_IN = 10 * 365 * 86400  # seconds: a longer lifetime from the partner is a malformed answer
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
RETRYABLE = frozenset({429, 500, 502, 503, 504})  # the token endpoint's statuses worth another attempt
CALLER_CODES = frozenset({"invalid_request", "invalid_grant", "invalid_target", "invalid_scope"})
CONFIG_CODES = frozenset({"unauthorized_client", "unsupported_grant_type"})
DEFAULT_RETRY_AFTER = 5
MAX_TOKEN = 16 * 1024  # characters of a token the partner issues
COOLDOWN_WITHOUT_RETRY_AFTER = 60  # Zapier: a 429 is followed by a 60 s cooldown, Retry-After or not
# RFC 6749 §5.2: error and error_description are limited to %x20-21 / %x23-5B / %x5D-7E.
_OAUTH_CODE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,64}")
_NOT_OAUTH_TEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
# Anything shaped like a JWS or a long opaque token is cut out of text we repeat.
_TOKENISH = re.compile(r"[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}(\.[A-Za-z0-9_\-]*)?|[A-Za-z0-9_\-+/=]{40,}")


class PartnerError(RequestError):
    """The partner refused the exchange for a reason the caller can act on; `code` is the partner's."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.code = code


def json_object(content: bytes) -> dict[str, Any]:
    """An upstream answer's JSON object, or {} when the body is not JSON or not an object."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):  # not JSON, an integer of > 4300 digits, nesting past the stack
        return {}
    return body if isinstance(body, dict) else {}


def oauth_code(value: object) -> str | None:
    """The partner's `error` if it is a well-formed RFC 6749 code, else None."""
    return value if isinstance(value, str) and _OAUTH_CODE.fullmatch(value) else None


def oauth_text(value: object, limit: int = 200) -> str:
    """The partner's `error_description`, reduced to RFC 6749 characters; every known secret (KNOWN_SECRETS:
    the client secret, tokens issued to keysvc) and any part of one redacted by value, then token-like runs."""
    if not isinstance(value, str):
        return ""
    text = _NOT_OAUTH_TEXT.sub("", KNOWN_SECRETS.redact(value[: 4 * limit]))
    text = _TOKENISH.sub("[redacted]", text)
    return text[:limit]


class KnownSecrets:
    """The secrets keysvc knows by value, so that partner-provided text echoing one (or a part of one, of
    at least MIN_PART characters) is redacted before it reaches an answer or a log line.

    Each secret is indexed by its WINDOW-character slices at every STRIDE-th offset; a text is slid over one
    character at a time, so any run of MIN_PART = WINDOW + STRIDE - 1 characters of a secret hits the index.
    Short secrets (under MIN_PART) are matched whole. At most `capacity` secrets are kept (the oldest tokens
    go first; `keep=True` ones, the client secret, stay), so the index is bounded."""

    WINDOW, STRIDE = 12, 4
    MIN_PART = WINDOW + STRIDE - 1

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._order: collections.OrderedDict[str, bool] = collections.OrderedDict()
        self._slices: dict[str, int] = {}
        self._short: set[str] = set()

    def __repr__(self) -> str:
        return f"KnownSecrets({len(self._order)} kept)"

    def add(self, secret: str, *, keep: bool = False) -> None:
        """Know `secret` (a token issued to keysvc, or a client secret with keep=True)."""
        if len(secret) < 8:
            return  # too short to redact without mangling ordinary words
        with self._lock:
            if secret in self._order:
                self._order.move_to_end(secret)
                self._order[secret] = self._order[secret] or keep
                return
            self._order[secret] = keep
            self._index(secret, +1)
            while len(self._order) > self._capacity:
                oldest = next((s for s, kept in self._order.items() if not kept), None)
                if oldest is None:
                    break
                del self._order[oldest]
                self._index(oldest, -1)

    def _index(self, secret: str, delta: int) -> None:
        if len(secret) < self.MIN_PART:
            if delta > 0:
                self._short.add(secret)
            else:
                self._short.discard(secret)
            return
        for i in range(0, len(secret) - self.WINDOW + 1, self.STRIDE):
            part = secret[i : i + self.WINDOW]
            count = self._slices.get(part, 0) + delta
            if count > 0:
                self._slices[part] = count
            else:
                self._slices.pop(part, None)

    def redact(self, text: str) -> str:
        """`text` with every known secret, and every run of text holding a part of one, as [redacted]."""
        with self._lock:
            short = [s for s in self._short if s in text]
            hits = [i for i in range(len(text) - self.WINDOW + 1) if text[i : i + self.WINDOW] in self._slices]
        for secret in short:
            text = text.replace(secret, "\x00" * len(secret))
        if hits:
            marked = list(text)
            for i in hits:
                marked[i : i + self.WINDOW] = "\x00" * self.WINDOW
            text = "".join(marked)
        if "\x00" not in text:
            return text
        # Every run of non-blank characters touching a marked one goes whole.
        return _MARKED.sub("[redacted]", text)


_MARKED = re.compile(r"[^\s\x00]*\x00[^\s]*")
KNOWN_SECRETS = KnownSecrets()


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # compared as text: int() of 5000 digits raises
        return MAX_RETRY_AFTER if len(value) > 6 else min(int(value), MAX_RETRY_AFTER)
    if len(value) > 64:  # an HTTP-date is 29 characters
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0, round(seconds)), MAX_RETRY_AFTER)


MAX_ANSWER = 4 * 1024 * 1024  # bytes of one partner answer, at most (a page of the Partner API is a few KiB)


class AnswerTooLarge(Exception):
    """The partner's answer is larger than MAX_ANSWER: nothing more of it is read."""


async def read_bounded(declared: int | str | None, chunks: AsyncIterator[bytes]) -> bytes:
    """A whole body from `chunks`, or AnswerTooLarge past MAX_ANSWER bytes, declared (Content-Length) or
    received: a partner cannot make us hold an answer of any size in memory. Either transport's reader."""
    if isinstance(declared, str):  # a header's text: digits only, and never turned into a huge int
        digits = declared.isascii() and declared.isdigit()
        declared = (MAX_ANSWER + 1 if len(declared) > 12 else int(declared)) if digits else None
    if declared is not None and declared > MAX_ANSWER:
        raise AnswerTooLarge
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_ANSWER:
            raise AnswerTooLarge
        parts.append(chunk)
    return b"".join(parts)


def too_large(what: str) -> Failure:
    """The failure of an answer over MAX_ANSWER from `what` (a 502, not worth another attempt)."""
    return Failure(UpstreamError(f"{what} answered more than 4 MiB"), False, "malformed")


@dataclass(frozen=True)
class Answer:
    """A partner's answer, whatever carried it: status, its Retry-After header, the body (read whole)."""

    status: int
    retry_after: str | None
    content: bytes


@dataclass(frozen=True)
class TokenResponse:
    """The partner's successful answer (RFC 8693 §2.2.1); `expires_in` is None when not given."""

    access_token: str = field(repr=False)
    issued_token_type: str
    expires_in: int | None


def token_form(settings: TokenExchangeSettings, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The form and headers of one exchange request: the grant type and keysvc's client authentication."""
    data = {"grant_type": GRANT_TYPE, **form}
    headers = {"Accept": "application/json"}
    KNOWN_SECRETS.add(settings.client_secret.reveal(), keep=True)  # the current one, after a rotation too
    if settings.client_auth == "client_secret_basic":
        # RFC 6749 §2.3.1: both parts are form-urlencoded before the Basic encoding.
        pair = f"{quote_plus(settings.client_id)}:{quote_plus(settings.client_secret.reveal())}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        data |= {"client_id": settings.client_id, "client_secret": settings.client_secret.reveal()}
    return data, headers


def token_response(answer: Answer, requested_type: str) -> TokenResponse:
    """Read a 2xx answer; anything malformed is the partner's fault (502)."""
    body = json_object(answer.content)
    token = body.get("access_token")
    issued = body.get("issued_token_type", requested_type)
    expires_in = body.get("expires_in")
    if not isinstance(token, str) or not token or not isinstance(issued, str):
        raise UpstreamError(f"the partner answered HTTP {answer.status} without an access_token")
    if expires_in is not None and (not isinstance(expires_in, int) or isinstance(expires_in, bool)):
        raise UpstreamError("the partner answered with a non-integer expires_in")
    if expires_in is not None and expires_in > MAX_EXPIRES_IN:
        raise UpstreamError(f"the partner answered an expires_in beyond {MAX_EXPIRES_IN} seconds")
    if len(token) > MAX_TOKEN or not token.isascii() or not token.isprintable():
        raise UpstreamError("the partner answered an access_token that is not printable ASCII of at most 16 KiB")
    KNOWN_SECRETS.add(token)
    return TokenResponse(token, issued, None if expires_in is None else max(0, expires_in))


def partner_error(answer: Answer) -> RequestError:
    """Map a token endpoint's non-2xx answer onto keysvc's errors (the table of keysvc.client.token_endpoint)."""
    body = json_object(answer.content)
    status = answer.status
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
        fallback = COOLDOWN_WITHOUT_RETRY_AFTER if status == 429 else DEFAULT_RETRY_AFTER
        retry_after = parse_retry_after(answer.retry_after) or fallback
        return Unavailable(f"the partner's token endpoint is busy ({detail})", retry_after=retry_after)
    if status >= 500:
        return UpstreamError(f"the partner's token endpoint failed ({detail})")
    return UpstreamError(f"the partner's token endpoint answered an unexpected error ({detail})")


def token_outcome(answer: Answer, requested_type: str) -> TokenResponse | Failure:
    """One token-endpoint answer read: the token, or why it failed (retryable on 429/5xx; the label)."""
    error: RequestError
    try:
        if 200 <= answer.status < 300:
            return token_response(answer, requested_type)
        error = partner_error(answer)
    except RequestError as exc:
        error = exc
    label = {400: "rejected", 403: "denied"}.get(error.status, error.code)
    return Failure(error, answer.status in RETRYABLE, label)


FormBuilder = Callable[[], Awaitable[dict[str, str]]]


class TokenEndpoint(Protocol):
    """The partner's token endpoint, whatever carries the request: the clients' httpx one
    (keysvc.client.token_endpoint.PartnerClient) or the server's aiohttp one (keysvc.partner.outbound).
    TokenExchanger (keysvc.client.exchanger) speaks through it."""

    async def exchange(self, build_form: FormBuilder, requested_type: str) -> TokenResponse:
        """One exchange with its retries; `build_form` is called per attempt (a fresh JWT each time)."""

    async def aclose(self) -> None:
        """Release the connections."""


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
