"""JWKS over HTTP: keysvc's public listener against nginx and a bare uvicorn ASGI app serving the same bytes.

Targets (issue 9): JWKS 200 >= 0.30x nginx static (1 worker); 304 (If-None-Match) >= the 200 rate.
keysvc runs twice, with the access log on (the default) and off (`log: {access: false}`).

With `--tree NAME=PATH` (repeat): an A/B between source trees instead, in one invocation. Each tree serves
its own `keysvc serve` (PYTHONPATH=PATH, as shipped), JWKS 200 and 304 round-robin with nginx: each tree's
rates against the first tree's and against nginx.
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.common import (
    Load,
    Row,
    arguments,
    base_config,
    baseline_server,
    interleaved,
    keysvc_server,
    machine_line,
    nginx_server,
    report,
    require_tools,
    spread,
    workspace,
)

TITLE = "JWKS over HTTP (GET, RS256 keyset: active + pending key)"


PATH = "/.well-known/jwks.json"


def between_trees(args: argparse.Namespace) -> None:
    """JWKS 200 and 304 of each source tree in `args.tree`, round-robin with nginx (same bytes)."""
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    with workspace("jwks-ab") as work, ExitStack() as stack:
        loads: dict[str, Load] = {}
        body = b""
        for name, tree in trees.items():
            config = base_config(work / f"keys-{name}", algs={"zapier": "RS256"})
            svc = stack.enter_context(keysvc_server(config, work, f"jwks-{name}", tree=tree))
            first = httpx.get(svc.public + PATH)
            body = body or first.content
            loads[f"{name} 200"] = Load(svc.public + PATH)
            loads[f"{name} 304"] = Load(svc.public + PATH, headers={"If-None-Match": first.headers["etag"]})
        nginx = stack.enter_context(nginx_server(body, work, first.headers["cache-control"]))
        loads["nginx"] = Load(nginx.url + "/jwks.json")
        res = interleaved(loads, args.runs, args.duration, args.connections, work)
    med = {k: statistics.median(r.rps for r in v) for k, v in res.items()}
    rng = {k: spread([r.rps for r in v]) for k, v in res.items()}
    errors = {k: sum(r.errors for r in v) for k, v in res.items() if sum(r.errors for r in v)}
    base = next(iter(trees))
    rows = [Row("nginx static file, 1 worker", med["nginx"], "req/s", runs=rng["nginx"])]
    for name in trees:
        for status in ("200", "304"):
            key = f"{name} {status}"
            rows.append(Row(f"keysvc JWKS {status}", med[key], "req/s", f"{base} {status}", med[f"{base} {status}"],
                            runs=rng[key], note=f"{name}, as shipped"))
        rows.append(Row("keysvc JWKS 200", med[f"{name} 200"], "req/s", "nginx", med["nginx"], target=0.30,
                        note=f"{name}, as shipped"))
    notes = [f"Trees: {', '.join(f'{n}={p}' for n, p in trees.items())}. Body {len(body)} bytes (first tree). "
             f"wrk -t1 -c{args.connections}, keep-alive, {args.runs} runs x {args.duration:g}s round-robin, medians. "
             f"{machine_line()}."]
    if errors:
        notes.append(f"Non-2xx/3xx or socket errors seen: {errors}")
    report(f"{TITLE}: A/B between source trees", rows, notes, args.json)


def main() -> None:
    parser = arguments(__doc__ or "")
    parser.add_argument("--tree", action="append", metavar="NAME=PATH",
                        help="A/B: a source tree to serve (repeat), instead of the baselines and the log on/off pair")
    args = parser.parse_args()
    require_tools("wrk", "nginx")
    if args.tree:
        between_trees(args)
        return
    with workspace("jwks") as work:
        keys = work / "keys"
        config = base_config(keys, algs={"zapier": "RS256"})
        quiet = {**config, "log": {"access": False}}
        with keysvc_server(quiet, work, "keysvc-nolog") as svc, keysvc_server(config, work, "keysvc-log") as svc_log:
            first = httpx.get(svc.public + "/.well-known/jwks.json")
            body, etag, cache_control = first.content, first.headers["etag"], first.headers["cache-control"]
            assert httpx.get(svc_log.public + "/.well-known/jwks.json").content == body
            headers = {"cache-control": cache_control, "etag": etag}
            with nginx_server(body, work, cache_control) as nginx, \
                    baseline_server("raw", body, work, headers) as raw, \
                    baseline_server("starlette-get", body, work, headers) as star:
                path = "/.well-known/jwks.json"
                loads = {
                    "nginx": Load(nginx.url + "/jwks.json"),
                    "raw": Load(raw.url + path),
                    "starlette": Load(star.url + path),
                    "200": Load(svc.public + path),
                    "304": Load(svc.public + path, headers={"If-None-Match": etag}),
                    "200 log": Load(svc_log.public + path),
                    "304 log": Load(svc_log.public + path, headers={"If-None-Match": etag}),
                }
                res = interleaved(loads, args.runs, args.duration, args.connections, work)
    med = {k: statistics.median(r.rps for r in v) for k, v in res.items()}
    rng = {k: spread([r.rps for r in v]) for k, v in res.items()}
    errors = {k: sum(r.errors for r in v) for k, v in res.items() if sum(r.errors for r in v)}
    rows = [
        Row("nginx static file, 1 worker", med["nginx"], "req/s", runs=rng["nginx"]),
        Row("bare uvicorn raw ASGI, same bytes", med["raw"], "req/s", "nginx", med["nginx"], runs=rng["raw"]),
        Row("bare Starlette GET route, same bytes", med["starlette"], "req/s", "nginx", med["nginx"],
            runs=rng["starlette"]),
        Row("keysvc JWKS 200", med["200"], "req/s", "nginx", med["nginx"], target=0.30, runs=rng["200"],
            note="access log off"),
        Row("keysvc JWKS 200", med["200"], "req/s", "bare raw ASGI", med["raw"], runs=rng["200"],
            note="access log off"),
        Row("keysvc JWKS 304", med["304"], "req/s", "keysvc 200", med["200"], target=1.0, runs=rng["304"],
            note="access log off"),
        Row("keysvc JWKS 200", med["200 log"], "req/s", "nginx", med["nginx"], target=0.30, runs=rng["200 log"],
            note="access log on"),
        Row("keysvc JWKS 304", med["304 log"], "req/s", "keysvc 200", med["200 log"], target=1.0,
            runs=rng["304 log"], note="access log on"),
    ]
    notes = [
        f"Body {len(body)} bytes. wrk -t1 -c{args.connections}, keep-alive, {args.runs} runs x {args.duration:g}s "
        f"round-robin, medians. {machine_line()}.",
    ]
    if errors:
        notes.append(f"Non-2xx/3xx or socket errors seen: {errors}")
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
