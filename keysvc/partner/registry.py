"""The connection registry: the user's verified usable connection per (tenant, user, app), and the Connect
states already completed (single use).

    registry.record(tenant, user, app, connection_id, title)   /connect/complete and /connections found it
    await registry.usable(tenant, user, app) -> Connection | None   a call omitted `connection`
    await registry.expire(tenant, user, app, connection_id)    Zapier refused it: never used again
    await registry.consume_state(state, expires_at) -> bool    True the first time a Connect state completes
    await registry.remember_run(tenant, user, run_id, app, connection_id)   an action run was created with it
    await registry.run(tenant, user, run_id) -> RunRecord | None    a poll of that run: its connection

Two kinds, the same answers:
    StoreRegistry(store)   in the gateway store (token_exchange.store): every replica sees the same
                           connections, and a state completes once across all replicas. A store failure is
                           503 `unavailable` with Retry-After (fail closed), never a 500.
    MemoryRegistry()       no store configured: this replica's memory only (bounded, lost on restart; with
                           several replicas, a caller omitting `connection` may hit a replica that has none
                           recorded yet: 409 connection_required, and states are single-use per replica).

Nothing secret goes in: connection ids and titles are Zapier's, a state is kept as its SHA-256 digest.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from keysvc.errors import Unavailable
from keysvc.partner.store import Connection, GatewayStore, RunRecord, StoreUnavailable, state_digest

T = TypeVar("T")
MAX_MEMORY_ENTRIES = 100_000  # the memory registry forgets its oldest entries past this
RUN_MEMORY = 86_400.0  # seconds a run's connection is remembered: callers poll a run within minutes


class ConnectionRegistry(Protocol):
    """Where the gateway records and finds the user's usable connection (module docstring)."""

    kind: str  # "shared" (the store) or "local" (this replica's memory)

    async def record(self, tenant_id: str, user_id: str, app: str, connection_id: str, title: str = "") -> None:
        """The verified usable connection of (tenant, user, app), replacing any earlier one."""
        ...

    async def usable(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        """The recorded connection, or None (none recorded, or the recorded one expired)."""
        ...

    async def expire(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        """Zapier refused `connection_id`: never hand it out again until a new Connect completes."""
        ...

    async def consume_state(self, state: str, expires_at: float) -> bool:
        """True the first time this Connect state completes, False after."""
        ...

    async def remember_run(self, tenant_id: str, user_id: str, run_id: str, app: str, connection_id: str) -> None:
        """The connection an action run was created with, for RUN_MEMORY seconds."""
        ...

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        """The remembered run of this user, or None."""
        ...


class StoreRegistry:
    """The registry in the gateway store: shared by every replica."""

    kind = "shared"

    def __init__(self, store: GatewayStore, *, wall: Callable[[], float] = time.time) -> None:
        self._store = store
        self._wall = wall  # the store compares expiry times with its own wall clock

    def __repr__(self) -> str:
        return f"StoreRegistry({self._store!r})"

    async def record(self, tenant_id: str, user_id: str, app: str, connection_id: str, title: str = "") -> None:
        """GatewayStore.record_connection (503 when the store fails)."""
        await _answered(lambda: self._store.record_connection(tenant_id, user_id, app, connection_id, title))

    async def usable(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        """GatewayStore.connection (503 when the store fails)."""
        return await _answered(lambda: self._store.connection(tenant_id, user_id, app))

    async def expire(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        """GatewayStore.expire_connection (503 when the store fails)."""
        return await _answered(lambda: self._store.expire_connection(tenant_id, user_id, app, connection_id))

    async def consume_state(self, state: str, expires_at: float) -> bool:
        """GatewayStore.consume_state of the state's digest (503 when the store fails: fail closed)."""
        return await _answered(lambda: self._store.consume_state(state_digest(state), expires_at))

    async def remember_run(self, tenant_id: str, user_id: str, run_id: str, app: str, connection_id: str) -> None:
        """GatewayStore.record_run (503 when the store fails)."""
        run = RunRecord(run_id, tenant_id, user_id, app, connection_id, self._wall() + RUN_MEMORY)
        await _answered(lambda: self._store.record_run(run))

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        """GatewayStore.run (503 when the store fails)."""
        return await _answered(lambda: self._store.run(tenant_id, user_id, run_id))


async def _answered(call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call()
    except StoreUnavailable as exc:
        raise Unavailable("the gateway store is unavailable; try again shortly", retry_after=exc.retry_after) from None


class MemoryRegistry:
    """The registry in this replica's memory (no store configured): bounded, lost on restart."""

    kind = "local"

    def __init__(self, *, wall: Callable[[], float] = time.time, limit: int = MAX_MEMORY_ENTRIES) -> None:
        self._wall = wall
        self._limit = limit
        self._connections: OrderedDict[tuple[str, str, str], Connection] = OrderedDict()
        self._states: OrderedDict[str, float] = OrderedDict()
        self._runs: OrderedDict[str, RunRecord] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryRegistry({len(self._connections)} connections)"

    async def record(self, tenant_id: str, user_id: str, app: str, connection_id: str, title: str = "") -> None:
        """Remember the connection (the oldest entry goes past the limit)."""
        key = (tenant_id, user_id, app)
        self._connections.pop(key, None)
        self._connections[key] = Connection(tenant_id, user_id, app, connection_id, title, self._wall())
        while len(self._connections) > self._limit:
            self._connections.popitem(last=False)

    async def usable(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        """The remembered connection unless it expired."""
        found = self._connections.get((tenant_id, user_id, app))
        return None if found is None or found.expired else found

    async def expire(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        """Mark the remembered connection expired, if it is `connection_id`."""
        key = (tenant_id, user_id, app)
        found = self._connections.get(key)
        if found is None or found.connection_id != connection_id or found.expired:
            return False
        self._connections[key] = Connection(tenant_id, user_id, app, connection_id, found.title, found.recorded_at,
                                            expired=True)
        return True

    async def consume_state(self, state: str, expires_at: float) -> bool:
        """True the first time (in this replica) before `expires_at`; expired digests are dropped."""
        now = self._wall()
        for digest, until in list(self._states.items()):
            if until > now:
                break
            del self._states[digest]
        digest = state_digest(state)
        if expires_at <= now or digest in self._states:
            return False
        self._states[digest] = expires_at
        while len(self._states) > self._limit:
            self._states.popitem(last=False)
        return True

    async def remember_run(self, tenant_id: str, user_id: str, run_id: str, app: str, connection_id: str) -> None:
        """Remember the run (the oldest goes past the limit)."""
        self._runs[run_id] = RunRecord(run_id, tenant_id, user_id, app, connection_id, self._wall() + RUN_MEMORY)
        while len(self._runs) > self._limit:
            self._runs.popitem(last=False)

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        """The remembered run, when this user's and not expired."""
        found = self._runs.get(run_id)
        if found is None or (found.tenant_id, found.user_id) != (tenant_id, user_id):
            return None
        return found if found.expires_at > self._wall() else None
