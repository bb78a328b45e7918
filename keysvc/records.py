"""The domain's records: a key as stored, a signed token, and `SigningKey`, the private-key operation a key
store hands out. Stdlib only, imported by every layer (the pure lifecycle, JWKS and token modules, the
backends, the keyring, and the Python clients of keysvc.client): backends depend on these types, never
the other way round.

Times are float seconds since the epoch (UTC).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol


@dataclass(frozen=True)
class KeyRecord:
    """One key of one keyset, as stored. State is derived from these fields and the time.

    `seq` is the key's slot in its keyset (1, 2, 3, ...): creating the key of a slot is the one write that
    replicas race on, and the backend makes it happen at most once.
    """

    keyset: str
    kid: str
    seq: int
    alg: str
    created_at: float
    activates_at: float
    public_jwk: Mapping[str, str] = field(repr=False, compare=False)
    revoked_at: float | None = None
    destroyed_at: float | None = None  # private material destroyed / deletion scheduled
    created_by: str = ""

    def replace(self, **changes: object) -> KeyRecord:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


class SignedToken(NamedTuple):
    """A signed JWT and what its signer says about it (`expires_at` in epoch seconds; `jti` empty when the
    signer did not say, as keysvc's /v1/sign answer does not). A NamedTuple: one is built per token signed,
    and a frozen dataclass's __init__ costs about 1 us more."""

    token: str
    kid: str
    alg: str
    expires_at: int
    jti: str = ""

    def __repr__(self) -> str:  # the token is a bearer credential: never in a repr (logs, tracebacks)
        return f"SignedToken(kid={self.kid!r}, alg={self.alg!r}, expires_at={self.expires_at!r}, jti={self.jti!r})"


class SigningKey(Protocol):
    """The private-key operation of one kid.

    `sign` returns the JOSE signature bytes (for ECDSA the fixed-width R||S, not DER). `in_process` is
    True when signing is CPU-only (file backend) and may run on the event loop; False when it does I/O
    (KMS) and must run in the backend's thread pool.
    """

    @property
    def kid(self) -> str: ...

    @property
    def alg(self) -> str: ...

    @property
    def in_process(self) -> bool: ...

    def sign(self, signing_input: bytes) -> bytes: ...


@dataclass
class ReconcileReport:
    """What one reconcile did (keysvc.operations.reconcile): the records it left, and its writes by kind."""

    records: list[KeyRecord]
    created: int = 0
    lost_races: int = 0
    destroyed: int = 0
    activated: int = 0
    repaired: int = 0
