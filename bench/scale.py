"""Scale: 100 keysets and 1,000 clients configured against 1 keyset and 1 client; reconcile cost vs key count.

Targets (issue 9): signing and JWKS throughput with 100 keysets + 1,000 clients >= 0.95x of 1 + 1 (lookups
are O(1)); the cost of a full refresh (reconcile every keyset with the file backend, rebuild views) grows
linearly with the number of keys: the slope is reported, and "linear" means a straight line fits (R^2).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import (
    SERVER_CPU,
    SIGN_BODY,
    Load,
    Row,
    api_key,
    arguments,
    base_config,
    interleaved,
    keysvc_server,
    machine_line,
    report,
    require_tools,
    spread,
    workspace,
)

TITLE = "Scale: 100 keysets + 1,000 clients vs 1 + 1; refresh cost vs key count"


def scaled_config(keys: Path, keysets: int, clients: int, signing_keyset: str) -> dict[str, Any]:
    """`keysets` ES256 keysets ks000..; `clients` clients, plus `signer` allowed `signing_keyset` only."""
    config = base_config(keys, algs={"ks000": "ES256"})
    template = config["keysets"]["ks000"]
    config["keysets"] = {f"ks{i:03d}": {**template, "issuer": f"https://issuer.example/ks{i:03d}", "default": i == 0}
                         for i in range(keysets)}
    signer = {**config["clients"]["signer"], "keysets": [signing_keyset]}
    others = {
        f"c{i:04d}": {"api_key_sha256": hashlib.sha256(f"bench-client-{i}".encode()).hexdigest(),
                      "keysets": [f"ks{i % keysets:03d}"], "audiences": ["connect.zapier.com"], "max_ttl": "5m"}
        for i in range(clients - 1)
    }
    config["clients"] = {"signer": signer, **others}
    config["log"] = {"access": False}
    return config


def refresh_cost(keysets: int, runs: int, work: Path) -> tuple[int, float]:
    """(keys loaded, median seconds of one full refresh) for `keysets` keysets on a fresh directory."""
    from keysvc.config import parse_settings
    from keysvc.service import build_service

    config = scaled_config(work / f"refresh-{keysets}", keysets, 1, "ks000")
    service = build_service(parse_settings(config))

    async def measure() -> list[float]:
        await service.keyring.refresh_all()  # creates the keys; not timed
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            await service.keyring.refresh_all()
            times.append(time.perf_counter() - started)
        return times

    try:
        times = asyncio.run(measure())
        keys = sum(len(v.records) for name in config["keysets"] if (v := service.keyring.view(name)) is not None)
    finally:
        asyncio.run(service.aclose())
    return keys, statistics.median(times)


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares: slope, intercept, R^2."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return slope, intercept, 1 - ss_res / ss_tot if ss_tot else 1.0


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--sizes", default="1,10,50,100,200", help="keyset counts for the refresh slope")
    args = parser.parse_args()
    require_tools("wrk")
    auth = {"Authorization": f"Bearer {api_key('signer')}", "Content-Type": "application/json"}
    with workspace("scale") as work:
        small = scaled_config(work / "small", 1, 1, "ks000")
        large = scaled_config(work / "large", 100, 1000, "ks057")
        with keysvc_server(small, work, "keysvc-1x1") as one, keysvc_server(large, work, "keysvc-100x1000") as many:
            body = {k: SIGN_BODY.replace('{"claims"', f'{{"keyset": "{k}", "claims"') for k in ("ks000", "ks057")}
            loads = {
                "sign 1": Load(one.internal + "/v1/sign", "POST", auth, body["ks000"]),
                "sign 100": Load(many.internal + "/v1/sign", "POST", auth, body["ks057"]),
                "jwks 1": Load(one.public + "/keysets/ks000/jwks.json"),
                "jwks 100": Load(many.public + "/keysets/ks057/jwks.json"),
            }
            res = interleaved(loads, args.runs, args.duration, args.connections, work)
        previous = os.sched_getaffinity(0)
        os.sched_setaffinity(0, SERVER_CPU)
        try:
            points = [refresh_cost(int(n), 5, work) for n in args.sizes.split(",")]
        finally:
            os.sched_setaffinity(0, previous)
    med = {k: statistics.median(r.rps for r in v) for k, v in res.items()}
    rng = {k: spread([r.rps for r in v]) for k, v in res.items()}
    slope, intercept, r2 = linear_fit([float(k) for k, _ in points], [t * 1000 for _, t in points])
    rows = [
        Row("POST /v1/sign ES256, 1 keyset + 1 client", med["sign 1"], "req/s", runs=rng["sign 1"]),
        Row("POST /v1/sign ES256, 100 keysets + 1,000 clients", med["sign 100"], "req/s", "1 + 1", med["sign 1"],
            target=0.95, runs=rng["sign 100"]),
        Row("JWKS 200, 1 keyset", med["jwks 1"], "req/s", runs=rng["jwks 1"]),
        Row("JWKS 200, 100 keysets + 1,000 clients", med["jwks 100"], "req/s", "1 + 1", med["jwks 1"], target=0.95,
            runs=rng["jwks 100"]),
    ]
    for keys, seconds in points:
        rows.append(Row(f"full refresh, {keys} keys", seconds * 1000, "ms"))
    rows.append(Row("refresh slope", slope * 1000, "us/key", note=f"intercept {intercept:.2f} ms"))
    rows.append(Row("refresh linearity (R^2 of a straight line)", r2, "", target=0.95))
    notes = [f"Access log off. wrk -t1 -c{args.connections}, {args.runs} runs x {args.duration:g}s round-robin, "
             f"medians. Refresh: in-process `Keyring.refresh_all()` on the file backend (reads every record, "
             f"reconciles, rebuilds JWKS/views), 5 runs per size, median, pinned to the server core. {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
