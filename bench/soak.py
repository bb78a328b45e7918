"""Soak: N `keysvc serve` replicas on one key directory, rotating every few seconds, signed on and verified
for a configurable, bounded duration (loopback only).

Signers spread over all replicas; every token is verified by a verifier that fetches the JWKS from a random
replica and caches it like PyJWT (tests/rotation_harness.py, the same harness as the rotation test). Reports
tokens signed and verified, verification failures (must be 0), sign errors, rotations seen, the worst ETag
spread between replicas, and each replica's RSS at the start and the end (growth hints at a leak).

    .venv/bin/python -m bench.soak --replicas 3 --duration 600
"""

from __future__ import annotations

import time

from bench.common import (
    KeysvcProcess,
    Row,
    arguments,
    base_config,
    machine_line,
    report,
    rss_mb,
    workspace,
    write_config,
)

TITLE = "Soak: replicas rotating, signing and verifying"
MAX_DURATION = 24 * 3600


def main() -> None:
    parser = arguments(__doc__ or "", runs=1, duration=60.0)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--alg", default="ES256")
    parser.add_argument("--signers", type=int, default=3, help="signing threads")
    args = parser.parse_args()
    if not 0 < args.duration <= MAX_DURATION or not 1 <= args.replicas <= 16:
        parser.error(f"--duration must be in (0, {MAX_DURATION}] and --replicas in [1, 16]")
    from tests.helpers import FAST_TIMINGS
    from tests.rotation_harness import run_rotation

    with workspace("soak") as work:
        config = base_config(work / "keys", algs={"zapier": args.alg}, fast=True)
        config["log"] = {"access": False}
        path = write_config(work / "soak.yaml", config)
        replicas = [KeysvcProcess(path, name=f"soak-{i}").start() for i in range(args.replicas)]
        try:
            rss_start = [rss_mb(r.proc.pid) for r in replicas if r.proc is not None]
            started = time.monotonic()
            seen = run_rotation(  # a soak runs for its duration, whatever it has seen by then
                replicas, keyset="zapier", issuer=config["keysets"]["zapier"]["issuer"],
                until=lambda _: time.monotonic() - started >= args.duration, timeout=args.duration + 30,
                ttl=1, verifier_cache=1.0, algorithms=[args.alg], signers=args.signers,
            )
            elapsed = time.monotonic() - started
            rss_end = [rss_mb(r.proc.pid) for r in replicas if r.proc is not None]
        finally:
            for r in replicas:
                r.stop()
    spreads = seen.etag_spreads(args.replicas)
    refresh = float(FAST_TIMINGS["refresh_interval"].removesuffix("ms")) / 1000
    rows = [
        Row("tokens signed", seen.signed, "", note=f"{seen.signed / elapsed:,.0f}/s"),
        Row("tokens verified", seen.verified, ""),
        Row("verification failures", len(seen.failures), "", target=0, at_most=True),
        Row("sign errors", len(seen.sign_errors), "", target=0, at_most=True),
        Row("verified after exp (slow machine, not a key failure)", seen.too_late, ""),
        Row("distinct signing kids (rotations + 1)", len(set(seen.kids_used)), ""),
        Row("worst ETag spread between replicas", max(spreads.values(), default=0.0), "s", target=refresh,
            at_most=True),
        Row("RSS growth, worst replica", max((e - s for s, e in zip(rss_start, rss_end, strict=True)), default=0.0),
            "MiB", note=f"start {max(rss_start, default=0):.1f}, end {max(rss_end, default=0):.1f}"),
    ]
    notes = [f"{args.replicas} replicas, {args.alg}, rotation every 4 s, refresh 500 ms, {args.duration:g} s, "
             f"{args.signers} signing threads. {machine_line()}."]
    for failure in seen.failures[:5]:
        notes.append(f"failure: {failure}")
    for error in seen.sign_errors[:5]:
        notes.append(f"sign error: {error}")
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
