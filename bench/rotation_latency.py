"""Signing latency across a rotation boundary versus far from one (issue 3).

One `keysvc serve` (file backend) with a rotation period of a few seconds (the invariants still hold: the
test suite's FAST timings), signed at a steady pace by one keep-alive client on the other core for
`--duration` seconds. Each request is classified by its distance to the nearest activation instant
(`activates_at`, read from GET /v1/keys): "near" = from 0.25 s before to 0.75 s after (this covers the view
switch at the instant and the reconcile just after it, which creates the next pending key), "far" = more than
1 s away. A rotation must add no visible spike: p99 near <= 1.5x p99 far (and p50 alike).
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from typing import Any

import httpx

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

TITLE = "Signing latency across a rotation boundary vs far from one"
NEAR_BEFORE, NEAR_AFTER, FAR = 0.25, 0.75, 1.0


class KeepAlive:
    """A minimal HTTP/1.1 keep-alive client: one prebuilt request, answers read by Content-Length."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = request
        self.buffer = b""

    def call(self) -> int:
        """Send the request, return the status once the whole answer is read."""
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (x.partition(b":") for x in lines[1:]) if k.lower() == b"content-length")
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status

    def _recv(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def sign_request(internal: str) -> tuple[str, int, bytes]:
    host, port = internal.removeprefix("http://").rsplit(":", 1)
    body = SIGN_BODY.replace(', "ttl": 300', "").encode()
    head = (f"POST /v1/sign HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key('signer')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return host, int(port), head + body


def run(alg: str, duration: float, pace: float, work: Any) -> dict[str, Any]:
    """Sign for `duration` s at `pace` requests/s; per request (wall time sent, latency s, status)."""
    work.mkdir(parents=True, exist_ok=True)
    config = base_config(work / f"keys-{alg}", algs={"zapier": alg}, fast=True)
    config["log"] = {"access": False}
    samples: list[tuple[float, float, int]] = []
    activations: set[float] = set()
    with keysvc_server(config, work, f"keysvc-rot-{alg}") as svc:
        stop = threading.Event()

        def watch_keys() -> None:
            with httpx.Client(timeout=5, headers={"Authorization": f"Bearer {api_key('admin')}"}) as http:
                while not stop.is_set():
                    for row in http.get(svc.internal + "/v1/keys").json()["keys"]:
                        activations.add(float(row["activates_at"]))
                    stop.wait(0.5)

        watcher = threading.Thread(target=watch_keys)
        watcher.start()
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, LOAD_CPU)
        client = KeepAlive(*sign_request(svc.internal))
        try:
            interval = 1.0 / pace
            next_at = time.perf_counter()
            deadline = next_at + duration
            while next_at < deadline:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                wall, started = time.time(), time.perf_counter()
                status = client.call()
                samples.append((wall, time.perf_counter() - started, status))
                next_at += interval
        finally:
            client.close()
            os.sched_setaffinity(0, previous)
            stop.set()
            watcher.join(10)
    first, last = samples[0][0], samples[-1][0]
    boundaries = sorted(a for a in activations if first + NEAR_BEFORE < a < last - NEAR_AFTER)
    near, far = [], []
    for wall, latency, status in samples:
        if status != 200:
            continue
        distance = min((wall - b for b in boundaries), key=abs, default=float("inf"))
        if -NEAR_BEFORE <= distance <= NEAR_AFTER:
            near.append(latency * 1000)
        elif abs(distance) > FAR:
            far.append(latency * 1000)
    return {"near": near, "far": far, "boundaries": len(boundaries), "errors": sum(s[2] != 200 for s in samples),
            "total": len(samples)}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = arguments(__doc__ or "", runs=3, duration=20.0)
    parser.add_argument("--pace", type=float, default=200.0, help="signing requests per second (default 200)")
    parser.add_argument("--algs", default="ES256,RS256")
    args = parser.parse_args()
    rows: list[Row] = []
    notes = []
    with workspace("rotation") as work:
        for alg in args.algs.split(","):
            # p99 near a rotation hangs on ~1% of ~800 requests: one stall of the (shared, noisy) machine
            # more or less moves it a lot, so each figure is the run with the median p99 ratio of several
            runs = [run(alg, args.duration, args.pace, work / f"run-{i}") for i in range(args.runs)]
            ratios = [pct(r["near"], 0.99) / pct(r["far"], 0.99) for r in runs]
            r = runs[sorted(range(len(runs)), key=ratios.__getitem__)[len(runs) // 2]]
            near, far = r["near"], r["far"]
            rows += [
                Row(f"{alg} p50 near a rotation", statistics.median(near) if near else float("nan"), "ms",
                    "far from one", statistics.median(far) if far else None, target=1.5, at_most=True),
                Row(f"{alg} p99 near a rotation", pct(near, 0.99), "ms", "far from one", pct(far, 0.99), target=1.5,
                    at_most=True, runs=f"ratio {min(ratios):.2f}-{max(ratios):.2f}"),
                Row(f"{alg} max near a rotation", max(near, default=float("nan")), "ms", "far from one",
                    max(far, default=float("nan"))),
            ]
            notes.append(f"{alg}: the median of {len(runs)} runs by p99 ratio (all: "
                         f"{', '.join(f'{x:.2f}x' for x in ratios)}); {r['boundaries']} rotations, {len(near)} "
                         f"requests near one, {len(far)} far, {r['errors']} non-200 of {r['total']}.")
    notes.append(f"Rotation period 4 s (publish_ahead 2 s, refresh 500 ms), access log off; {args.pace:g} req/s "
                 "from one "
                 f"keep-alive client pinned to the load core for {args.duration:g} s per run. {machine_line()}.")
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
