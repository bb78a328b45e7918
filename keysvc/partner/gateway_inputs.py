"""Strict parsing of the gateway's inputs (query parameters on GET, JSON body fields on POST) into typed,
validated values. Every malformed input is an InvalidRequest naming the field: an unknown or repeated
field, a wrong type, a missing user, an `app` that is not a UUID, a `wait` above `run_wait_max`, `inputs`
beyond the JSON bounds (nested deeper than 32, over 64 KiB encoded, an integer beyond +-(2**53 - 1), a
non-finite number), a Connect `error` that is not one of the documented codes.
Nothing here does I/O. Which fields each route accepts is its contract's (keysvc.partner.contracts).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keysvc.client.connect import APP_NAME
from keysvc.config import parse_duration
from keysvc.config.exchange import CONNECT_THEME
from keysvc.errors import ConfigError, InvalidRequest
from keysvc.partner import contracts as contract
from keysvc.partner.triggers.json_bounds import JsonBoundsError, check_json

IDENTIFIER = re.compile(r"[\x21-\x7e]{1,256}")  # as /v1/token-exchange: it ends up in a JWT claim
PARTNER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")  # Zapier's connection, run and input ids
ACTION_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
ACTION_TYPE = re.compile(r"[A-Z][A-Z_]{0,31}")
MAX_QUERY = 200
# The codes the Connect flow documents for `error` (RFC 6749 §4.1.2.1's); anything else is refused, never echoed.
CONNECT_ERRORS = frozenset({"access_denied", "invalid_request", "server_error", "temporarily_unavailable"})
MAX_OFFSET = 1_000_000
MAX_INPUTS_DEPTH = 32  # levels of `inputs` (the object itself is level 1): Zapier's fields are flat or shallow
MAX_INPUTS_BYTES = 64 * 1024  # encoded: what the internal listener accepts as a whole body


@dataclass(frozen=True)
class User:
    """Who the call is for: the partner JWT's `sub` and tenant claim."""

    user_id: str
    tenant_id: str


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


class Fields:
    """A request's fields (a JSON object, or query parameters without repeats) and the names it may have."""

    def __init__(self, raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise InvalidRequest(f"unknown {where} {unknown[0][:64]!r}")
        self.raw, self.where = raw, where

    def text(self, name: str, pattern: re.Pattern[str], what: str, *, required: bool = False) -> str | None:
        value = self.raw.get(name)
        if value is None:
            if required:
                raise InvalidRequest(f"{self.where} {name} is required: {what}")
            return None
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidRequest(f"{self.where} {name} must be {what}")
        return value

    def required(self, name: str, pattern: re.Pattern[str], what: str) -> str:
        value = self.text(name, pattern, what, required=True)
        assert value is not None  # nosec B101 - required=True never answers None
        return value

    def user(self) -> User:
        what = "a non-empty string of printable ASCII (at most 256 characters)"
        return User(self.required("user_id", IDENTIFIER, what), self.required("tenant_id", IDENTIFIER, what))

    def app(self, name: str = "app") -> str:
        value = self.raw.get(name)
        if not isinstance(value, str) or not is_uuid(value):
            raise InvalidRequest(f"{self.where} {name} must be Zapier's app id, a UUID from /v1/zapier/apps")
        return value.lower()

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.raw.get(name)
        if value is None:
            return None
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"{self.where} {name} must be an integer from {low} to {high}")
        return value

    def wait(self, most: float) -> float:
        value = self.raw.get("wait")
        if value is None:
            return 0.0
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", value):
            value = float(value)
        try:
            seconds = parse_duration(value, "wait")
        except (ConfigError, OverflowError, ValueError):
            seconds = math.nan
        if not 0 <= seconds <= most:
            raise InvalidRequest(f"{self.where} wait must be a duration from 0 to {most:g} seconds (run_wait_max)")
        return float(seconds)


def query_fields(items: Iterable[tuple[str, str]], known: Iterable[str]) -> Fields:
    """Fields from query parameters; a parameter given twice is refused (which one would count?)."""
    raw: dict[str, str] = {}
    for name, value in items:
        if name in raw:
            raise InvalidRequest(f"query parameter {name[:64]!r} is repeated")
        raw[name] = value
    return Fields(raw, known, "query parameter")


