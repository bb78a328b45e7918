"""The in-memory view a replica serves from, the refresh that keeps it in step with the backend, and the
one write API (rotate, revoke, import) that the HTTP admin routes and the CLI share.

Reads (JWKS, the active signer, metrics) never touch the backend and never change what is installed:
they use the view the last refresh installed. A view is installed, and JwksChanged told, only by a
refresh, by a write, or by `advance()` (which the service schedules just after each lifecycle instant).
Between a lifecycle instant and that scheduled advance, a read projects the installed view to the current
time (pure, memoised, no events), so a key activates or leaves the JWKS at exactly its instant on every
replica. When the backend is unreachable, the last-known view keeps serving; only its health changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from keysvc import jwks, lifecycle, operations
from keysvc.audit import AuditLog
from keysvc.backends.base import Backend
from keysvc.batching import Audit, SignBatch, audit_signed
from keysvc.clock import Clock
from keysvc.config import KeysetSettings, Settings
from keysvc.errors import BackendError, BackendUnavailable, KeysvcError, NotFound, Unavailable
from keysvc.events import BackendOperation, ExpBeyondRetention, JwksChanged, Observer, Reconciled
from keysvc.lifecycle import KeysetStatus, State
from keysvc.logs import LOG, request_fields
from keysvc.records import KeyRecord, ReconcileReport, SignedToken, SigningKey
from keysvc.tokens import Minter
from keysvc.views import KeysetView

SIGNABLE = frozenset({State.PENDING, State.ACTIVE})
T = TypeVar("T")


@dataclass
class Health:
    """Backend health of one keyset, for metrics and alerts (not for readiness)."""

    last_sync: float = 0.0
    ok: bool = False
    last_error: str = ""
    errors: int = 0


@dataclass
class Keyring:
    """Per-replica key state. Mutated only on the event loop; backend I/O runs in `executor`. What happens
    is told to `observer` (keysvc.events); by default only key operations are written, to the audit log."""

    settings: Settings
    backend: Backend
    clock: Clock
    instance_id: str = ""
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "keysvc-io"))
    observer: Observer = field(default_factory=AuditLog)
    _batch: SignBatch = field(default_factory=SignBatch)
    _views: dict[str, KeysetView] = field(default_factory=dict)
    _projected: dict[str, KeysetView] = field(default_factory=dict)  # installed view -> now: a memo, no state
    _signers: dict[str, SigningKey] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------ reads

    def view(self, keyset: str) -> KeysetView | None:
        """The view of a keyset now: the installed one, or, once a lifecycle instant has passed and until
        the scheduled `advance()` installs it, that view projected to now. Pure: installs nothing."""
        current = self._views.get(keyset)
        if current is not None and self.clock.now() >= current.valid_until:
            return self._project(current)
        return current

    def _project(self, current: KeysetView) -> KeysetView:
        projected = self._projected.get(current.settings.name)
        now = self.clock.now()
        if projected is None or projected.records is not current.records or now >= projected.valid_until:
            status = lifecycle.evaluate(current.records, now, lifecycle.policy_of(current.settings))
            projected = self._projected[current.settings.name] = self._build(current.settings, current.records,
                                                                               status, current)
        return projected

    def ready(self) -> bool:
        """True when every keyset has an active key loaded."""
        return all((v := self.view(name)) is not None and v.minter is not None for name in self.settings.keysets)

    async def sign(self, keyset: str, claims: Mapping[str, Any], ttl: int, audit: Audit = None) -> SignedToken:
        """Sign claims with the keyset's active key. With `audit` (who asked), the token's `token.sign`
        audit line is written before the token is returned."""
        view = self.view(keyset)
        if view is None or view.minter is None:
            raise Unavailable("no active signing key is loaded for this keyset yet", retry_after=5)
        if ttl > view.settings.max_token_ttl:
            # exp = iat + ttl with iat <= now: within max_token_ttl, retain_after (>= max_token_ttl + I + S)
            # keeps the key published until the token expires. Beyond it, refuse rather than mint a token
            # verifiers would reject early. Every caller caps ttl first, so this must never happen.
            LOG.error("token refused: exp beyond the keyset's retention guarantee",
                      extra={"keyset": keyset, "ttl": ttl})
            self.observer.notify(ExpBeyondRetention(keyset, ttl))
            raise Unavailable("refusing a token that would outlive its key's retention guarantee", retry_after=60)
        minter = view.minter
        now = int(self.clock.now())
        unsigned = minter.signing_input(claims, now, ttl)
        if audit is not None:  # now, in the request's context: a batch is audited in another's
            audit = request_fields(audit)
        if minter.signer.in_process:
            return await self._batch.sign(minter, unsigned, audit)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            signature = await loop.run_in_executor(self.executor, minter.signer.sign, unsigned.signing_input)
        except BackendError as exc:
            self._observe("sign", exc, started)
            raise Unavailable(f"the key store cannot sign right now: {exc}", retry_after=2) from None
        self._observe("sign", None, started)
        token = minter.finish(unsigned, signature)
        if audit is not None:
            audit_signed([(audit, token)])
        return token

    def _observe(self, operation: str, error: BaseException | None, started: float) -> None:
        self.observer.notify(BackendOperation(operation, error, time.perf_counter() - started))

    # --------------------------------------------------------------------------- installing views

    def _build(self, ks: KeysetSettings, records: tuple[KeyRecord, ...], status: KeysetStatus,
               previous: KeysetView | None) -> KeysetView:
        """The view of a keyset for a status (pure but for reading the signer cache); the previous view's
        JWKS document and minter are reused when they are still right."""
        kids = tuple(r.kid for r in status.published)
        reuse = previous is not None and previous.document.kids == kids
        document = previous.document if reuse and previous is not None else jwks.build(status.published)
        minter = None
        if status.active is not None and (signer := self._signers.get(status.active.kid)) is not None:
            same = previous is not None and previous.minter is not None and previous.minter.signer is signer
            minter = previous.minter if same and previous is not None else Minter(signer, ks.issuer)
        return KeysetView(ks, records, status, document, minter, status.next_change)

    def _install(self, ks: KeysetSettings, records: tuple[KeyRecord, ...], status: KeysetStatus | None = None,
                 ) -> KeysetView:
        """Build and install the view of a keyset; tell JwksChanged when its JWKS differs."""
        if status is None:
            status = lifecycle.evaluate(records, self.clock.now(), lifecycle.policy_of(ks))
        return self._put(self._build(ks, records, status, self._views.get(ks.name)))

    def _put(self, view: KeysetView) -> KeysetView:
        name = view.settings.name
        previous = self._views.get(name)
        self._views[name] = view
        self._projected.pop(name, None)
        if previous is None or previous.document.etag != view.document.etag:
            LOG.info("jwks changed", extra={"keyset": name, "kids": list(view.document.kids),
                                            "etag": view.document.etag})
            self.observer.notify(JwksChanged(view))
        return view

    def advance(self) -> None:
        """Install the views whose lifecycle instant has passed, from the records already loaded (no I/O):
        the scheduled recompute just after each instant, so JwksChanged is told even when the backend is down."""
        now = self.clock.now()
        for view in list(self._views.values()):
            if now >= view.valid_until:
                self._put(self._project(view))  # the view reads already served, not a second evaluation

    # ----------------------------------------------------------------------------------- refresh

    def _sync(self, ks: KeysetSettings) -> tuple[ReconcileReport, KeysetStatus, dict[str, SigningKey]]:
        """Blocking: reconcile, evaluate the lifecycle once, and load the signers of the keys that sign now
        or next (once per kid)."""
        # the first sync of a keyset in this process also repairs what a crash left (orphans, temp files)
        first = ks.name not in self._views
        report = operations.reconcile(self.backend, ks, self.clock.now, self.instance_id, repair=first,
                                      observer=self.observer)
        status = lifecycle.evaluate(report.records, self.clock.now(), lifecycle.policy_of(ks))
        loaded = {}
        for key in status.keys:
            kid = key.record.kid
            if key.state in SIGNABLE and kid not in self._signers:
                loaded[kid] = self.backend.signer(key.record)
        return report, status, loaded

    async def refresh(self, keyset: str) -> KeysetView | None:
        """Reconcile one keyset with the backend and install the fresh view. Never raises: on failure the
        last-known view keeps serving (advanced past any lifecycle instant) and the health records the error."""
        ks = self.settings.keysets[keyset]
        health = self.health.setdefault(keyset, Health())
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            report, status, signers = await loop.run_in_executor(self.executor, self._sync, ks)
        except (KeysvcError, OSError) as exc:
            self._observe("sync", exc, started)
            health.ok, health.errors = False, health.errors + 1
            health.last_error = type(exc).__name__
            LOG.warning("backend sync failed", extra={"keyset": keyset, "error": str(exc)[:300]})
            self.observer.notify(Reconciled(keyset, None, exc))
            current = self._views.get(keyset)
            if current is not None and self.clock.now() >= current.valid_until:
                current = self._put(self._project(current))
            return current
        self._observe("sync", None, started)
        self._signers.update(signers)
        dead = {r.kid for r in report.records if r.destroyed_at is not None or r.revoked_at is not None}
        for kid in dead & self._signers.keys():
            del self._signers[kid]  # revoked or destroyed: drop our copy of the private key too
        health.ok, health.last_sync, health.last_error = True, self.clock.now(), ""
        self.observer.notify(Reconciled(keyset, report, None))
        return self._install(ks, tuple(report.records), status)

    async def refresh_all(self) -> None:
        """Refresh every keyset (concurrently)."""
        await asyncio.gather(*(self.refresh(name) for name in self.settings.keysets))

    def next_change(self) -> float:
        """The earliest lifecycle instant across keysets (for the scheduler)."""
        return min((v.valid_until for v in self._views.values()), default=math.inf)

    # ------------------------------------------------------------------------------ the write API

    async def rotate(self, keyset: str, actor: str, *, force: bool = False) -> KeyRecord:
        """Emergency rotation: promote the keyset's pending key now (lifecycle.promote's rules), then create
        the next one. `actor` is `client:<name>` or `cli:<user>`. Returns the newly active record."""
        ks = self._keyset(keyset)
        await self._loaded(keyset)
        record = await self._write(lambda: operations.rotate(self.backend, ks, self.clock.now, actor, force=force,
                                                             observer=self.observer))
        await self.refresh(keyset)
        return record

    async def revoke(self, kid: str, actor: str, *, keysets: Iterable[str] | None = None) -> KeyRecord:
        """Revoke a key at once (promoting the pending key if it was the active one). The key is looked for
        in `keysets` (default: every keyset); a kid outside them is NotFound, as an unknown one is."""
        names = list(self.settings.keysets) if keysets is None else [n for n in keysets if n in self.settings.keysets]
        for name in names:
            await self._loaded(name)
        searched = {name: self.settings.keysets[name] for name in names}
        record = await self._write(lambda: operations.revoke(self.backend, searched, kid, self.clock.now, actor,
                                                             observer=self.observer))
        await self.refresh(record.keyset)
        return record

    async def import_key(self, keyset: str, pem: bytes, actor: str) -> KeyRecord:
        """Adopt an existing private key as the keyset's next key (it activates `publish_ahead` from now)."""
        ks = self._keyset(keyset)
        await self._loaded(keyset)
        record = await self._write(lambda: operations.import_key(self.backend, ks, pem, self.clock.now, actor,
                                                                 observer=self.observer))
        await self.refresh(keyset)
        return record

    def _keyset(self, name: str) -> KeysetSettings:
        ks = self.settings.keysets.get(name)
        if ks is None:
            raise NotFound("no such keyset")
        return ks

    async def _loaded(self, keyset: str) -> None:
        """Refresh a keyset this keyring has never loaded (a CLI's keyring), so every write starts from the
        same state: reconciled, crash leftovers repaired. A serving replica has loaded every keyset."""
        if keyset not in self._views:
            await self.refresh(keyset)

    async def _write(self, fn: Callable[[], T]) -> T:
        """Run a blocking lifecycle write in the I/O pool, mapping backend failures to 503."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # the caller's context goes along, so lines logged in the thread carry the request id
            result = await loop.run_in_executor(self.executor, contextvars.copy_context().run, fn)
        except BackendUnavailable as exc:
            self._observe("write", exc, started)
            raise Unavailable(f"the key store is unavailable: {exc}", retry_after=5) from None
        except BackendError as exc:
            self._observe("write", exc, started)
            raise Unavailable(f"the key store failed: {exc}", retry_after=30) from None
        except KeysvcError as exc:
            self._observe("write", exc, started)
            raise
        self._observe("write", None, started)
        return result

    def close(self) -> None:
        """Stop the I/O pool and close the backend."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.backend.close()
