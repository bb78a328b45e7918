"""What the Trigger Inbox fake holds: inboxes, their messages and leases, and the records a test reads
back (request log, violations, notifications sent). Plain dataclasses; no HTTP here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tests.published_shapes import User


def iso(epoch: float) -> str:
    """Epoch seconds -> ISO 8601 in UTC with a `Z`, as Zapier writes times."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Message:
    """One message of an inbox; `lease_id`/`leased_until` set while a lease holds it."""

    id: str
    payload: Any
    created_at: float
    lease_count: int = 0
    lease_id: str | None = None
    leased_until: float = 0.0

    def held(self, now: float) -> bool:
        """True while a lease that has not expired holds it."""
        return self.lease_id is not None and now < self.leased_until

    def as_json(self, status: str) -> dict[str, Any]:
        """The answers' message object."""
        return {
            "id": self.id,
            "created_at": iso(self.created_at),
            "status": status,
            "payload": self.payload,
            "message_attributes": {"lease_count": self.lease_count},
        }


@dataclass
class Inbox:
    """One inbox of one user. `activates_at`: when an `initializing` inbox turns `active` (None: never)."""

    id: str
    user: User
    key: str | None
    subscription: dict[str, Any]
    notification_url: str | None
    created_at: float
    status: str = "initializing"
    paused_reason: str | None = None
    activates_at: float | None = None
    deleted_at: float | None = None
    messages: list[Message] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The document's Inbox object (with both `key` and its deprecated alias `name`)."""
        out: dict[str, Any] = {
            "id": self.id,
            "created_at": iso(self.created_at),
            "status": self.status,
            "subscription": self.subscription,
            "paused_reason": self.paused_reason,
            "notification_url": self.notification_url,
        }
        if self.key is not None:
            out["key"] = out["name"] = self.key
        return out


@dataclass(frozen=True)
class Notice:
    """A notification the fake POSTed: its URL, body, and the answer's status (None: no answer)."""

    url: str
    body: dict[str, Any]
    status: int | None


@dataclass
class Failure:
    """An injected failure for the next request(s): status, error code, Retry-After, how many left."""

    status: int
    code: str
    retry_after: int | None
    remaining: int
