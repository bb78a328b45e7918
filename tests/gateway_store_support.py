"""Both gateway store engines behind one test fixture: `store_engine` gives a fresh, empty database of
SQLite (a file in a temporary directory) or PostgreSQL (a new database on the session's real server), and
reads it raw, so a test can look at what the store wrote."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from keysvc.clock import Clock
from keysvc.partner.store import GatewayStore, StoreSettings, open_store
from tests.postgres_server import PostgresServer

T = TypeVar("T")


@dataclass
class Engine:
    """One fresh database of one engine: open stores on it (as many "replicas" as wanted), read it raw."""

    name: str
    url: str
    password: str | None = field(default=None, repr=False)

    def settings(self, timeout: float = 2.0) -> StoreSettings:
        return StoreSettings.from_url(self.url, password=self.password, timeout=timeout)

    def open(self, *, timeout: float = 2.0, clock: Clock | None = None) -> GatewayStore:
        return open_store(self.settings(timeout), clock=clock)

    def query(self, statement: str) -> list[tuple[object, ...]]:
        """Run one read-only statement directly on the database (no store involved)."""
        s = self.settings()
        if s.engine == "sqlite":
            assert s.path is not None
            with sqlite3.connect(s.path) as db:
                return list(db.execute(statement).fetchall())
        with psycopg.connect(host=s.host, port=s.port, user=s.user, dbname=s.database, password=s.password,
                             autocommit=True) as conn:
            return list(conn.execute(statement.replace("?", "%s")).fetchall())

    def columns(self) -> set[tuple[str, str]]:
        """(table, column) of every table of the database."""
        if self.name == "sqlite":
            tables = [row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return {(str(t), str(c[1])) for t in tables for c in self.query(f"PRAGMA table_info({t})")}
        rows = self.query("SELECT table_name, column_name FROM information_schema.columns"
                          " WHERE table_schema = 'public'")
        return {(str(t), str(c)) for t, c in rows}


def run(engine: Engine, body: Callable[[GatewayStore], Awaitable[T]], *, timeout: float = 2.0,
        clock: Clock | None = None, migrate: bool = True) -> T:
    """Open a store on `engine`, migrate it (unless told not to), run `body` on it in a new event loop,
    close it."""
    async def main() -> T:
        store = engine.open(timeout=timeout, clock=clock)
        try:
            if migrate:
                await store.migrate()
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """A fresh database of each engine in turn (PostgreSQL: a new database on the session's server)."""
    if request.param == "sqlite":
        return Engine("sqlite", f"sqlite:///{tmp_path}/gateway.db")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return Engine("postgresql", server.create_database(), server.password)


@pytest.fixture
def pg_engine(postgres_server: PostgresServer) -> Engine:
    """A fresh database on the session's real PostgreSQL server."""
    return Engine("postgresql", postgres_server.create_database(), postgres_server.password)
