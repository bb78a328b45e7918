"""A/B of POST /v1/sign ES256 between source trees, in one invocation: maximum throughput, server CPU time per
request at that maximum, and p50/p99 at half of the first tree's maximum, against the bare Starlette POST.

Each tree (`--tree NAME=PATH`, a checkout of keysvc, e.g. `git worktree add /tmp/old <commit>`) serves its
own `keysvc serve` process (PYTHONPATH=PATH), pinned to the server core like every other benchmark. Runs are
round-robin across the trees and the baseline, so the machine's drift hits all alike; medians. The paced
runs give every server the same per-connection delay (calibrated once, on the first tree), so they are
offered about the same rate. CPU time per request (from /proc, user + system) is the figure the machine's
other load disturbs least.
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from pathlib import Path

from bench.common import (
    CONST_BODY,
    SIGN_BODY,
    KeysvcProcess,
    Load,
    Row,
    api_key,
    arguments,
    base_config,
    baseline_server,
    cpu_seconds,
    machine_line,
    pin,
    report,
    spread,
    wait_http,
    workspace,
    write_config,
    wrk,
)
from bench.latency import PACED_CONNECTIONS, paced

TITLE = "POST /v1/sign ES256: A/B between source trees"
BARE = "bare Starlette POST"


def main() -> None:
    parser = arguments(__doc__ or "", runs=7, duration=2.0)
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH",
                        help="a source tree to serve (repeat; the first one sets the paced rate)")
    parser.add_argument("--access-log", choices=("on", "off"), default="on")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    auth = {"Authorization": f"Bearer {api_key('signer')}", "Content-Type": "application/json"}
    with workspace("ab_sign") as work, ExitStack() as stack:
        loads: dict[str, Load] = {}
        pids: dict[str, int] = {}
        for name, path in trees.items():
            config = {**base_config(work / f"keys-{name}", algs={"zapier": "ES256"}),
                      "log": {"access": args.access_log == "on"}}
            proc = KeysvcProcess(write_config(work / f"{name}.yaml", config), name=f"ab-{name}",
                                 env={"KEYSVC_LOG_LEVEL": "INFO", "PYTHONPATH": str(Path(path).resolve())}).start()
            stack.callback(proc.stop)
            assert proc.proc is not None
            pin(proc.proc.pid)
            wait_http(proc.public + "/readyz")
            loads[name], pids[name] = Load(proc.internal + "/v1/sign", "POST", auth, SIGN_BODY), proc.proc.pid
        bare = stack.enter_context(baseline_server("starlette-post", CONST_BODY, work))
        loads[BARE], pids[BARE] = Load(bare.url + "/v1/sign", "POST", auth, SIGN_BODY), bare.pid

        rps: dict[str, list[float]] = {name: [] for name in loads}
        cpu: dict[str, list[float]] = {name: [] for name in loads}
        for load in loads.values():
            wrk(load, 1.0, args.connections, work)  # warm-up
        for _ in range(args.runs):
            for name, load in loads.items():
                before = cpu_seconds(pids[name])
                rate = wrk(load, args.duration, args.connections, work).rps
                rps[name].append(rate)
                cpu[name].append((cpu_seconds(pids[name]) - before) / (rate * round(args.duration)) * 1e6)
        first = next(iter(trees))
        delay = paced(loads[first], statistics.median(rps[first]) / 2, args.duration, work).delay_ms
        p50: dict[str, list[float]] = {name: [] for name in loads}
        p99: dict[str, list[float]] = {name: [] for name in loads}
        for _ in range(args.runs):
            for name, load in loads.items():
                r = wrk(Load(load.url, load.method, load.headers, load.body, delay), args.duration,
                        PACED_CONNECTIONS, work)
                p50[name].append(r.p50_ms)
                p99[name].append(r.p99_ms)

    def med(values: dict[str, list[float]], name: str) -> float:
        return statistics.median(values[name])

    rows: list[Row] = []
    for name in trees:
        rows += [
            Row(f"{name}: maximum", med(rps, name), "req/s", first, med(rps, first), runs=spread(rps[name])),
            Row(f"{name}: server CPU per request at the maximum", med(cpu, name), "us", BARE, med(cpu, BARE)),
            Row(f"{name}: p50 at half of {first}'s maximum", med(p50, name), "ms", BARE, med(p50, BARE)),
            Row(f"{name}: p99 at half of {first}'s maximum", med(p99, name), "ms", BARE, med(p99, BARE)),
        ]
    rows.append(Row(f"{BARE}: maximum", med(rps, BARE), "req/s", runs=spread(rps[BARE])))
    notes = [f"Access log {args.access_log}. Maximum: wrk -t1 -c{args.connections}; paced: wrk -t1 "
             f"-c{PACED_CONNECTIONS}, the same per-connection delay for every server ({delay:.2f} ms); "
             f"{args.runs} runs x {args.duration:g}s "
             f"round-robin, medians. Trees: {', '.join(f'{n}={p}' for n, p in trees.items())}. {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
