"""Load across a rotation: thousands of requests from concurrent clients against 3 replicas.

Reuses the rotation harness (tests/rotation_harness.py): signers on random replicas, every token verified
by PyJWKClient-like verifiers caching the JWKS from random replicas. Here the point is volume and
concurrency while keys rotate, not the count of rotations (tests/test_rotation_replicas.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rotation_harness import run_rotation
from tests.test_rotation_replicas import fast_config, start_replicas

pytestmark = pytest.mark.system

SIGNERS = 12
DURATION = 14.0  # three rotation periods of 4 s
MIN_REQUESTS = 3000


def test_thousands_of_requests_three_replicas_across_rotations(tmp_path: Path) -> None:
    """12 concurrent signing clients for 14 s on 3 replicas while the key rotates every 4 s: at least
    3,000 tokens, zero request errors, zero verification failures, and tokens from at least three kids."""
    replicas = start_replicas(tmp_path, fast_config(tmp_path / "keys"), 3)
    try:
        report = run_rotation(
            replicas, keyset="zapier", issuer="https://issuer.example/zapier", duration=DURATION, ttl=2,
            verifier_cache=1.0, algorithms=["ES256"], signers=SIGNERS,
        )
    finally:
        for r in replicas:
            r.stop()
    assert report.sign_errors == [], report.sign_errors[:5]
    assert report.failures == [], report.failures[:5]
    assert report.signed >= MIN_REQUESTS, report.signed
    assert report.verified + report.too_late == report.signed
    assert report.too_late <= report.signed * 0.01, report.too_late
    assert len(set(report.kids_used)) >= 3, set(report.kids_used)
    print(f"\nload: {report.signed} tokens signed by 3 replicas ({SIGNERS} clients, {DURATION:g} s, "
          f"{len(set(report.kids_used))} kids), {report.verified} verified, 0 errors")
