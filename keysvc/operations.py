"""Lifecycle decisions applied to a backend: the only place where `lifecycle` meets backend I/O.

Blocking functions, run by the keyring in its I/O pool (keysvc.keyring.Keyring's write API, which the
HTTP admin routes and the CLI both use). Every write happens under `backend.exclusive(keyset)` after a
fresh read, so replicas and operators converge instead of racing. Each key operation is told to the
`observer` as a KeyEvent (by default the audit log alone) before the function returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keysvc import lifecycle
from keysvc.audit import AuditLog
from keysvc.backends.base import Backend
from keysvc.config import KeysetSettings
from keysvc.errors import Conflict, NotFound
from keysvc.events import KeyEvent, Observer
from keysvc.faults import checkpoint
from keysvc.lifecycle import Activate, Create, Destroy, State
from keysvc.lifecycle import policy_of as policy_of  # also named here: the CLI and tests use it with these
from keysvc.logs import LOG
from keysvc.records import KeyRecord, ReconcileReport

MAX_STEPS = 8
MAY_REJECT = "verifiers may reject tokens until they refetch the JWKS"
Now = Callable[[], float]


def _apply(
    backend: Backend,
    ks: KeysetSettings,
    records: list[KeyRecord],
    action: lifecycle.Action,
    now: float,
    actor: str,
    report: ReconcileReport,
    observer: Observer,
) -> None:
    by_kid = {r.kid: r for r in records}
    if isinstance(action, Create):
        record = backend.create(ks.name, action.seq, ks.alg, action.activates_at, now)
        if record is None:
            report.lost_races += 1
            LOG.info("creation race lost", extra={"keyset": ks.name, "seq": action.seq})
            return
        report.created += 1
        details: dict[str, Any] = {"alg": record.alg, "seq": record.seq, "activates_at": record.activates_at}
        observer.notify(KeyEvent("create", ks.name, record.kid, actor, details))
    elif isinstance(action, Activate):
        backend.update(by_kid[action.kid].replace(activates_at=action.at))
        report.activated += 1
        observer.notify(KeyEvent("activate", ks.name, action.kid, actor, {"activates_at": action.at}))
    elif isinstance(action, Destroy):
        record = by_kid[action.kid]
        backend.destroy(record, now)
        report.destroyed += 1
        reason = "revoked" if record.revoked_at is not None else "retired"
        observer.notify(KeyEvent("destroy", ks.name, record.kid, actor, {"reason": reason}))


def reconcile(
    backend: Backend, ks: KeysetSettings, now: Now, actor: str, *, repair: bool = False,
    observer: Observer | None = None,
) -> ReconcileReport:
    """Bring a keyset to its steady state (one pending key, retired keys destroyed). Idempotent.

    Leftovers of a crash are repaired before any write; `repair=True` (at start-up, i.e. after a possible
    crash) repairs even when there is nothing to write, so an orphan private key does not linger on disk
    until the next lifecycle instant, weeks later."""
    observer = observer or AuditLog()
    policy = policy_of(ks)
    records = backend.load(ks.name)
    report = ReconcileReport(records)
    if not repair and lifecycle.next_action(records, now(), policy) is None:
        return report
    with backend.exclusive(ks.name):
        report.repaired = len(backend.repair(ks.name, now()))
        for _ in range(MAX_STEPS):
            records = backend.load(ks.name)
            t = now()
            action = lifecycle.next_action(records, t, policy)
            if action is None:
                break
            checkpoint(f"ops.reconcile.{type(action).__name__.lower()}")
            _apply(backend, ks, records, action, t, actor, report, observer)
        report.records = backend.load(ks.name)
    return report


def rotate(
    backend: Backend, ks: KeysetSettings, now: Now, actor: str, *, force: bool = False,
    observer: Observer | None = None,
) -> KeyRecord:
    """Emergency rotation: promote the pending key now (refused when not yet safe, unless forced), then
    create the next pending key. Returns the newly active record."""
    observer = observer or AuditLog()
    policy = policy_of(ks)
    with backend.exclusive(ks.name):
        records = backend.load(ks.name)
        t = now()
        try:
            action = lifecycle.promote(records, t, policy, force=force)
        except lifecycle.RotationRefused as exc:
            raise Conflict(
                str(exc), retry_after=None if exc.safe_at is None else max(1, int(exc.safe_at - t) + 1)
            ) from None
        record = next(r for r in records if r.kid == action.kid)
        early = t < record.created_at + policy.publish_ahead
        backend.update(record.replace(activates_at=t))
        checkpoint("ops.rotate.promoted")
        warning = MAY_REJECT if early else None
        observer.notify(KeyEvent("rotate", ks.name, record.kid, actor, {"forced": force, "warning": warning}))
    reconcile(backend, ks, now, actor, observer=observer)
    return record.replace(activates_at=t)


def revoke(
    backend: Backend, keysets: Mapping[str, KeysetSettings], kid: str, now: Now, actor: str, *,
    observer: Observer | None = None,
) -> KeyRecord:
    """Revoke a key at once (out of the JWKS, never signs again); promote the pending key if it was active."""
    observer = observer or AuditLog()
    for ks in keysets.values():
        with backend.exclusive(ks.name):
            records = backend.load(ks.name)
            if not any(r.kid == kid for r in records):
                continue
            t = now()
            was_active = lifecycle.evaluate(records, t, policy_of(ks)).state_of(kid) is State.ACTIVE
            revoked, promotion = lifecycle.revoke(records, kid, t, policy_of(ks))
            backend.update(revoked)
            checkpoint("ops.revoke.revoked")
            details: dict[str, Any] = {"was_active": was_active, "warning": MAY_REJECT if was_active else None}
            observer.notify(KeyEvent("revoke", ks.name, kid, actor, details))
            if promotion is not None:
                backend.update(next(r for r in records if r.kid == promotion.kid).replace(activates_at=promotion.at))
                checkpoint("ops.revoke.promoted")
                promoted = {"activates_at": promotion.at, "reason": "active key revoked"}
                observer.notify(KeyEvent("activate", ks.name, promotion.kid, actor, promoted))
        reconcile(backend, ks, now, actor, observer=observer)
        return revoked
    raise NotFound("no such key")


def import_key(
    backend: Backend, ks: KeysetSettings, pem: bytes, now: Now, actor: str, *, observer: Observer | None = None
) -> KeyRecord:
    """Adopt an existing private key as the keyset's next key: it takes the pending slot (the pending key
    it replaces never signed, so it is revoked) and activates no sooner than `publish_ahead` from now."""
    observer = observer or AuditLog()
    policy = policy_of(ks)
    reconcile(backend, ks, now, actor, observer=observer)
    with backend.exclusive(ks.name):
        records = backend.load(ks.name)
        t = now()
        status = lifecycle.evaluate(records, t, policy)
        pending = [k.record for k in status.keys if k.state is State.PENDING]
        activates_at = max([t + policy.publish_ahead, *(r.activates_at for r in pending)])
        record = backend.create(ks.name, lifecycle.next_seq(records), ks.alg, activates_at, t, pem=pem)
        if record is None:
            raise Conflict("another replica created a key at the same moment; try again")
        # A crash here leaves the replaced pending key unrevoked: harmless, since the imported key activates
        # at the same instant and, with the higher seq, supersedes it then; it leaves the JWKS retain_after
        # later without ever signing (tests/test_crash_consistency.py).
        checkpoint("ops.import.created")
        for old in pending:
            backend.update(old.replace(revoked_at=t))
            observer.notify(KeyEvent("revoke", ks.name, old.kid, actor, {"reason": "replaced by imported key"}))
        observer.notify(KeyEvent("import", ks.name, record.kid, actor, {"activates_at": activates_at}))
    reconcile(backend, ks, now, actor, observer=observer)
    return record


def describe(records: list[KeyRecord], ks: KeysetSettings, now: float) -> list[dict[str, object]]:
    """One row per key for `keys list` and GET /v1/keys (no secrets: public facts only)."""
    status = lifecycle.evaluate(records, now, policy_of(ks))
    return [
        {
            "keyset": ks.name,
            "kid": k.record.kid,
            "alg": k.record.alg,
            "state": k.state.value,
            "seq": k.record.seq,
            "created_at": k.record.created_at,
            "activates_at": k.record.activates_at,
            "superseded_at": k.superseded_at,
            "removes_at": k.removes_at,
            "revoked_at": k.record.revoked_at,
            "destroyed_at": k.record.destroyed_at,
        }
        for k in status.keys
    ]
