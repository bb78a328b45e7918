"""The keyring on a hand-written in-memory backend and a FixedClock: the view a replica serves from, its
health, the signers it holds, and the last guard before any signature. Only public methods are used."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import Coroutine, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from keysvc import operations
from keysvc.backends import keys
from keysvc.clock import FixedClock
from keysvc.config import parse_settings
from keysvc.errors import BackendUnavailable, Conflict, NotFound, Unavailable
from keysvc.events import Event, ExpBeyondRetention, JwksChanged, KeyEvent, Reconciled
from keysvc.keyring import Keyring
from keysvc.records import KeyRecord, SigningKey
from tests.helpers import base_config

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
DAY = 86400.0
KS = "zapier"
CLAIMS = {"aud": "connect.zapier.com"}
T = TypeVar("T")
E = TypeVar("E")


@dataclass
class MemoryBackend:
    """A Backend in memory. `down` makes every call fail as an unreachable store does; `loads` counts
    reads; `handed_out` keeps a weak reference to every signer given out, to see which ones are still
    held by someone."""

    records: dict[tuple[str, int], KeyRecord] = field(default_factory=dict)
    private: dict[str, keys.PrivateKey] = field(default_factory=dict)
    down: bool = False
    loads: int = 0
    handed_out: dict[str, list[weakref.ref[SigningKey]]] = field(default_factory=dict)

    def _reachable(self) -> None:
        if self.down:
            raise BackendUnavailable("the in-memory store is down")

    def load(self, keyset: str) -> list[KeyRecord]:
        self._reachable()
        self.loads += 1
        return [r for (ks, _), r in sorted(self.records.items()) if ks == keyset]

    def create(
        self, keyset: str, seq: int, alg: str, activates_at: float, now: float, pem: bytes | None = None
    ) -> KeyRecord | None:
        self._reachable()
        if (keyset, seq) in self.records:
            return None
        key = keys.generate(alg)
        record = KeyRecord(keyset, keys.kid_of(key), seq, alg, now, activates_at, keys.public_jwk(key))
        self.records[(keyset, seq)], self.private[record.kid] = record, key
        return record

    def update(self, record: KeyRecord) -> None:
        self._reachable()
        self.records[(record.keyset, record.seq)] = record

    def destroy(self, record: KeyRecord, now: float) -> KeyRecord:
        self._reachable()
        current = self.records[(record.keyset, record.seq)]
        self.private.pop(record.kid, None)
        if current.destroyed_at is None:
            current = self.records[(record.keyset, record.seq)] = current.replace(destroyed_at=now)
        return current

    def signer(self, record: KeyRecord) -> SigningKey:
        self._reachable()
        signer = keys.LocalSigner(record.kid, record.alg, self.private[record.kid])
        self.handed_out.setdefault(record.kid, []).append(weakref.ref(signer))
        return signer

    def exclusive(self, keyset: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def repair(self, keyset: str, now: float) -> list[str]:
        self._reachable()
        return []

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Recorder:
    """An observer that keeps every event it is told, in order."""

    events: list[Event] = field(default_factory=list)

    def notify(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one type, in order."""
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Replica:
    """A keyring on a MemoryBackend, with the clock, the backend and the keyring's observer at hand."""

    keyring: Keyring
    backend: MemoryBackend
    clock: FixedClock
    seen: Recorder

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine of the keyring to completion."""
        return asyncio.run(coroutine)

    def active_kid(self) -> str | None:
        view = self.keyring.view(KS)
        return None if view is None or view.status.active is None else view.status.active.kid


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    """A keyring with the test config (keyset zapier: ES256, rotation 30d, publish_ahead 2d, retain 1d,
    max_token_ttl 5m) on an empty in-memory store, at T0."""
    clock, backend, seen = FixedClock(T0), MemoryBackend(), Recorder()
    keyring = Keyring(parse_settings(base_config(tmp_path / "unused")), backend, clock, observer=seen)
    yield Replica(keyring, backend, clock, seen)
    keyring.close()


def test_the_view_changes_at_the_lifecycle_instant_without_a_refresh(replica: Replica) -> None:
    """After one refresh the view is valid until the pending key's activation; at that instant, with no
    further read of the backend, the pending key is active and signs, and the JWKS still lists both."""
    replica.run(replica.keyring.refresh(KS))
    view = replica.keyring.view(KS)
    assert view is not None and view.status.active is not None
    first = view.status.active.kid
    pending = next(r for r in replica.backend.records.values() if r.kid != first)
    assert view.valid_until == pending.activates_at == T0 + 30 * DAY
    loads = replica.backend.loads
    replica.clock.t = pending.activates_at - 1
    assert replica.active_kid() == first
    replica.clock.t = pending.activates_at
    assert replica.active_kid() == pending.kid
    assert replica.run(replica.keyring.sign(KS, CLAIMS, 60)).kid == pending.kid
    current = replica.keyring.view(KS)
    assert current is not None and set(current.document.kids) == {first, pending.kid}
    assert replica.backend.loads == loads


def test_a_failing_backend_leaves_the_last_known_view_serving_and_shows_in_health(replica: Replica) -> None:
    """When the backend fails, refresh returns the last-known view unchanged, signing goes on, and the
    health says not ok with the error's type and a count; the next good refresh records ok again."""
    before = replica.run(replica.keyring.refresh(KS))
    assert before is not None
    health = replica.keyring.health[KS]
    assert (health.ok, health.last_sync, health.errors) == (True, T0, 0)
    replica.backend.down = True
    replica.clock.advance(60)
    assert replica.run(replica.keyring.refresh(KS)) is before
    assert replica.keyring.view(KS) is before
    assert (health.ok, health.last_sync, health.errors, health.last_error) == (False, T0, 1, "BackendUnavailable")
    assert replica.run(replica.keyring.sign(KS, CLAIMS, 60)).kid == replica.active_kid()
    assert replica.keyring.ready()
    replica.backend.down = False
    replica.clock.advance(60)
    replica.run(replica.keyring.refresh(KS))
    assert (health.ok, health.last_sync, health.errors, health.last_error) == (True, T0 + 120, 1, "")
    errors = [event.error for event in replica.seen.of(Reconciled)]
    assert errors[0] is None and isinstance(errors[1], BackendUnavailable) and errors[2] is None


