"""The gateway store in one SQLite file: one replica (`sqlite:///path`), the stdlib's sqlite3.

One connection, used by one worker thread, so the event loop never blocks on the disk. A call's deadline
is enforced three ways: asyncio.wait_for around it, SQLite's busy timeout (waiting for another process's
write lock), and a progress handler that aborts a statement still running past the deadline. Every
read-modify-write runs in `BEGIN IMMEDIATE` (the database's write lock taken first), so even two processes
sharing the file (a replica and a CLI) never interleave one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from keysvc.clock import Clock, SystemClock
from keysvc.errors import StoreUnavailable

from . import gcra, schema
from .base import Connection, InboxRecord, RunRecord, check_digest
from .gcra import BudgetState, Limit, Refused

T = TypeVar("T")
PROGRESS_STEPS = 1000  # SQLite VM instructions between two deadline checks


class SqliteStore:
    """`GatewayStore` over a SQLite file (created with its directory when missing)."""

    def __init__(self, path: Path, *, timeout: float = 2.0, clock: Clock | None = None) -> None:
        self._path = path
        self._timeout = timeout
        self._clock = clock or SystemClock()
        self._db: sqlite3.Connection | None = None
        self._deadline = 0.0
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")

    def __repr__(self) -> str:
        return f"SqliteStore(sqlite:///{self._path}, timeout={self._timeout:g})"

    @property
    def timeout(self) -> float:
        return self._timeout

    # --- the one way to the database -------------------------------------------------------------------

    async def _call(self, operation: str, work: Callable[[sqlite3.Connection], T], timeout: float | None = None) -> T:
        limit = self._timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._worker, self._run, work, limit), limit)
        except TimeoutError:
            raise StoreUnavailable(operation, f"no answer within {limit:g}s") from None
        except sqlite3.Error as exc:
            raise StoreUnavailable(operation, f"SQLite {type(exc).__name__}") from None
        except OSError as exc:
            raise StoreUnavailable(operation, f"{type(exc).__name__} (errno {exc.errno})") from None
        except RuntimeError:  # the worker was shut down: the store is closed
            raise StoreUnavailable(operation, "the store is closed") from None

    def _run(self, work: Callable[[sqlite3.Connection], T], limit: float) -> T:
        db = self._connect(limit)
        self._deadline = time.monotonic() + limit
        try:
            return work(db)
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise

    def _connect(self, limit: float) -> sqlite3.Connection:
        if self._db is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit, transactions only where written (BEGIN IMMEDIATE)
            db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
            self._db = db
        self._db.execute(f"PRAGMA busy_timeout={int(limit * 1000)}")
        return self._db

    def _past_deadline(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0  # non-zero aborts the statement (OperationalError)

    @staticmethod
    def _write(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.rollback()
            raise
        db.commit()
        return result

    # --- schema ----------------------------------------------------------------------------------------

    async def migrate(self, timeout: float = 30.0) -> int:
        now = self._clock.now()

        def work(db: sqlite3.Connection) -> int:
            db.execute(schema.SCHEMA_TABLE)
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM gateway_schema").fetchone()[0]
            for number, statements in schema.pending(current):
                for statement in statements:
                    db.execute(statement)
                db.execute("INSERT INTO gateway_schema (version, applied_at) VALUES (?, ?)", (number, now))
            return max(int(current), schema.VERSION)

        return await self._call("migrate", lambda db: self._write(db, work), timeout)

    async def ping(self) -> None:
        await self._call("ping", lambda db: db.execute("SELECT 1").fetchone())

    # --- the shared budget -----------------------------------------------------------------------------

    async def admit(self, budget: str, limit: Limit, now: float, max_wait: float) -> float | Refused:
        def work(db: sqlite3.Connection) -> float | Refused:
            decision, after = gcra.admit(_budget_row(db, budget), limit, now, max_wait)
            if not isinstance(decision, Refused):
                _store_budget(db, budget, after)
            return decision

        return await self._call("admit", lambda db: self._write(db, work))

    async def cool_down(self, budget: str, limit: Limit, now: float, retry_after: float) -> float:
        def work(db: sqlite3.Connection) -> float:
            after = gcra.cool_down(_budget_row(db, budget), limit, now, retry_after)
            _store_budget(db, budget, after)
            return after.cooldown_until

        return await self._call("cool_down", lambda db: self._write(db, work))

    async def cooldown_until(self, budget: str) -> float:
        def work(db: sqlite3.Connection) -> float:
            row = db.execute("SELECT cooldown_until FROM gateway_budget WHERE name = ?", (budget,)).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._call("cooldown_until", work)

    # --- the connection registry -----------------------------------------------------------------------

    async def record_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str,
                                title: str = "") -> None:
        row = (tenant_id, user_id, app, connection_id, title, self._clock.now())
        await self._call("record_connection", lambda db: db.execute(
            "INSERT INTO gateway_connection (tenant_id, user_id, app, connection_id, title, recorded_at, expired_at)"
            " VALUES (?, ?, ?, ?, ?, ?, NULL) ON CONFLICT (tenant_id, user_id, app) DO UPDATE SET"
            " connection_id = excluded.connection_id, title = excluded.title, recorded_at = excluded.recorded_at,"
            " expired_at = NULL", row))

    async def connection(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        def work(db: sqlite3.Connection) -> Connection | None:
            row = db.execute(
                "SELECT connection_id, title, recorded_at FROM gateway_connection WHERE tenant_id = ? AND"
                " user_id = ? AND app = ? AND expired_at IS NULL", (tenant_id, user_id, app)).fetchone()
            return None if row is None else Connection(tenant_id, user_id, app, row[0], row[1], float(row[2]))

        return await self._call("connection", work)

    async def expire_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        now = self._clock.now()
        cursor = await self._call("expire_connection", lambda db: db.execute(
            "UPDATE gateway_connection SET expired_at = ? WHERE tenant_id = ? AND user_id = ? AND app = ?"
            " AND connection_id = ? AND expired_at IS NULL", (now, tenant_id, user_id, app, connection_id)))
        return cursor.rowcount == 1

    # --- single-use Connect states ---------------------------------------------------------------------

    async def consume_state(self, state_digest: str, expires_at: float) -> bool:
        digest, now = check_digest(state_digest), self._clock.now()
        if expires_at <= now:
            return False

        def work(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM gateway_connect_state WHERE expires_at <= ?", (now,))
            inserted = db.execute("INSERT INTO gateway_connect_state (digest, expires_at) VALUES (?, ?)"
                                  " ON CONFLICT (digest) DO NOTHING", (digest, expires_at))
            return inserted.rowcount == 1

        return await self._call("consume_state", lambda db: self._write(db, work))

    # --- action runs -----------------------------------------------------------------------------------

    async def record_run(self, run: RunRecord) -> None:
        now = self._clock.now()

        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM gateway_action_run WHERE expires_at <= ?", (now,))
            db.execute("INSERT INTO gateway_action_run (run_id, tenant_id, user_id, app, connection_id, expires_at)"
                       " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id) DO NOTHING",
                       (run.run_id, run.tenant_id, run.user_id, run.app, run.connection_id, run.expires_at))

        await self._call("record_run", lambda db: self._write(db, work))

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        now = self._clock.now()

        def work(db: sqlite3.Connection) -> RunRecord | None:
            row = db.execute(
                "SELECT app, connection_id, expires_at FROM gateway_action_run WHERE run_id = ? AND tenant_id = ?"
                " AND user_id = ? AND expires_at > ?", (run_id, tenant_id, user_id, now)).fetchone()
            return None if row is None else RunRecord(run_id, tenant_id, user_id, row[0], row[1], float(row[2]))

        return await self._call("run", work)

    # --- trigger inboxes -------------------------------------------------------------------------------

    async def record_inbox(self, inbox: InboxRecord) -> None:
        row = (inbox.inbox_id, inbox.tenant_id, inbox.user_id, inbox.key, inbox.app, inbox.trigger, self._clock.now())
        await self._call("record_inbox", lambda db: db.execute(
            "INSERT INTO gateway_trigger_inbox (inbox_id, tenant_id, user_id, inbox_key, app, trigger_key, recorded_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (inbox_id) DO UPDATE SET tenant_id = excluded.tenant_id,"
            " user_id = excluded.user_id, inbox_key = excluded.inbox_key, app = excluded.app,"
            " trigger_key = excluded.trigger_key, recorded_at = excluded.recorded_at", row))

    async def inbox(self, inbox_id: str) -> InboxRecord | None:
        def work(db: sqlite3.Connection) -> InboxRecord | None:
            row = db.execute(
                "SELECT inbox_id, tenant_id, user_id, inbox_key, app, trigger_key FROM gateway_trigger_inbox"
                " WHERE inbox_id = ?", (inbox_id,)).fetchone()
            return None if row is None else InboxRecord(*row)

        return await self._call("inbox", work)

    async def inboxes(self) -> list[InboxRecord]:
        def work(db: sqlite3.Connection) -> list[InboxRecord]:
            rows = db.execute(
                "SELECT inbox_id, tenant_id, user_id, inbox_key, app, trigger_key FROM gateway_trigger_inbox"
                " ORDER BY inbox_id").fetchall()
            return [InboxRecord(*row) for row in rows]

        return await self._call("inboxes", work)

    async def delete_inbox(self, inbox_id: str) -> bool:
        cursor = await self._call("delete_inbox", lambda db: db.execute(
            "DELETE FROM gateway_trigger_inbox WHERE inbox_id = ?", (inbox_id,)))
        return cursor.rowcount == 1

    async def close(self) -> None:
        def work() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        loop = asyncio.get_running_loop()
        with suppress(TimeoutError, RuntimeError, sqlite3.Error):  # closed already, or stuck: the process ends it
            await asyncio.wait_for(loop.run_in_executor(self._worker, work), self._timeout)
        self._worker.shutdown(wait=False)



def _budget_row(db: sqlite3.Connection, budget: str) -> BudgetState:
    row: Any = db.execute("SELECT tat, cooldown_until FROM gateway_budget WHERE name = ?", (budget,)).fetchone()
    return BudgetState() if row is None else BudgetState(float(row[0]), float(row[1]))


def _store_budget(db: sqlite3.Connection, budget: str, state: BudgetState) -> None:
    db.execute("INSERT INTO gateway_budget (name, tat, cooldown_until) VALUES (?, ?, ?) ON CONFLICT (name)"
               " DO UPDATE SET tat = excluded.tat, cooldown_until = excluded.cooldown_until",
               (budget, state.tat, state.cooldown_until))
