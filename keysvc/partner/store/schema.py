"""The store's schema, versioned: migration N is a list of statements, applied once, in order, recorded
in `gateway_schema`. Add a migration, never edit one that shipped. Both engines share the text (the
types used mean the same in SQLite and PostgreSQL). No column holds a secret.

Each engine runs the pending ones in ONE transaction under its own lock, so replicas starting at once
queue up and the later ones find nothing to do: PostgreSQL takes a transaction-scoped advisory lock
(`MIGRATION_LOCK`), SQLite `BEGIN IMMEDIATE` (the database's write lock).
"""

from __future__ import annotations

# pg_advisory_xact_lock's key: any constant no other code uses; this one spells "keysvcgw" in ASCII
MIGRATION_LOCK = 0x6B6579737663_6777 & 0x7FFFFFFFFFFFFFFF

SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS gateway_schema (
    version INTEGER PRIMARY KEY,
    applied_at DOUBLE PRECISION NOT NULL
)"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the shared budget, the connection registry, Connect states, trigger inboxes
        """CREATE TABLE gateway_budget (
            name TEXT PRIMARY KEY,
            tat DOUBLE PRECISION NOT NULL,
            cooldown_until DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE gateway_connection (
            tenant_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            app TEXT NOT NULL,
            connection_id TEXT NOT NULL,
            title TEXT NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL,
            expired_at DOUBLE PRECISION,
            PRIMARY KEY (tenant_id, user_id, app)
        )""",
        """CREATE TABLE gateway_connect_state (
            digest TEXT PRIMARY KEY,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX gateway_connect_state_expiry ON gateway_connect_state (expires_at)",
        """CREATE TABLE gateway_trigger_inbox (
            inbox_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            inbox_key TEXT NOT NULL,
            app TEXT NOT NULL,
            trigger_key TEXT NOT NULL,
            recorded_at DOUBLE PRECISION NOT NULL
        )""",
    ),
    (  # 2: the connection each action run was created with, so a poll can expire it (until expires_at)
        """CREATE TABLE gateway_action_run (
            run_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            app TEXT NOT NULL,
            connection_id TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX gateway_action_run_expiry ON gateway_action_run (expires_at)",
    ),
)

VERSION = len(MIGRATIONS)


def pending(current: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations after version `current`, numbered from 1."""
    return [(number, statements) for number, statements in enumerate(MIGRATIONS, start=1) if number > current]
