"""The gateway store: what the partner gateway shares across replicas (`token_exchange.store`).

    settings.py  (defined in keysvc.config.store_url, so the configuration checks a URL by these rules)
                 StoreSettings.from_url: sqlite:///path (one replica) or postgresql://user@host:port/db
                 (any number); read_password (password_file or password_env); the password hidden
    base.py      the GatewayStore protocol; Connection, InboxRecord, RunRecord; state_digest (a Connect state's SHA-256)
    gcra.py      PURE: the budget's arithmetic (GCRA: one theoretical arrival time per budget), the cooldown
    schema.py    the versioned migrations both engines apply at start-up
    sqlite.py    SqliteStore: stdlib sqlite3 in a worker thread, BEGIN IMMEDIATE around each update
    postgres.py  PostgresStore: psycopg 3, a few kept connections, row locks, an advisory lock to migrate
    budget.py    SharedBudget: the per-replica ApiBudget's interface over the store, with a local fallback
                 budget (per_minute / fallback_divisor) and `store_up` while the store is unreachable

What it holds: one row per budget (theoretical arrival time, cooldown end), the usable connection per
(tenant, user, app), digests of consumed Connect states until they expire, trigger inboxes keysvc
ensured, and the connection each action run was created with (for a day: its poll may expire it). Never a
secret: no access token, connect token, client secret or raw state.

Every call has a deadline (`timeout`, 2 s by default), held twice: asyncio.wait_for in the process and a
bound in the database (PostgreSQL statement_timeout, lock_timeout and connect_timeout; SQLite's busy
timeout and a progress handler). Past it, or on any failure, the call raises StoreUnavailable (defined in
keysvc.errors, the one exception tree; re-exported here).

This package depends only on keysvc.errors, keysvc.clock, keysvc.config.store_url (stdlib only), the
stdlib and psycopg. keysvc.partner.wiring opens it when `token_exchange.store` is configured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keysvc.clock import Clock
from keysvc.errors import StoreUnavailable

from .base import Connection, GatewayStore, InboxRecord, RunRecord, state_digest
from .budget import LocalBudget, SharedBudget
from .gcra import Limit, Refused
from .settings import DEFAULT_FALLBACK_DIVISOR, DEFAULT_TIMEOUT, StoreSettings, read_password

__all__ = [
    "DEFAULT_FALLBACK_DIVISOR", "DEFAULT_TIMEOUT", "Connection", "GatewayStore", "InboxRecord", "Limit",
    "LocalBudget", "Refused", "RunRecord", "SharedBudget", "StoreSettings", "StoreUnavailable", "open_store",
    "read_password",
    "state_digest",
]


def _sqlite(settings: StoreSettings, clock: Clock | None) -> GatewayStore:
    from .sqlite import SqliteStore

    assert settings.path is not None  # nosec B101 - from_url sets it for sqlite
    return SqliteStore(settings.path, timeout=settings.timeout, clock=clock)


def _postgresql(settings: StoreSettings, clock: Clock | None) -> GatewayStore:
    from .postgres import PostgresStore  # psycopg is loaded only when PostgreSQL is configured

    return PostgresStore(settings, clock=clock)


ENGINES: dict[str, Callable[[StoreSettings, Any], GatewayStore]] = {"sqlite": _sqlite, "postgresql": _postgresql}


def open_store(settings: StoreSettings, *, clock: Clock | None = None) -> GatewayStore:
    """The store `settings` name (not connected yet: call `await store.migrate()` at start-up)."""
    return ENGINES[settings.engine](settings, clock)
