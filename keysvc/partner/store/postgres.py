"""The gateway store in PostgreSQL: any number of replicas (`postgresql://user@host:port/db`), psycopg 3.

A few connections per replica, kept open (a call costs its round trips, not a connect). A call's deadline
is enforced by asyncio.wait_for around it and by the server: each session runs with `statement_timeout`
and `lock_timeout` at the store's timeout, and `idle_in_transaction_session_timeout` so a transaction
abandoned by a cancelled call releases its row locks; connecting has libpq's `connect_timeout`. A
connection that failed or was cancelled mid-call is closed, never reused.

A budget update is one transaction: an upsert that locks the budget's row and returns it (`INSERT ... ON
CONFLICT DO UPDATE ... RETURNING`), the pure GCRA step in Python, one UPDATE. Replicas updating the same
budget queue on that row lock, so no two read the same state.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from keysvc.clock import Clock, SystemClock
from keysvc.errors import StoreUnavailable

from . import gcra, schema
from .base import Connection, InboxRecord, RunRecord, check_digest
from .gcra import BudgetState, Limit, Refused
from .settings import StoreSettings

T = TypeVar("T")
Conn = psycopg.AsyncConnection[Any]
POOL_SIZE = 4  # connections per replica: the gateway's calls are a few short statements each


class PostgresStore:
    """`GatewayStore` over a PostgreSQL database; `settings.password` is sent at connect, never shown."""

    def __init__(self, settings: StoreSettings, *, clock: Clock | None = None, pool_size: int = POOL_SIZE) -> None:
        if settings.engine != "postgresql":
            raise ValueError("PostgresStore needs a postgresql:// store")
        self._settings = settings
        self._clock = clock or SystemClock()
        self._idle: list[Conn] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._closed = False
        self._stragglers: set[asyncio.Future[Any]] = set()

    def __repr__(self) -> str:
        return f"PostgresStore({self._settings.display}, timeout={self._settings.timeout:g})"

    @property
    def timeout(self) -> float:
        return self._settings.timeout

    # --- the one way to the database -------------------------------------------------------------------

    async def _connect(self) -> Conn:
        s = self._settings
        bound = max(1, math.ceil(s.timeout * 1000))
        options = (f"-c statement_timeout={bound} -c lock_timeout={bound}"
                   f" -c idle_in_transaction_session_timeout={max(1000, 2 * bound)}")
        # libpq counts connect_timeout in whole seconds (and treats 1 as 2); _within holds the finer bound
        return await psycopg.AsyncConnection.connect(
            host=s.host, port=s.port, user=s.user, dbname=s.database, password=s.password or None,
            connect_timeout=max(2, math.ceil(s.timeout)), options=options, application_name="keysvc-gateway",
            autocommit=True)

    @asynccontextmanager
    async def _connection(self, *, fresh: bool = False) -> AsyncIterator[tuple[Conn, bool]]:
        """A connection for one call and whether it was kept from an earlier one; kept again afterwards
        only when the call left it open and idle."""
        async with self._slots:
            if self._closed:
                raise StoreUnavailable("connect", "the store is closed")
            kept = bool(self._idle) and not fresh
            conn = self._idle.pop() if kept else await self._connect()
            reusable = False
            try:
                yield conn, kept
                reusable = not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE
            finally:
                if reusable and not self._closed:
                    self._idle.append(conn)
                else:
                    await conn.close()  # never suspends: the socket goes, the server rolls back what it held

    async def _attempt(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """`work` on a kept connection; when that one turns out dead (the server restarted or dropped it while
        idle), the other kept ones are likely dead too: drop them all and try once on a new connection."""
        broken_kept = False
        try:
            async with self._connection() as (conn, kept):
                try:
                    return await work(conn)
                except psycopg.OperationalError:
                    broken_kept = kept and conn.closed
                    raise
        except psycopg.OperationalError:
            if not broken_kept:
                raise
        idle, self._idle = self._idle, []
        for dead in idle:
            await dead.close()
        async with self._connection(fresh=True) as (conn, _):
            return await work(conn)

    async def _call(self, operation: str, work: Callable[[Conn], Awaitable[T]], timeout: float | None = None) -> T:
        limit = self._settings.timeout if timeout is None else timeout
        try:
            return await self._within(self._attempt(work), limit)
        except TimeoutError:
            raise StoreUnavailable(operation, f"no answer within {limit:g}s") from None
        except psycopg.errors.QueryCanceled:  # statement_timeout or lock_timeout on the server
            raise StoreUnavailable(operation, "the server cancelled it at the deadline") from None
        except psycopg.Error as exc:  # the class and SQLSTATE say what failed (28P01: wrong password), no value
            code = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
            raise StoreUnavailable(operation, f"PostgreSQL {type(exc).__name__}{code}") from None
        except OSError as exc:
            raise StoreUnavailable(operation, f"{type(exc).__name__} (errno {exc.errno})") from None

    async def _within(self, call: Awaitable[T], limit: float) -> T:
        """`call`'s result within `limit` seconds, else TimeoutError at once. Not asyncio.wait_for: psycopg
        answers a cancellation mid-query by cancelling it on the server and waiting up to 10 s for that, which
        a hung server would turn into 10 s; here the cancelled call finishes in the background, holding its
        pool slot until it has closed its connection."""
        task = asyncio.ensure_future(call)
        try:
            done, _ = await asyncio.wait({task}, timeout=limit)
        except asyncio.CancelledError:  # the caller gave up first
            self._abandon(task)
            raise
        if task in done:
            return task.result()
        self._abandon(task)
        raise TimeoutError

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        task.cancel()
        self._stragglers.add(task)  # held until done: a pending task only weakly referenced could vanish
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it was already answered as a timeout

    # --- schema ----------------------------------------------------------------------------------------

    async def migrate(self, timeout: float = 30.0) -> int:
        now = self._clock.now()
        bound = sql.Literal(max(1, math.ceil(timeout * 1000)))

        async def work(conn: Conn) -> int:
            async with conn.transaction():
                # this transaction may wait for other replicas' migrations: a longer bound than a call's
                await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(bound))
                await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(bound))
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema.MIGRATION_LOCK,))
                await conn.execute(schema.SCHEMA_TABLE)
                found = await (await conn.execute("SELECT COALESCE(MAX(version), 0) FROM gateway_schema")).fetchone()
                current = int(found[0]) if found else 0
                for number, statements in schema.pending(current):
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute("INSERT INTO gateway_schema (version, applied_at) VALUES (%s, %s)",
                                       (number, now))
                return max(current, schema.VERSION)

        return await self._call("migrate", work, timeout)

    async def ping(self) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute("SELECT 1")

        await self._call("ping", work)

    # --- the shared budget -----------------------------------------------------------------------------

    async def _update_budget(self, conn: Conn, budget: str,
                             step: Callable[[BudgetState], tuple[T, BudgetState | None]]) -> T:
        async with conn.transaction():
            locked = await (await conn.execute(
                "INSERT INTO gateway_budget (name, tat, cooldown_until) VALUES (%s, 0, 0) ON CONFLICT (name)"
                " DO UPDATE SET name = excluded.name RETURNING tat, cooldown_until", (budget,))).fetchone()
            if locked is None:
                raise psycopg.DataError("the budget upsert returned no row")
            result, after = step(BudgetState(float(locked[0]), float(locked[1])))
            if after is not None:
                await conn.execute("UPDATE gateway_budget SET tat = %s, cooldown_until = %s WHERE name = %s",
                                   (after.tat, after.cooldown_until, budget))
        return result

    async def admit(self, budget: str, limit: Limit, now: float, max_wait: float) -> float | Refused:
        def step(state: BudgetState) -> tuple[float | Refused, BudgetState | None]:
            decision, after = gcra.admit(state, limit, now, max_wait)
            return decision, None if isinstance(decision, Refused) else after

        return await self._call("admit", lambda conn: self._update_budget(conn, budget, step))

    async def cool_down(self, budget: str, limit: Limit, now: float, retry_after: float) -> float:
        def step(state: BudgetState) -> tuple[float, BudgetState | None]:
            after = gcra.cool_down(state, limit, now, retry_after)
            return after.cooldown_until, after

        return await self._call("cool_down", lambda conn: self._update_budget(conn, budget, step))

    async def cooldown_until(self, budget: str) -> float:
        async def work(conn: Conn) -> float:
            row = await (await conn.execute("SELECT cooldown_until FROM gateway_budget WHERE name = %s",
                                            (budget,))).fetchone()
            return 0.0 if row is None else float(row[0])

        return await self._call("cooldown_until", work)

    # --- the connection registry -----------------------------------------------------------------------

    async def record_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str,
                                title: str = "") -> None:
        row = (tenant_id, user_id, app, connection_id, title, self._clock.now())

        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO gateway_connection (tenant_id, user_id, app, connection_id, title, recorded_at,"
                " expired_at) VALUES (%s, %s, %s, %s, %s, %s, NULL) ON CONFLICT (tenant_id, user_id, app) DO UPDATE"
                " SET connection_id = excluded.connection_id, title = excluded.title,"
                " recorded_at = excluded.recorded_at, expired_at = NULL", row)

        await self._call("record_connection", work)

    async def connection(self, tenant_id: str, user_id: str, app: str) -> Connection | None:
        async def work(conn: Conn) -> Connection | None:
            row = await (await conn.execute(
                "SELECT connection_id, title, recorded_at FROM gateway_connection WHERE tenant_id = %s AND"
                " user_id = %s AND app = %s AND expired_at IS NULL", (tenant_id, user_id, app))).fetchone()
            return None if row is None else Connection(tenant_id, user_id, app, row[0], row[1], float(row[2]))

        return await self._call("connection", work)

    async def expire_connection(self, tenant_id: str, user_id: str, app: str, connection_id: str) -> bool:
        now = self._clock.now()

        async def work(conn: Conn) -> bool:
            cursor = await conn.execute(
                "UPDATE gateway_connection SET expired_at = %s WHERE tenant_id = %s AND user_id = %s AND app = %s"
                " AND connection_id = %s AND expired_at IS NULL", (now, tenant_id, user_id, app, connection_id))
            return cursor.rowcount == 1

        return await self._call("expire_connection", work)

    # --- single-use Connect states ---------------------------------------------------------------------

    async def consume_state(self, state_digest: str, expires_at: float) -> bool:
        digest, now = check_digest(state_digest), self._clock.now()
        if expires_at <= now:
            return False

        async def work(conn: Conn) -> bool:
            await conn.execute("DELETE FROM gateway_connect_state WHERE expires_at <= %s", (now,))
            cursor = await conn.execute("INSERT INTO gateway_connect_state (digest, expires_at) VALUES (%s, %s)"
                                        " ON CONFLICT (digest) DO NOTHING", (digest, expires_at))
            return cursor.rowcount == 1

        return await self._call("consume_state", work)

    # --- action runs -----------------------------------------------------------------------------------

    async def record_run(self, run: RunRecord) -> None:
        now = self._clock.now()

        async def work(conn: Conn) -> None:
            await conn.execute("DELETE FROM gateway_action_run WHERE expires_at <= %s", (now,))
            await conn.execute(
                "INSERT INTO gateway_action_run (run_id, tenant_id, user_id, app, connection_id, expires_at)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
                (run.run_id, run.tenant_id, run.user_id, run.app, run.connection_id, run.expires_at))

        await self._call("record_run", work)

    async def run(self, tenant_id: str, user_id: str, run_id: str) -> RunRecord | None:
        now = self._clock.now()

        async def work(conn: Conn) -> RunRecord | None:
            row = await (await conn.execute(
                "SELECT app, connection_id, expires_at FROM gateway_action_run WHERE run_id = %s AND tenant_id = %s"
                " AND user_id = %s AND expires_at > %s", (run_id, tenant_id, user_id, now))).fetchone()
            return None if row is None else RunRecord(run_id, tenant_id, user_id, row[0], row[1], float(row[2]))

        return await self._call("run", work)

    # --- trigger inboxes -------------------------------------------------------------------------------

    async def record_inbox(self, inbox: InboxRecord) -> None:
        row = (inbox.inbox_id, inbox.tenant_id, inbox.user_id, inbox.key, inbox.app, inbox.trigger, self._clock.now())

        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO gateway_trigger_inbox (inbox_id, tenant_id, user_id, inbox_key, app, trigger_key,"
                " recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (inbox_id) DO UPDATE SET"
                " tenant_id = excluded.tenant_id, user_id = excluded.user_id, inbox_key = excluded.inbox_key,"
                " app = excluded.app, trigger_key = excluded.trigger_key, recorded_at = excluded.recorded_at", row)

        await self._call("record_inbox", work)

    async def inbox(self, inbox_id: str) -> InboxRecord | None:
        async def work(conn: Conn) -> InboxRecord | None:
            row = await (await conn.execute(
                "SELECT inbox_id, tenant_id, user_id, inbox_key, app, trigger_key FROM gateway_trigger_inbox"
                " WHERE inbox_id = %s", (inbox_id,))).fetchone()
            return None if row is None else InboxRecord(*row)

        return await self._call("inbox", work)

    async def inboxes(self) -> list[InboxRecord]:
        async def work(conn: Conn) -> list[InboxRecord]:
            rows = await (await conn.execute(
                "SELECT inbox_id, tenant_id, user_id, inbox_key, app, trigger_key FROM gateway_trigger_inbox"
                " ORDER BY inbox_id")).fetchall()
            return [InboxRecord(*row) for row in rows]

        return await self._call("inboxes", work)

    async def delete_inbox(self, inbox_id: str) -> bool:
        async def work(conn: Conn) -> bool:
            cursor = await conn.execute("DELETE FROM gateway_trigger_inbox WHERE inbox_id = %s", (inbox_id,))
            return cursor.rowcount == 1

        return await self._call("delete_inbox", work)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with suppress(psycopg.Error, OSError):
                await conn.close()
        if self._stragglers:  # calls past their deadline still closing their connections
            await asyncio.wait(set(self._stragglers), timeout=self._settings.timeout)

