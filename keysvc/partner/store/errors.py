"""The gateway store's one error: `StoreUnavailable`.

    KeysvcError                 (keysvc.errors)
    └── StoreUnavailable        a store call failed or passed its deadline: unreachable, refused, timed out,
                                a lock not granted in time, a broken connection, an unexpected answer

Every call of a store raises only this (or ValueError for a caller's bug, such as a raw state where a digest
belongs). It is module-local on purpose: the budget catches it and falls back to a local budget; the partner
routes map it to 503 `unavailable` with `Retry-After` (keysvc.errors.Unavailable), as for a partner outage.
Messages name the operation and the kind of failure, never a URL with credentials, a password or a value.
"""

from __future__ import annotations

from keysvc.errors import KeysvcError


class StoreUnavailable(KeysvcError):
    """The gateway store did not answer `operation` in time or failed; `retry_after` is a hint in seconds."""

    def __init__(self, operation: str, reason: str, *, retry_after: int = 1) -> None:
        super().__init__(f"gateway store: {operation} failed: {reason}")
        self.operation = operation
        self.reason = reason
        self.retry_after = retry_after
