"""What every backend provides: key records and the private-key operation.

A backend is a thin I/O layer. It never decides *when* a key is created, activated or destroyed: that is
`keysvc.lifecycle` (pure). It only stores records, creates a key for a given slot (`seq`) exactly once
across replicas, and signs.

Times are float seconds since the epoch (UTC). The records themselves are the domain's (keysvc.records):
backends depend on the domain, never the other way round.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from keysvc.records import KeyRecord, SigningKey


class Backend(Protocol):
    """A key store. All methods block (call them from a worker thread, not the event loop)."""

    def load(self, keyset: str) -> list[KeyRecord]:
        """Every record of the keyset, including revoked and destroyed ones. Raises BackendError."""
        ...

    def create(
        self, keyset: str, seq: int, alg: str, activates_at: float, now: float, pem: bytes | None = None
    ) -> KeyRecord | None:
        """Create the key of slot `seq` (a fresh key pair, or the given PKCS#8/PKCS#1 PEM for an import).

        Returns the new record, or None when the slot is already taken (another replica won the race;
        any orphan of ours is cleaned up). Raises BackendError, or InvalidKeyMaterial for an unusable PEM (or
        one whose key is already in the keyset).
        """
        ...

    def update(self, record: KeyRecord) -> None:
        """Persist the mutable fields of a record: `activates_at`, `revoked_at`."""
        ...

    def destroy(self, record: KeyRecord, now: float) -> KeyRecord:
        """Destroy the private material of a retired or revoked key (file: delete; KMS: schedule
        deletion / disable). Idempotent. Returns the record with `destroyed_at` set."""
        ...

    def signer(self, record: KeyRecord) -> SigningKey:
        """The signer of a record's key (loads the private key, or binds the KMS key id)."""
        ...

    def exclusive(self, keyset: str) -> AbstractContextManager[None]:
        """Serialise lifecycle writes of one keyset across replicas (file: an OS lock). A backend whose
        `create` is itself compare-and-swap (KMS aliases) may return a no-op context."""
        ...

    def repair(self, keyset: str, now: float) -> list[str]:
        """Find and clean up what a crash left half-done (orphans). Returns descriptions of what it did."""
        ...

    def close(self) -> None:
        """Release clients, pools, file handles."""
        ...
