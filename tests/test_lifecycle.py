"""keysvc.lifecycle, pure: key records + a number for the time + a policy -> states and decisions.

No disk, no clock, no sleep. Times are plain numbers; the policy is P=100, A=20, R=10 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keysvc import lifecycle
from keysvc.lifecycle import (
    PUBLISHED,
    Activate,
    Create,
    Destroy,
    KeysetStatus,
    Policy,
    RotationRefused,
    State,
    evaluate,
    next_action,
    promote,
)
from keysvc.records import KeyRecord

pytestmark = pytest.mark.unit

P, A, R = 100.0, 20.0, 10.0
POLICY = Policy(rotation_period=P, publish_ahead=A, retain_after=R)
INF = math.inf


def key(seq: int, activates_at: float, *, created_at: float | None = None, revoked_at: float | None = None,
        destroyed_at: float | None = None) -> KeyRecord:
    """A plain record: kid `k<seq>`, created when it was (by default) due to be, i.e. A before
    activation for every key but the first."""
    if created_at is None:
        created_at = activates_at if seq == 1 else activates_at - P
    return KeyRecord(keyset="ks", kid=f"k{seq}", seq=seq, alg="ES256", created_at=created_at,
                     activates_at=activates_at, public_jwk={}, revoked_at=revoked_at,
                     destroyed_at=destroyed_at)


def states(records: Sequence[KeyRecord], now: float) -> dict[str, State]:
    """kid -> state at `now`."""
    return {k.record.kid: k.state for k in evaluate(records, now, POLICY).keys}


# Two keys: k1 signs from 0, k2 from 100 (published from 0), k3 from 200 (published from 100).
ROTATING = [key(1, 0.0), key(2, 100.0), key(3, 200.0)]

S = State
STATE_TABLE = [
    (-1.0, {"k1": S.PENDING, "k2": S.PENDING, "k3": S.PENDING}, None),
    (0.0, {"k1": S.ACTIVE, "k2": S.PENDING, "k3": S.PENDING}, "k1"),
    (99.9, {"k1": S.ACTIVE, "k2": S.PENDING, "k3": S.PENDING}, "k1"),
    (100.0, {"k1": S.RETIRING, "k2": S.ACTIVE, "k3": S.PENDING}, "k2"),
    (109.9, {"k1": S.RETIRING, "k2": S.ACTIVE, "k3": S.PENDING}, "k2"),
    (110.0, {"k1": S.RETIRED, "k2": S.ACTIVE, "k3": S.PENDING}, "k2"),
    (200.0, {"k1": S.RETIRED, "k2": S.RETIRING, "k3": S.ACTIVE}, "k3"),
    (210.0, {"k1": S.RETIRED, "k2": S.RETIRED, "k3": S.ACTIVE}, "k3"),
    (1e9, {"k1": S.RETIRED, "k2": S.RETIRED, "k3": S.ACTIVE}, "k3"),
]


@pytest.mark.parametrize(("now", "expected", "active"), STATE_TABLE, ids=[f"t={r[0]}" for r in STATE_TABLE])
def test_states_across_a_keys_life(now: float, expected: dict[str, State], active: str | None) -> None:
    """pending before activates_at, active until the next key activates, retiring for retain_after,
    then retired; the active key is the one of greatest activates_at <= now."""
    status = evaluate(ROTATING, now, POLICY)
    assert expected == states(ROTATING, now)
    assert active == (status.active.kid if status.active else None)


PUBLISHED_TABLE = [
    (-1.0, ["k1", "k2", "k3"]),
    (50.0, ["k1", "k2", "k3"]),
    (105.0, ["k1", "k2", "k3"]),
    (110.0, ["k2", "k3"]),
    (205.0, ["k2", "k3"]),
    (210.0, ["k3"]),
]


@pytest.mark.parametrize(("now", "expected"), PUBLISHED_TABLE, ids=[f"t={r[0]}" for r in PUBLISHED_TABLE])
def test_published_set_and_order(now: float, expected: list[str]) -> None:
    """The JWKS carries pending, active and retiring keys, in activation order, whatever the order of
    the records given."""
    shuffled = [ROTATING[2], ROTATING[0], ROTATING[1]]
    assert expected == [r.kid for r in evaluate(shuffled, now, POLICY).published]


def test_revoked_and_retired_keys_are_not_published() -> None:
    """A revoked key leaves the JWKS at once, in any state it was in."""
    records = [key(1, 0.0), key(2, 100.0, revoked_at=150.0), key(3, 200.0, revoked_at=105.0)]
    assert [r.kid for r in evaluate(records, 104.0, POLICY).published] == ["k1", "k2", "k3"]
    assert [r.kid for r in evaluate(records, 105.0, POLICY).published] == ["k1", "k2"]  # pending k3
    assert [r.kid for r in evaluate(records, 149.0, POLICY).published] == ["k2"]
    assert [r.kid for r in evaluate(records, 150.0, POLICY).published] == []  # active k2


NEXT_CHANGE_TABLE = [
    (-1.0, 0.0),     # k1 activates
    (50.0, 100.0),   # k2 activates
    (100.0, 110.0),  # k1 leaves the JWKS
    (150.0, 200.0),  # k3 activates
    (205.0, 210.0),  # k2 leaves the JWKS
    (210.0, INF),    # nothing scheduled (no pending key: next_action creates one)
]


@pytest.mark.parametrize(("now", "expected"), NEXT_CHANGE_TABLE, ids=[f"t={r[0]}" for r in NEXT_CHANGE_TABLE])
def test_next_change(now: float, expected: float) -> None:
    """next_change is the earliest future instant at which a state changes (inf when none is scheduled)."""
    assert expected == evaluate(ROTATING, now, POLICY).next_change


def test_state_of() -> None:
    """state_of answers a kid's state, and None for a kid that is not in the keyset."""
    status = evaluate(ROTATING, 105.0, POLICY)
    expected = (S.RETIRING, S.ACTIVE, None)
    assert expected == (status.state_of("k1"), status.state_of("k2"), status.state_of("k9"))


