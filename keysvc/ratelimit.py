"""Per-client token buckets (pure arithmetic on times the caller passes in)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    """`rate` tokens per second, up to `burst`. `take(now)` returns 0 when allowed, else seconds to wait."""

    rate: float
    burst: int
    tokens: float = -1.0
    updated: float = 0.0

    def take(self, now: float) -> float:
        """Spend one token if there is one; otherwise how long until there is."""
        if self.tokens < 0:
            self.tokens, self.updated = float(self.burst), now
        self.tokens = min(float(self.burst), self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def retry_after(wait: float) -> int:
    """A Retry-After header value (whole seconds, at least 1)."""
    return max(1, math.ceil(wait))
