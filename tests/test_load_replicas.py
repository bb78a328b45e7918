"""Load across a rotation: thousands of requests from concurrent clients against 3 replicas.

Reuses the rotation harness (tests/rotation_harness.py): signers on random replicas, every token verified
by PyJWKClient-like verifiers caching the JWKS from random replicas. Here the point is volume and
concurrency while keys rotate, not the count of rotations (tests/test_rotation_replicas.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rotation_harness import RunReport, run_rotation
from tests.test_rotation_replicas import fast_config, start_replicas

pytestmark = pytest.mark.system

SIGNERS = 12
MIN_REQUESTS = 3000
MIN_KIDS = 3  # three rotation periods of 4 s at least


def test_thousands_of_requests_three_replicas_across_rotations(tmp_path: Path) -> None:
    """12 concurrent signing clients on 3 replicas while the key rotates every 4 s, until 3,000 tokens
    from at least three kids have been verified (however long that takes on this machine): zero request
    errors, zero verification failures, every token accounted for."""
    replicas = start_replicas(tmp_path, fast_config(tmp_path / "keys"), 3)

    def enough(report: RunReport) -> bool:
        return report.verified >= MIN_REQUESTS and len(set(report.kids_used)) >= MIN_KIDS

    try:
        report = run_rotation(
            replicas, keyset="zapier", issuer="https://issuer.example/zapier", until=enough, timeout=180, ttl=2,
            verifier_cache=1.0, algorithms=["ES256"], signers=SIGNERS,
        )
    finally:
        for r in replicas:
            r.stop()
    assert report.sign_errors == [], report.sign_errors[:5]
    assert report.failures == [], report.failures[:5]
    assert report.verified >= MIN_REQUESTS, report.verified
    assert report.verified + report.too_late == report.signed
    assert len(set(report.kids_used)) >= MIN_KIDS, set(report.kids_used)
    print(f"\nload: {report.signed} tokens signed by 3 replicas ({SIGNERS} clients, "
          f"{len(set(report.kids_used))} kids), {report.verified} verified, 0 errors")