NEXT_ACTION_TABLE: list[tuple[str, list[KeyRecord], float, lifecycle.Action | None]] = [
    ("bootstrap: first key signs at once", [], 1000.0, Create(1, 1000.0)),
    ("bootstrap: then its successor, one period later", [key(1, 1000.0)], 1000.0, Create(2, 1100.0)),
    ("late successor: never sooner than publish_ahead from now", [key(1, 0.0)], 95.0, Create(2, 115.0)),
    ("steady state: nothing to do", [key(1, 0.0), key(2, 100.0)], 50.0, None),
    ("pending became active: create the next", [key(1, 0.0), key(2, 100.0)], 100.0, Create(3, 200.0)),
    ("retiring key: nothing to destroy yet", ROTATING, 105.0, None),
    ("retired key: destroy it", ROTATING, 110.0, Destroy("k1")),
    ("retired key already destroyed: nothing", [key(1, 0.0, destroyed_at=111.0), *ROTATING[1:]], 150.0, None),
    ("revoked key: destroy it",
     [key(1, 0.0), key(2, 100.0), key(3, 50.0, revoked_at=10.0)], 50.0, Destroy("k3")),
    ("revoked active, pending left: activate it at once",
     [key(1, 0.0, revoked_at=50.0), key(2, 100.0)], 50.0, Activate("k2", 50.0)),
    ("revoked active, no pending: create a key that signs at once",
     [key(1, 0.0, revoked_at=50.0)], 50.0, Create(2, 50.0)),
    ("no active yet (clock behind): activate the earliest pending now",
     [key(1, 10.0), key(2, 110.0)], 5.0, Activate("k1", 5.0)),
    ("pending revoked: create a new pending before destroying",
     [key(1, 0.0), key(2, 100.0, revoked_at=40.0)], 50.0, Create(3, 100.0)),
]


@pytest.mark.parametrize(("records", "now", "expected"), [r[1:] for r in NEXT_ACTION_TABLE],
                         ids=[r[0] for r in NEXT_ACTION_TABLE])
def test_next_action(records: list[KeyRecord], now: float, expected: lifecycle.Action | None) -> None:
    """The one next write that brings a keyset to its steady state (one active, one pending, retired
    and revoked keys destroyed)."""
    assert expected == next_action(records, now, POLICY)


# ----------------------------------------------------------------------------------------- promote


def test_promote_is_refused_while_the_pending_key_is_younger_than_publish_ahead() -> None:
    """A pending key published for less than A may not be in every verifier's cache: refused, and the
    refusal says from when it is safe (created_at + A)."""
    records = [key(1, 0.0), key(2, 100.0, created_at=30.0)]
    with pytest.raises(RotationRefused) as info:
        promote(records, 49.0, POLICY)
    assert info.value.safe_at == 50.0
    assert "force" in str(info.value)


@pytest.mark.parametrize(("now", "force"), [(50.0, False), (80.0, False), (31.0, True)])
def test_promote_allowed_when_safe_or_forced(now: float, force: bool) -> None:
    """From created_at + A on, or at any time with force, the pending key is activated now."""
    records = [key(1, 0.0), key(2, 100.0, created_at=30.0)]
    assert Activate("k2", now) == promote(records, now, POLICY, force=force)


