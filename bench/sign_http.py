"""POST /v1/sign over HTTP (file backend) against a bare Starlette POST route and in-process minting.

Targets (issue 9): ES256 >= 0.5x a bare Starlette POST route that reads the body and returns a constant
body, on the same uvicorn settings; RS256 over HTTP >= 0.8x the in-process RS256 minting rate (same key).
keysvc runs with the access log on (the default) and off (`log: {access: false}`), and once more as
bench/stub_signature.py (the shipped path with the signature made free), which shows how much of the bare
route's rate keysvc's own per-request work leaves for the signature.
"""

from __future__ import annotations

import os
import statistics
import time

from bench.common import (
    CONST_BODY,
    SERVER_CPU,
    SIGN_BODY,
    Load,
    Row,
    api_key,
    arguments,
    base_config,
    baseline_server,
    interleaved,
    keysvc_server,
    machine_line,
    report,
    require_tools,
    spread,
    workspace,
)

TITLE = "POST /v1/sign over HTTP (file backend)"


def inprocess_rs256_rate(config: dict[str, object], runs: int, seconds: float) -> list[float]:
    """Minting rate of the keysvc keyring itself (same key directory), pinned to the server core."""
    import asyncio

    from bench.mint_inprocess import rate
    from keysvc.config import parse_settings
    from keysvc.service import build_service
    from keysvc.tokens import check_sign_request

    settings = parse_settings(config)
    service = build_service(settings)
    asyncio.run(service.keyring.refresh_all())
    view = service.keyring.view("rsa")
    assert view is not None and view.minter is not None
    minter, client = view.minter, settings.clients["signer"]
    body = {"keyset": "rsa", "claims": {"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9"}, "ttl": 300}

    def mint() -> object:
        checked = check_sign_request(body, client, settings.keysets)
        return minter.mint(checked.claims, int(time.time()), checked.ttl)

    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, SERVER_CPU)
    try:
        return [rate(mint, seconds) for _ in range(runs)]
    finally:
        os.sched_setaffinity(0, previous)
        asyncio.run(service.aclose())


def main() -> None:
    args = arguments(__doc__ or "").parse_args()
    require_tools("wrk")
    auth = {"Authorization": f"Bearer {api_key('signer')}", "Content-Type": "application/json"}
    es_body = SIGN_BODY.replace('{"claims"', '{"keyset": "zapier", "claims"')
    rs_body = SIGN_BODY.replace('{"claims"', '{"keyset": "rsa", "claims"')
    with workspace("sign") as work:
        config = base_config(work / "keys", algs={"zapier": "ES256", "rsa": "RS256"})
        quiet = {**config, "log": {"access": False}}
        with keysvc_server(quiet, work, "keysvc-nolog") as svc, keysvc_server(config, work, "keysvc-log") as svc_log, \
                keysvc_server(config, work, "keysvc-stub", "bench.stub_signature") as stub, \
                baseline_server("starlette-post", CONST_BODY, work) as star:
            loads = {
                "starlette": Load(star.url + "/v1/sign", "POST", auth, es_body),
                "es": Load(svc.internal + "/v1/sign", "POST", auth, es_body),
                "es log": Load(svc_log.internal + "/v1/sign", "POST", auth, es_body),
                "es stub": Load(stub.internal + "/v1/sign", "POST", auth, es_body),
                "rs": Load(svc.internal + "/v1/sign", "POST", auth, rs_body),
            }
            res = interleaved(loads, args.runs, args.duration, args.connections, work)
            inproc = inprocess_rs256_rate(quiet, max(3, args.runs), min(args.duration, 2.0))
    med = {k: statistics.median(r.rps for r in v) for k, v in res.items()}
    rng = {k: spread([r.rps for r in v]) for k, v in res.items()}
    errors = {k: sum(r.errors for r in v) for k, v in res.items() if sum(r.errors for r in v)}
    mint_rs = statistics.median(inproc)
    rows = [
        Row("bare Starlette POST route, constant body", med["starlette"], "req/s", runs=rng["starlette"]),
        Row("keysvc POST /v1/sign ES256", med["es"], "req/s", "bare Starlette POST", med["starlette"], target=0.5,
            runs=rng["es"], note="access log off"),
        Row("keysvc POST /v1/sign ES256", med["es log"], "req/s", "bare Starlette POST", med["starlette"],
            target=0.5, runs=rng["es log"], note="access log on"),
        Row("keysvc POST /v1/sign, the ES256 signature made free", med["es stub"], "req/s", "bare Starlette POST",
            med["starlette"], runs=rng["es stub"], note="access log on; bench/stub_signature.py: every check and "
            "line, no signature"),
        Row("in-process RS256 minting (same key)", mint_rs, "ops/s", runs=spread(inproc)),
        Row("keysvc POST /v1/sign RS256", med["rs"], "req/s", "in-process RS256 minting", mint_rs, target=0.8,
            runs=rng["rs"], note="access log off"),
    ]
    notes = [f"wrk -t1 -c{args.connections}, keep-alive, {args.runs} runs x {args.duration:g}s round-robin, medians; "
             f"request body {len(es_body)} bytes. RSA 2048-bit. {machine_line()}."]
    if errors:
        notes.append(f"Non-2xx/3xx or socket errors seen: {errors}")
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