def test_before_any_successful_sync_nothing_is_served(replica: Replica) -> None:
    """A replica whose backend has never answered has no view, is not ready, and refuses to sign (503)."""
    replica.backend.down = True
    assert replica.run(replica.keyring.refresh(KS)) is None
    assert replica.keyring.view(KS) is None
    assert not replica.keyring.ready()
    assert replica.keyring.health[KS].ok is False
    with pytest.raises(Unavailable) as info:
        replica.run(replica.keyring.sign(KS, CLAIMS, 60))
    assert info.value.status == 503


def test_the_signer_of_a_revoked_key_is_dropped(replica: Replica) -> None:
    """Once a refresh reads that the active key was revoked, the keyring holds no signer of it any more
    (its private key is gone from this replica's memory), and signs with the promoted key."""
    replica.run(replica.keyring.refresh(KS))
    revoked = replica.active_kid()
    assert revoked is not None
    assert replica.run(replica.keyring.sign(KS, CLAIMS, 60)).kid == revoked
    ks = replica.keyring.settings.keysets[KS]
    operations.revoke(replica.backend, {KS: ks}, revoked, replica.clock.now, "ops")
    replica.run(replica.keyring.refresh(KS))
    promoted = replica.run(replica.keyring.sign(KS, CLAIMS, 60)).kid
    assert promoted != revoked
    view = replica.keyring.view(KS)
    assert view is not None and revoked not in view.document.kids
    replica.seen.events.clear()  # the recorder's JwksChanged events hold the old views, and their signers
    gc.collect()
    assert replica.backend.handed_out[revoked]
    assert [ref() for ref in replica.backend.handed_out[revoked]] == [None] * len(replica.backend.handed_out[revoked])
    assert any(ref() is not None for ref in replica.backend.handed_out[promoted])


def test_a_ttl_beyond_max_token_ttl_is_refused_with_503(replica: Replica) -> None:
    """Whatever path asks (sign endpoint, token exchange), a token whose exp would outlive the keyset's
    max_token_ttl is refused (503) before anything is signed, and ExpBeyondRetention is told (the metric);
    a ttl at the maximum signs."""
    replica.run(replica.keyring.refresh(KS))
    assert replica.run(replica.keyring.sign(KS, CLAIMS, 300)).expires_at == int(T0) + 300
    with pytest.raises(Unavailable) as info:
        replica.run(replica.keyring.sign(KS, CLAIMS, 301))
    assert info.value.status == 503
    assert replica.seen.of(ExpBeyondRetention) == [ExpBeyondRetention(KS, 301)]


