"""The backend contract: what every `Backend` and `keysvc.operations` on it must do, whatever stores the keys.

Each test runs on both real backends: the file backend in a temporary directory (unit) and the KMS backend
against moto's server over HTTP (system; tests/kms_server.py). A "replica" is a second backend object on the
same store, as another process would open it. What only one backend does (file modes, encryption at rest,
the POSIX lock; KMS tags, aliases, GetPublicKey caching, throttling) is in tests/test_file_backend.py and
tests/test_kms_backend.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest

from keysvc import lifecycle, operations
from keysvc.backends import keys
from keysvc.backends.base import Backend
from keysvc.backends.file import FileBackend
from keysvc.clock import FixedClock
from keysvc.config import KeysetSettings
from keysvc.errors import BackendError, BackendUnavailable, Conflict, InvalidKeyMaterial, NotFound
from keysvc.jwks import thumbprint
from keysvc.lifecycle import State
from keysvc.records import KeyRecord

NOW = 1_764_300_000.0
DAY = 86400.0
KS = KeysetSettings(name="zapier", issuer="https://issuer.example", alg="ES256", rotation_period=30 * DAY,
                    publish_ahead=2 * DAY, retain_after=DAY, max_token_ttl=300.0)
AUD = "connect.zapier.com"


@dataclass
class Store:
    """One backend under test and the store behind it.

    `leave_crash_leftover(keyset, seq)` leaves what a replica killed while creating slot `seq` leaves
    behind (file: a private key without a record and a temp file; KMS: a key created but never aliased);
    `repair` cleans it up once it is `orphan_age` seconds old.
    """

    name: str
    backend: Backend
    open_replica: Callable[[], Backend]
    imports: bool
    leave_crash_leftover: Callable[[str, int], None]
    orphan_age: float
    opened: list[Backend] = field(default_factory=list)

    def replica(self) -> Backend:
        """Another backend object on the same store (another replica), closed after the test."""
        backend = self.open_replica()
        self.opened.append(backend)
        return backend


def _file_store(root: Path) -> Store:
    def leftover(keyset: str, seq: int) -> None:
        directory = root / keyset
        (directory / f"key-{seq:06d}.pem").write_bytes(keys.to_pem(keys.generate("ES256"), None))
        (directory / ".tmp-1-2-3").write_bytes(b"half a record")

    def replica() -> Backend:
        return FileBackend(root, instance_id="replica")

    return Store("file", FileBackend(root, instance_id="test"), replica, True, leftover, 0.0)


def _kms_store(request: pytest.FixtureRequest) -> Store:
    from keysvc.backends.kms import KmsBackend
    from tests.kms_server import REGION, MotoServer

    server: MotoServer = request.getfixturevalue("moto_server")
    prefix: str = request.getfixturevalue("kms_alias_prefix")

    def open_kms(instance_id: str = "replica") -> KmsBackend:
        return KmsBackend(region=REGION, alias_prefix=prefix, endpoint_url=server.endpoint_url,
                          instance_id=instance_id, connect_timeout=1.0, read_timeout=5.0)

    backend = open_kms("test")

    def leftover(keyset: str, seq: int) -> None:
        server.fault("CreateAlias", code="KMSInternalException", count=-1)  # killed before the alias exists
        try:
            with pytest.raises(BackendUnavailable):
                backend.create(keyset, seq, KS.alg, activates_at=NOW, now=NOW)
        finally:
            server.clear_faults()

    return Store("kms", backend, open_kms, False, leftover, backend.orphan_grace + 1)


@pytest.fixture(params=[pytest.param("file", marks=pytest.mark.unit),
                        pytest.param("kms", marks=pytest.mark.system)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend in turn, on a fresh store (a new directory; a new KMS alias prefix)."""
    made = _file_store(tmp_path / "keys") if request.param == "file" else _kms_store(request)
    yield made
    for backend in [made.backend, *made.opened]:
        backend.close()


@pytest.fixture
def clock() -> FixedClock:
    """The time, moved only by the test."""
    return FixedClock(NOW)


def states(backend: Backend, now: float) -> dict[int, State]:
    """seq -> state of every key of the keyset at `now`."""
    status = lifecycle.evaluate(backend.load(KS.name), now, operations.policy_of(KS))
    return {k.record.seq: k.state for k in status.keys}


def by_seq(backend: Backend) -> dict[int, KeyRecord]:
    """The keyset's records by slot."""
    return {r.seq: r for r in backend.load(KS.name)}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_verifies(backend: Backend, record: KeyRecord) -> bool:
    """A JWT signed through the backend's signer of `record` verifies with PyJWT and the record's
    published public JWK."""
    signer = backend.signer(record)
    header = _b64(json.dumps({"alg": signer.alg, "kid": signer.kid, "typ": "JWT"}).encode())
    claims = {"sub": "u-1", "aud": AUD}
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    token = f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"
    key = jwt.PyJWK({**record.public_jwk, "kid": record.kid, "alg": record.alg})
    return bool(jwt.decode(token, key.key, algorithms=[record.alg], audience=AUD) == claims)


