"""KMS calls per JWKS request, per signature, and per refresh as a function of key count.

    .venv/bin/python bench/kms_calls.py

Runs moto's server (tests/moto_launcher.py, which counts KMS operations by X-Amz-Target) and a real
`keysvc serve` on the KMS backend. Prints one table. Expected: 0 calls per 1,000 JWKS requests, exactly
1,000 Sign per 1,000 signatures, and per refresh 1 ListAliases page + 1 ListResourceTags per live key
(GetPublicKey only the first time a replica sees a key; nothing for destroyed keys).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from keysvc.backends.kms import KmsBackend  # noqa: E402
from tests.helpers import KeysvcProcess, api_key, base_config, write_config  # noqa: E402
from tests.kms_server import AWS_ENV, REGION, MotoServer  # noqa: E402

N = 1000


def fmt(calls: dict[str, int]) -> str:
    """`Op=n` pairs, Sign:RAW/DIGEST breakdown left out."""
    parts = [f"{k}={v}" for k, v in sorted(calls.items()) if v and ":" not in k]
    return ", ".join(parts) or "none"


def total(calls: dict[str, int]) -> int:
    return sum(v for k, v in calls.items() if ":" not in k)


def service_rows(server: MotoServer, tmp: Path) -> list[tuple[str, int, str]]:
    """Through a real service: JWKS requests and signatures."""
    config = base_config(tmp / "unused")
    config["backend"] = {
        "type": "kms",
        "region": REGION,
        "endpoint_url": server.endpoint_url,
        "alias_prefix": "alias/bench/service",
        "refresh_interval": "1h",  # no background refresh during the measurement
    }
    proc = KeysvcProcess(write_config(tmp / "bench.yaml", config), name="bench-kms")
    proc.start()
    rows = []
    try:
        deadline = time.monotonic() + 30
        while httpx.get(proc.public + "/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        with httpx.Client() as http:
            server.reset_calls()
            for _ in range(N):
                assert http.get(proc.public + "/.well-known/jwks.json").status_code == 200
            calls = server.calls()
            rows.append((f"{N} JWKS requests", total(calls), fmt(calls)))
            server.reset_calls()
            headers = {"Authorization": f"Bearer {api_key('signer')}"}
            body = {"claims": {"sub": "u-1", "aud": "connect.zapier.com"}}
            for _ in range(N):
                assert http.post(proc.internal + "/v1/sign", json=body, headers=headers).status_code == 200
            calls = server.calls()
            rows.append((f"{N} signatures", total(calls), fmt(calls)))
    finally:
        proc.stop()
    return rows


def refresh_rows(server: MotoServer) -> list[tuple[str, int, str]]:
    """backend.load() (what each refresh does in steady state) against the number of keys."""
    rows = []
    for keys in (1, 2, 5, 10, 20):
        prefix = f"alias/bench/k{keys}"
        writer = KmsBackend(region=REGION, alias_prefix=prefix, endpoint_url=server.endpoint_url)
        for seq in range(1, keys + 1):
            writer.create("ks", seq, "ES256", activates_at=0.0, now=time.time())
        replica = KmsBackend(region=REGION, alias_prefix=prefix, endpoint_url=server.endpoint_url)
        server.reset_calls()
        replica.load("ks")
        cold = server.calls()
        server.reset_calls()
        replica.load("ks")
        warm = server.calls()
        rows.append((f"refresh, {keys} live keys, first", total(cold), fmt(cold)))
        rows.append((f"refresh, {keys} live keys, steady", total(warm), fmt(warm)))
        if keys == 20:
            for record in replica.load("ks")[:15]:
                replica.destroy(record, now=time.time())
            replica.load("ks")
            server.reset_calls()
            replica.load("ks")
            warm = server.calls()
            rows.append(("refresh, 5 live + 15 destroyed keys", total(warm), fmt(warm)))
        writer.close()
        replica.close()
    return rows


def main() -> None:
    """Print the table."""
    os.environ.update(AWS_ENV)
    server = MotoServer()
    server.launch()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows = service_rows(server, Path(tmp)) + refresh_rows(server)
    finally:
        server.shutdown()
    width = max(len(r[0]) for r in rows)
    print(f"{'workload':<{width}}  {'KMS calls':>9}  by operation")
    for what, n, detail in rows:
        print(f"{what:<{width}}  {n:>9}  {detail}")


if __name__ == "__main__":
    main()
