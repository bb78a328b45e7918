"""This replica's budget towards the Partner API: a token bucket, and a cooldown after a 429.

Zapier allows about 60 requests a minute per IP and 150 per partner, then answers 429 with `Retry-After`
and keeps refusing for a while. So every request first asks `ApiBudget.admit(now, max_wait)`:

    in a cooldown (a 429 seen, Retry-After not yet passed)      Refused(retry_after)   nothing is sent
    a token now                                                 0.0                    send now
    a token within `max_wait`                                   seconds to wait        reserved: wait, then send
    no token within `max_wait`                                  Refused(retry_after)

Pure: the caller passes the time in; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Refused:
    """Do not send: try again in `retry_after` seconds (whole, at least 1); `cooling` after a 429."""

    retry_after: int
    cooling: bool


class ApiBudget:
    """`per_minute` requests a minute on average, `burst` at once; nothing until a 429's Retry-After."""

    def __init__(self, per_minute: float, burst: int) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._tokens = float(burst)
        self._updated: float | None = None
        self._cool_until = -math.inf

    def __repr__(self) -> str:
        return f"ApiBudget(per_minute={self._rate * 60:g}, burst={self._burst:g})"

    def admit(self, now: float, max_wait: float) -> float | Refused:
        """Reserve one request: how long to wait before sending it, or why not to send it at all.

        A reservation spends the token at once (the balance may go below zero), so callers admitted
        together wait in turn instead of all sending when one token comes back.
        """
        if now < self._cool_until:
            return Refused(_whole(self._cool_until - now), True)
        self._refill(now)
        wait = max(0.0, (1.0 - self._tokens) / self._rate)
        if wait > max_wait:
            return Refused(_whole(wait), False)
        self._tokens -= 1.0
        return wait

    def cool_down(self, now: float, retry_after: float) -> None:
        """The partner answered 429: send nothing before `now + retry_after` (a later end wins)."""
        self._cool_until = max(self._cool_until, now + max(retry_after, 1.0))
        self._tokens = min(self._tokens, 0.0)  # and resume slowly afterwards, not with a full burst

    def cooling_for(self, now: float) -> float:
        """Seconds left in the current cooldown (0 when none)."""
        return max(0.0, self._cool_until - now)

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            self._tokens = min(self._burst, self._tokens + max(0.0, now - self._updated) * self._rate)
        self._updated = now if self._updated is None else max(self._updated, now)


def _whole(seconds: float) -> int:
    return max(1, math.ceil(seconds))
