"""Zapier's Trigger Inbox answers -> typed, size-bounded values.

Every value from the partner is checked before keysvc uses it: ids are UUIDs (as the document types
them), statuses and pause reasons short lower-case words (the published enums, and any new word of the
same form, so a new status does not break every call), times ISO 8601, lists and payloads bounded. An
answer that does not fit is one BadPartnerAnswer (502 upstream_error) naming the member, never a
KeyError or TypeError and never the partner's value itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keysvc.errors import UpstreamError
from keysvc.partner.fields import is_uuid
from keysvc.partner.triggers.json_bounds import JsonBoundsError, check_json

STATUSES = ("initializing", "active", "paused", "deleting", "initialization_failure")
PAUSED_REASONS = ("user", "authentication", "authentication_access_revoked", "partner_revoked",
                  "subscribe_failed", "migrate_failed", "abandoned", "unknown", "upstream_failures")
# the pauses only a new Connect can end: the registry's "reconnect required"
RECONNECT_REASONS = frozenset({"authentication", "authentication_access_revoked"})
WORD = re.compile(r"[a-z][a-z0-9_]{0,63}")
KEY_CHARS = 100
TEXT_CHARS = 256  # app_key, action_key, connection_id, error codes
URL_CHARS = 2048
DETAIL_CHARS = 500
MAX_RESULTS = 100  # lease_limit's maximum; ack and release answer at most what one lease holds
MAX_PAGE = 1000  # inboxes on one list page
MAX_COUNT = 10**9
MAX_PAYLOAD_BYTES = 1 << 20  # one message's payload, encoded
MAX_INPUTS_BYTES = 64 << 10
MAX_DEPTH = 32
ID_CHARS = 36


class BadPartnerAnswer(UpstreamError):
    """Zapier answered something the Trigger Inbox document does not allow (502 upstream_error)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the Zapier Trigger Inbox API answered a malformed {what}")


@dataclass(frozen=True)
class Subscription:
    app_key: str
    action_key: str
    connection_id: str | None
    inputs: dict[str, Any]


@dataclass(frozen=True)
class Inbox:
    id: str
    key: str | None
    status: str
    paused_reason: str | None
    subscription: Subscription
    notification_url: str | None
    created_at: datetime | None

    @property
    def reconnect_required(self) -> bool:
        """Paused because the user's connection no longer authenticates."""
        return self.status == "paused" and self.paused_reason in RECONNECT_REASONS


@dataclass(frozen=True)
class InboxPage:
    count: int
    inboxes: tuple[Inbox, ...]
    has_next: bool


@dataclass(frozen=True)
class Message:
    id: str
    status: str | None
    payload: Any
    attributes: dict[str, Any]
    lease_count: int | None
    created_at: datetime | None


@dataclass(frozen=True)
class InboxAttributes:
    status: str
    paused_reason: str | None


@dataclass(frozen=True)
class Lease:
    lease_id: str | None
    leased_until: datetime | None
    messages: tuple[Message, ...]
    inbox: InboxAttributes | None


@dataclass(frozen=True)
class Settled:
    """An ack or release answer: which messages it settled."""

    settled_id: str | None
    message_ids: tuple[str, ...]


@dataclass(frozen=True)
class Problem:
    """The first item of an error answer, bounded and with control characters removed."""

    code: str | None
    detail: str | None


@dataclass(frozen=True)
class Notification:
    """Zapier's messageAvailable POST to a notification_url."""

    inbox_id: str
    received_message_count: int
    redelivery: bool


class _Reader:
    """One JSON object from the partner, read member by member; `what` names it in errors."""

    def __init__(self, value: Any, what: str) -> None:
        if not isinstance(value, dict):
            raise BadPartnerAnswer(what)
        self.raw: dict[str, Any] = value
        self.what = what

    def bad(self, member: str) -> BadPartnerAnswer:
        return BadPartnerAnswer(f"{self.what} ({member})")

    def uuid(self, member: str, *, nullable: bool = False) -> str | None:
        value = self.raw.get(member)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not is_uuid(value):
            raise self.bad(member)
        return value

    def required_uuid(self, member: str) -> str:
        value = self.uuid(member)
        assert value is not None  # nosec B101 - nullable=False never answers None
        return value

    def text(self, member: str, most: int, *, nullable: bool = True, pattern: re.Pattern[str] | None = None
             ) -> str | None:
        value = self.raw.get(member)
        if value is None and nullable:
            return None
        if not isinstance(value, str) or not 0 < len(value) <= most or not value.isprintable():
            raise self.bad(member)
        if pattern is not None and not pattern.fullmatch(value):
            raise self.bad(member)
        return value

    def required_text(self, member: str, most: int, pattern: re.Pattern[str] | None = None) -> str:
        value = self.text(member, most, nullable=False, pattern=pattern)
        assert value is not None  # nosec B101 - nullable=False never answers None
        return value

    def integer(self, member: str, low: int, high: int, *, nullable: bool = True) -> int | None:
        value = self.raw.get(member)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.bad(member)
        return value

    def time(self, member: str) -> datetime | None:
        value = self.raw.get(member)
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > 40:
            raise self.bad(member)
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.bad(member) from None
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

    def json(self, member: str, most: int, *, default: Any = None, object_only: bool = False) -> Any:
        value = self.raw.get(member, default)
        if object_only and not isinstance(value, dict):
            raise self.bad(member)
        try:
            check_json(value, max_depth=MAX_DEPTH, max_bytes=most)
        except JsonBoundsError:
            raise self.bad(member) from None
        return value

    def items(self, member: str, most: int) -> list[Any]:
        value = self.raw.get(member)
        if not isinstance(value, list) or len(value) > most:
            raise self.bad(member)
        return value



