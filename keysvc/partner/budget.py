"""This replica's budget towards the Partner API: a token bucket, and a cooldown after a 429.

Zapier allows about 60 requests a minute per IP and 150 per partner, then answers 429 with `Retry-After`
and keeps refusing for a while. So every request first asks `ApiBudget.admit(now, max_wait)`:

    in a cooldown (a 429 seen, Retry-After not yet passed)      Refused(retry_after)   nothing is sent
    a token now                                                 0.0                    send now
    a token within `max_wait`                                   seconds to wait        reserved: wait, then send
    no token within `max_wait`                                  Refused(retry_after)

ApiBudget is pure: the caller passes the time in; nothing in it sleeps or reads a clock.

What the Partner API client (and the token endpoint) asks is a `Budget`, async because the shared one asks
the gateway store (keysvc.partner.store.SharedBudget, for all replicas together):

    ReplicaBudget(ApiBudget(...), clock)      this replica only (no store configured)
    StoreBudget(SharedBudget(...), wall)      every replica's one budget and cooldown (wall clock: the
                                              replicas compare times), a local fallback while the store fails
    await budget.admit(max_wait) -> float | Refused;  await budget.cool_down(retry_after);
    await budget.cooling_for() -> float;  budget.kind -> "shared" or "local" (the metrics' label)
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from keysvc.errors import Unavailable
from keysvc.partner.store.budget import SharedBudget
from keysvc.partner.store.gcra import Refused

__all__ = ["ApiBudget", "Budget", "BudgetObserver", "Refused", "ReplicaBudget", "StoreBudget", "admit"]

MAX_BUDGET_WAIT = 5.0  # the longest a request waits for a slot of the budget before answering 503

# Zapier: after a 429, a cooldown of 60 seconds; the cooldown when a 429 carries no Retry-After.
COOLDOWN_WITHOUT_RETRY_AFTER = 60


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


class Budget(Protocol):
    """The budget every request to the partner asks first (see the module docstring)."""

    @property
    def kind(self) -> str:
        """"shared" (the store answered last) or "local" (this replica's own budget or the fallback)."""
        ...

    async def admit(self, max_wait: float) -> float | Refused:
        """Seconds to wait before sending (reserved), or Refused: do not send."""
        ...

    async def cool_down(self, retry_after: float) -> None:
        """The partner answered 429: nothing is sent before `retry_after` seconds from now."""
        ...

    async def cooling_for(self) -> float:
        """Seconds left in the cooldown (0 when none)."""
        ...


class ReplicaBudget:
    """An ApiBudget (this replica's) as a Budget, on `clock`."""

    kind = "local"

    def __init__(self, budget: ApiBudget, clock: Callable[[], float] = time.monotonic) -> None:
        self._budget = budget
        self._clock = clock

    def __repr__(self) -> str:
        return repr(self._budget)

    async def admit(self, max_wait: float) -> float | Refused:
        """ApiBudget.admit now."""
        return self._budget.admit(self._clock(), max_wait)

    async def cool_down(self, retry_after: float) -> None:
        """ApiBudget.cool_down now."""
        self._budget.cool_down(self._clock(), retry_after)

    async def cooling_for(self) -> float:
        """ApiBudget.cooling_for now."""
        return self._budget.cooling_for(self._clock())


class StoreBudget:
    """The SharedBudget of every replica as a Budget, on the wall clock (`wall`, seconds since the epoch)."""

    def __init__(self, budget: SharedBudget, wall: Callable[[], float] = time.time) -> None:
        self.shared = budget
        self._wall = wall

    def __repr__(self) -> str:
        return repr(self.shared)

    @property
    def kind(self) -> str:
        """"shared" while the store answers, "local" on the fallback."""
        return "shared" if self.shared.store_up else "local"

    async def admit(self, max_wait: float) -> float | Refused:
        """SharedBudget.admit now."""
        return await self.shared.admit(self._wall(), max_wait)

    async def cool_down(self, retry_after: float) -> None:
        """SharedBudget.cool_down now: every replica stops."""
        await self.shared.cool_down(self._wall(), retry_after)

    async def cooling_for(self) -> float:
        """SharedBudget.cooling_for now."""
        return await self.shared.cooling_for(self._wall())


class BudgetObserver(Protocol):
    """Told when the budget delays or refuses a request (keysvc.partner.partner_api.ApiObserver)."""

    def budget(self, result: str, kind: str = "local") -> None:
        """`waited`, `refused` or `cooling`; the budget's kind (`shared` or `local`)."""


async def admit(budget: Budget, deadline: float, *, clock: Callable[[], float],
                sleep: Callable[[float], Awaitable[None]], observer: BudgetObserver) -> None:
    """Ask `budget` before one request to the partner (the Partner API, the token endpoint): wait for the
    reserved slot, or 503 `unavailable` with Retry-After (the budget spent, or a 429's cooldown)."""
    now = clock()
    decision = await budget.admit(min(MAX_BUDGET_WAIT, max(0.0, deadline - now)))
    if isinstance(decision, Refused):
        observer.budget("cooling" if decision.cooling else "refused", budget.kind)
        why = "answered 429 (too many requests)" if decision.cooling else "budget is spent"
        raise Unavailable(f"the Zapier Partner API {why}; try again later", retry_after=decision.retry_after)
    if decision > 0:
        observer.budget("waited", budget.kind)
        await sleep(decision)