def test_promote_without_pending_key_is_refused_with_no_safe_time() -> None:
    """With no pending key there is nothing to promote, forced or not."""
    for force in (False, True):
        with pytest.raises(RotationRefused) as info:
            promote([key(1, 0.0)], 50.0, POLICY, force=force)
        assert info.value.safe_at is None


def test_two_emergencies_in_a_row_the_second_is_refused() -> None:
    """After one emergency rotation, the freshly created pending key is not safe to promote until A later."""
    store = FakeKeystore([key(1, 0.0), key(2, 100.0)])
    store.apply(promote(store.records, 40.0, POLICY), 40.0)
    store.reconcile(40.0)
    assert Create(3, 140.0) == store.log[-1]
    with pytest.raises(RotationRefused) as info:
        promote(store.records, 45.0, POLICY)
    assert info.value.safe_at == 60.0


# ------------------------------------------------------------------------------------------ revoke


def test_revoking_the_active_key_promotes_the_pending_key() -> None:
    """Compromise outranks availability: the pending key activates now, even if younger than A."""
    records = [key(1, 0.0), key(2, 100.0, created_at=45.0)]
    revoked, promotion = lifecycle.revoke(records, "k1", 50.0, POLICY)
    assert (50.0, Activate("k2", 50.0)) == (revoked.revoked_at, promotion)
    after = [revoked, records[1].replace(activates_at=50.0)]
    assert states(after, 50.0) == {"k1": S.REVOKED, "k2": S.ACTIVE}
    assert [r.kid for r in evaluate(after, 50.0, POLICY).published] == ["k2"]


def test_revoking_a_pending_key_does_not_disturb_the_active_key() -> None:
    """A revoked pending key never activates, even once its activates_at has passed."""
    records = [key(1, 0.0), key(2, 100.0)]
    revoked, promotion = lifecycle.revoke(records, "k2", 50.0, POLICY)
    assert promotion is None
    after = [records[0], revoked]
    for now in (50.0, 100.0, 150.0, 1e6):
        assert states(after, now) == {"k1": S.ACTIVE, "k2": S.REVOKED}


def test_a_key_revoked_after_activation_still_ends_its_predecessors_term() -> None:
    """k2 superseded k1 at 100 and is revoked at 105 with no pending key: k1 stays retiring (then
    retired), never active again; the keyset has no active key until next_action creates one."""
    records = [key(1, 0.0), key(2, 100.0, revoked_at=105.0)]
    for now, expected in [(105.0, S.RETIRING), (109.0, S.RETIRING), (110.0, S.RETIRED), (500.0, S.RETIRED)]:
        status = evaluate(records, now, POLICY)
        assert (expected, S.REVOKED, None) == (status.state_of("k1"), status.state_of("k2"), status.active)
    assert Create(3, 105.0) == next_action(records, 105.0, POLICY)


def test_a_key_revoked_at_the_instant_it_was_promoted_does_not_hand_signing_back() -> None:
    """Emergency rotation at 150 (k3 promoted), then k3 revoked in the same instant: k2, superseded at
    150, must not become active again; revoke promotes the next pending key k4 instead."""
    records = [key(1, 0.0), key(2, 100.0), key(3, 150.0, created_at=100.0), key(4, 250.0, created_at=150.0)]
    revoked, promotion = lifecycle.revoke(records, "k3", 150.0, POLICY)
    assert Activate("k4", 150.0) == promotion
    after = [records[0], records[1], revoked, records[3].replace(activates_at=150.0)]
    assert states(after, 150.0) == {"k1": S.RETIRED, "k2": S.RETIRING, "k3": S.REVOKED, "k4": S.ACTIVE}
    without_promotion = [records[0], records[1], revoked]
    assert evaluate(without_promotion, 150.0, POLICY).active is None


def test_revoke_is_idempotent_and_refuses_unknown_kids() -> None:
    """Revoking a revoked key changes nothing; an unknown kid is a KeyError."""
    records = [key(1, 0.0, revoked_at=20.0), key(2, 100.0)]
    assert (records[0], None) == lifecycle.revoke(records, "k1", 60.0, POLICY)
    with pytest.raises(KeyError):
        lifecycle.revoke(records, "nope", 60.0, POLICY)


# --------------------------------------------------------------------------------------- simulation


@dataclass
class FakeKeystore:
    """An in-memory backend: applies lifecycle actions to a list of records, as reconcile does."""

    records: list[KeyRecord] = field(default_factory=list)
    log: list[lifecycle.Action] = field(default_factory=list)

    def apply(self, action: lifecycle.Action, now: float) -> None:
        self.log.append(action)
        if isinstance(action, Create):
            assert all(r.seq != action.seq for r in self.records), "a slot is created twice"
            self.records.append(key(action.seq, action.activates_at, created_at=now))
        elif isinstance(action, Activate):
            self.replace(action.kid, activates_at=action.at)
        else:
            self.replace(action.kid, destroyed_at=now)

    def replace(self, kid: str, **changes: object) -> None:
        self.records = [r.replace(**changes) if r.kid == kid else r for r in self.records]

    def reconcile(self, now: float) -> None:
        for _ in range(8):
            action = next_action(self.records, now, POLICY)
            if action is None:
                return
            self.apply(action, now)
        raise AssertionError(f"reconcile does not converge at {now}: {self.log[-8:]}")