def parse_inbox(value: Any) -> Inbox:
    """An Inbox object (ensure, create, get, patch, pause, resume answers and list items)."""
    r = _Reader(value, "inbox")
    sub = _Reader(r.raw.get("subscription"), "inbox subscription")
    subscription = Subscription(
        sub.required_text("app_key", TEXT_CHARS),
        sub.required_text("action_key", TEXT_CHARS),
        sub.text("connection_id", TEXT_CHARS),
        sub.json("inputs", MAX_INPUTS_BYTES, default={}, object_only=True),
    )
    key = r.text("key", KEY_CHARS) or r.text("name", KEY_CHARS)  # `name`: the deprecated alias
    url = r.raw.get("notification_url")
    if url is not None and (not isinstance(url, str) or len(url) > URL_CHARS or not url.isprintable()):
        raise r.bad("notification_url")
    return Inbox(
        r.required_uuid("id"),
        key,
        r.required_text("status", 64, WORD),
        r.text("paused_reason", 64, pattern=WORD),
        subscription,
        url or None,
        r.time("created_at"),
    )


def parse_inbox_page(value: Any) -> InboxPage:
    """One page of GET /inboxes: `{count, next, previous, results}`."""
    r = _Reader(value, "inbox list")
    count = r.integer("count", 0, MAX_COUNT, nullable=False)
    assert count is not None  # nosec B101 - nullable=False never answers None
    inboxes = tuple(parse_inbox(item) for item in r.items("results", MAX_PAGE))
    nxt = r.raw.get("next")
    if nxt is not None and (not isinstance(nxt, str) or len(nxt) > URL_CHARS):
        raise r.bad("next")
    return InboxPage(count, inboxes, nxt is not None)


def parse_message(value: Any) -> Message:
    """One message of a lease answer."""
    r = _Reader(value, "message")
    attributes = r.json("message_attributes", MAX_INPUTS_BYTES, default={}, object_only=True)
    lease_count = attributes.get("lease_count")
    if lease_count is not None and (isinstance(lease_count, bool) or not isinstance(lease_count, int)
                                    or not 0 <= lease_count <= MAX_COUNT):
        raise r.bad("message_attributes.lease_count")
    return Message(
        r.required_uuid("id"),
        r.text("status", 64, pattern=WORD),
        r.json("payload", MAX_PAYLOAD_BYTES),
        attributes,
        lease_count,
        r.time("created_at"),
    )


def parse_lease(value: Any) -> Lease:
    """The lease answer; messages without a lease id could never be acked, so that is malformed too."""
    r = _Reader(value, "lease answer")
    messages = tuple(parse_message(item) for item in r.items("results", MAX_RESULTS))
    lease_id = r.uuid("lease_id", nullable=True)
    leased_until = r.time("leased_until")
    if messages and (lease_id is None or leased_until is None):
        raise r.bad("lease_id")
    if len({m.id for m in messages}) != len(messages):
        raise r.bad("results")
    attrs = r.raw.get("inbox_attributes")
    inbox = None
    if attrs is not None:
        a = _Reader(attrs, "lease answer inbox_attributes")
        inbox = InboxAttributes(a.required_text("status", 64, WORD), a.text("paused_reason", 64, pattern=WORD))
    return Lease(lease_id, leased_until, messages, inbox)


def parse_settled(value: Any, kind: str) -> Settled:
    """An ack (`kind="acked"`) or release (`kind="released"`) answer: `{<kind>_id, results}`."""
    if kind not in ("acked", "released"):
        raise ValueError("kind is acked or released")
    r = _Reader(value, f"{kind[:-1]} answer")
    ids = []
    for item in r.items("results", MAX_RESULTS):
        ids.append(_Reader(item, f"{kind} message").required_uuid("id"))
    return Settled(r.uuid(f"{kind}_id", nullable=True), tuple(ids))


def parse_problem(value: Any) -> Problem | None:
    """The first error of `{"errors": [{code, detail, ...}]}`, or None when the body is not that shape
    (an error answer is mapped by its status either way; its text is only ever shown sanitised)."""
    if not isinstance(value, dict) or not isinstance(value.get("errors"), list) or not value["errors"]:
        return None
    first = value["errors"][0]
    if not isinstance(first, dict):
        return None
    code = first.get("code")
    detail = first.get("detail")
    return Problem(
        code if isinstance(code, str) and WORD.fullmatch(code) else None,
        _printable(detail, DETAIL_CHARS) if isinstance(detail, str) else None,
    )


def parse_notification(value: Any) -> Notification:
    """The body Zapier POSTs to a notification_url: `{inbox_id, received_message_count, redelivery}`."""
    r = _Reader(value, "notification")
    count = r.integer("received_message_count", 0, MAX_COUNT, nullable=False)
    redelivery = r.raw.get("redelivery", False)
    if not isinstance(redelivery, bool) or count is None:
        raise r.bad("redelivery")
    return Notification(r.required_uuid("inbox_id"), count, redelivery)


def _printable(text: str, most: int) -> str:
    cleaned = "".join(c if c.isprintable() else " " for c in text[:most])
    return cleaned.strip()