def cannot_sign(backend: Backend, record: KeyRecord) -> bool:
    """The record's key no longer signs: the signer is refused, or its signature is."""
    try:
        backend.signer(record).sign(b"header.payload")
    except BackendError:
        return True
    return False


def bootstrap(store: Store, clock: FixedClock) -> dict[int, KeyRecord]:
    """Reconcile an empty keyset: seq 1 active now, seq 2 pending."""
    operations.reconcile(store.backend, KS, clock.now, "test")
    return by_seq(store.backend)


# ------------------------------------------------------------------------------------------ records


@pytest.mark.parametrize("alg", ["ES256", "ES512", "PS256"])
def test_created_key_loads_on_another_replica_and_signs_tokens_pyjwt_verifies(store: Store, alg: str) -> None:
    """A created record loads back equal from a fresh backend object (another replica), public JWK
    included; its kid is the RFC 7638 thumbprint of that JWK, and the replica's signer signs a JWT that
    PyJWT verifies with it."""
    record = store.backend.create("ks", 1, alg, activates_at=NOW + 5, now=NOW)
    assert record is not None
    replica = store.replica()
    (loaded,) = replica.load("ks")
    assert record == loaded
    assert dict(record.public_jwk) == dict(loaded.public_jwk)
    assert ("ks", 1, alg, NOW, NOW + 5, None, None) == (
        loaded.keyset, loaded.seq, loaded.alg, loaded.created_at, loaded.activates_at, loaded.revoked_at,
        loaded.destroyed_at)
    assert loaded.created_by == "test"
    assert loaded.kid == thumbprint(dict(loaded.public_jwk))
    signer = replica.signer(loaded)
    assert (loaded.kid, alg) == (signer.kid, signer.alg)
    assert token_verifies(replica, loaded)
    assert replica.load("another-keyset") == []


def test_a_taken_slot_is_created_once_and_leaves_no_orphan(store: Store) -> None:
    """Compare-and-swap on the slot: a second create of slot 1, by the creator or another replica,
    returns None, the first record stands everywhere, and nothing is left for repair to clean up."""
    first = store.backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    assert first is not None
    replica = store.replica()
    assert replica.create(KS.name, 1, "ES256", activates_at=NOW + 9, now=NOW + 9) is None
    assert store.backend.create(KS.name, 1, "ES256", activates_at=NOW + 9, now=NOW + 9) is None
    for reader in (store.backend, replica, store.replica()):
        assert [(first, NOW)] == [(r, r.activates_at) for r in reader.load(KS.name)]
    assert store.backend.repair(KS.name, NOW + DAY) == []


def test_replicas_racing_reconcile_create_each_slot_once(store: Store) -> None:
    """Four replicas reconcile an empty keyset at the same instant (a barrier releases them together):
    exactly two keys are created in all, seq 1 active and seq 2 pending, each with its own key pair,
    and no loser's key is left behind."""
    replicas = [store.replica() for _ in range(4)]
    barrier = threading.Barrier(len(replicas))
    reports: list[operations.ReconcileReport] = []
    errors: list[BaseException] = []

    def run(backend: Backend, name: str) -> None:
        try:
            barrier.wait()
            reports.append(operations.reconcile(backend, KS, lambda: NOW, name))
        except BaseException as exc:  # reported below with the failing thread's exception
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b, f"r{i}")) for i, b in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sum(r.created for r in reports) == 2
    assert states(store.backend, NOW) == {1: State.ACTIVE, 2: State.PENDING}
    records = by_seq(store.backend)
    assert (NOW, NOW + KS.rotation_period) == (records[1].activates_at, records[2].activates_at)
    assert records[1].kid != records[2].kid
    assert all(token_verifies(store.backend, r) for r in records.values())
    assert store.backend.repair(KS.name, NOW + DAY) == []


def test_update_persists_activates_at_and_revoked_at(store: Store) -> None:
    """activates_at and then revoked_at written by update() are what another replica loads."""
    record = store.backend.create(KS.name, 1, "ES256", activates_at=NOW + 5, now=NOW)
    assert record is not None
    store.backend.update(record.replace(activates_at=NOW + 1))
    (moved,) = store.replica().load(KS.name)
    assert (moved.activates_at, moved.revoked_at) == (NOW + 1, None)
    store.backend.update(moved.replace(revoked_at=NOW + 2))
    (revoked,) = store.replica().load(KS.name)
    assert (revoked.kid, revoked.activates_at, revoked.revoked_at) == (record.kid, NOW + 1, NOW + 2)


