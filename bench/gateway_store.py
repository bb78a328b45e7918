"""The gateway store (token_exchange.store) with PostgreSQL on loopback: what the shared budget costs per
gateway call, and how exactly it holds across replicas.

A real PostgreSQL (tests/postgres_server.py: Debian's server, run as the `postgres` user) and the fake
Partner API of the tests (tests/zapier_fake, no rate limit of its own). Figures:
- p50 latency of GET /v1/zapier/apps through a keysvc with the shared budget (one atomic update of the
  budget's row per Partner API call) against a keysvc without a store, interleaved one by one in the same
  run (target: under 1 ms more);
- accuracy: three replicas on one store, driven flat out by 12 callers for `--duration` seconds (120 by
  default) with api_rate_limit 60/min burst 10: the most requests that reached Zapier (Partner API calls
  and token exchanges) in any 60 s window (or the whole run, when shorter), against per_minute + burst;
- the database transactions the accuracy run cost per answer (PostgreSQL's own count, pg_stat_database):
  a refusal the store already gave is remembered by the replica until the budget could admit again, so
  a flood of 503s is not a flood of transactions.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.common import (
    Row,
    api_key,
    arguments,
    base_config,
    keysvc_server,
    machine_line,
    report,
    spread,
    workspace,
)
from tests.helpers import KeysvcProcess, remember_secret
from tests.postgres_server import PostgresServer
from tests.zapier_fake import Budget, ZapierFake, running_zapier

TITLE = "Gateway store: the shared Partner API budget on PostgreSQL (loopback)"
USER = ("u-1", "t-9")
ISSUER = "https://issuer.example/zapier"
PER_MINUTE, BURST = 60, 10


def config(zapier: ZapierFake, workdir: Path, store: dict[str, Any] | None, limit: dict[str, Any]) -> dict[str, Any]:
    """keysvc with the gateway against the fake, with or without the store; access log off."""
    secret = workdir / "client-secret"
    secret.write_text(remember_secret(zapier.partner.client_secret))
    cfg = base_config(workdir / "keys")
    cfg["clients"]["signer"]["zapier"] = True
    cfg["token_exchange"] = {
        "token_url": zapier.token_url, "api_url": zapier.api_url, "client_id": zapier.partner.client_id,
        "client_secret_file": str(secret), "api_rate_limit": limit,
    }
    if store is not None:
        cfg["token_exchange"]["store"] = store
    cfg["log"] = {"access": False}
    return cfg


def store_section(database: PostgresServer, workdir: Path) -> dict[str, Any]:
    password = workdir / "db-password"
    password.write_text(database.password + "\n")
    return {"url": database.url, "password_file": str(password)}


def latency(plain: str, shared: str, requests: int, runs: int) -> tuple[list[float], list[float]]:
    """Median latencies (ms) per run: without a store, with the shared budget; interleaved one by one."""
    headers = {"Authorization": f"Bearer {api_key('signer')}"}
    params = {"user_id": USER[0], "tenant_id": USER[1], "limit": "5"}
    without, with_store = [], []
    with httpx.Client(timeout=10) as client:
        for _ in range(runs):
            a: list[float] = []
            b: list[float] = []
            for _ in range(requests):
                for base, into in ((plain, a), (shared, b)):
                    started = time.perf_counter()
                    answer = client.get(f"{base}/v1/zapier/apps", params=params, headers=headers)
                    into.append(time.perf_counter() - started)
                    assert answer.status_code == 200, answer.text
            without.append(statistics.median(a) * 1000)
            with_store.append(statistics.median(b) * 1000)
    return without, with_store


@contextmanager
def sampling(zapier: ZapierFake) -> Iterator[list[tuple[float, int]]]:
    """(time, requests that reached Zapier so far) every 50 ms while inside."""
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), len(zapier.log) + len(zapier.partner.calls)))
            done.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join()
        samples.append((time.monotonic(), len(zapier.log) + len(zapier.partner.calls)))


def most_in_a_window(samples: list[tuple[float, int]], window: float) -> int:
    """The largest count increase over any `window` seconds of the samples (the whole run if shorter)."""
    best, j = 0, 0
    for i, (start, _) in enumerate(samples):
        j = max(j, i)
        while j + 1 < len(samples) and samples[j + 1][0] - start <= window:
            j += 1
        best = max(best, samples[j][1] - (samples[i - 1][1] if i else 0))
    return best


def accuracy(replicas: list[KeysvcProcess], zapier: ZapierFake, duration: float) -> tuple[int, float, dict[int, int]]:
    """Drive the replicas flat out; (most requests reaching Zapier in a 60 s window, that window, statuses)."""
    headers = {"Authorization": f"Bearer {api_key('signer')}"}
    stop = time.monotonic() + duration
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def drive(proc: KeysvcProcess, user: str) -> None:
        params = {"user_id": user, "tenant_id": USER[1], "limit": "5"}
        with httpx.Client(timeout=15) as client:
            while time.monotonic() < stop:
                status = client.get(f"{proc.internal}/v1/zapier/apps", params=params, headers=headers).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=drive, args=(proc, f"u-{n}")) for n in range(4) for proc in replicas]
    with sampling(zapier) as samples:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    window = min(60.0, duration)
    return most_in_a_window(samples, window), window, statuses


def transactions(url: str, password: str) -> int:
    """Transactions committed or rolled back in the database of `url` so far (the statistics are flushed
    within a second of each transaction: wait that long first)."""
    time.sleep(1.5)
    with psycopg.connect(url, password=password) as db:
        db.execute("SELECT pg_stat_clear_snapshot()")
        row = db.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                         ).fetchone()
    assert row is not None
    return int(row[0])


def main() -> None:
    parser = arguments(__doc__ or TITLE, runs=3, duration=120.0)
    parser.add_argument("--requests", type=int, default=200, help="requests per latency run (default 200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 30 requests, 1 run, 15 s of load")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.runs, args.duration = 30, 1, 15.0
    database = PostgresServer.start()
    try:
        with workspace("store") as workdir, ExitStack() as stack:
            zapier = stack.enter_context(running_zapier(budget=Budget(per_ip=None, per_partner=None)))
            zapier.add_app("Slack")
            store = store_section(database, workdir)
            free = {"per_minute": 1_000_000, "burst": 10_000}
            plain = stack.enter_context(keysvc_server(config(zapier, workdir, None, free), workdir, "plain"))
            shared = stack.enter_context(keysvc_server(config(zapier, workdir, store, free), workdir, "shared"))
            zapier.trust(f"{plain.public}/.well-known/jwks.json", ISSUER)
            latency(plain.internal, shared.internal, max(10, args.requests // 10), 1)  # warm-up
            without, with_store = latency(plain.internal, shared.internal, args.requests, args.runs)
            stack.close()

        with workspace("store-replicas") as workdir, ExitStack() as stack:
            zapier = stack.enter_context(running_zapier(budget=Budget(per_ip=None, per_partner=None)))
            zapier.add_app("Slack")
            store = {**store_section(database, workdir), "url": database.create_database()}
            limit = {"per_minute": PER_MINUTE, "burst": BURST}
            replicas = [stack.enter_context(keysvc_server(config(zapier, workdir, store, limit), workdir, f"r{n}"))
                        for n in range(3)]
            zapier.trust(f"{replicas[0].public}/.well-known/jwks.json", ISSUER)
            before = transactions(store["url"], database.password)
            most, window, statuses = accuracy(replicas, zapier, args.duration)
            spent = transactions(store["url"], database.password) - before
    finally:
        database.remove()
    added = [s - p for s, p in zip(with_store, without, strict=True)]
    bound = BURST + PER_MINUTE * window / 60
    rows = [
        Row("p50 GET /v1/zapier/apps with the shared budget", statistics.median(with_store), "ms",
            baseline="no store", baseline_value=statistics.median(without), runs=spread(with_store)),
        Row("p50 added by the shared budget per gateway call", statistics.median(added), "ms", target=1,
            at_most=True, target_on_value=True, runs=spread(added)),
        Row(f"most requests reaching Zapier in {window:g} s, 3 replicas flat out", most, "requests",
            target=bound, at_most=True, target_on_value=True,
            note=f"per_minute + burst bound {bound:g}; answers {dict(sorted(statuses.items()))}"),
        Row("store transactions per answer in that run (503s included)", spent / max(1, sum(statuses.values())),
            "", note=f"{spent:,} transactions, {sum(statuses.values()):,} answers"),
    ]
    notes = [machine_line(), f"latency: {args.requests} sequential keep-alive requests per run, {args.runs} runs,"
             f" medians; accuracy: 12 callers for {args.duration:g} s, api_rate_limit {PER_MINUTE}/min burst {BURST}"]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
