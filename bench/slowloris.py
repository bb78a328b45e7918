"""Idle and slow-header connections: fresh JWKS GETs and /v1/sign calls, with and without the attack.

The attacker (its own process, on the load core) holds IDLE connections that send nothing and SLOW
"slowloris" connections that send a request head one header line at a time, against EACH port, and
reopens every connection the server closes (keysvc closes them at `listen.head_timeout`, 10 s), so the
counts stay up for the whole measurement. Meanwhile a probe opens a fresh connection per request (no
keep-alive: what a verifier or service that has no connection yet does), alternating JWKS GET and POST
/v1/sign, and records each latency; first without the attack, then with it, in the same invocation.
Any answer but 200 is counted (before the fix, uvicorn answered 503 past 2,000 open connections).

    .venv/bin/python -m bench.slowloris [--idle 5000] [--slow 500] [--duration 15] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

from bench.common import (
    LOAD_CPU,
    SIGN_BODY,
    Row,
    api_key,
    arguments,
    base_config,
    keysvc_server,
    machine_line,
    report,
    workspace,
)
from keysvc.serve import raise_open_file_limit

TITLE = "Fresh requests under an idle + slowloris connection flood"
TRICKLE_SECONDS = 2.0  # a slowloris connection sends one more header line this often
P99_TARGET_MS = 50.0


# ------------------------------------------------------------------------------------------ attacker

def attack(targets: list[tuple[str, int, bytes]], idle: int, slow: int, opened: Synchronized, stop: Event) -> None:
    """Process entry: hold `idle` + `slow` connections per target until `stop`; `opened` = connections open."""
    os.sched_setaffinity(0, LOAD_CPU)
    os.nice(19)  # shares the load core with the probe: the probe's own latency must not include the attacker's
    raise_open_file_limit()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_attack(targets, idle, slow, opened, stop))


async def _attack(targets: list[tuple[str, int, bytes]], idle: int, slow: int, opened: Synchronized,
                  stop: Event) -> None:
    done = asyncio.Event()
    tasks = [asyncio.create_task(_hold(host, port, None, opened, done)) for host, port, _ in targets
             for _ in range(idle)]
    tasks += [asyncio.create_task(_hold(host, port, head, opened, done)) for host, port, head in targets
              for _ in range(slow)]
    while not stop.is_set():
        await asyncio.sleep(0.1)
    done.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _hold(host: str, port: int, head: bytes | None, opened: Synchronized, done: asyncio.Event) -> None:
    """One attacking connection, reopened whenever the server closes it."""
    while not done.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        with opened.get_lock():
            opened.value += 1
        try:
            if head is None:
                await reader.read(4096)  # idle: sends nothing; returns when the server closes
            else:
                writer.write(head)
                while not done.is_set():
                    try:
                        if not await asyncio.wait_for(reader.read(4096), TRICKLE_SECONDS):
                            break  # closed by the server: reopen
                    except TimeoutError:
                        writer.write(b"X-Slow: 1\r\n")
        except OSError:
            pass
        finally:
            with opened.get_lock():
                opened.value -= 1
            writer.close()


# ------------------------------------------------------------------------------------------ probe

def fresh_request(host: str, port: int, request: bytes) -> tuple[float, int]:
    """(milliseconds, status) of one request on a new connection, connect to last body byte."""
    started = time.perf_counter()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return (time.perf_counter() - started) * 1000, 0
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return (time.perf_counter() - started) * 1000, int(head.split(b" ", 2)[1])


def probe(requests: dict[str, tuple[str, int, bytes]], duration: float) -> dict[str, tuple[list[float], int]]:
    """For `duration` seconds, alternate the requests on fresh connections: latencies and non-200 count."""
    out: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in requests}
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        for name, (host, port, request) in requests.items():
            try:
                ms, status = fresh_request(host, port, request)
            except OSError:
                ms, status = 10_000.0, 0
            latencies, bad = out[name]
            latencies.append(ms)
            out[name] = (latencies, bad + (status != 200))
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hostport(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


Results = list[dict[str, tuple[list[float], int]]]
SCENARIOS = {
    # the connections stay open for the whole measurement: what holding them costs fresh requests
    "held open": "120s",
    # the default head timeout closes them every 10 s and the attacker reopens them all at once
    "reopened at the 10 s head timeout": "10s",
}


def scenario(work: Path, name: str, head_timeout: str, args: argparse.Namespace) -> tuple[Results, Results, list[int]]:
    """(calm runs, attacked runs, connections open at the start and end of each attacked run)."""
    config = {**base_config(work / "keys", algs={"zapier": "ES256"}), "log": {"access": False}}
    config["listen"]["head_timeout"] = head_timeout
    held: list[int] = []
    with keysvc_server(config, work, f"keysvc-slowloris-{head_timeout}") as svc:
        public, internal = hostport(svc.public), hostport(svc.internal)
        body = SIGN_BODY.encode()
        requests = {
            "JWKS GET": (*public, b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\nConnection: close\r\n\r\n"),
            "POST /v1/sign ES256": (*internal, b"POST /v1/sign HTTP/1.1\r\nHost: keysvc\r\nConnection: close\r\n"
                                    b"Authorization: Bearer " + api_key("signer").encode() + b"\r\n"
                                    b"Content-Type: application/json\r\nContent-Length: "
                                    + str(len(body)).encode() + b"\r\n\r\n" + body),
        }
        probe(requests, 1.0)  # warm-up
        calm = [probe(requests, args.duration) for _ in range(args.runs)]
        ctx = multiprocessing.get_context("spawn")
        opened = ctx.Value("i", 0)
        stop = ctx.Event()
        targets = [(*public, b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\n"),
                   (*internal, b"POST /v1/sign HTTP/1.1\r\nHost: keysvc\r\n")]
        attacker = ctx.Process(target=attack, args=(targets, args.idle, args.slow, opened, stop))
        attacker.start()
        try:
            wanted = 2 * (args.idle + args.slow)
            started = time.monotonic()
            while opened.value < 0.98 * wanted and time.monotonic() < started + 60:
                time.sleep(0.2)
            print(f"slowloris ({name}): {opened.value} of {wanted} connections open after "
                  f"{time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)
            attacked = []
            for _ in range(args.runs):
                held.append(opened.value)
                attacked.append(probe(requests, args.duration))
                held.append(opened.value)
        finally:
            stop.set()
            attacker.join(30)
            if attacker.is_alive():
                attacker.kill()
    return calm, attacked, held


def rows_for(name: str, calm: Results, attacked: Results, with_target: bool) -> list[Row]:
    rows = []
    for request in calm[0]:
        calm_ms = [ms for run in calm for ms in run[request][0]]
        hit_ms = [ms for run in attacked for ms in run[request][0]]
        bad = sum(run[request][1] for run in attacked)
        rows += [
            Row(f"{request}, {name}: p50", statistics.median(hit_ms), "ms", "no attack", statistics.median(calm_ms),
                note=f"{len(hit_ms)} requests"),
            Row(f"{request}, {name}: p99", percentile(hit_ms, 0.99), "ms", "no attack", percentile(calm_ms, 0.99),
                target=P99_TARGET_MS if with_target else None, at_most=True, target_on_value=True),
            Row(f"{request}, {name}: answers other than 200", bad, "", target=0, at_most=True, target_on_value=True,
                note=f"no attack: {sum(run[request][1] for run in calm)}"),
        ]
    return rows


def main() -> None:
    parser = arguments(__doc__ or "", runs=1, duration=12.0)
    parser.add_argument("--idle", type=int, default=5000, help="idle connections per port (default 5000)")
    parser.add_argument("--slow", type=int, default=500, help="slowloris connections per port (default 500)")
    args = parser.parse_args()
    os.sched_setaffinity(0, LOAD_CPU)
    raise_open_file_limit()
    rows: list[Row] = []
    held: dict[str, list[int]] = {}
    with workspace("slowloris") as work:
        for i, (name, head_timeout) in enumerate(SCENARIOS.items()):
            calm, attacked, held[name] = scenario(work, name, head_timeout, args)
            rows += rows_for(name, calm, attacked, with_target=i == 0)
    notes = [f"Attack: {args.idle} idle + {args.slow} slowloris connections per port (2 ports), each reopened when "
             f"the server closes it; connections open at the start and end of each attacked run: {held}. "
             f"'held open': listen.head_timeout 120s, so no connection closes during the run (the p99 target "
             f"applies); 'reopened': the default 10s, all {2 * (args.idle + args.slow):,} connections close "
             f"together and the attacker reopens them at once, every 10 s: the server accepts and closes ~1,100 "
             f"connections a second on top of the probe (what a per-source connection cap in front prevents). "
             f"Probe: one request per fresh connection, {args.duration:g}s per phase x {args.runs} run(s), JWKS "
             f"and /v1/sign alternating; access log off. keysvc pinned to the server core, attacker (nice 19) "
             f"and probe on the load core. {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
