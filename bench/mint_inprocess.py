"""In-process token minting against a bare `cryptography` signature of the same algorithm and key.

Minting = what /v1/sign does once the body is parsed: the claims policy (`check_sign_request`), the JOSE
serialisation (`Minter`: claims JSON, base64url, the pre-encoded header) and the signature (`LocalSigner`,
ECDSA converted from DER to R||S). The baseline is `key.sign(signing_input, ...)` alone, on an input of the
same size. Targets (issue 9): >= 0.8x for ES256 and EdDSA, >= 0.95x for RS256.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from bench.common import SERVER_CPU, Row, base_config, machine_line, report
from keysvc.algorithms import ALGORITHMS
from keysvc.backends.keys import LocalSigner, generate, kid_of
from keysvc.config import parse_settings
from keysvc.tokens import Minter, check_sign_request

TITLE = "In-process minting (claims policy + JOSE serialisation + signature) vs bare signature"
TARGETS = {"ES256": 0.8, "EdDSA": 0.8, "RS256": 0.95}
BODY = {"claims": {"sub": "u-1", "aud": "connect.zapier.com", "org_id": "t-9"}, "ttl": 300}


def bare_sign(key: Any, alg: str) -> Callable[[bytes], bytes]:
    """The signature alone, as `cryptography` gives it (DER for ECDSA)."""
    spec = ALGORITHMS[alg]
    if isinstance(key, rsa.RSAPrivateKey):
        digest = spec.hash()
        pss = padding.PSS(padding.MGF1(spec.hash()), digest.digest_size)
        pad = padding.PKCS1v15() if spec.family == "RSA" else pss
        return lambda data: key.sign(data, pad, digest)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        ecdsa = ec.ECDSA(spec.hash())
        return lambda data: key.sign(data, ecdsa)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of `fn` over about `seconds` (batches, so the clock is read rarely)."""
    batch, done = 1, 0
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        done += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return done / elapsed
        batch = min(batch * 2, 512)


def minting(alg: str, work: Path) -> tuple[Callable[[], object], Callable[[], object]]:
    """(mint one token the way /v1/sign does, bare signature of a same-size input) for a fresh key."""
    settings = parse_settings(base_config(work, algs={"bench": alg}))
    client, keysets = settings.clients["signer"], settings.keysets
    key = generate(alg)
    minter = Minter(LocalSigner(kid_of(key), alg, key), keysets["bench"].issuer)
    now = int(time.time())
    signing_input = minter.signing_input(BODY["claims"], now, 300).signing_input
    sign = bare_sign(key, alg)

    def mint() -> object:
        checked = check_sign_request(BODY, client, keysets)
        return minter.mint(checked.claims, int(time.time()), checked.ttl)

    return mint, lambda: sign(signing_input)


def measure(algs: list[str], runs: int, seconds: float, work: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Per alg: (minting rates, bare rates), interleaved run by run."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    pairs = {alg: minting(alg, work) for alg in algs}
    for alg, (mint, bare) in pairs.items():
        mint(), bare()  # warm up
        out[alg] = ([], [])
    for _ in range(runs):
        for alg, (mint, bare) in pairs.items():
            out[alg][0].append(rate(mint, seconds))
            out[alg][1].append(rate(bare, seconds))
    return out


def main() -> None:
    from bench.common import arguments, workspace

    parser = arguments(__doc__ or "", runs=7, duration=0.4)
    parser.add_argument("--algs", default="ES256,EdDSA,RS256,PS256,ES384")
    args = parser.parse_args()
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, SERVER_CPU)
    try:
        with workspace("mint") as work:
            results = measure(args.algs.split(","), args.runs, args.duration, work)
    finally:
        os.sched_setaffinity(0, previous)
    rows = []
    for alg, (mint, bare) in results.items():
        m, b = statistics.median(mint), statistics.median(bare)
        ratios = [x / y for x, y in zip(mint, bare, strict=True)]
        rows.append(Row(f"mint {alg}", m, "ops/s", f"bare {alg} sign", b, target=TARGETS.get(alg),
                        runs=f"ratio {min(ratios):.2f}-{max(ratios):.2f}"))
        rows.append(Row(f"mint {alg} overhead", (1 / m - 1 / b) * 1e6, "us/token", note="minting minus signature"))
    notes = [f"{args.runs} runs x {args.duration:g}s each, interleaved, medians; one thread pinned to CPU "
             f"{sorted(SERVER_CPU)}. RSA 2048-bit (the file backend's size). {machine_line()}."]
    report(TITLE, rows, notes, args.json)


if __name__ == "__main__":
    main()
