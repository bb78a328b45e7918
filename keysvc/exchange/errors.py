"""Errors of the exchange, and the helpers that make a partner's answer safe to repeat.

    RequestError (keysvc.errors)
    └── PartnerError      the partner refused for a reason that is the caller's: carries the partner's
                          RFC 6749 `error` code (invalid_grant, invalid_scope, ...) and our status (400/403)

Every other upstream failure uses keysvc's own classes: UpstreamError (502) when the fault is ours or the
partner's (bad client credentials, malformed answers, 5xx), Unavailable (503, Retry-After) when trying
again later helps (timeouts, 429, 503).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from keysvc.errors import RequestError

MAX_RETRY_AFTER = 3600
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


def json_object(response: httpx.Response) -> dict[str, Any]:
    """An upstream answer's JSON object, or {} when the body is not JSON or not an object."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def oauth_code(value: object) -> str | None:
    """The partner's `error` if it is a well-formed RFC 6749 code, else None."""
    return value if isinstance(value, str) and _OAUTH_CODE.fullmatch(value) else None


def oauth_text(value: object, limit: int = 200) -> str:
    """The partner's `error_description`, reduced to RFC 6749 characters, token-like runs redacted."""
    if not isinstance(value, str):
        return ""
    text = _TOKENISH.sub("[redacted]", _NOT_OAUTH_TEXT.sub("", value))
    return text[:limit]


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0, round(seconds)), MAX_RETRY_AFTER)
