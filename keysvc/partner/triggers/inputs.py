"""Strict parsing of the trigger-inbox routes' inputs (query parameters on GET and DELETE, JSON body
fields on PUT and POST) into typed values. Every malformed input is an InvalidRequest naming the field:
an unknown or repeated field, a wrong type, a missing user, a key outside its charset, an id that is not
a UUID, a lease outside 1 s to 1 h, a `wait` above its maximum, inputs too deep, too large or holding an
integer JSON cannot carry everywhere. Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from keysvc.config import parse_duration
from keysvc.errors import ConfigError, InvalidRequest
from keysvc.partner.triggers.answers import MAX_DEPTH, MAX_INPUTS_BYTES, STATUSES, is_uuid
from keysvc.partner.triggers.json_bounds import JsonBoundsError, check_json

IDENTIFIER = re.compile(r"[\x21-\x7e]{1,256}")  # user_id and tenant_id, as /v1/token-exchange
# the inbox key: Zapier allows 100 characters; keysvc keeps them URL-path safe and unambiguous
INBOX_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}")
APP_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,126}(@[A-Za-z0-9_.\-]{1,32})?")  # SlackCLIAPI, slack, X@latest
TRIGGER_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")
CONNECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")
LIMIT_DEFAULT, LIMIT_MAX = 10, 100
LEASE_DEFAULT, LEASE_MIN, LEASE_MAX = 300, 1, 3600
MAX_MESSAGE_IDS = 100


@dataclass(frozen=True)
class User:
    user_id: str
    tenant_id: str


@dataclass(frozen=True)
class EnsureInbox:
    """PUT /v1/zapier/trigger-inboxes/{key}"""

    user: User
    key: str
    app: str
    trigger: str
    connection: str | None  # None: the registry's recorded connection, or an app without authentication
    inputs: dict[str, Any]
    wait: float
    connection_given: bool = True  # False: `connection` omitted, the registry's recorded one is used


@dataclass(frozen=True)
class ListInboxes:
    """GET /v1/zapier/trigger-inboxes"""

    user: User
    status: str | None


@dataclass(frozen=True)
class InboxRef:
    """GET and DELETE /v1/zapier/trigger-inboxes/{id}, POST .../pause and .../resume"""

    user: User
    inbox_id: str


@dataclass(frozen=True)
class LeaseCall:
    """POST /v1/zapier/trigger-inboxes/{id}/lease"""

    user: User
    inbox_id: str
    limit: int
    lease_seconds: int
    wait: float


@dataclass(frozen=True)
class SettleCall:
    """POST /v1/zapier/trigger-inboxes/{id}/ack and .../release; `message_ids` None: the whole lease."""

    user: User
    inbox_id: str
    lease_id: str
    message_ids: tuple[str, ...] | None


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

    def integer(self, name: str, low: int, high: int, default: int) -> int:
        value = self.raw.get(name)
        if value is None:
            return default
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"{self.where} {name} must be an integer from {low} to {high}")
        return value

    def duration(self, name: str, low: float, high: float, default: float, limit: str) -> float:
        value = self.raw.get(name)
        if value is None:
            return default
        if isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,3})?", value):
            value = float(value)
        try:
            seconds = parse_duration(value, name)
        except ConfigError:
            seconds = math.nan
        if not low <= seconds <= high:
            raise InvalidRequest(
                f"{self.where} {name} must be a duration such as 30s or 5m, from {low:g} to {high:g} seconds{limit}"
            )
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


_USER = ("user_id", "tenant_id")


def inbox_key(key: str) -> str:
    """The `{key}` path segment: 1 to 100 of letters, digits, _ . : - (starting with a letter or digit)."""
    if not INBOX_KEY.fullmatch(key):
        raise InvalidRequest("the inbox key in the path must be 1 to 100 letters, digits, _ . : - "
                             "(starting with a letter or digit)")
    return key


def inbox_id(value: str) -> str:
    """The `{id}` path segment: Zapier's inbox id, a UUID."""
    if not is_uuid(value):
        raise InvalidRequest("the inbox id in the path must be Zapier's inbox id (a UUID)")
    return value


