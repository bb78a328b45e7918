"""A small async cache with single-flight: however many callers ask for one key at once, one fetch runs.

The fetch runs in its own task, so a caller that gives up (a client disconnecting) neither cancels it for
the others nor leaves them waiting. A failed fetch is not cached: every waiter gets the error, and the next
call tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A fetch returns the value and the clock reading until which it may be served (None: do not keep it).
Fetch = Callable[[], Awaitable[tuple[V, float | None]]]


class SingleFlightCache(Generic[K, V]):
    """Values by key, each fresh until its own deadline on `clock`; at most `max_entries` kept."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 10_000,
        on_lookup: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._clock = clock
        self._on_lookup = on_lookup  # told "hit", "miss" (a fetch starts) or "joined" (one is in flight)
        self._max_entries = max_entries
        self._entries: dict[K, tuple[V, float]] = {}
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: K, fetch: Fetch[V]) -> V:
        """The fresh cached value, or the result of the one fetch in flight for `key` (started if none)."""
        entry = self._entries.get(key)
        if entry is not None and entry[1] > self._clock():
            self._on_lookup("hit")
            return entry[0]
        task = self._inflight.get(key)
        if task is None:
            self._on_lookup("miss")
            task = asyncio.get_running_loop().create_task(self._fill(key, fetch))
            task.add_done_callback(_retrieve_exception)
            self._inflight[key] = task
        else:
            self._on_lookup("joined")
        return await asyncio.shield(task)

    def invalidate(self, key: K) -> None:
        """Forget the cached value of `key` (a fetch already in flight is left alone)."""
        self._entries.pop(key, None)

    async def _fill(self, key: K, fetch: Fetch[V]) -> V:
        try:
            value, fresh_until = await fetch()
        finally:
            # Removed here, not in a done-callback: a caller arriving after a failure must start anew.
            self._inflight.pop(key, None)
        now = self._clock()
        if fresh_until is not None and fresh_until > now:
            self._store(key, value, fresh_until, now)
        return value

    def _store(self, key: K, value: V, fresh_until: float, now: float) -> None:
        if len(self._entries) >= self._max_entries:
            self._entries = {k: e for k, e in self._entries.items() if e[1] > now}
        while len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # oldest first: dicts keep insertion order
        self._entries.pop(key, None)
        self._entries[key] = (value, fresh_until)


def _retrieve_exception(task: asyncio.Task[object]) -> None:
    # When every waiter has gone, nobody reads the error; reading it here keeps asyncio from logging
    # "exception was never retrieved" (the waiters, if any, still get it).
    if not task.cancelled():
        task.exception()
