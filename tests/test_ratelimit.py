"""keysvc.ratelimit: token bucket arithmetic on times passed in (no clock, no sleep)."""

from __future__ import annotations

import pytest

from keysvc.ratelimit import TokenBucket, retry_after

pytestmark = pytest.mark.unit


def test_a_fresh_bucket_allows_a_full_burst_then_refuses() -> None:
    """`burst` requests pass at once; the next one waits 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=5)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == 0.5


@pytest.mark.parametrize(
    ("rate", "burst", "steps", "expected"),
    [
        # (time, expected wait) for each take
        (1.0, 1, [(0.0, 0.0), (0.0, 1.0), (0.5, 0.5), (1.0, 0.0)], "one per second"),
        (10.0, 2, [(0.0, 0.0), (0.0, 0.0), (0.0, 0.1), (0.05, 0.05), (0.1, 0.0)], "ten per second, burst 2"),
        (0.5, 1, [(0.0, 0.0), (1.0, 1.0), (2.0, 0.0)], "one every two seconds"),
        (1.0, 3, [(0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1000.0, 0.0), (1000.0, 0.0), (1000.0, 0.0),
                  (1000.0, 1.0)], "refill never exceeds the burst"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bucket_arithmetic(rate: float, burst: int, steps: list[tuple[float, float]], expected: str) -> None:
    """Tokens refill at `rate` per second up to `burst`; a refused take says how long until a token."""
    bucket = TokenBucket(rate=rate, burst=burst)
    for now, wait in steps:
        assert wait == pytest.approx(bucket.take(now), abs=1e-9), (expected, now)


def test_refused_takes_do_not_spend_tokens() -> None:
    """Hammering a drained bucket does not push the next allowed request further away."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(0.0)
    for _ in range(100):
        assert 0 < bucket.take(0.5) <= 0.5
    assert bucket.take(1.0) == 0.0


def test_clock_going_backwards_refills_nothing() -> None:
    """A time earlier than the last take adds no tokens (and takes none away)."""
    bucket = TokenBucket(rate=1.0, burst=1)
    bucket.take(100.0)
    assert pytest.approx(bucket.take(50.0)) == 1.0
    assert bucket.take(101.0) == 0.0


def test_sustained_rate_matches_the_configured_rate() -> None:
    """Over 100 s of requests every 10 ms, about rate*100 + burst are allowed."""
    bucket = TokenBucket(rate=5.0, burst=10)
    allowed = sum(bucket.take(i / 100) == 0.0 for i in range(10000))
    assert 10 + 5 * 99 <= allowed <= 10 + 5 * 100 + 1


@pytest.mark.parametrize(("wait", "header"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.01, 2), (59.5, 60)])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: int) -> None:
    """Retry-After rounds up, and is never 0 (a client would retry at once)."""
    assert header == retry_after(wait)
