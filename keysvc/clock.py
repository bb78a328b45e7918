"""Time, injected: code asks a Clock, tests pass a fixed one (never patch datetime)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    """Seconds since the epoch, UTC."""

    def now(self) -> float: ...


class SystemClock:
    """The machine's wall clock."""

    def now(self) -> float:
        return time.time()


@dataclass
class FixedClock:
    """A clock that only moves when told to (tests)."""

    t: float

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.t += seconds
