"""PURE: the body contract of `POST /v1/token-exchange`: strict parsing of the body into an `ExchangeBody`,
and the scope a client may ask for. The route (keysvc.partner.exchange_route) authenticates the client, checks
its `token_exchange` flag, runs the exchange and writes its audit line.

    {"user_id": "u-1", "tenant_id": "t-9", "token": "access"}
    {"user_id": "u-1", "tenant_id": "t-9", "token": "connect", "app": "SlackAPI", "scope": "..."}
    -> {"access_token": "...", "issued_token_type": "...", "expires_in": 3600[, "connect_url": "..."]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keysvc.client.connect import APP_NAME
from keysvc.client.exchanger import normalise_scope
from keysvc.errors import Forbidden, InvalidRequest
from keysvc.partner.contracts import EXCHANGE, TOKEN
from keysvc.partner.fields import IDENTIFIER

_FIELDS = frozenset(EXCHANGE.names)  # the route's contract (keysvc.partner.contracts)


@dataclass(frozen=True)
class ExchangeBody:
    """A validated request body."""

    user_id: str
    tenant_id: str
    token: str
    app: str | None
    scope: str | None


def parse_body(body: Any) -> ExchangeBody:
    """Strict validation: an unknown field, a wrong type or a missing field is a 400 naming it."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}")
    user_id, tenant_id = _identifier(body, "user_id"), _identifier(body, "tenant_id")
    kind = body.get("token")
    if kind not in TOKEN.values:
        raise InvalidRequest('token must be "access" or "connect"')
    app = body.get("app")
    if kind == "connect" and not (isinstance(app, str) and APP_NAME.fullmatch(app)):
        raise InvalidRequest("app is required for a connect token: a partner app identifier such as SlackAPI")
    if kind == "access" and app is not None:
        raise InvalidRequest("app is only allowed with token=connect")
    scope = body.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise InvalidRequest("scope must be a string of space-separated scope tokens")
    return ExchangeBody(user_id, tenant_id, kind, app, None if scope is None else normalise_scope(scope))


def _identifier(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not IDENTIFIER.matches(value):  # it ends up in a JWT claim
        raise InvalidRequest(f"{name} must be {IDENTIFIER.what}")
    return str(value)


def allowed_scope(requested: str | None, allowed: frozenset[str] | None, default: str, client: str) -> str:
    """The scope to request: the asked one if the client may, else the client's or the configured default.

    `allowed` None means the configured `token_exchange.scope` is the client's ceiling; an empty set
    allows nothing (fail closed).
    """
    ceiling = frozenset(default.split()) if allowed is None else allowed
    if requested is None:
        requested = default if allowed is None else " ".join(sorted(allowed))
    if not requested:
        raise Forbidden(f"client {client!r} may not request any token-exchange scope")
    refused = sorted(set(requested.split()) - ceiling)
    if refused:
        raise Forbidden(f"client {client!r} may not request scope {' '.join(refused)}")
    return normalise_scope(requested)
