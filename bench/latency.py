"""Latency under load: p50/p99 at 50% of the measured maximum throughput, for JWKS and for /v1/sign.

For each endpoint: measure the maximum (wrk, as in jwks_http/sign_http), then pace every wrk connection
(a Lua `delay()` between a response and the next request) so that the offered rate is about half of it,
and read wrk's latency percentiles. The baseline (bare uvicorn raw ASGI for JWKS, bare Starlette POST for
/v1/sign) is driven at the same offered rate in the same invocation. Pacing is closed-loop (wrk, not wrk2):
a stall delays the next request instead of queueing it, so p99 is a lower bound under coordinated omission.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import httpx

from bench.common import (
    CONST_BODY,
    SIGN_BODY,
    Load,
    Row,
    api_key,
    arguments,
    base_config,
    baseline_server,
    keysvc_server,
    machine_line,
    report,
    require_tools,
    workspace,
    wrk,
)

TITLE = "Latency at 50% of maximum throughput"
PACED_CONNECTIONS = 16


def paced(load: Load, rate: float, duration: float, work: Path) -> Load:
    """The load with a per-connection delay calibrated (one probe run) so that wrk offers about `rate`."""
    period_ms = PACED_CONNECTIONS / rate * 1000
    probe = Load(load.url, load.method, load.headers, load.body, period_ms)
    got = wrk(probe, min(duration, 2.0), PACED_CONNECTIONS, work).rps
    service_ms = max(0.0, PACED_CONNECTIONS / got * 1000 - period_ms)
    return Load(load.url, load.method, load.headers, load.body, max(0.0, period_ms - service_ms))


def measure(target: Load, baseline: Load, runs: int, duration: float, connections: int, work: Path) -> dict[str, float]:
    """Max rate of `target`, then p50/p99 of target and baseline at half that rate (medians of runs)."""
    maximum = statistics.median(wrk(target, duration, connections, work).rps for _ in range(runs))
    rate = maximum / 2
    loads = {"target": paced(target, rate, duration, work), "baseline": paced(baseline, rate, duration, work)}
    results: dict[str, list[tuple[float, float, float]]] = {"target": [], "baseline": []}
    for _ in range(runs):
        for name, load in loads.items():
            r = wrk(load, duration, PACED_CONNECTIONS, work)
            results[name].append((r.rps, r.p50_ms, r.p99_ms))
    out = {"max": maximum, "rate": rate}
    for name, values in results.items():
        out[f"{name} rps"] = statistics.median(v[0] for v in values)
        out[f"{name} p50"] = statistics.median(v[1] for v in values)
        out[f"{name} p99"] = statistics.median(v[2] for v in values)
    return out


def rows_for(label: str, base_label: str, m: dict[str, float]) -> list[Row]:
    return [
        Row(f"{label}: maximum", m["max"], "req/s"),
        Row(f"{label}: offered at 50%", m["target rps"], "req/s", note=f"{base_label} got {m['baseline rps']:,.0f}"),
        Row(f"{label}: p50 at 50%", m["target p50"], "ms", base_label, m["baseline p50"]),
        Row(f"{label}: p99 at 50%", m["target p99"], "ms", base_label, m["baseline p99"]),
    ]


def main() -> None:
    args = arguments(__doc__ or "").parse_args()
    require_tools("wrk")
    auth = {"Authorization": f"Bearer {api_key('signer')}", "Content-Type": "application/json"}
    rows: list[Row] = []
    with workspace("latency") as work:
        config = base_config(work / "keys", algs={"zapier": "ES256"})
        for access in (False, True):
            cfg = {**config, "log": {"access": access}}
            suffix = "access log on" if access else "access log off"
            with keysvc_server(cfg, work, "keysvc") as svc:
                first = httpx.get(svc.public + "/.well-known/jwks.json")
                headers = {"cache-control": first.headers["cache-control"], "etag": first.headers["etag"]}
                with baseline_server("raw", first.content, work, headers) as raw, \
                        baseline_server("starlette-post", CONST_BODY, work) as star:
                    jwks = measure(Load(svc.public + "/.well-known/jwks.json"), Load(raw.url + "/"), args.runs,
                                   args.duration, args.connections, work)
                    sign = measure(Load(svc.internal + "/v1/sign", "POST", auth, SIGN_BODY),
                                   Load(star.url + "/v1/sign", "POST", auth, SIGN_BODY), args.runs, args.duration,
                                   args.connections, work)
            rows += rows_for(f"JWKS 200 ({suffix})", "bare raw ASGI", jwks)
            rows += rows_for(f"POST /v1/sign ES256 ({suffix})", "bare Starlette POST", sign)
    notes = [f"Maximum: wrk -t1 -c{args.connections}; paced runs: wrk -t1 -c{PACED_CONNECTIONS} with a per-connection "
             f"delay; {args.runs} runs x {args.duration:g}s, medians. Baselines run at the same offered rate. "
             f"{machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