def test_destroy_is_idempotent(store: Store) -> None:
    """destroy() sets destroyed_at; destroying again, with the returned record or a stale copy (as another
    replica would), changes nothing any replica loads; the key never signs again."""
    record = store.backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    assert record is not None
    destroyed = store.backend.destroy(record, NOW + 60)
    assert (destroyed.kid, destroyed.destroyed_at) == (record.kid, NOW + 60)
    store.backend.destroy(destroyed, NOW + 99)
    store.replica().destroy(record, NOW + 120)
    for reader in (store.backend, store.replica()):
        assert [(record.kid, NOW + 60)] == [(r.kid, r.destroyed_at) for r in reader.load(KS.name)]
    assert cannot_sign(store.replica(), destroyed)


def test_destroy_with_a_stale_record_keeps_the_revocation(store: Store) -> None:
    """destroy() given a copy read before the key was revoked must not undo the revocation: a revoked key
    would otherwise come back into the JWKS."""
    stale = store.backend.create(KS.name, 1, "ES256", activates_at=NOW, now=NOW)
    assert stale is not None
    store.backend.update(stale.replace(revoked_at=NOW + 10))
    store.backend.destroy(stale, NOW + 20)
    for reader in (store.replica(), store.backend):
        assert [(r.revoked_at, r.destroyed_at) for r in reader.load(KS.name)] == [(NOW + 10, NOW + 20)]


# -------------------------------------------------------------------------------------- operations


def test_reconcile_reaches_the_steady_state_and_keeps_it(store: Store, clock: FixedClock) -> None:
    """From nothing, reconcile creates an active and a pending key; again, it does nothing; over three
    rotation periods it rotates on schedule (at 90 days: seq 3 retiring, 4 active, 5 pending), one key per
    slot, and destroys every key that has left the JWKS, while the published keys still sign."""
    first = operations.reconcile(store.backend, KS, clock.now, "test")
    assert first.created == 2
    assert states(store.backend, NOW) == {1: State.ACTIVE, 2: State.PENDING}
    assert operations.reconcile(store.backend, KS, clock.now, "test").created == 0
    for _ in range(9):
        clock.advance(10 * DAY)
        operations.reconcile(store.backend, KS, clock.now, "test")
    records = store.replica().load(KS.name)
    assert sorted(r.seq for r in records) == list(range(1, len(records) + 1))
    assert len(records) == 5
    status = lifecycle.evaluate(records, clock.now(), operations.policy_of(KS))
    assert [status.state_of(r.kid) for r in status.published] == [State.RETIRING, State.ACTIVE, State.PENDING]
    published = {r.kid for r in status.published}
    assert published == {r.kid for r in records if r.destroyed_at is None}
    replica = store.replica()
    assert all(token_verifies(replica, r) for r in status.published)
    assert all(cannot_sign(replica, r) for r in records if r.kid not in published)


def test_rotate_is_refused_until_safe_then_promotes(store: Store, clock: FixedClock) -> None:
    """rotate is refused (409, Retry-After until safe) while the pending key is younger than publish_ahead;
    after that it activates the pending key now and creates the next pending key."""
    bootstrap(store, clock)
    clock.advance(3600)
    with pytest.raises(Conflict) as info:
        operations.rotate(store.backend, KS, clock.now, "ops")
    assert KS.publish_ahead - 3600 + 1 == info.value.retry_after
    assert states(store.backend, clock.now()) == {1: State.ACTIVE, 2: State.PENDING}
    clock.advance(KS.publish_ahead)
    promoted = operations.rotate(store.backend, KS, clock.now, "ops")
    assert (2, clock.now()) == (promoted.seq, promoted.activates_at)
    assert states(store.replica(), clock.now()) == {1: State.RETIRING, 2: State.ACTIVE, 3: State.PENDING}
    new = by_seq(store.backend)[3]
    assert (clock.now(), clock.now() + KS.rotation_period) == (new.created_at, new.activates_at)


def test_forced_rotate_promotes_at_once(store: Store, clock: FixedClock) -> None:
    """force promotes a pending key younger than publish_ahead; a second forced rotation right after
    promotes the brand-new pending key too."""
    bootstrap(store, clock)
    clock.advance(10)
    assert operations.rotate(store.backend, KS, clock.now, "ops", force=True).seq == 2
    clock.advance(10)
    assert operations.rotate(store.backend, KS, clock.now, "ops", force=True).seq == 3
    assert states(store.replica(), clock.now()) == {
        1: State.RETIRING, 2: State.RETIRING, 3: State.ACTIVE, 4: State.PENDING}


