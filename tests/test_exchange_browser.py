"""The Connect URL and the redirect-callback helpers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from keysvc.client.connect import CallbackResult, connect_url, parse_callback
from keysvc.errors import InvalidRequest

pytestmark = pytest.mark.unit


def test_connect_url_with_every_parameter() -> None:
    """token, redirect_uri, state and reconnect_id are all query parameters, correctly encoded."""
    url = connect_url("SlackAPI", "ct-1+/=", redirect_uri="https://app.example/cb?x=1", state="s&t", reconnect_id="42")

    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "connect.zapier.com", "/to/SlackAPI")
    assert parse_qs(parts.query) == {
        "token": ["ct-1+/="],
        "redirect_uri": ["https://app.example/cb?x=1"],
        "state": ["s&t"],
        "reconnect_id": ["42"],
    }


def test_connect_url_minimal_and_custom_template() -> None:
    """Only the token when nothing else is given; a template with its own query gets '&'."""
    assert connect_url("SlackAPI", "t") == "https://connect.zapier.com/to/SlackAPI?token=t"
    assert connect_url("X", "t", template="https://c.example/go?app={app}") == "https://c.example/go?app=X&token=t"


@pytest.mark.parametrize("app", ["", "../admin", "Slack API", "a/b", "é", "SlackAPI\n"])
def test_connect_url_refuses_odd_app_names(app: str) -> None:
    """An app name that is not a plain identifier cannot reach the URL path."""
    with pytest.raises(InvalidRequest):
        connect_url(app, "t")


def test_callback_success() -> None:
    """authentication_id with the right state is a success."""
    result = parse_callback({"authentication_id": "987", "state": "abc"}, "abc")

    assert (result, result.ok) == (CallbackResult(authentication_id="987"), True)


def test_callback_partner_error_is_a_result() -> None:
    """The partner's error (user cancelled) is returned, not raised; its description is cleaned."""
    query = {"error": "access_denied", "error_description": "user said no\n", "state": "abc"}

    result = parse_callback(query, "abc")

    assert (result.ok, result.error, result.error_description) == (False, "access_denied", "user said no")


@pytest.mark.parametrize(
    "query",
    [
        {"authentication_id": "987"},
        {"authentication_id": "987", "state": ""},
        {"authentication_id": "987", "state": "abd"},
        {"authentication_id": "987", "state": "abcabc"},
        {"error": "access_denied", "state": "other"},
        {"state": "abc"},
    ],
)
def test_callback_refusals(query: dict[str, str]) -> None:
    """A missing or wrong state (CSRF, stale tab), or no outcome at all, raises InvalidRequest."""
    with pytest.raises(InvalidRequest):
        parse_callback(query, "abc")


def test_callback_needs_an_expected_state() -> None:
    """Calling without the state we sent is a programming error, never a pass."""
    with pytest.raises(ValueError, match="expected_state"):
        parse_callback({"authentication_id": "1", "state": ""}, "")
