"""What the gateway keeps across replicas: the `GatewayStore` protocol and its records.

Every method is a coroutine bounded by the store's `timeout` (asyncio and the database server both enforce
it) and raises only `StoreUnavailable` on failure. Nothing secret is ever passed in or written: budgets are
numbers, connections are Zapier's ids and titles, Connect states are SHA-256 digests, inboxes are ids and keys.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from .gcra import Limit, Refused

DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Connection:
    """The verified usable connection of (tenant, user) for `app`; `expired` once Zapier refused it."""

    tenant_id: str
    user_id: str
    app: str
    connection_id: str
    title: str
    recorded_at: float
    expired: bool = False


@dataclass(frozen=True)
class InboxRecord:
    """A trigger inbox keysvc ensured: Zapier's `inbox_id`, whose it is and what it subscribes to."""

    inbox_id: str
    tenant_id: str
    user_id: str
    key: str
    app: str
    trigger: str


@dataclass(frozen=True)
class RunRecord:
    """The connection an action run was created with (the run's poll can then expire it), until `expires_at`."""

    run_id: str
    tenant_id: str
    user_id: str
    app: str
    connection_id: str
    expires_at: float


def state_digest(state: str) -> str:
    """What the store keeps of a Connect `state`: its SHA-256, hex (the state itself is never written)."""
    return hashlib.sha256(state.encode()).hexdigest()


def check_digest(digest: str) -> str:
    """`digest` as `state_digest` makes it; ValueError for anything else (a raw state must never be stored)."""
    if not DIGEST.fullmatch(digest):
        raise ValueError("consume_state takes state_digest(state), not the state")
    return digest


class GatewayStore(Protocol):
    """Shared state of the partner gateway (one SQLite file, or one PostgreSQL database for many replicas)."""

    @property
    def timeout(self) -> float:
        """The deadline of every call, in seconds."""
        ...

    async def migrate(self) -> int:
        """Create or upgrade the schema (idempotent, safe when replicas start together); its version."""
        ...

    async def ping(self) -> None:
        """One round trip: StoreUnavailable when the store cannot answer."""
        ...

    async def admit(self, budget: str, limit: Limit, now: float, max_wait: float) -> float | Refused:
        """Reserve one request from the shared `budget` (gcra.admit, applied atomically)."""
        ...

    async def cool_down(self, budget: str, limit: Limit, now: float, retry_after: float) -> float:
        """A 429 seen by this replica: every replica waits; the cooldown's end (the later one wins)."""
        ...

    async def cooldown_until(self, budget: str) -> float:
        """When `budget`'s cooldown ends (seconds since the epoch; 0 when it never had one)."""
        ...

    async def record_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str,
                                title: str = "") -> None:
        """Record the verified usable connection of (tenant, user, app), replacing any earlier one."""
        ...

    async def connection(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        """The recorded usable connection, or None (none recorded, or the recorded one expired)."""
        ...

    async def expire_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        """Zapier refused `connection_id`: never hand it out again. False when it is not the recorded one
        (another replica recorded a newer connection meanwhile: that one stays usable)."""
        ...

    async def consume_state(self, state_digest: str, expires_at: float) -> bool:
        """True the first time a Connect state's digest is consumed across all replicas, False after (or
        once `expires_at` passed). Expired digests are purged on the way."""
        ...

    async def record_run(self, run: RunRecord) -> None:
        """Remember the connection an action run was created with until `run.expires_at` (expired rows go)."""
        ...

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        """The run's record, when this user's and not expired."""
        ...

    async def record_inbox(self, inbox: InboxRecord) -> None:
        """Record (or replace) a trigger inbox keysvc ensured."""
        ...

    async def inbox(self, inbox_id: str) -> InboxRecord | None:
        """One recorded inbox, or None."""
        ...

    async def inboxes(self) -> list[InboxRecord]:
        """Every recorded inbox, ordered by id."""
        ...

    async def delete_inbox(self, inbox_id: str) -> bool:
        """Forget an inbox; False when it was not recorded."""
        ...

    async def close(self) -> None:
        """Release connections (idempotent)."""
        ...
