"""Strict parsing of the gateway's inputs (query parameters on GET, JSON body fields on POST) into typed,
validated values. Every malformed input is an InvalidRequest naming the field: an unknown or repeated
field, a wrong type, a missing user, an `app` that is not a UUID, a `wait` above `run_wait_max`, `inputs`
beyond the JSON bounds (nested deeper than 32, over 64 KiB encoded, an integer beyond +-(2**53 - 1), a
non-finite number), a Connect `error` that is not one of the documented codes.
Nothing here does I/O. Which fields each route accepts is its contract's (keysvc.partner.contracts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from keysvc.errors import InvalidRequest
from keysvc.partner import contracts as contract
from keysvc.partner.contracts import (
    ACTION_KEY,
    ACTION_TYPE,
    AUTHENTICATION_ID,
    CONNECT_APP,
    CONNECT_ERROR,
    CONNECTION,
    LIMIT,
    MAX_QUERY,
    OFFSET,
    PAGE,
    PARTNER_ID,
    RECONNECT_ID,
    RUN_WAIT,
    THEME,
)
from keysvc.partner.fields import Fields, User, body_fields, is_uuid, query_fields
from keysvc.partner.triggers.json_bounds import JsonBoundsError, check_json

__all__ = ["User", "is_uuid"]  # shared with the trigger inboxes' parsers (keysvc.partner.fields)
MAX_INPUTS_DEPTH = 32  # levels of `inputs` (the object itself is level 1): Zapier's fields are flat or shallow
MAX_INPUTS_BYTES = 64 * 1024  # encoded: what the internal listener accepts as a whole body


@dataclass(frozen=True)
class AppsQuery:
    user: User
    query: str | None
    limit: int | None
    offset: int | None


@dataclass(frozen=True)
class AppQuery:
    """GET /v1/zapier/connections (and the app of anything else)."""

    user: User
    app: str


@dataclass(frozen=True)
class ActionsQuery:
    user: User
    app: str
    action_type: str | None


@dataclass(frozen=True)
class ConnectBody:
    user: User
    app: str
    connect_app: str
    redirect_uri: str | None
    reconnect_id: str | None
    theme: str | None = None  # the Connect UI's theme (else token_exchange.connect_theme)


@dataclass(frozen=True)
class CompleteBody:
    user: User
    state: str
    authentication_id: str | None
    error: str | None
    error_description: str | None
    redirect_uri: str | None


@dataclass(frozen=True)
class ActionCall:
    """What inputs, choices and runs share: which action of which app, with which connection and inputs."""

    user: User
    app: str
    action: str
    action_type: str
    connection: str | None
    inputs: dict[str, Any]
    connection_given: bool = True  # False: `connection` omitted, the gateway uses the recorded one


@dataclass(frozen=True)
class ChoicesCall:
    call: ActionCall
    input_id: str
    page: int | None


@dataclass(frozen=True)
class RunBody:
    call: ActionCall
    wait: float


@dataclass(frozen=True)
class RunQuery:
    user: User
    run_id: str
    wait: float


def _app(f: Fields) -> str:
    """The `app` field: Zapier's app id (a UUID), lower-cased."""
    if not contract.APP_ID.matches(f.raw.get("app")):
        raise InvalidRequest(f"{f.where} app must be {contract.APP_ID.what}")
    return str(f.raw["app"]).lower()


def _wait(f: Fields, wait_max: float) -> float:
    return f.duration("wait", RUN_WAIT, {"run_wait_max": wait_max}) or 0.0


def apps_query(items: Iterable[tuple[str, str]]) -> AppsQuery:
    """GET /v1/zapier/apps"""
    f = query_fields(items, contract.APPS.names)
    query = f.raw.get("query")
    if query is not None and (not query.isprintable() or len(query) > MAX_QUERY):
        raise InvalidRequest(f"query parameter query must be printable text of at most {MAX_QUERY} characters")
    return AppsQuery(f.user(), query or None, f.integer("limit", LIMIT), f.integer("offset", OFFSET))


def connections_query(items: Iterable[tuple[str, str]]) -> AppQuery:
    """GET /v1/zapier/connections"""
    f = query_fields(items, contract.CONNECTIONS.names)
    return AppQuery(f.user(), _app(f))


def actions_query(items: Iterable[tuple[str, str]]) -> ActionsQuery:
    """GET /v1/zapier/actions"""
    f = query_fields(items, contract.ACTIONS.names)
    action_type = f.text("action_type", ACTION_TYPE)
    return ActionsQuery(f.user(), _app(f), action_type)


