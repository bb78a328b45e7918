"""The browser side of Zapier Connect: the URL that opens the Connect UI, and the redirect it comes back on.

connect_url(app, token, redirect_uri, state, reconnect_id)
    -> https://connect.zapier.com/to/{app}?token=...&redirect_uri=...&state=...&reconnect_id=...
the user connects, Zapier redirects to redirect_uri with
    ?authentication_id=...&state=...         or   ?error=...&error_description=...&state=...
parse_callback(query, expected_state) -> CallbackResult   (state checked in constant time)
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from keysvc.client.oauth import oauth_code, oauth_text
from keysvc.errors import InvalidRequest

DEFAULT_CONNECT_URL = "https://connect.zapier.com/to/{app}"
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


def resource_url(app: str, template: str = DEFAULT_CONNECT_URL) -> str:
    """The Connect URL of `app` without query: the `resource` of a connect-token exchange."""
    if not APP_NAME.fullmatch(app):
        raise InvalidRequest("app must be a partner app identifier such as SlackAPI (letters, digits, _ . -)")
    return template.replace("{app}", quote(app, safe=""))


def connect_url(
    app: str,
    token: str,
    redirect_uri: str | None = None,
    state: str | None = None,
    reconnect_id: str | None = None,
    template: str = DEFAULT_CONNECT_URL,
    theme: str | None = None,
) -> str:
    """The URL to send the user's browser to, carrying a connect token (single use, short-lived); `theme`
    names the partner's Connect UI branding (Zapier's optional `theme` parameter)."""
    params = {"token": token, "redirect_uri": redirect_uri, "state": state, "reconnect_id": reconnect_id,
              "theme": theme}
    query = urlencode({name: value for name, value in params.items() if value is not None})
    base = resource_url(app, template)
    return f"{base}{'&' if '?' in base else '?'}{query}"


@dataclass(frozen=True)
class CallbackResult:
    """The outcome the partner reported: `authentication_id` on success, else `error`."""

    authentication_id: str | None = None
    error: str | None = None
    error_description: str | None = None

    @property
    def ok(self) -> bool:
        """True when the user connected the app."""
        return self.authentication_id is not None


def parse_callback(query: Mapping[str, str], expected_state: str) -> CallbackResult:
    """Check the redirect's `state` (constant time) and read the outcome.

    A missing or wrong state means the redirect is not the answer to our request (CSRF, a stale tab):
    that is an `InvalidRequest`, never a result. The partner's own error is a result, not an exception.
    """
    if not expected_state:
        raise ValueError("expected_state must be the non-empty state sent in the Connect URL")
    state = query.get("state")
    if not state or not hmac.compare_digest(state.encode(), expected_state.encode()):
        raise InvalidRequest("the callback's state is missing or does not match the one sent")
    authentication_id, error = query.get("authentication_id"), query.get("error")
    if error:
        code = oauth_code(error) or "invalid_response"
        return CallbackResult(error=code, error_description=oauth_text(query.get("error_description")) or None)
    if not authentication_id:
        raise InvalidRequest("the callback carries neither authentication_id nor error")
    return CallbackResult(authentication_id=authentication_id)
