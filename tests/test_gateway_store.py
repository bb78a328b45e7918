"""The gateway store's contract, the same tests on SQLite (a file) and on a real PostgreSQL server; then
several real processes on one PostgreSQL database: migrating at once, and hammering one shared budget."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import subprocess
import sys
import time

import psycopg
import pytest

from keysvc.clock import FixedClock
from keysvc.partner.store import (
    Connection,
    GatewayStore,
    InboxRecord,
    Limit,
    Refused,
    RunRecord,
    SharedBudget,
    state_digest,
)
from keysvc.partner.store.schema import VERSION
from tests.gateway_store_support import Engine, pg_engine, run, store_engine
from tests.helpers import ROOT

pytestmark = pytest.mark.system
__all__ = ["pg_engine", "store_engine"]  # fixtures

LIMIT = Limit(60, 3)


def test_migrations_are_versioned_and_idempotent(store_engine: Engine) -> None:
    """Migrating creates the schema once and records each version once; migrating again (the same store,
    or another replica's) changes nothing and reports the same version."""
    async def body(store: GatewayStore) -> list[int]:
        second = store_engine.open()
        try:
            return [await store.migrate(), await second.migrate()]
        finally:
            await second.close()

    assert run(store_engine, body) == [VERSION, VERSION]
    assert store_engine.query("SELECT version FROM gateway_schema ORDER BY version") == [
        (n,) for n in range(1, VERSION + 1)]


def _execute(engine: Engine, *statements: str) -> None:
    """Statements run directly on the engine's database (no store involved), committed."""
    s = engine.settings()
    if s.engine == "sqlite":
        assert s.path is not None
        with sqlite3.connect(s.path) as db:
            for statement in statements:
                db.execute(statement)
        return
    with psycopg.connect(host=s.host, port=s.port, user=s.user, dbname=s.database, password=s.password,
                         autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_store_of_an_earlier_version_migrates_and_keeps_its_rows(store_engine: Engine) -> None:
    """A database left at schema version 1 (as the first release with the store wrote it) gets only the
    later migrations; what it held stays."""
    async def first(store: GatewayStore) -> None:
        await store.record_connection("t1", "u1", "app-1", "conn-1", "Slack")

    run(store_engine, first)
    _execute(store_engine, "DROP TABLE gateway_action_run", "DELETE FROM gateway_schema WHERE version > 1")

    async def again(store: GatewayStore) -> list[object]:
        return [await store.migrate(), await store.connection("t1", "u1", "app-1") is not None]

    assert run(store_engine, again, migrate=False) == [VERSION, True]
    assert store_engine.query("SELECT version FROM gateway_schema ORDER BY version") == [
        (n,) for n in range(1, VERSION + 1)]
    assert store_engine.query("SELECT COUNT(*) FROM gateway_action_run") == [(0,)]


def test_the_schema_holds_no_secret(store_engine: Engine) -> None:
    """The tables hold ids, names, times and digests only: no column for an access token, connect token,
    client secret, password or raw Connect state."""
    run(store_engine, lambda store: asyncio.sleep(0))
    assert store_engine.columns() == {
        ("gateway_schema", "version"), ("gateway_schema", "applied_at"),
        ("gateway_budget", "name"), ("gateway_budget", "tat"), ("gateway_budget", "cooldown_until"),
        *(("gateway_connection", c) for c in ("tenant_id", "user_id", "app", "connection_id", "title",
                                              "recorded_at", "expired_at")),
        ("gateway_connect_state", "digest"), ("gateway_connect_state", "expires_at"),
        *(("gateway_trigger_inbox", c) for c in ("inbox_id", "tenant_id", "user_id", "inbox_key", "app",
                                                 "trigger_key", "recorded_at")),
        *(("gateway_action_run", c) for c in ("run_id", "tenant_id", "user_id", "app", "connection_id",
                                              "expires_at")),
    }


def test_the_budget_is_shared_by_every_replica(store_engine: Engine) -> None:
    """Two replicas (two stores on one database) draw on one budget: the burst of 3 at once is spent by
    both together; then one waits an interval (reserved within max_wait) or is refused; another budget
    name is independent."""
    async def body(store: GatewayStore) -> list[float | Refused]:
        other = store_engine.open()
        try:
            return [
                await store.admit("partner-api", LIMIT, 100.0, 0.0),
                await other.admit("partner-api", LIMIT, 100.0, 0.0),
                await store.admit("partner-api", LIMIT, 100.0, 0.0),
                await other.admit("partner-api", LIMIT, 100.0, 0.0),
                await other.admit("partner-api", LIMIT, 100.0, 5.0),
                await store.admit("partner-api", LIMIT, 100.0, 5.0),
                await store.admit("another", LIMIT, 100.0, 0.0),
            ]
        finally:
            await other.close()

    assert run(store_engine, body) == [0.0, 0.0, 0.0, Refused(1, False), 1.0, 2.0, 0.0]


def test_concurrent_admissions_never_exceed_the_burst(store_engine: Engine) -> None:
    """Thirty requests at the same instant from two replicas, all at once: exactly `burst` are admitted
    (each update is atomic: no two replicas read the same state)."""
    limit = Limit(60, 7)

    async def body(store: GatewayStore) -> list[float | Refused]:
        other = store_engine.open()
        try:
            calls = [(store if i % 2 else other).admit("b", limit, 500.0, 0.0) for i in range(30)]
            return list(await asyncio.gather(*calls))
        finally:
            await other.close()

    decisions = run(store_engine, body)
    assert decisions.count(0.0) == 7
    assert all(d == Refused(1, False) for d in decisions if d != 0.0)


def test_a_429_seen_by_one_replica_stops_every_replica(store_engine: Engine) -> None:
    """cool_down on one replica: every replica's admit is refused (cooling) until it ends; a shorter
    cooldown does not shorten it; cooldown_until reads it (0 for a budget that never had one); once it
    has passed, requests are admitted again."""
    async def body(store: GatewayStore) -> list[object]:
        other = store_engine.open()
        try:
            return [
                await store.cooldown_until("partner-api"),
                await store.cool_down("partner-api", LIMIT, 100.0, 60.0),
                await other.cool_down("partner-api", LIMIT, 110.0, 5.0),
                await other.cooldown_until("partner-api"),
                await other.admit("partner-api", LIMIT, 130.0, 60.0),
                await store.admit("partner-api", LIMIT, 159.5, 0.0),
                await store.admit("partner-api", LIMIT, 160.0, 0.0),
            ]
        finally:
            await other.close()

    assert run(store_engine, body) == [0.0, 160.0, 160.0, 160.0, Refused(30, True), Refused(1, True), 0.0]


def test_the_connection_registry_keeps_the_usable_connection_per_user_and_app(store_engine: Engine) -> None:
    """record_connection / connection per (tenant, user, app), a later record replacing an earlier one;
    expire_connection of another id changes nothing; of the recorded id hides it until a new one is
    recorded; other users and apps are untouched."""
    clock = FixedClock(1000.0)

    async def body(store: GatewayStore) -> list[object]:
        seen: list[object] = [await store.connection("t1", "u1", "app-a")]
        await store.record_connection("t1", "u1", "app-a", "111", "Old")
        await store.record_connection("t1", "u1", "app-a", "222", "Work Slack")
        await store.record_connection("t1", "u2", "app-a", "333", "Theirs")
        seen.append(await store.connection("t1", "u1", "app-a"))
        seen.append(await store.expire_connection("t1", "u1", "app-a", "111"))  # not the recorded one
        seen.append(await store.expire_connection("t1", "u1", "app-a", "222"))
        seen.append(await store.expire_connection("t1", "u1", "app-a", "222"))  # already expired
        seen.append(await store.connection("t1", "u1", "app-a"))
        seen.append(await store.connection("t1", "u2", "app-a"))
        seen.append(await store.connection("t2", "u1", "app-a"))
        clock.advance(5)
        await store.record_connection("t1", "u1", "app-a", "444", "Reconnected")
        seen.append(await store.connection("t1", "u1", "app-a"))
        return seen

    assert run(store_engine, body, clock=clock) == [
        None, Connection("t1", "u1", "app-a", "222", "Work Slack", 1000.0), False, True, False, None,
        Connection("t1", "u2", "app-a", "333", "Theirs", 1000.0), None,
        Connection("t1", "u1", "app-a", "444", "Reconnected", 1005.0),
    ]


def test_a_connect_state_is_consumed_once_across_replicas(store_engine: Engine) -> None:
    """consume_state is True the first time only, whichever replica asks, also when twenty ask at once;
    an expired state is never consumed; expired digests are purged by a later call; a raw state is refused."""
    clock = FixedClock(1000.0)
    first, second = state_digest("state-one"), state_digest("state-two")

    async def body(store: GatewayStore) -> list[object]:
        other = store_engine.open(clock=clock)
        try:
            seen: list[object] = [await store.consume_state(first, 1600.0), await other.consume_state(first, 1600.0)]
            racing = await asyncio.gather(*((store if i % 2 else other).consume_state(second, 1300.0)
                                            for i in range(20)))
            seen.append(sorted(racing))
            seen.append(await store.consume_state(state_digest("late"), 1000.0))  # expires now: refused
            clock.advance(400)  # `second` expired, `first` still live
            seen.append(await store.consume_state(state_digest("state-three"), 2000.0))
            with pytest.raises(ValueError, match="state_digest"):
                await store.consume_state("state-three", 2000.0)
            return seen
        finally:
            await other.close()

    assert run(store_engine, body, clock=clock) == [True, False, [False] * 19 + [True], False, True]
    assert sorted(store_engine.query("SELECT digest FROM gateway_connect_state")) == sorted(
        [(first,), (state_digest("state-three"),)])


def test_trigger_inboxes_are_recorded_listed_and_deleted(store_engine: Engine) -> None:
    """record_inbox (insert or replace), inbox, inboxes (by id) and delete_inbox (True once)."""
    a = InboxRecord("inbox-b", "t1", "u1", "new-rows", "GoogleSheetsV2CLIAPI", "new_row")
    b = InboxRecord("inbox-a", "t1", "u2", "messages", "SlackCLIAPI", "new_message")
    moved = InboxRecord("inbox-b", "t1", "u1", "new-rows", "GoogleSheetsV2CLIAPI", "new_or_updated_row")

    async def body(store: GatewayStore) -> list[object]:
        await store.record_inbox(a)
        await store.record_inbox(b)
        seen: list[object] = [await store.inboxes(), await store.inbox("inbox-b"), await store.inbox("nope")]
        await store.record_inbox(moved)
        seen += [await store.inbox("inbox-b"), await store.delete_inbox("inbox-a"), await store.delete_inbox("inbox-a"),
                 await store.inboxes()]
        return seen

    assert run(store_engine, body) == [[b, a], a, None, moved, True, False, [moved]]


def test_action_runs_remember_their_connection_until_they_expire(store_engine: Engine) -> None:
    """record_run, then run(): found by its own user from another replica, never by another user or tenant,
    not after its expiry; recording the same run again keeps the first record; expired rows are purged by
    a later record_run."""
    clock = FixedClock(1000.0)
    first = RunRecord("run-1", "t1", "u1", "app-1", "conn-1", 2000.0)
    again = RunRecord("run-1", "t1", "u1", "app-1", "conn-other", 5000.0)
    short = RunRecord("run-2", "t1", "u1", "app-1", "conn-2", 1500.0)

    async def body(store: GatewayStore) -> list[object]:
        other = store_engine.open(clock=clock)
        try:
            await store.record_run(first)
            await store.record_run(again)
            await store.record_run(short)
            seen: list[object] = [await other.run("t1", "u1", "run-1"), await other.run("t1", "u2", "run-1"),
                                  await other.run("t2", "u1", "run-1"), await other.run("t1", "u1", "nope")]
            clock.advance(600)  # run-2 has expired, run-1 not
            seen += [await store.run("t1", "u1", "run-2"), await store.run("t1", "u1", "run-1")]
            await store.record_run(RunRecord("run-3", "t1", "u1", "app-1", "conn-3", 9000.0))
            return seen
        finally:
            await other.close()

    assert run(store_engine, body, clock=clock) == [first, None, None, None, None, first]
    assert sorted(store_engine.query("SELECT run_id FROM gateway_action_run")) == [("run-1",), ("run-3",)]


def test_shared_budgets_on_two_replicas_share_the_burst_and_the_cooldown(store_engine: Engine) -> None:
    """SharedBudget, the gateway's drop-in: two replicas' budgets over one store spend one burst; a 429
    on one makes the other refuse with cooling=True and report the cooldown; the store stays up."""
    async def body(store: GatewayStore) -> list[object]:
        other = store_engine.open()
        try:
            one, two = SharedBudget(store, 60, 2), SharedBudget(other, 60, 2)
            seen: list[object] = [await one.admit(100.0, 0.0), await two.admit(100.0, 0.0),
                                  await two.admit(100.0, 0.0)]
            await one.cool_down(101.0, 30.0)
            seen += [await two.cooling_for(102.0), await two.admit(102.0, 60.0), await one.admit(102.0, 60.0),
                     one.store_up and two.store_up]
            return seen
        finally:
            await other.close()

    assert run(store_engine, body) == [0.0, 0.0, Refused(1, False), 29.0, Refused(29, True), Refused(29, True), True]


class CountingStore:
    """A real store that counts the budget admissions it was asked for (every other call passes through)."""

    def __init__(self, store: GatewayStore) -> None:
        self.store = store
        self.admissions = 0

    async def admit(self, budget: str, limit: Limit, now: float, max_wait: float) -> float | Refused:
        self.admissions += 1
        return await self.store.admit(budget, limit, now, max_wait)

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)


def test_a_refused_request_costs_no_store_call_until_the_budget_could_admit_it(store_engine: Engine) -> None:
    """Once the store refused (the budget admits nothing for `wait` s), requests that cannot wait that
    long are refused by the replica alone, with the same answer the store gives; one that can wait, or one
    after that time, asks the store again. A reservation by another replica meanwhile changes nothing:
    the budget's tat only moves forward."""
    async def body(store: GatewayStore) -> list[object]:
        other = store_engine.open()
        try:
            counting = CountingStore(store)
            one, two = SharedBudget(counting, 60, 2), SharedBudget(other, 60, 2)  # type: ignore[arg-type]
            seen: list[object] = [await one.admit(100.0, 0.0), await one.admit(100.0, 0.0)]
            seen += [await one.admit(100.0, 0.0), counting.admissions]  # refused by the store: wait 1 s
            seen += [await one.admit(100.2, 0.0), await one.admit(100.5, 0.1), counting.admissions]  # no round trip
            seen += [await two.admit(100.5, 5.0)]  # another replica reserves: tat moves to 103
            seen += [await one.admit(100.6, 0.5), counting.admissions]  # may wait 0.5 s: asks; refused (wait 1.4)
            seen += [await one.admit(101.0, 0.0), counting.admissions]  # before 102: refused here
            seen += [await one.admit(102.0, 0.0), counting.admissions]  # at 102 the store admits
            return seen
        finally:
            await other.close()

    assert run(store_engine, body) == [
        0.0, 0.0, Refused(1, False), 3,
        Refused(1, False), Refused(1, False), 3,
        0.5,
        Refused(2, False), 4,
        Refused(1, False), 4,
        0.0, 5,
    ]


def _worker(*argv: str, password: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KEYSVC_TEST_STORE_PASSWORD": password}
    return subprocess.Popen([sys.executable, "-m", "tests.gateway_store_worker", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_replicas_migrating_at_once_apply_each_migration_once(pg_engine: Engine) -> None:
    """Six processes start on one empty PostgreSQL database at the same moment and migrate: every one
    succeeds with the current version, and each migration is recorded exactly once."""
    assert pg_engine.password is not None
    start = time.time() + 1.5  # every process connected and waiting by then
    workers = [_worker("migrate", pg_engine.url, str(start), password=pg_engine.password) for _ in range(6)]
    results = [w.communicate(timeout=60) for w in workers]
    assert [(w.returncode, out.strip()) for w, (out, _) in zip(workers, results, strict=True)] == [
        (0, str(VERSION))] * 6, [err for _, err in results]
    assert pg_engine.query("SELECT version FROM gateway_schema ORDER BY version") == [
        (n,) for n in range(1, VERSION + 1)]


def test_processes_hammering_one_budget_never_exceed_it_in_any_window(pg_engine: Engine) -> None:
    """Three processes ask one PostgreSQL budget (600/min, burst 5) as fast as they can for 2.5 s: the
    requests they were allowed, together, are at most `burst + per_minute * W / 60` in every window W
    (0.5 s, 1 s, 2 s), and the budget is used, not starved (at least half its rate)."""
    assert pg_engine.password is not None
    run(pg_engine, lambda store: asyncio.sleep(0))  # migrated once, as at deploy
    limit, seconds = Limit(600, 5), 2.5
    start = time.time() + 1.5  # every process connected and waiting by then
    workers = [_worker("hammer", pg_engine.url, str(limit.per_minute), str(limit.burst), str(start), str(seconds),
                       password=pg_engine.password) for _ in range(3)]
    outputs = [w.communicate(timeout=60) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    sends = sorted(t for out, _ in outputs for t in json.loads(out))
    for window in (0.5, 1.0, 2.0):
        worst = max(sum(1 for s in sends[i:] if s <= start_ + window + 1e-6) for i, start_ in enumerate(sends))
        assert worst <= limit.burst + math.floor(window / limit.interval + 1e-9), (window, worst)
    assert len(sends) >= limit.burst + 0.5 * seconds / limit.interval
    assert all(len(json.loads(out)) > 0 for out, _ in outputs)  # every replica got its turns