@dataclass
class Observer:
    """Checks the invariants of a keyset each time it is observed, remembering what it saw."""

    last_active: dict[str, float] = field(default_factory=dict)
    retired_actives: set[str] = field(default_factory=set)

    def check(self, records: Sequence[KeyRecord], now: float) -> KeysetStatus:
        status = evaluate(records, now, POLICY)
        actives = [k.record.kid for k in status.keys if k.state is S.ACTIVE]
        assert len(actives) == 1, f"{len(actives)} active keys at {now}"
        assert status.active is not None and actives[0] == status.active.kid
        assert status.active.activates_at <= now
        assert sum(k.state is S.PENDING for k in status.keys) == 1, f"not one pending key at {now}"
        seqs = [r.seq for r in records]
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), "a slot is missing or taken twice"
        active = actives[0]
        assert active not in self.retired_actives, f"{active} became active again at {now}"
        self.retired_actives.update(k for k in self.last_active if k != active)
        self.last_active[active] = now
        for kid, seen in self.last_active.items():
            state = status.state_of(kid)
            if state is not S.REVOKED and now < seen + R:
                assert state in PUBLISHED, f"{kid}, active at {seen}, unpublished at {now} (< R later)"
        for k in status.keys:
            if k.state in (S.RETIRED, S.REVOKED) and k.record.kid in self.last_active:
                assert k.state is S.REVOKED or now >= self.last_active[k.record.kid] + R
        return status


def test_many_scheduled_rotations_keep_every_invariant() -> None:
    """Thirty rotation periods of a scheduler that reconciles at every next_change instant and every 7
    time units: exactly one active and one pending key at every observed instant, one key per slot, each
    key published for A before it signs, and published for R after it was last seen signing; states
    do not change between now and next_change."""
    store, observer, now = FakeKeystore(), Observer(), 0.0
    store.reconcile(now)
    while now < 30 * P:
        status = observer.check(store.records, now)
        if status.next_change < INF:
            midway = (now + status.next_change) / 2
            assert states(store.records, now) == states(store.records, midway)
        now = min(now + 7.0, status.next_change)
        store.reconcile(now)
    assert 31 <= len(store.records) <= 32
    for record in store.records[1:]:
        assert record.activates_at - record.created_at >= A
    retired = [k for k in evaluate(store.records, now, POLICY).keys if k.state is S.RETIRED]
    assert all(k.record.destroyed_at is not None for k in retired)
    assert len(retired) in (len(store.records) - 3, len(store.records) - 2)  # but active, pending, retiring


# One operation of the property test: advance the clock, promote the pending key, or revoke a key.
OPERATIONS = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=0.5, max_value=3 * P, allow_nan=False)),
    st.tuples(st.just("rotate"), st.booleans()),
    st.tuples(st.just("revoke"), st.integers(min_value=0, max_value=50)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(OPERATIONS, min_size=1, max_size=40))
def test_invariants_hold_under_random_rotations_and_revocations(ops: list[tuple[str, object]]) -> None:
    """For any sequence of (advance time, emergency rotation, revoke some kid), with a scheduler that
    reconciles at every next_change and after each operation: exactly one active key at every observed
    instant, one key per slot, a key seen signing stays published R after unless revoked, no key
    becomes active twice, and a refused rotation names a safe time in the future."""
    store, observer, now = FakeKeystore(), Observer(), 1000.0
    store.reconcile(now)
    for op, arg in ops:
        observer.check(store.records, now)
        if op == "advance":
            assert isinstance(arg, float)
            end = now + arg
            while now < end:
                now = min(end, evaluate(store.records, now, POLICY).next_change)
                store.reconcile(now)
                observer.check(store.records, now)
        elif op == "rotate":
            try:
                store.apply(promote(store.records, now, POLICY, force=bool(arg)), now)
            except RotationRefused as exc:
                assert not arg
                assert exc.safe_at is not None and exc.safe_at > now
        else:
            assert isinstance(arg, int)
            target = store.records[arg % len(store.records)]
            revoked, promotion = lifecycle.revoke(store.records, target.kid, now, POLICY)
            store.replace(target.kid, revoked_at=revoked.revoked_at)
            if promotion is not None:
                store.apply(promotion, now)
        store.reconcile(now)
    observer.check(store.records, now)
