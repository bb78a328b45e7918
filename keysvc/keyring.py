"""The in-memory view a replica serves from, and the loop that keeps it in step with the backend.

Reads (JWKS, the active signer) never touch the backend: they use the last records loaded. The view is
recomputed (pure, cheap) when the clock passes the next lifecycle instant, so a key activates or leaves
the JWKS at exactly its scheduled time on every replica, even between refreshes. When the backend is
unreachable, the last-known view keeps serving; only its health changes.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from keysvc import jwks, lifecycle, operations
from keysvc.backends.base import Backend, KeyRecord, Signer
from keysvc.batching import Audit, SignBatch, audit_signed
from keysvc.clock import Clock
from keysvc.config import KeysetSettings, Settings
from keysvc.errors import BackendError, BackendUnavailable, KeysvcError, Unavailable
from keysvc.lifecycle import KeysetStatus, State
from keysvc.logs import LOG, request_fields
from keysvc.tokens import Minter, Token

SIGNABLE = frozenset({State.PENDING, State.ACTIVE})


@dataclass(frozen=True)
class KeysetView:
    """Everything a request needs about one keyset, valid until `valid_until`."""

    settings: KeysetSettings
    records: tuple[KeyRecord, ...]
    status: KeysetStatus
    document: jwks.JwksDocument
    minter: Minter | None
    valid_until: float


@dataclass
class Health:
    """Backend health of one keyset, for metrics and alerts (not for readiness)."""

    last_sync: float = 0.0
    ok: bool = False
    last_error: str = ""
    errors: int = 0


@dataclass
class Keyring:
    """Per-replica key state. Mutated only on the event loop; backend I/O runs in `executor`."""

    settings: Settings
    backend: Backend
    clock: Clock
    instance_id: str = ""
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "keysvc-io"))
    on_change: list[Callable[[KeysetView], Any]] = field(default_factory=list)
    on_reconcile: list[Callable[[str, operations.ReconcileReport | None, BaseException | None], Any]] = field(
        default_factory=list
    )
    # metrics: (operation "sync" | "sign" | "write", the error or None, seconds)
    on_backend_op: list[Callable[[str, BaseException | None, float], Any]] = field(default_factory=list)
    on_exp_violation: list[Callable[[str, int], Any]] = field(default_factory=list)
    _batch: SignBatch = field(default_factory=SignBatch)
    _views: dict[str, KeysetView] = field(default_factory=dict)
    _signers: dict[str, Signer] = field(default_factory=dict)
    health: dict[str, Health] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------ reads

    def view(self, keyset: str) -> KeysetView | None:
        """The current view of a keyset (recomputed if a lifecycle instant has passed)."""
        current = self._views.get(keyset)
        if current is not None and self.clock.now() >= current.valid_until:
            current = self._install(current.settings, list(current.records))
        return current

    def ready(self) -> bool:
        """True when every keyset has an active key loaded."""
        return all((v := self.view(name)) is not None and v.minter is not None for name in self.settings.keysets)

    async def sign(self, keyset: str, claims: Mapping[str, Any], ttl: int, audit: Audit = None) -> Token:
        """Sign claims with the keyset's active key. With `audit` (who asked), the token's `token.sign`
        audit line is written before the token is returned."""
        view = self.view(keyset)
        if view is None or view.minter is None:
            raise Unavailable("no active signing key is loaded for this keyset yet", retry_after=5)
        if ttl > view.settings.max_token_ttl:
            # exp = iat + ttl with iat <= now: within max_token_ttl, retain_after (>= max_token_ttl + I + S)
            # keeps the key published until the token expires. Beyond it, refuse rather than mint a token
            # verifiers would reject early. Every caller caps ttl first, so this must never happen.
            for violation in self.on_exp_violation:
                violation(keyset, ttl)
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
        seconds = time.perf_counter() - started
        for hook in self.on_backend_op:
            hook(operation, error, seconds)

    # ----------------------------------------------------------------------------------- writes

    def _install(self, ks: KeysetSettings, records: list[KeyRecord]) -> KeysetView:
        """Compute and store the view of a keyset from records (pure but for the signer cache)."""
        now = self.clock.now()
        status = lifecycle.evaluate(records, now, operations.policy_of(ks))
        previous = self._views.get(ks.name)
        kids = tuple(r.kid for r in status.published)
        reuse = previous is not None and previous.document.kids == kids
        document = previous.document if reuse and previous is not None else jwks.build(status.published)
        minter = None
        if status.active is not None and (signer := self._signers.get(status.active.kid)) is not None:
            same = previous is not None and previous.minter is not None and previous.minter.signer is signer
            minter = previous.minter if same and previous is not None else Minter(signer, ks.issuer)
        view = KeysetView(ks, tuple(records), status, document, minter, status.next_change)
        self._views[ks.name] = view
        if previous is None or previous.document.etag != document.etag:
            LOG.info("jwks changed", extra={"keyset": ks.name, "kids": list(kids), "etag": document.etag})
            for callback in self.on_change:
                callback(view)
        return view

    def _load_signers(self, ks: KeysetSettings, records: list[KeyRecord]) -> dict[str, Signer]:
        """Blocking: signers of the keys that sign now or next (loaded once per kid)."""
        status = lifecycle.evaluate(records, self.clock.now(), operations.policy_of(ks))
        loaded = {}
        for key in status.keys:
            kid = key.record.kid
            if key.state in SIGNABLE and kid not in self._signers:
                loaded[kid] = self.backend.signer(key.record)
        return loaded

    def _sync(self, ks: KeysetSettings) -> tuple[operations.ReconcileReport, dict[str, Signer]]:
        # the first sync of a keyset in this process also repairs what a crash left (orphans, temp files)
        first = ks.name not in self._views
        report = operations.reconcile(self.backend, ks, self.clock.now, self.instance_id, repair=first)
        return report, self._load_signers(ks, report.records)

    async def refresh(self, keyset: str) -> KeysetView | None:
        """Reconcile one keyset with the backend and install the fresh view. Never raises: on failure the
        last-known view keeps serving and the health records the error."""
        ks = self.settings.keysets[keyset]
        health = self.health.setdefault(keyset, Health())
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            report, signers = await loop.run_in_executor(self.executor, self._sync, ks)
        except (KeysvcError, OSError) as exc:
            self._observe("sync", exc, started)
            health.ok, health.errors = False, health.errors + 1
            health.last_error = type(exc).__name__
            LOG.warning("backend sync failed", extra={"keyset": keyset, "error": str(exc)[:300]})
            for hook in self.on_reconcile:
                hook(keyset, None, exc)
            return self._views.get(keyset)
        self._observe("sync", None, started)
        self._signers.update(signers)
        dead = {r.kid for r in report.records if r.destroyed_at is not None or r.revoked_at is not None}
        for kid in dead & self._signers.keys():
            del self._signers[kid]  # revoked or destroyed: drop our copy of the private key too
        health.ok, health.last_sync, health.last_error = True, self.clock.now(), ""
        for hook in self.on_reconcile:
            hook(keyset, report, None)
        return self._install(ks, report.records)

    async def refresh_all(self) -> None:
        """Refresh every keyset (concurrently)."""
        await asyncio.gather(*(self.refresh(name) for name in self.settings.keysets))

    def next_change(self) -> float:
        """The earliest lifecycle instant across keysets (for the scheduler)."""
        return min((v.valid_until for v in self._views.values()), default=math.inf)

    async def run_blocking(self, fn: Callable[[], Any], operation: str = "write") -> Any:
        """Run a blocking backend operation in the I/O pool, mapping backend failures to 503."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # the caller's context goes along, so lines logged in the thread carry the request id
            result = await loop.run_in_executor(self.executor, contextvars.copy_context().run, fn)
        except BackendUnavailable as exc:
            self._observe(operation, exc, started)
            raise Unavailable(f"the key store is unavailable: {exc}", retry_after=5) from None
        except BackendError as exc:
            self._observe(operation, exc, started)
            raise Unavailable(f"the key store failed: {exc}", retry_after=30) from None
        except KeysvcError as exc:
            self._observe(operation, exc, started)
            raise
        self._observe(operation, None, started)
        return result

    def close(self) -> None:
        """Stop the I/O pool and close the backend."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.backend.close()
