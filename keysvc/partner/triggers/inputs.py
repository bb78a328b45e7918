"""Strict parsing of the trigger-inbox routes' inputs (query parameters on GET and DELETE, JSON body
fields on PUT and POST) into typed values. Every malformed input is an InvalidRequest naming the field:
an unknown or repeated field, a wrong type, a missing user, a key outside its charset, an id that is not
a UUID, a lease outside 1 s to 1 h, a `wait` above its maximum, inputs too deep, too large or holding an
integer JSON cannot carry everywhere. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from keysvc.errors import InvalidRequest
from keysvc.partner import contracts as contract
from keysvc.partner.contracts import (
    APP_KEY,
    INBOX_CONNECTION,
    INBOX_KEY,
    INBOX_STATUS,
    LEASE,
    LEASE_ID,
    LEASE_LIMIT,
    LEASE_WAIT,
    MAX_MESSAGE_IDS,
    RUN_WAIT,
    TRIGGER_KEY,
)
from keysvc.partner.fields import User, body_fields, is_uuid, query_fields
from keysvc.partner.triggers.answers import MAX_DEPTH, MAX_INPUTS_BYTES
from keysvc.partner.triggers.json_bounds import JsonBoundsError, check_json

__all__ = ["User"]
LIMIT_DEFAULT = 10
LEASE_DEFAULT = 300


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


def inbox_key(key: str) -> str:
    """The `{key}` path segment: 1 to 100 of letters, digits, _ . : - (starting with a letter or digit)."""
    if not INBOX_KEY.matches(key):
        raise InvalidRequest(f"the inbox key in the path must be {INBOX_KEY.what}")
    return key


def inbox_id(value: str) -> str:
    """The `{id}` path segment: Zapier's inbox id, a UUID."""
    if not is_uuid(value):
        raise InvalidRequest(f"the inbox id in the path must be {contract.INBOX_ID.what}")
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
    f = body_fields(body, contract.INBOX_ENSURE.names)
    return EnsureInbox(
        f.user(),
        inbox_key(key),
        f.required("app", APP_KEY),
        f.required("trigger", TRIGGER_KEY),
        f.text("connection", INBOX_CONNECTION),
        inputs_value(f.raw.get("inputs")),
        f.duration("wait", RUN_WAIT, {"run_wait_max": wait_max}) or 0.0,
        "connection" in f.raw,
    )


def list_query(items: Iterable[tuple[str, str]]) -> ListInboxes:
    """GET /v1/zapier/trigger-inboxes"""
    f = query_fields(items, contract.INBOX_LIST.names)
    status = f.raw.get("status")
    if status is not None and status not in INBOX_STATUS.values:
        raise InvalidRequest(f"query parameter status must be one of {', '.join(INBOX_STATUS.values)}")
    return ListInboxes(f.user(), status)


def inbox_query(items: Iterable[tuple[str, str]], inbox: str) -> InboxRef:
    """GET and DELETE /v1/zapier/trigger-inboxes/{id}: the user in the query."""
    f = query_fields(items, contract.INBOX_GET.names)
    return InboxRef(f.user(), inbox_id(inbox))


def inbox_body(body: Any, inbox: str) -> InboxRef:
    """POST /v1/zapier/trigger-inboxes/{id}/pause and .../resume: the user in the body."""
    f = body_fields(body, contract.INBOX_PAUSE.names)
    return InboxRef(f.user(), inbox_id(inbox))


def lease_body(body: Any, inbox: str, wait_max: float) -> LeaseCall:
    """POST /v1/zapier/trigger-inboxes/{id}/lease: `limit` 1-100 (10), `lease` 1 s to 1 h in whole
    seconds (5m), `wait` 0 to `wait_max` (lease_wait_max; 0)."""
    f = body_fields(body, contract.INBOX_LEASE.names)
    user = f.user()
    lease = f.duration("lease", LEASE, {})
    limit = f.integer("limit", LEASE_LIMIT)
    return LeaseCall(user, inbox_id(inbox), LIMIT_DEFAULT if limit is None else limit,
                     LEASE_DEFAULT if lease is None else int(lease),
                     f.duration("wait", LEASE_WAIT, {"lease_wait_max": wait_max}) or 0.0)


def settle_body(body: Any, inbox: str) -> SettleCall:
    """POST /v1/zapier/trigger-inboxes/{id}/ack and .../release: `lease_id`, optional `message_ids`
    (1 to 100 distinct UUIDs)."""
    f = body_fields(body, contract.INBOX_ACK.names)
    user = f.user()
    lease_id = f.raw.get("lease_id")
    if not LEASE_ID.matches(lease_id):
        raise InvalidRequest(f"field lease_id is required: {LEASE_ID.what}")
    ids = f.raw.get("message_ids")
    message_ids = None
    if ids is not None:
        if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_MESSAGE_IDS
                or not all(isinstance(i, str) and is_uuid(i) for i in ids) or len(set(ids)) != len(ids)):
            raise InvalidRequest(f"field message_ids must be 1 to {MAX_MESSAGE_IDS} distinct message ids (UUIDs)")
        message_ids = tuple(ids)
    return SettleCall(user, inbox_id(inbox), str(lease_id), message_ids)
