"""PURE key lifecycle: (key records, now, policy) -> states, the active key, and what to do next.

No I/O, no clock, no randomness: every replica that has read the same records computes the same answer.

    pending -> active -> retiring -> retired        (or revoked at any time)

- The keys that ever activated are those with `activates_at <= t`, except keys revoked before they
  activated. The latest of them is the active key at time t, unless it is revoked: then no key is active
  until the pending key is promoted (never the retiring key before it; see README "Key lifecycle").
- A key is superseded at s = the `activates_at` of the next key that activated; it is `retiring` until
  s + retain_after, then `retired` (its private material is destroyed).
- One pending key is kept at all times; the next key activates one rotation period after the current one,
  and never sooner than `publish_ahead` after its creation.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from keysvc.records import KeyRecord

if TYPE_CHECKING:  # a type only: the lifecycle reads three timings of a keyset's settings
    from keysvc.config import KeysetSettings


class State(StrEnum):
    """Where a key is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    RETIRING = "retiring"
    RETIRED = "retired"
    REVOKED = "revoked"


PUBLISHED = frozenset({State.PENDING, State.ACTIVE, State.RETIRING})


@dataclass(frozen=True)
class Policy:
    """The timings of one keyset, in seconds."""

    rotation_period: float
    publish_ahead: float
    retain_after: float


def policy_of(keyset: KeysetSettings) -> Policy:
    """The lifecycle timings of a keyset."""
    return Policy(keyset.rotation_period, keyset.publish_ahead, keyset.retain_after)


@dataclass(frozen=True)
class KeyStatus:
    """One key's state at a given time, with the times that define it."""

    record: KeyRecord
    state: State
    superseded_at: float | None
    removes_at: float | None  # when it leaves the JWKS (retiring keys), if known


@dataclass(frozen=True)
class KeysetStatus:
    """A keyset at one instant: every key's state, the signer, the published set, the next change."""

    keys: tuple[KeyStatus, ...]
    active: KeyRecord | None
    published: tuple[KeyRecord, ...]
    next_change: float  # the earliest future instant at which this status changes (inf if none)

    def state_of(self, kid: str) -> State | None:
        """The state of a kid, or None if it is not in the keyset."""
        return next((k.state for k in self.keys if k.record.kid == kid), None)


def is_revoked(record: KeyRecord, now: float) -> bool:
    """Revocation takes effect at `revoked_at`."""
    return record.revoked_at is not None and record.revoked_at <= now


def _signed(record: KeyRecord) -> bool:
    """Could the key have signed? A key revoked while pending never did; one revoked at the very instant
    it activated (promoted, then revoked in the same second) may have: replicas that read the promotion
    before the revocation signed with it, so it still ends its predecessor's term."""
    return record.revoked_at is None or record.revoked_at >= record.activates_at


def evaluate(records: Sequence[KeyRecord], now: float, policy: Policy) -> KeysetStatus:
    """The status of a keyset at `now`.

    A key revoked after it activated still ends its predecessor's term: revoking the active key leaves the
    keyset without an active key (so `next_action` promotes the pending key) rather than handing signing
    back to the retiring key before it.
    """
    started = sorted(
        (r for r in records if r.activates_at <= now and _signed(r)), key=lambda r: (r.activates_at, r.seq)
    )
    latest = started[-1] if started else None
    active = latest if latest is not None and not is_revoked(latest, now) else None
    superseded = {prev.kid: nxt.activates_at for prev, nxt in itertools.pairwise(started)}
    statuses: list[KeyStatus] = []
    changes: list[float] = []
    for record in sorted(records, key=lambda r: r.seq):
        sup = superseded.get(record.kid)
        removes = sup + policy.retain_after if sup is not None else None
        if is_revoked(record, now):
            state = State.REVOKED
        elif record.activates_at > now:
            state = State.PENDING
            changes.append(record.activates_at)
        elif record is active:
            state = State.ACTIVE
        elif removes is not None and now < removes:
            state = State.RETIRING
            changes.append(removes)
        else:
            state = State.RETIRED
        if record.revoked_at is not None and record.revoked_at > now:
            changes.append(record.revoked_at)
        statuses.append(KeyStatus(record, state, sup, removes))
    by_time = sorted(statuses, key=lambda s: (s.record.activates_at, s.record.seq))
    published = tuple(s.record for s in by_time if s.state in PUBLISHED)
    return KeysetStatus(tuple(statuses), active, published, min(changes, default=math.inf))


