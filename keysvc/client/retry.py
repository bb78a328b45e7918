"""The one retry/back-off loop of every call to the partner (transport-free): the clients' httpx token
endpoint and the server's aiohttp way out (keysvc.partner.outbound) both run their attempts through it.

    result = await with_retries(attempt, tries=3, total_timeout=10.0)   # attempt(deadline) -> T | Failure

An attempt answers its result or a `Failure` (the keysvc error to raise, whether another attempt may help,
its outcome label for metrics). The loop waits the longer of the failure's Retry-After and an exponential
back-off with jitter between attempts, and gives up (raising the last error) after `tries`, on a failure
that is not retryable, or when the next attempt would start past the deadline.

One caller request, one deadline: inside `with shared_deadline(seconds):` every with_retries (the pages
of a listing, the token exchange before them, each one's retries) ends by that deadline too, whatever its
own `total_timeout`; one that would start past it raises Unavailable (503) at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

from keysvc.errors import RequestError, Unavailable

MAX_BACKOFF = 5.0
T = TypeVar("T")


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed: the error to answer, whether trying again may help, the metrics label."""

    error: RequestError
    retryable: bool
    outcome: str


_SHARED: ContextVar[tuple[Callable[[], float], float] | None] = ContextVar("keysvc_shared_deadline", default=None)


@contextmanager
def shared_deadline(seconds: float, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Bound every with_retries inside the block by one deadline, `seconds` from now (or an outer one's,
    when sooner). The deadline is kept with its clock, so loops on other clocks measure it right."""
    outer = shared_remaining()
    if outer is not None:
        seconds = min(seconds, outer)
    token = _SHARED.set((clock, clock() + seconds))
    try:
        yield
    finally:
        _SHARED.reset(token)


def shared_remaining() -> float | None:
    """Seconds left of the enclosing shared deadline, or None outside one."""
    shared = _SHARED.get()
    return None if shared is None else shared[1] - shared[0]()


def _ignore_outcome(outcome: str, seconds: float) -> None:
    """Report nothing."""


def _ignore_failure(attempt: int, failure: Failure) -> None:
    """Log nothing."""


async def with_retries(
    attempt: Callable[[float], Awaitable[T | Failure]],
    *,
    tries: int,
    total_timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    backoff: float = 0.25,
    admit: Callable[[float], Awaitable[None]] | None = None,
    observe: Callable[[str, float], None] = _ignore_outcome,
    failed: Callable[[int, Failure], None] = _ignore_failure,
) -> T:
    """Run `attempt(deadline)` up to `tries` times within `total_timeout` seconds. `admit(deadline)` runs
    before each attempt (a rate budget may wait or raise); `observe(outcome, seconds)` sees every attempt
    ("ok" or the failure's label), `failed(n, failure)` every failed one."""
    shared = shared_remaining()
    if shared is not None and shared <= 0:
        raise Unavailable("the request's deadline passed before the partner answered", retry_after=1)
    deadline = clock() + (total_timeout if shared is None else min(total_timeout, shared))
    for number in range(1, tries + 1):
        if admit is not None:
            await admit(deadline)
        started = time.perf_counter()
        outcome = await attempt(deadline)
        if not isinstance(outcome, Failure):
            observe("ok", time.perf_counter() - started)
            return outcome
        observe(outcome.outcome, time.perf_counter() - started)
        failed(number, outcome)
        delay = max(float(outcome.error.retry_after or 0), pause(number, backoff))
        if number == tries or not outcome.retryable or clock() + delay >= deadline:
            raise outcome.error
        await sleep(delay)
    raise AssertionError("unreachable: tries >= 1")


def pause(attempt: int, backoff: float) -> float:
    """The back-off before attempt `attempt + 1`."""
    # Jitter spreads replicas' retries apart; it is not a security decision.
    jitter = random.uniform(0.5, 1.0)  # noqa: S311  # nosec B311 - retry jitter, not a secret
    return min(backoff * 2.0 ** (attempt - 1), MAX_BACKOFF) * jitter
