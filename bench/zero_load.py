"""POST /v1/sign at zero load: one keep-alive connection, one request at a time, microseconds per request.

What p50 at low load is made of, without any queueing or batching: the time from a request's first byte
sent to its answer's last byte received, keysvc (access log on and off) against the bare Starlette POST
route, in blocks round-robin (so drift hits all alike), medians. The client is a plain socket pinned to the
load core (prebuilt request bytes, no HTTP library), so it adds as little as it can to every figure.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from urllib.parse import urlsplit

from bench.common import (
    CONST_BODY,
    LOAD_CPU,
    SIGN_BODY,
    Row,
    api_key,
    arguments,
    base_config,
    baseline_server,
    cpu_seconds,
    keysvc_server,
    machine_line,
    report,
    workspace,
)

TITLE = "POST /v1/sign at zero load (one connection, one request at a time)"
BLOCK = 500  # requests per block; blocks run round-robin across the servers


def request_bytes(url: str) -> bytes:
    host = urlsplit(url).netloc
    body = SIGN_BODY.encode()
    return (f"POST /v1/sign HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {api_key('signer')}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


def client(url: str, request: bytes | None = None) -> Callable[[int], list[float]]:
    """A keep-alive connection to `url`; calling it sends n requests (`request`, default a POST /v1/sign) one
    after another: their durations."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = request or request_bytes(url)

    def answer() -> None:
        data = b""
        while True:
            data += sock.recv(65536)
            head, sep, rest = data.partition(b"\r\n\r\n")
            if not sep:
                continue
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"not 200: {head[:200]!r}")
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            if len(rest) >= length:
                return

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            sock.sendall(request)
            answer()
            times.append(time.perf_counter() - started)
        return times

    return run


def measure(servers: dict[str, tuple[str, int]], runs: int) -> Iterator[tuple[str, float, float]]:
    """Per server: the median microseconds per request, and the server's CPU microseconds per request."""
    os.sched_setaffinity(0, LOAD_CPU)
    clients = {name: client(url) for name, (url, _) in servers.items()}
    for run in clients.values():
        run(200)  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in servers}
    cpu = dict.fromkeys(servers, 0.0)
    for _ in range(runs):
        for name, run in clients.items():
            before = cpu_seconds(servers[name][1])
            samples[name] += run(BLOCK)
            cpu[name] += cpu_seconds(servers[name][1]) - before
    for name, values in samples.items():
        yield name, statistics.median(values) * 1e6, cpu[name] / len(values) * 1e6


def main() -> None:
    args = arguments(__doc__ or "", runs=6).parse_args()
    with workspace("zero_load") as work, ExitStack() as stack:
        config = base_config(work / "keys", algs={"zapier": "ES256"})
        on = stack.enter_context(keysvc_server(config, work, "keysvc-on"))
        off = stack.enter_context(keysvc_server({**config, "log": {"access": False}}, work, "keysvc-off"))
        bare = stack.enter_context(baseline_server("starlette-post", CONST_BODY, work))
        assert on.proc is not None and off.proc is not None
        got = {name: (wall, cpu) for name, wall, cpu in measure({
            "on": (on.internal, on.proc.pid), "off": (off.internal, off.proc.pid), "bare": (bare.url, bare.pid),
        }, args.runs)}
    base = "bare Starlette POST"
    rows = [Row("POST /v1/sign ES256 (access log on): time per request", got["on"][0], "us", base, got["bare"][0]),
            Row("POST /v1/sign ES256 (access log off): time per request", got["off"][0], "us", base, got["bare"][0]),
            Row("POST /v1/sign ES256 (access log on): server CPU per request", got["on"][1], "us", base,
                got["bare"][1]),
            Row("POST /v1/sign ES256 (access log off): server CPU per request", got["off"][1], "us", base,
                got["bare"][1])]
    notes = [f"{args.runs} blocks x {BLOCK} requests per server, round-robin, median per request; "
             f"{machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