# ------------------------------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class Create:
    """Create the key of slot `seq`, activating at `activates_at`."""

    seq: int
    activates_at: float


@dataclass(frozen=True)
class Activate:
    """Move a key's activation to `at` (promote a pending key now)."""

    kid: str
    at: float


@dataclass(frozen=True)
class Destroy:
    """Destroy the private material of a retired or revoked key."""

    kid: str


Action = Create | Activate | Destroy


FORCE_IT = "force the rotation"  # how a refusal says to override it; each interface names its own switch


class RotationRefused(Exception):
    """Promoting the pending key now could make verifiers reject tokens; `safe_at` says from when not."""

    def __init__(self, message: str, safe_at: float | None) -> None:
        super().__init__(message)
        self.safe_at = safe_at


def next_seq(records: Sequence[KeyRecord]) -> int:
    """The slot number of the next key."""
    return max((r.seq for r in records), default=0) + 1


def next_action(records: Sequence[KeyRecord], now: float, policy: Policy) -> Action | None:
    """The one next write that brings the keyset to its steady state, or None when it is there.

    Applied one at a time (reload records between actions), so concurrent replicas converge: each action
    is either idempotent or, for Create, a compare-and-swap on the slot.
    """
    status = evaluate(records, now, policy)
    pending = [k.record for k in status.keys if k.state is State.PENDING]
    if status.active is None:
        if pending:  # no key signs (all revoked, or the clock went backwards): promote at once
            return Activate(min(pending, key=lambda r: r.activates_at).kid, now)
        return Create(next_seq(records), now)  # first key of a keyset: nothing is cached yet, sign now
    if not pending:
        return Create(
            next_seq(records),
            max(status.active.activates_at + policy.rotation_period, now + policy.publish_ahead),
        )
    for key in status.keys:
        if key.state in (State.RETIRED, State.REVOKED) and key.record.destroyed_at is None:
            return Destroy(key.record.kid)
    return None


def promote(records: Sequence[KeyRecord], now: float, policy: Policy, *, force: bool = False) -> Activate:
    """Emergency rotation: the pending key becomes active now.

    Refused (RotationRefused) when the pending key has been published for less than `publish_ahead`, since
    some verifiers may not have it cached yet, unless `force`.
    """
    status = evaluate(records, now, policy)
    pending = sorted((k.record for k in status.keys if k.state is State.PENDING), key=lambda r: r.activates_at)
    if not pending:
        raise RotationRefused("no pending key to promote yet; the next reconcile creates one", None)
    candidate = pending[0]
    safe_at = candidate.created_at + policy.publish_ahead
    if now < safe_at and not force:
        raise RotationRefused(
            f"pending key {candidate.kid} has been published for {now - candidate.created_at:.0f}s only; "
            f"promoting it is safe from {_iso(safe_at)} (in {safe_at - now:.0f}s); {FORCE_IT} to promote it "
            "now (verifiers that have not refetched the JWKS may reject its tokens)",
            safe_at,
        )
    return Activate(candidate.kid, now)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def revoke(records: Sequence[KeyRecord], kid: str, now: float, policy: Policy) -> tuple[KeyRecord, Activate | None]:
    """Revoke a key now. If it was the active key, the pending key is promoted at once (compromise
    outranks availability). Returns the revoked record and the promotion to apply, if any; with no
    pending key, `next_action` then creates a key that signs at once."""
    record = next((r for r in records if r.kid == kid), None)
    if record is None:
        raise KeyError(kid)
    if record.revoked_at is not None:
        return record, None
    revoked = record.replace(revoked_at=now)
    rest = [revoked if r.kid == kid else r for r in records]
    action = next_action(rest, now, policy)
    return revoked, action if isinstance(action, Activate) else None
