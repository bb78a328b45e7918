"""The gateway store when the database fails: every call gives up within its deadline (a server that
refuses, one that never answers, one that freezes mid-query, one that stops, a lock held elsewhere), and
SharedBudget keeps the gateway going on its local fallback budget, reporting `store_up` False."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from keysvc.partner.store import GatewayStore, Limit, Refused, SharedBudget, StoreSettings, StoreUnavailable, open_store
from tests.gateway_store_support import Engine, pg_engine, run, store_engine
from tests.postgres_server import PostgresServer, free_port

pytestmark = pytest.mark.system
__all__ = ["pg_engine", "store_engine"]  # fixtures

DEADLINE = 0.5
SLACK = 0.4  # scheduling on a busy two-core machine


async def within_deadline(call: Awaitable[Any]) -> float:
    """Await `call`, which must raise StoreUnavailable; how long it took."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call
    return time.monotonic() - started


def pg_store(port: int, password: str = "unused") -> GatewayStore:
    return open_store(StoreSettings.from_url(f"postgresql://keysvc@127.0.0.1:{port}/keysvc", password=password,
                                             timeout=DEADLINE))


CALLS: list[Callable[[GatewayStore], Awaitable[Any]]] = [
    lambda s: s.ping(),
    lambda s: s.admit("partner-api", Limit(60, 10), time.time(), 0.0),
    lambda s: s.cool_down("partner-api", Limit(60, 10), time.time(), 60.0),
    lambda s: s.connection("t", "u", "app"),
    lambda s: s.consume_state("0" * 64, time.time() + 60),
    lambda s: s.inboxes(),
]


def test_a_server_that_refuses_connections_fails_every_call_at_once() -> None:
    """Nothing listens on the port: every call raises StoreUnavailable well within its deadline."""
    async def main() -> list[float]:
        store = pg_store(free_port())
        try:
            return [await within_deadline(call(store)) for call in CALLS]
        finally:
            await store.close()

    assert max(asyncio.run(main())) < DEADLINE + SLACK


def test_a_server_that_never_answers_fails_every_call_within_its_deadline() -> None:
    """A port that accepts TCP connections and never says a word (a hung host, a black-holing firewall):
    every call raises StoreUnavailable after its 0.5 s deadline, not libpq's 2 s connect_timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)

        async def main() -> list[float]:
            store = pg_store(silent.getsockname()[1])
            try:
                return [await within_deadline(call(store)) for call in CALLS[:3]]
            finally:
                await store.close()

        took = asyncio.run(main())
    assert min(took) >= DEADLINE - 0.05 and max(took) < DEADLINE + SLACK


def test_a_budget_over_a_silent_server_answers_from_its_fallback_within_the_deadline() -> None:
    """SharedBudget over a server that never answers: the first request gets the local budget's answer
    after one deadline, with store_up False; the next ones, within the probe interval, at once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)

        async def main() -> tuple[list[object], float, float]:
            store = pg_store(silent.getsockname()[1])
            budget = SharedBudget(store, 60, 10)
            try:
                started = time.monotonic()
                first = await budget.admit(100.0, 0.0)
                took = time.monotonic() - started
                started = time.monotonic()
                rest = [await budget.admit(100.0 + i, 0.0) for i in range(1, 4)]
                return [first, *rest, budget.store_up], took, time.monotonic() - started
            finally:
                await store.close()

        decisions, first_took, rest_took = asyncio.run(main())
    assert decisions == [0.0, 0.0, 0.0, 0.0, False]  # local: 20/min, burst 4
    assert DEADLINE - 0.05 <= first_took < DEADLINE + SLACK and rest_took < 0.05