def test_reads_after_an_instant_are_pure_and_the_scheduled_advance_installs(replica: Replica) -> None:
    """Past a lifecycle instant, reads (view, ready, sign) already serve the new state but tell nothing
    and read no backend: a JWKS GET or a metrics scrape can never cause a mirror write. `advance()` (what
    the service schedules just after each instant) installs the view reads served, and tells JwksChanged
    once when the published keys changed (the retiring key leaving), not when they did not (activation)."""
    replica.run(replica.keyring.refresh(KS))
    before = replica.keyring.view(KS)
    assert before is not None and before.status.active is not None
    told, loads = len(replica.seen.events), replica.backend.loads
    replica.clock.t = before.valid_until
    projected = replica.keyring.view(KS)
    assert projected is not None and projected.status.active is not None
    assert projected.status.active.kid != before.status.active.kid
    assert replica.keyring.view(KS) is projected  # memoised: evaluated once, not per read
    assert replica.keyring.ready()
    replica.run(replica.keyring.sign(KS, CLAIMS, 60))
    assert (len(replica.seen.events), replica.backend.loads) == (told, loads)
    replica.keyring.advance()
    assert replica.keyring.view(KS) is projected and replica.keyring.next_change() > replica.clock.t
    assert len(replica.seen.events) == told  # the same kids are published: nothing to tell
    replica.clock.t = projected.valid_until  # the retiring key leaves the JWKS
    smaller = replica.keyring.view(KS)
    assert smaller is not None and len(smaller.document.kids) < len(projected.document.kids)
    assert len(replica.seen.events) == told
    replica.keyring.advance()
    assert replica.seen.events[told:] == [JwksChanged(smaller)]


def test_a_failed_refresh_past_an_instant_still_installs_the_new_view(replica: Replica) -> None:
    """With the backend down at a lifecycle instant, the refresh fails but installs the view of the records
    it last read, so JwksChanged (the S3 mirror) still follows the key that left or joined the JWKS."""
    replica.run(replica.keyring.refresh(KS))
    before = replica.keyring.view(KS)
    assert before is not None
    changes = len(replica.seen.of(JwksChanged))
    replica.backend.down = True
    replica.clock.t = before.valid_until
    after = replica.run(replica.keyring.refresh(KS))
    assert after is not None and after is not before and after.valid_until > before.valid_until
    assert len(replica.seen.of(JwksChanged)) == changes  # same kids published: no JWKS change yet
    replica.clock.t = after.valid_until + 1  # the retiring key leaves the JWKS
    left = replica.run(replica.keyring.refresh(KS))
    assert left is not None and len(left.document.kids) < len(after.document.kids)
    assert replica.seen.of(JwksChanged)[-1].view is left


def test_the_write_api_audits_with_the_actor_and_installs_the_result(replica: Replica) -> None:
    """Keyring.rotate (what HTTP admin and the CLI both call) on a keyring that never loaded the keyset:
    it loads it first, promotes with force, tells each key operation with the caller's actor, and serves
    the promoted key at once; without force a second rotation is refused (409) and tells no key event."""
    record = replica.run(replica.keyring.rotate(KS, "cli:alice", force=True))
    assert replica.active_kid() == record.kid
    rotations = [e for e in replica.seen.of(KeyEvent) if e.kind == "rotate"]
    assert [(e.keyset, e.kid, e.actor, e.details["forced"]) for e in rotations] == [(KS, record.kid, "cli:alice", True)]
    assert [e.actor for e in replica.seen.of(KeyEvent) if e.kind == "create"][-1] == "cli:alice"  # the next pending key
    told = len(replica.seen.of(KeyEvent))
    with pytest.raises(Conflict):
        replica.run(replica.keyring.rotate(KS, "client:ops"))
    assert len(replica.seen.of(KeyEvent)) == told


def test_revoke_through_the_keyring_drops_the_key_from_the_served_jwks(replica: Replica) -> None:
    """Keyring.revoke of the active key: the answer is the revoked record, the view served right after
    has neither the key in its JWKS nor it as signer, and the audit events name the actor."""
    replica.run(replica.keyring.refresh(KS))
    active = replica.active_kid()
    assert active is not None
    told = len(replica.seen.of(KeyEvent))
    record = replica.run(replica.keyring.revoke(active, "client:ops"))
    view = replica.keyring.view(KS)
    assert (record.kid, record.revoked_at) == (active, T0)
    assert view is not None and active not in view.document.kids and replica.active_kid() not in (None, active)
    written = replica.seen.of(KeyEvent)[told:]
    assert [e.kind for e in written][:2] == ["revoke", "activate"]  # then the next pending key, the destruction
    assert {e.actor for e in written} == {"client:ops"}


def test_revoke_limited_to_some_keysets_does_not_find_a_key_outside_them(replica: Replica) -> None:
    """Keyring.revoke(kid, actor, keysets=[...]) (an admin scoped to its keysets): a kid of another keyset
    is NotFound, like an unknown kid, and stays published and signing; nothing is audited."""
    replica.run(replica.keyring.refresh(KS))
    active = replica.active_kid()
    assert active is not None
    told = len(replica.seen.of(KeyEvent))
    with pytest.raises(NotFound):
        replica.run(replica.keyring.revoke(active, "client:other", keysets=["another-keyset"]))
    assert replica.active_kid() == active and len(replica.seen.of(KeyEvent)) == told