def inputs_value(value: Any) -> dict[str, Any]:
    """The trigger's input values: a JSON object, at most 16 levels deep and 64 KiB encoded, integers
    within +-(2**53 - 1)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("field inputs must be a JSON object of the trigger's input values")
    try:
        check_json(value, max_depth=min(16, MAX_DEPTH), max_bytes=MAX_INPUTS_BYTES)
    except JsonBoundsError as exc:
        raise InvalidRequest(f"field inputs is {exc}") from None
    return value


def ensure_body(key: str, body: Any, wait_max: float) -> EnsureInbox:
    """PUT /v1/zapier/trigger-inboxes/{key}; `wait` (until active) at most `wait_max` (run_wait_max)."""
    f = body_fields(body, (*_USER, "app", "trigger", "connection", "inputs", "wait"))
    return EnsureInbox(
        f.user(),
        inbox_key(key),
        f.required("app", APP_KEY, "Zapier's app key, such as SlackCLIAPI (from /v1/zapier/apps)"),
        f.required("trigger", TRIGGER_KEY, "a trigger's key from /v1/zapier/actions?action_type=READ"),
        f.text("connection", CONNECTION, "a Zapier connection id (letters, digits, _ . : -), or null"),
        inputs_value(f.raw.get("inputs")),
        f.duration("wait", 0, wait_max, 0.0, " (run_wait_max)"),
        "connection" in f.raw,
    )


def list_query(items: Iterable[tuple[str, str]]) -> ListInboxes:
    """GET /v1/zapier/trigger-inboxes"""
    f = query_fields(items, (*_USER, "status"))
    status = f.raw.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"query parameter status must be one of {', '.join(STATUSES)}")
    return ListInboxes(f.user(), status)


def inbox_query(items: Iterable[tuple[str, str]], inbox: str) -> InboxRef:
    """GET and DELETE /v1/zapier/trigger-inboxes/{id}: the user in the query."""
    f = query_fields(items, _USER)
    return InboxRef(f.user(), inbox_id(inbox))


def inbox_body(body: Any, inbox: str) -> InboxRef:
    """POST /v1/zapier/trigger-inboxes/{id}/pause and .../resume: the user in the body."""
    f = body_fields(body, _USER)
    return InboxRef(f.user(), inbox_id(inbox))


def lease_body(body: Any, inbox: str, wait_max: float) -> LeaseCall:
    """POST /v1/zapier/trigger-inboxes/{id}/lease: `limit` 1-100 (10), `lease` 1 s to 1 h in whole
    seconds (5m), `wait` 0 to `wait_max` (lease_wait_max; 0)."""
    f = body_fields(body, (*_USER, "limit", "lease", "wait"))
    user = f.user()
    lease = f.duration("lease", LEASE_MIN, LEASE_MAX, LEASE_DEFAULT, "")
    if lease != int(lease):
        raise InvalidRequest("field lease must be whole seconds (Zapier leases by the second)")
    return LeaseCall(user, inbox_id(inbox), f.integer("limit", 1, LIMIT_MAX, LIMIT_DEFAULT), int(lease),
                     f.duration("wait", 0, wait_max, 0.0, " (lease_wait_max)"))


def settle_body(body: Any, inbox: str) -> SettleCall:
    """POST /v1/zapier/trigger-inboxes/{id}/ack and .../release: `lease_id`, optional `message_ids`
    (1 to 100 distinct UUIDs)."""
    f = body_fields(body, (*_USER, "lease_id", "message_ids"))
    user = f.user()
    lease_id = f.raw.get("lease_id")
    if not isinstance(lease_id, str) or not is_uuid(lease_id):
        raise InvalidRequest("field lease_id is required: the lease_id a lease answered (a UUID)")
    ids = f.raw.get("message_ids")
    message_ids = None
    if ids is not None:
        if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_MESSAGE_IDS
                or not all(isinstance(i, str) and is_uuid(i) for i in ids) or len(set(ids)) != len(ids)):
            raise InvalidRequest(f"field message_ids must be 1 to {MAX_MESSAGE_IDS} distinct message ids (UUIDs)")
        message_ids = tuple(ids)
    return SettleCall(user, inbox_id(inbox), lease_id, message_ids)