class FreezingProxy:
    """A TCP forwarder to the real server that can freeze: from then on it swallows every byte either way,
    like a server hung mid-query (or a network path that stopped delivering)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if not self.frozen:
                    writer.write(data)
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FreezingProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in self._writers:
                writer.close()


def test_a_server_frozen_mid_query_fails_the_call_within_its_deadline(postgres_server: PostgresServer) -> None:
    """Connected and working, then the path to the server freezes with a query in flight: the call still
    gives up at its deadline (psycopg's own cancellation, which waits up to 10 s for the server, runs in
    the background), and later calls too."""
    async def main() -> tuple[float, float]:
        async with FreezingProxy(postgres_server.port).running() as proxy:
            store = pg_store(proxy.port, postgres_server.password)
            try:
                await store.migrate()
                assert await store.admit("frozen", Limit(60, 10), time.time(), 0.0) == 0.0
                proxy.frozen = True
                first = await within_deadline(store.admit("frozen", Limit(60, 10), time.time(), 0.0))
                second = await within_deadline(store.connection("t", "u", "app"))
                return first, second
            finally:
                await store.close()

    first, second = asyncio.run(main())
    assert DEADLINE - 0.05 <= first < DEADLINE + SLACK and second < DEADLINE + SLACK


def test_a_lock_held_elsewhere_bounds_the_call(store_engine: Engine) -> None:
    """Another session holds the budget's row (PostgreSQL: SELECT ... FOR UPDATE) or the database's write
    lock (SQLite: BEGIN IMMEDIATE): admit gives up within its deadline, the database keeps no waiter
    behind (PostgreSQL's lock_timeout/statement_timeout ended it), and once the lock is released the
    store answers again."""
    run(store_engine, lambda store: store.admit("b", Limit(60, 10), 1.0, 0.0))  # the row exists
    s = store_engine.settings()
    if s.engine == "sqlite":
        assert s.path is not None
        holder: Any = sqlite3.connect(s.path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    else:
        holder = psycopg.connect(host=s.host, port=s.port, user=s.user, dbname=s.database, password=s.password)
        holder.execute("SELECT tat FROM gateway_budget WHERE name = 'b' FOR UPDATE")

    async def blocked(store: GatewayStore) -> float:
        return await within_deadline(store.admit("b", Limit(60, 10), 2.0, 0.0))

    try:
        took = run(store_engine, blocked, timeout=DEADLINE, migrate=False)
        if s.engine == "postgresql":
            waiting = store_engine.query("SELECT count(*) FROM pg_locks WHERE NOT granted")
            assert waiting == [(0,)]
    finally:
        holder.rollback()
        holder.close()
    assert took < DEADLINE + SLACK
    assert run(store_engine, lambda store: store.admit("b", Limit(60, 10), 3.0, 0.0)) == 0.0


def test_a_stopped_server_sends_the_budget_to_its_local_fallback_and_back(postgres_server: PostgresServer,
                                                                         pg_engine: Engine) -> None:
    """The PostgreSQL server stops under a running SharedBudget: admit answers within the deadline from
    the local budget (per_minute / 3, burst / 3), store_up turns False, the store is not asked again within
    the probe interval (answers are instant), a 429 still cools this replica down; once the server is back
    and the interval has passed, the shared budget answers again and store_up is True."""
    async def main() -> list[object]:
        store = pg_engine.open(timeout=DEADLINE)
        budget = SharedBudget(store, 60, 6, fallback_divisor=3, probe_interval=5.0)
        try:
            await store.migrate()
            seen: list[object] = [await budget.admit(100.0, 0.0), budget.store_up]
            postgres_server.halt()
            try:
                started = time.monotonic()
                seen.append(await budget.admit(101.0, 0.0))  # the store fails: local, 20/min, burst 2
                seen += [time.monotonic() - started < DEADLINE + SLACK, budget.store_up]
                started = time.monotonic()
                seen += [await budget.admit(101.0, 0.0), await budget.admit(101.0, 0.0)]
                await budget.cool_down(102.0, 10.0)
                seen += [await budget.cooling_for(103.0), await budget.admit(103.0, 60.0)]
                seen.append(time.monotonic() - started < 0.1)  # within the probe interval: no store call
            finally:
                postgres_server.resume()
            seen += [await budget.admit(120.0, 0.0), budget.store_up]
            return seen
        finally:
            await store.close()

    assert asyncio.run(main()) == [0.0, True, 0.0, True, False, 0.0, Refused(3, False), 9.0, Refused(9, True), True,
                                   0.0, True]


def test_a_wrong_password_is_a_store_error_that_shows_no_password(postgres_server: PostgresServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The server refuses the password: StoreUnavailable at once, and neither the error, the store's repr
    nor anything logged (the budget's fallback warning included) contains the password."""
    async def main() -> tuple[str, str]:
        store = pg_store(postgres_server.port, "wrong-pw-4711")
        try:
            with pytest.raises(StoreUnavailable) as caught:
                await store.ping()
            await SharedBudget(store, 60, 10).admit(100.0, 0.0)
            return str(caught.value), repr(store)
        finally:
            await store.close()

    error, shown = asyncio.run(main())
    assert error == "gateway store: ping failed: PostgreSQL OperationalError"
    assert "gateway store unreachable" in caplog.text
    assert all("wrong-pw-4711" not in text for text in (error, shown, caplog.text))
