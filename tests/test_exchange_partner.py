"""The mapping of the partner's answers onto keysvc's errors (pure: Answer values, no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from keysvc.client.oauth import Answer, PartnerError, oauth_text, parse_retry_after, partner_error, token_response
from keysvc.errors import RequestError, Unavailable, UpstreamError

pytestmark = pytest.mark.unit


def answer(status: int, body: Any = None, **headers: str) -> Answer:
    return Answer(status, headers.get("Retry-After"), b"" if body is None else json.dumps(body).encode())


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (answer(400, {"error": "invalid_grant"}), (PartnerError, 400, "invalid_grant")),
        (answer(400, {"error": "invalid_request"}), (PartnerError, 400, "invalid_request")),
        (answer(400, {"error": "invalid_target"}), (PartnerError, 400, "invalid_target")),
        (answer(400, {"error": "invalid_scope"}), (PartnerError, 400, "invalid_scope")),
        (answer(400, {"error": "invalid_client"}), (UpstreamError, 502, "upstream_error")),
        (answer(401, {"error": "invalid_client"}), (UpstreamError, 502, "upstream_error")),
        (answer(400, {"error": "unauthorized_client"}), (UpstreamError, 502, "upstream_error")),
        (answer(400, {"error": "unsupported_grant_type"}), (UpstreamError, 502, "upstream_error")),
        (answer(400, {"error": "something_new"}), (UpstreamError, 502, "upstream_error")),
        (answer(401, {"error": "invalid_token"}), (PartnerError, 403, "invalid_token")),
        (answer(403), (PartnerError, 403, "access_denied")),
        (answer(400, {"error": "access_denied"}), (PartnerError, 403, "access_denied")),
        (answer(429, {"error": "slow_down"}, **{"Retry-After": "7"}), (Unavailable, 503, "unavailable")),
        (answer(503), (Unavailable, 503, "unavailable")),
        (answer(500, {"error": "server_error"}), (UpstreamError, 502, "upstream_error")),
        (answer(504), (UpstreamError, 502, "upstream_error")),
        (answer(404), (UpstreamError, 502, "upstream_error")),
        (answer(400, {"error": "bad code with spaces"}), (UpstreamError, 502, "upstream_error")),
    ],
)
def test_partner_error_mapping(response: Answer, expected: tuple[type, int, str]) -> None:
    """Each partner answer becomes the documented keysvc error: caller codes pass through as 400, 401/403
    as 403, our credentials and registration as 502, overload as 503, never a 500."""
    error = partner_error(response)

    assert (type(error), error.status, error.code) == expected


def test_retry_after_passes_through_and_defaults() -> None:
    """A 429/503's Retry-After is kept; without one the caller is told 5 s."""
    assert partner_error(answer(429, {}, **{"Retry-After": "7"})).retry_after == 7
    assert partner_error(answer(503)).retry_after == 5


def test_partner_text_cannot_smuggle_a_token() -> None:
    """A partner description quoting a JWT, or with control characters, is cleaned before reuse."""
    jwt_like = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    error = partner_error(answer(400, {"error": "invalid_grant", "error_description": f"bad {jwt_like}\r\nx"}))

    assert jwt_like not in error.description
    assert "\n" not in error.description
    assert oauth_text("a" * 500) == "[redacted]"
    assert len(oauth_text("a b " * 200)) == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("12", 12),
        ("999999", 3600),
        ("soon", None),
        ("Sat, 28 Nov 2026 12:00:30 GMT", 30),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0),
    ],
)
def test_parse_retry_after(value: str | None, expected: int | None) -> None:
    """Retry-After as delta-seconds or HTTP-date, capped at an hour, None when absent or unreadable."""
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

    assert parse_retry_after(value, now) == expected


@pytest.mark.parametrize(
    "body",
    [{}, {"access_token": ""}, {"access_token": 5}, {"access_token": "t", "expires_in": "3600"},
     {"access_token": "t", "expires_in": True}, {"access_token": "t", "issued_token_type": 1}],
)  # fmt: skip
def test_malformed_success_is_502(body: dict[str, Any]) -> None:
    """A 200 without a usable token or with a non-integer expires_in is the partner's fault: 502."""
    with pytest.raises(RequestError) as info:
        token_response(answer(200, body), "urn:requested")

    assert (type(info.value), info.value.status) == (UpstreamError, 502)


def test_success_defaults() -> None:
    """issued_token_type defaults to the requested type; a missing expires_in stays None (not cached);
    the token is not in the repr."""
    response = token_response(answer(200, {"access_token": "at-4f9c2e"}), "urn:requested")

    assert (response.issued_token_type, response.expires_in) == ("urn:requested", None)
    assert "at-4f9c2e" not in repr(response)