def test_revoke_the_active_key(store: Store, clock: FixedClock) -> None:
    """Revoking the active key: it leaves the JWKS and never signs again, the pending key signs from now,
    and a new pending key is created."""
    active = bootstrap(store, clock)[1]
    clock.advance(60)
    revoked = operations.revoke(store.backend, {KS.name: KS}, active.kid, clock.now, "ops")
    assert (active.kid, clock.now()) == (revoked.kid, revoked.revoked_at)
    replica = store.replica()
    assert states(replica, clock.now()) == {1: State.REVOKED, 2: State.ACTIVE, 3: State.PENDING}
    records = by_seq(replica)
    assert records[2].activates_at == clock.now()
    assert records[1].destroyed_at is not None
    status = lifecycle.evaluate(list(records.values()), clock.now(), operations.policy_of(KS))
    assert active.kid not in [r.kid for r in status.published]
    assert cannot_sign(replica, records[1])
    assert token_verifies(replica, records[2])


def test_revoke_the_pending_key(store: Store, clock: FixedClock) -> None:
    """Revoking the pending key leaves the active key alone and creates a new pending key, published for
    publish_ahead before it may sign, that keeps the rotation schedule."""
    pending = bootstrap(store, clock)[2]
    clock.advance(60)
    operations.revoke(store.backend, {KS.name: KS}, pending.kid, clock.now, "ops")
    replica = store.replica()
    assert states(replica, clock.now()) == {1: State.ACTIVE, 2: State.REVOKED, 3: State.PENDING}
    new = by_seq(replica)[3]
    assert new.activates_at - new.created_at >= KS.publish_ahead
    assert pending.activates_at == new.activates_at
    assert states(replica, new.activates_at) == {1: State.RETIRING, 2: State.REVOKED, 3: State.ACTIVE}
    assert cannot_sign(replica, by_seq(replica)[2])


def test_revoke_of_an_unknown_kid_is_not_found(store: Store, clock: FixedClock) -> None:
    """An unknown kid is 404 and changes nothing."""
    before = bootstrap(store, clock)
    with pytest.raises(NotFound):
        operations.revoke(store.backend, {KS.name: KS}, "no-such-kid", clock.now, "ops")
    assert before == by_seq(store.replica())


def test_import_adopts_a_pem_where_the_backend_can_and_is_refused_cleanly_elsewhere(
    store: Store, clock: FixedClock
) -> None:
    """Where the backend imports (file): the key takes over the pending slot, activates when the key it
    replaces would have (no sooner than publish_ahead from now), the replaced pending key is revoked and
    destroyed, the active key untouched. Where it does not (KMS): InvalidKeyMaterial saying so (exit 1), and
    the keyset as it was, with nothing left behind."""
    before = bootstrap(store, clock)
    clock.advance(3600)
    key = keys.generate("ES256")
    pem = keys.to_pem(key, None)
    if not store.imports:
        with pytest.raises(InvalidKeyMaterial, match="file backend only"):
            operations.import_key(store.backend, KS, pem, clock.now, "ops")
        assert before == by_seq(store.replica())
        assert states(store.backend, clock.now()) == {1: State.ACTIVE, 2: State.PENDING}
        assert store.backend.repair(KS.name, clock.now() + DAY) == []
        return
    record = operations.import_key(store.backend, KS, pem, clock.now, "ops")
    assert (keys.kid_of(key), 3) == (record.kid, record.seq)
    assert NOW + KS.rotation_period == record.activates_at >= clock.now() + KS.publish_ahead
    replica = store.replica()
    assert states(replica, clock.now()) == {1: State.ACTIVE, 2: State.REVOKED, 3: State.PENDING}
    records = by_seq(replica)
    assert (clock.now(), clock.now()) == (records[2].revoked_at, records[2].destroyed_at)
    assert before[1] == records[1]
    assert token_verifies(replica, records[3])
    assert states(replica, record.activates_at) == {1: State.RETIRING, 2: State.REVOKED, 3: State.ACTIVE}


def test_repair_cleans_up_what_a_crash_left_and_nothing_else(store: Store, clock: FixedClock) -> None:
    """A replica killed while creating slot 3 leaves a half-made key; the start-up reconcile (repair=True)
    removes it once it is old enough to be an orphan, then finds nothing more, and the keyset's records
    and keys are as they were."""
    before = bootstrap(store, clock)
    store.leave_crash_leftover(KS.name, 3)
    clock.advance(store.orphan_age)
    report = operations.reconcile(store.replica(), KS, clock.now, "restarted", repair=True)
    assert (report.repaired >= 1, report.created) == (True, 0)
    assert store.backend.repair(KS.name, clock.now()) == []
    assert store.replica().repair(KS.name, clock.now()) == []
    assert before == by_seq(store.replica())
    assert all(token_verifies(store.replica(), r) for r in before.values())