def body_fields(body: Any, known: Iterable[str]) -> Fields:
    """Fields from a JSON body, which must be an object."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return Fields(body, known, "field")


_CONNECTION = "a Zapier connection id (letters, digits, _ . : -), or null for an app without authentication"


def apps_query(items: Iterable[tuple[str, str]]) -> AppsQuery:
    """GET /v1/zapier/apps"""
    f = query_fields(items, contract.APPS.names)
    query = f.raw.get("query")
    if query is not None and (not query.isprintable() or len(query) > MAX_QUERY):
        raise InvalidRequest(f"query parameter query must be printable text of at most {MAX_QUERY} characters")
    return AppsQuery(f.user(), query or None, f.integer("limit", 1, 100), f.integer("offset", 0, MAX_OFFSET))


def connections_query(items: Iterable[tuple[str, str]]) -> AppQuery:
    """GET /v1/zapier/connections"""
    f = query_fields(items, contract.CONNECTIONS.names)
    return AppQuery(f.user(), f.app())


def actions_query(items: Iterable[tuple[str, str]]) -> ActionsQuery:
    """GET /v1/zapier/actions"""
    f = query_fields(items, contract.ACTIONS.names)
    action_type = f.text("action_type", ACTION_TYPE, "an action type such as READ, WRITE or SEARCH")
    return ActionsQuery(f.user(), f.app(), action_type)


def connect_body(body: Any, redirect_uris: tuple[str, ...]) -> ConnectBody:
    """POST /v1/zapier/connect; `redirect_uri` must be one of the registered ones, exactly."""
    f = body_fields(body, contract.CONNECT.names)
    user, app = f.user(), f.app()
    connect_app = f.text("connect_app", APP_NAME, "the Connect URL's app segment (letters, digits, _ . -)")
    redirect_uri = f.raw.get("redirect_uri")
    if redirect_uri is not None and (not isinstance(redirect_uri, str) or redirect_uri not in redirect_uris):
        raise InvalidRequest("redirect_uri must be one of token_exchange.redirect_uris, exactly")
    reconnect_id = f.text("reconnect_id", PARTNER_ID, "the id of the user's expired connection")
    theme = f.text("theme", CONNECT_THEME, "a Connect UI theme name Zapier set up for you (letters, digits, _ . -)")
    return ConnectBody(user, app, connect_app or app, redirect_uri, reconnect_id, theme)


def complete_body(body: Any) -> CompleteBody:
    """POST /v1/zapier/connect/complete: the redirect's query or the popup's message, and the state."""
    f = body_fields(body, contract.COMPLETE.names)
    user = f.user()
    state = f.raw.get("state")
    if not isinstance(state, str) or not state:
        raise InvalidRequest("field state is required: the state /v1/zapier/connect answered")
    authentication_id = f.text("authentication_id", PARTNER_ID, "the connection id the partner returned")
    error = f.raw.get("error")
    if error is not None and (not isinstance(error, str) or error not in CONNECT_ERRORS):
        codes = ", ".join(sorted(CONNECT_ERRORS))
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
    user, app = f.user(), f.app()
    if action is None:
        action = f.required("action", ACTION_KEY, "an action key from /v1/zapier/actions")
    elif not ACTION_KEY.fullmatch(action):
        raise InvalidRequest("the action key in the path is malformed")
    action_type = f.required("action_type", ACTION_TYPE, "an action type such as READ, WRITE or SEARCH")
    connection = f.text("connection", PARTNER_ID, _CONNECTION)
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
    if not PARTNER_ID.fullmatch(input_id):
        raise InvalidRequest("the input id in the path is malformed")
    return ChoicesCall(action_call(f, action), input_id, f.integer("page", 1, MAX_OFFSET))


def run_body(body: Any, wait_max: float) -> RunBody:
    """POST /v1/zapier/action-runs"""
    f = body_fields(body, contract.RUN_CREATE.names)
    return RunBody(action_call(f, None), f.wait(wait_max))


def run_query(items: Iterable[tuple[str, str]], run_id: str, wait_max: float) -> RunQuery:
    """GET /v1/zapier/action-runs/{id}"""
    f = query_fields(items, contract.RUN_STATUS.names)
    if not PARTNER_ID.fullmatch(run_id):
        raise InvalidRequest("the run id in the path is malformed")
    return RunQuery(f.user(), run_id, f.wait(wait_max))


def is_uuid(value: str) -> bool:
    """True for a UUID in its 36-character form."""
    if len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
