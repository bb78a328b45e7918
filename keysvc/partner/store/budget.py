"""The Partner API budget of all replicas together, with a local fallback when the store is unreachable.

`SharedBudget` answers exactly what the per-replica `ApiBudget` answers, with the same meaning, so the
gateway swaps one for the other (adding `await`):

    await admit(now, max_wait) -> float | Refused   seconds to wait before sending, or do not send
    await cool_down(now, retry_after)               the partner answered 429: every replica stops
    await cooling_for(now) -> float                 seconds left in the cooldown (0 when none)

The store answers within its deadline or raises StoreUnavailable; then this replica falls back to a
`LocalBudget` of `per_minute / fallback_divisor` (and `burst / fallback_divisor`, at least 1), `store_up`
turns False (the `keysvc_gateway_store_up` gauge), and the store is asked again only after
`probe_interval` seconds, so an outage costs one deadline per interval, not one per request. With the
divisor set to the number of replicas, replicas on fallback together stay within the shared budget.

A cooldown is also kept locally: a 429 stops this replica even when the store cannot be told, and a
cooldown this replica knows of is answered without a round trip. So is a refusal: when the store says the
budget admits nothing for `wait` seconds, a request that cannot wait that long is refused here until then,
without a database transaction. That is exact, not a guess: the budget's `tat` only ever moves forward
(every replica's reservation and 429 push it later), so the store would refuse it too. A flood of requests
past the budget costs one store round trip per refusal window, not one per request.
"""

from __future__ import annotations

import logging

from keysvc.errors import StoreUnavailable

from . import gcra
from .base import GatewayStore
from .gcra import BudgetState, Limit, Refused
from .settings import DEFAULT_FALLBACK_DIVISOR

log = logging.getLogger("keysvc.partner.store")
PROBE_INTERVAL = 5.0
BUDGET_NAME = "partner-api"


class LocalBudget:
    """One replica's budget in memory: the same GCRA arithmetic as the store's, on a local state. Pure:
    the caller passes the time in."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._state = BudgetState()

    def __repr__(self) -> str:
        return f"LocalBudget(per_minute={self.limit.per_minute:g}, burst={self.limit.burst})"

    def admit(self, now: float, max_wait: float) -> float | Refused:
        """Reserve one request (gcra.admit)."""
        decision, self._state = gcra.admit(self._state, self.limit, now, max_wait)
        return decision

    def cool_down(self, now: float, retry_after: float) -> float:
        """A 429: nothing before `now + retry_after` (a later end wins); the cooldown's end."""
        self._state = gcra.cool_down(self._state, self.limit, now, retry_after)
        return self._state.cooldown_until

    def note_cooldown(self, until: float) -> None:
        """Another replica's cooldown, learnt from the store: honour it here too."""
        self._state = BudgetState(self._state.tat, max(self._state.cooldown_until, until))

    def cooling_for(self, now: float) -> float:
        """Seconds left in the cooldown (0 when none)."""
        return max(0.0, self._state.cooldown_until - now)


class SharedBudget:
    """`per_minute` / `burst` for all replicas together, kept in `store` under `name`."""

    def __init__(self, store: GatewayStore, per_minute: float, burst: int, *, name: str = BUDGET_NAME,
                 fallback_divisor: int = DEFAULT_FALLBACK_DIVISOR, probe_interval: float = PROBE_INTERVAL) -> None:
        self.limit = Limit(per_minute, burst)
        self.name = name
        self._store = store
        self._local = LocalBudget(self.limit.divided(fallback_divisor))
        self._probe_interval = probe_interval
        self._down_until: float | None = None  # None: the store answered last time
        self._not_before = 0.0  # the store refused: it admits nothing before this time (tat only grows)

    def __repr__(self) -> str:
        return (f"SharedBudget({self.name!r}, per_minute={self.limit.per_minute:g}, burst={self.limit.burst},"
                f" fallback={self._local!r}, store={self._store!r})")

    @property
    def store_up(self) -> bool:
        """The store answered the last time it was asked (the `keysvc_gateway_store_up` gauge)."""
        return self._down_until is None

    def _skip_store(self, now: float) -> bool:
        return self._down_until is not None and now < self._down_until

    def _failed(self, now: float, error: StoreUnavailable) -> None:
        if self._down_until is None:
            log.warning("gateway store unreachable: using the local fallback budget",
                        extra={"operation": error.operation, "reason": error.reason})
        self._down_until = now + self._probe_interval

    def _answered(self) -> None:
        if self._down_until is not None:
            log.info("gateway store reachable again: using the shared budget")
        self._down_until = None

    async def admit(self, now: float, max_wait: float) -> float | Refused:
        """Reserve one request from the shared budget, or from the local fallback when the store fails."""
        cooling = self._local.cooling_for(now)
        if cooling > 0:
            return Refused(gcra.whole(cooling), True)
        if not self._skip_store(now):
            if now + max_wait < self._not_before:  # the store would refuse it too: no round trip
                return Refused(gcra.whole(self._not_before - now), False, self._not_before - now)
            try:
                decision = await self._store.admit(self.name, self.limit, now, max_wait)
            except StoreUnavailable as error:
                self._failed(now, error)
            else:
                self._answered()
                if isinstance(decision, Refused):
                    if decision.cooling:
                        self._local.note_cooldown(now + decision.retry_after)
                    else:
                        self._not_before = max(self._not_before, now + decision.wait)
                return decision
        return self._local.admit(now, max_wait)

    async def cool_down(self, now: float, retry_after: float) -> None:
        """The partner answered 429: this replica stops at once; every replica once the store is told."""
        self._local.cool_down(now, retry_after)
        if self._skip_store(now):
            return
        try:
            until = await self._store.cool_down(self.name, self.limit, now, retry_after)
        except StoreUnavailable as error:
            self._failed(now, error)
        else:
            self._answered()
            self._local.note_cooldown(until)

    async def cooling_for(self, now: float) -> float:
        """Seconds left in the cooldown any replica started (this replica's own when the store fails)."""
        if not self._skip_store(now):
            try:
                self._local.note_cooldown(await self._store.cooldown_until(self.name))
            except StoreUnavailable as error:
                self._failed(now, error)
            else:
                self._answered()
        return self._local.cooling_for(now)
