"""The body contract of POST /v1/token-exchange: strict validation and per-client scopes, checked before
any upstream call (the exchanger here would fail loudly if it were reached)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keysvc.client import TokenExchanger, TokenExchangeSettings
from keysvc.config import Secret
from keysvc.errors import Forbidden, InvalidRequest, RequestError
from keysvc.partner.exchange_body import allowed_scope, parse_body
from keysvc.partner.exchange_route import exchange_request
from keysvc.records import SignedToken

pytestmark = pytest.mark.unit

DEFAULT_SCOPE = "external connection:read connection:write action:run"


class RefusingSigner:
    """A signer that fails the test if anything gets as far as signing."""

    async def sign(self, claims: Any, ttl: int, keyset: str | None = None) -> SignedToken:
        raise AssertionError("validation should have refused before signing")


def call(body: Any, allowed: frozenset[str] | None = None) -> RequestError:
    async def go() -> dict[str, Any]:
        settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), token_url="http://127.0.0.1:9/")
        async with TokenExchanger(settings, RefusingSigner()) as exchanger:
            return await exchange_request(exchanger, "billing-api", allowed, body)

    with pytest.raises(RequestError) as info:
        asyncio.run(go())
    return info.value


OK = {"user_id": "u-1", "tenant_id": "t-9", "token": "access"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([], "JSON object"),
        ("access", "JSON object"),
        (OK | {"extra": 1}, "unknown field 'extra'"),
        ({"tenant_id": "t", "token": "access"}, "user_id"),
        (OK | {"user_id": 7}, "user_id"),
        (OK | {"user_id": ""}, "user_id"),
        (OK | {"user_id": "a b"}, "user_id"),
        (OK | {"user_id": "x" * 257}, "user_id"),
        (OK | {"tenant_id": None}, "tenant_id"),
        (OK | {"tenant_id": "t\n"}, "tenant_id"),
        (OK | {"token": "refresh"}, "token must be"),
        ({"user_id": "u", "tenant_id": "t"}, "token must be"),
        (OK | {"token": "connect"}, "app is required"),
        (OK | {"token": "connect", "app": "../x"}, "app is required"),
        (OK | {"token": "connect", "app": 5}, "app is required"),
        (OK | {"app": "SlackAPI"}, "only allowed with token=connect"),
        (OK | {"scope": ["external"]}, "scope must be a string"),
        (OK | {"scope": "   "}, "scope"),
        (OK | {"scope": 'a "b"'}, "scope"),
    ],
)
def test_invalid_bodies(body: Any, words: str) -> None:
    """Each malformed body is 400 invalid_request naming what is wrong."""
    error = call(body)

    assert (type(error), error.status, words in error.description) == (InvalidRequest, 400, True), error


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("action:run", frozenset({"connection:read"})),
        ("connection:read zap:write", frozenset({"connection:read"})),
        (None, frozenset()),
        ("zap:delete", None),  # no exchange_scopes: the configured scope is the ceiling
    ],
)
def test_scopes_beyond_the_client_are_forbidden(requested: str | None, allowed: frozenset[str] | None) -> None:
    """A scope the client may not request is 403 forbidden; an empty allowance allows nothing."""
    error = call(OK | ({} if requested is None else {"scope": requested}), allowed)

    assert (type(error), error.status, "billing-api" in error.description) == (Forbidden, 403, True)


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        (None, None, "action:run connection:read connection:write external"),
        (None, frozenset({"connection:read", "external"}), "connection:read external"),
        ("external external", None, "external"),
        ("zap:write", frozenset({"zap:write"}), "zap:write"),
    ],
)
def test_allowed_scope(requested: str | None, allowed: frozenset[str] | None, expected: str) -> None:
    """No scope asked: the client's own scopes, else the configured default; always normalised."""
    assert allowed_scope(requested, allowed, DEFAULT_SCOPE, "c") == expected


def test_parse_body_connect() -> None:
    """A valid connect body is read as given (scope normalised)."""
    body = parse_body({"user_id": "u-1", "tenant_id": "t-9", "token": "connect", "app": "SlackAPI", "scope": "b a"})

    assert (body.token, body.app, body.scope) == ("connect", "SlackAPI", "a b")
