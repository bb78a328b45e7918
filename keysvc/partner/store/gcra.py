"""The Partner API budget as arithmetic (GCRA, the generic cell rate algorithm): pure, no clock, no I/O.

A budget is one number per name, its theoretical arrival time `tat`: when the budget would be back to full
if nobody asked again, minus nothing. With `interval = 60 / per_minute` and `burst` requests at once:

    in a cooldown (now < cooldown_until)                 Refused(cooling)        state unchanged
    wait = max(tat, now) - now - (burst - 1) * interval
    wait <= 0                                            0.0  (send now)         tat = max(tat, now) + interval
    0 < wait <= max_wait                                 wait (reserved)         tat = max(tat, now) + interval
    wait > max_wait                                      Refused(ceil(wait))     state unchanged

This is the token bucket of keysvc's per-replica budget in one number, so a shared store keeps it in one
row and updates it atomically: any `burst` + `per_minute * t / 60` requests are admitted in any `t` seconds.
A reservation moves `tat` at once, so callers admitted together wait in turn. A 429 sets `cooldown_until`
(a later end wins) and empties the bucket (`tat >= now + burst * interval`): after a short cooldown the
budget resumes slowly, not with a full burst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limit:
    """`per_minute` requests a minute on average, `burst` at once."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_minute > 0 or self.burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")

    @property
    def interval(self) -> float:
        """Seconds between two requests at the average rate."""
        return 60.0 / self.per_minute

    def divided(self, divisor: int) -> Limit:
        """This limit shared by `divisor` parties: per_minute / divisor, burst / divisor (at least 1)."""
        if divisor < 1:
            raise ValueError("divisor must be >= 1")
        return Limit(self.per_minute / divisor, max(1, math.ceil(self.burst / divisor)))


@dataclass(frozen=True)
class BudgetState:
    """One budget's row: its theoretical arrival time and the end of its cooldown (seconds since the epoch)."""

    tat: float = 0.0
    cooldown_until: float = 0.0


@dataclass(frozen=True)
class Refused:
    """Do not send: try again in `retry_after` seconds (whole, at least 1); `cooling` after a 429. `wait`:
    the exact seconds before the budget could admit one request (0.0 when not known, e.g. a cooldown)."""

    retry_after: int
    cooling: bool
    wait: float = field(default=0.0, compare=False)  # a detail of the decision, not a different one


def admit(state: BudgetState, limit: Limit, now: float, max_wait: float) -> tuple[float | Refused, BudgetState]:
    """Reserve one request: (seconds to wait before sending it, or Refused; the state to store)."""
    if now < state.cooldown_until:
        return Refused(whole(state.cooldown_until - now), True), state
    start = max(state.tat, now)
    wait = max(0.0, start - now - (limit.burst - 1) * limit.interval)
    if wait > max_wait:
        return Refused(whole(wait), False, wait), state
    return wait, BudgetState(start + limit.interval, state.cooldown_until)


def cool_down(state: BudgetState, limit: Limit, now: float, retry_after: float) -> BudgetState:
    """The partner answered 429: nothing before `now + retry_after` (at least 1 s; a later end wins), and
    the bucket emptied so sending resumes at the average rate."""
    until = max(state.cooldown_until, now + max(retry_after, 1.0))
    return BudgetState(max(state.tat, now + limit.burst * limit.interval), until)


def whole(seconds: float) -> int:
    """A Retry-After: whole seconds, at least 1."""
    return max(1, math.ceil(seconds))