def connect_body(body: Any, redirect_uris: tuple[str, ...]) -> ConnectBody:
    """POST /v1/zapier/connect; `redirect_uri` must be one of the registered ones, exactly."""
    f = body_fields(body, contract.CONNECT.names)
    user, app = f.user(), _app(f)
    connect_app = f.text("connect_app", CONNECT_APP)
    redirect_uri = f.raw.get("redirect_uri")
    if redirect_uri is not None and (not isinstance(redirect_uri, str) or redirect_uri not in redirect_uris):
        raise InvalidRequest("redirect_uri must be one of token_exchange.redirect_uris, exactly")
    reconnect_id = f.text("reconnect_id", RECONNECT_ID)
    theme = f.text("theme", THEME)
    return ConnectBody(user, app, connect_app or app, redirect_uri, reconnect_id, theme)


def complete_body(body: Any) -> CompleteBody:
    """POST /v1/zapier/connect/complete: the redirect's query or the popup's message, and the state."""
    f = body_fields(body, contract.COMPLETE.names)
    user = f.user()
    state = f.raw.get("state")
    if not isinstance(state, str) or not state:
        raise InvalidRequest("field state is required: the state /v1/zapier/connect answered")
    authentication_id = f.text("authentication_id", AUTHENTICATION_ID)
    error = f.raw.get("error")
    if error is not None and error not in CONNECT_ERROR.values:
        codes = ", ".join(sorted(CONNECT_ERROR.values))
        raise InvalidRequest(f"field error must be one of the Connect flow's codes: {codes}")
    if (authentication_id is None) == (error is None):
        raise InvalidRequest("send exactly one of authentication_id and error")
    description = f.raw.get("error_description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest("field error_description must be a string")
    redirect_uri = f.raw.get("redirect_uri")
    if redirect_uri is not None and not isinstance(redirect_uri, str):
        raise InvalidRequest("field redirect_uri must be a string")
    return CompleteBody(user, state, authentication_id, error, description, redirect_uri)


def action_call(f: Fields, action: str | None) -> ActionCall:
    """The action part of an inputs, choices or run body (`action` from the path, or the body's field)."""
    user, app = f.user(), _app(f)
    if action is None:
        action = f.required("action", ACTION_KEY)
    elif not ACTION_KEY.matches(action):
        raise InvalidRequest("the action key in the path is malformed")
    action_type = f.required("action_type", ACTION_TYPE)
    connection = f.text("connection", CONNECTION)
    inputs = f.raw.get("inputs", {})
    if not isinstance(inputs, dict):
        raise InvalidRequest("field inputs must be a JSON object of input values")
    try:  # checked here, not when encoding towards Zapier: orjson refuses >64-bit integers and depth > 255
        check_json(inputs, max_depth=MAX_INPUTS_DEPTH, max_bytes=MAX_INPUTS_BYTES)
    except JsonBoundsError as exc:
        raise InvalidRequest(f"field inputs is out of bounds: {exc}") from None
    return ActionCall(user, app, action, action_type, connection, inputs, "connection" in f.raw)


def inputs_body(body: Any, action: str) -> ActionCall:
    """POST /v1/zapier/actions/{key}/inputs"""
    return action_call(body_fields(body, contract.INPUTS.names), action)


def choices_body(body: Any, action: str, input_id: str) -> ChoicesCall:
    """POST /v1/zapier/actions/{key}/inputs/{input_id}/choices"""
    f = body_fields(body, contract.CHOICES.names)
    if not PARTNER_ID.matches(input_id):
        raise InvalidRequest("the input id in the path is malformed")
    return ChoicesCall(action_call(f, action), input_id, f.integer("page", PAGE))


def run_body(body: Any, wait_max: float) -> RunBody:
    """POST /v1/zapier/action-runs"""
    f = body_fields(body, contract.RUN_CREATE.names)
    return RunBody(action_call(f, None), _wait(f, wait_max))


def run_query(items: Iterable[tuple[str, str]], run_id: str, wait_max: float) -> RunQuery:
    """GET /v1/zapier/action-runs/{id}"""
    f = query_fields(items, contract.RUN_STATUS.names)
    if not PARTNER_ID.matches(run_id):
        raise InvalidRequest("the run id in the path is malformed")
    return RunQuery(f.user(), run_id, _wait(f, wait_max))

