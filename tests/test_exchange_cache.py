"""SingleFlightCache on its own: one fetch per key, freshness by the value's own deadline, callers that
give up, and the size bound."""

from __future__ import annotations

import asyncio

import pytest

from keysvc.client.cache import SingleFlightCache

pytestmark = pytest.mark.unit


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Source:
    """A fetch that counts its calls and waits on a gate the test opens."""

    def __init__(self, fresh_for: float | None = 10.0) -> None:
        self.calls = 0
        self.gate = asyncio.Event()
        self.fresh_for = fresh_for
        self.fail = False

    async def fetch(self) -> tuple[str, float | None]:
        self.calls += 1
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("upstream said no")
        return f"v{self.calls}", None if self.fresh_for is None else self.fresh_for


def test_a_caller_giving_up_does_not_cancel_the_fetch_for_others() -> None:
    """The first caller is cancelled mid-fetch (client disconnected); the second still gets the value
    from the same single fetch."""
    lookups: list[str] = []

    async def go() -> tuple[str, int]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(clock=Clock(), on_lookup=lookups.append)
        source = Source()
        first = asyncio.create_task(cache.get("k", source.fetch))
        second = asyncio.create_task(cache.get("k", source.fetch))
        await asyncio.sleep(0)
        first.cancel()
        source.gate.set()
        return await second, source.calls

    assert asyncio.run(go()) == ("v1", 1)
    assert lookups == ["miss", "joined"]


def test_fresh_until_its_deadline_then_fetched_again() -> None:
    """A value is served until its own deadline on the clock, then fetched anew."""

    async def go() -> list[str]:
        clock = Clock()
        cache: SingleFlightCache[str, str] = SingleFlightCache(clock=clock)
        source = Source(fresh_for=10.0)
        source.gate.set()
        values = [await cache.get("k", source.fetch)]
        clock.now = 9.9
        values.append(await cache.get("k", source.fetch))
        clock.now = 10.0
        values.append(await cache.get("k", source.fetch))
        return values

    assert asyncio.run(go()) == ["v1", "v1", "v2"]


def test_values_without_a_deadline_are_not_kept() -> None:
    """A fetch that gives no deadline (the partner stated no expires_in) is never reused."""

    async def go() -> list[str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(clock=Clock())
        source = Source(fresh_for=None)
        source.gate.set()
        return [await cache.get("k", source.fetch), await cache.get("k", source.fetch)]

    assert asyncio.run(go()) == ["v1", "v2"]


def test_a_failure_reaches_every_waiter_and_is_forgotten() -> None:
    """Both waiters get the one fetch's error; the next get fetches again."""

    async def go() -> tuple[list[str], str]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(clock=Clock())
        source = Source()
        source.fail = True
        waiters = [asyncio.create_task(cache.get("k", source.fetch)) for _ in range(2)]
        await asyncio.sleep(0)
        source.gate.set()
        errors = [str(e) for e in await asyncio.gather(*waiters, return_exceptions=True)]
        source.fail = False
        return errors, await cache.get("k", source.fetch)

    assert asyncio.run(go()) == (["upstream said no", "upstream said no"], "v2")


def test_size_is_bounded() -> None:
    """Past max_entries the oldest entries go first."""

    async def go() -> tuple[int, int]:
        cache: SingleFlightCache[str, str] = SingleFlightCache(clock=Clock(), max_entries=3)
        source = Source()
        source.gate.set()
        for key in "abcde":
            await cache.get(key, source.fetch)
        calls_before = source.calls
        await cache.get("e", source.fetch)  # newest: still cached
        await cache.get("a", source.fetch)  # oldest: evicted
        return len(cache), source.calls - calls_before

    assert asyncio.run(go()) == (3, 1)
