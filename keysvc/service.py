"""One replica's parts, wired: backend, keyring, its observers (audit log, metrics, the optional S3
mirror), both ASGI apps, the partner side (one token exchanger shared by the exchange route and the
gateway), the schedule and the optional canary. `build_service` builds them (no I/O), `Service.start`
loads keys and starts the schedule, `Service.aclose` releases everything that was built. The listeners
are keysvc.serve's."""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keysvc import __version__
from keysvc.audit import AuditLog
from keysvc.backends.registry import open_backend
from keysvc.clock import Clock, SystemClock
from keysvc.config import Settings
from keysvc.events import Observer, Observers
from keysvc.http.context import RouteSource
from keysvc.http.internal import build_internal_app
from keysvc.http.public import PublicApp
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics

if TYPE_CHECKING:  # the mirror loads boto3, the partner side httpx: imported only when configured
    from keysvc.mirror.sync import MirrorSync
    from keysvc.partner.wiring import Partner

SCHEDULE_SLACK = 0.05  # run just after a lifecycle instant, never just before it


@dataclass
class Service:
    """Everything one replica runs."""

    settings: Settings
    keyring: Keyring
    metrics: Metrics
    public_app: Any
    internal_app: Any
    scheduler: AsyncIOScheduler | None = None
    canary: Any = None  # keysvc.canary.Canary.run when `canary` is configured
    mirror: MirrorSync | None = None  # when `mirror` is configured
    partner: Partner | None = None  # when `token_exchange` is configured

    async def start(self) -> None:
        """Load keys (creating the first ones if needed) and start the schedule."""
        await self.keyring.refresh_all()
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self._tick, "interval", seconds=self.settings.backend.refresh_interval, id="refresh",
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )
        if self.canary is not None and self.settings.canary is not None:
            # first run one interval after start: the listeners are not serving yet at this point
            scheduler.add_job(
                self.canary, "interval", seconds=self.settings.canary.interval, id="canary",
                max_instances=1, coalesce=True, misfire_grace_time=None,
            )
        scheduler.start()
        self.scheduler = scheduler
        self._schedule_next_change()

    async def _tick(self) -> None:
        await self.keyring.refresh_all()
        self._schedule_next_change()

    async def _next_change(self) -> None:
        self.keyring.advance()  # install the views the instant changed, even if the backend is down now
        await self._tick()

    def _schedule_next_change(self) -> None:
        """Just after the next activation/removal: install the recomputed views, then refresh, so writes that
        follow an instant (the next pending key, destroying a retired key) happen without waiting for the
        interval."""
        if self.scheduler is None:
            return
        at = self.keyring.next_change()
        if at == float("inf"):
            return
        when = datetime.fromtimestamp(max(at, time.time()) + SCHEDULE_SLACK, UTC)
        self.scheduler.add_job(self._next_change, "date", run_date=when, id="next-change", replace_existing=True,
                               misfire_grace_time=None)

    async def aclose(self) -> None:
        """Stop the schedule, then release what was built: the partner side's HTTP client, the mirror's
        writer and S3 client, the keyring's I/O pool and backend."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self.partner is not None:
            await self.partner.aclose()
        if self.mirror is not None:
            self.mirror.close()
        self.keyring.close()


def instance_id() -> str:
    """Who this replica is, for `created_by` and logs (pod name on Kubernetes)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def build_service(settings: Settings, clock: Clock | None = None) -> Service:
    """Wire settings, backend, keyring, metrics and both apps (no I/O yet)."""
    ident = instance_id()
    backend = open_backend(settings.backend, ident)
    # one I/O thread per pooled backend connection (KMS: botocore's pool), so a burst of remote signatures
    # queues in the pool instead of waiting on connections
    workers = int(getattr(backend, "max_workers", 8))
    metrics = Metrics()
    metrics.build_info.info({"version": __version__, "backend": settings.backend.type})
    metrics.prime(settings.keysets)
    observers: list[Observer] = [AuditLog(), metrics]  # the audit line first: it precedes the answer
    mirror = None
    if settings.mirror is not None:
        from keysvc.mirror.sync import build_mirror

        mirror = build_mirror(settings)
        observers.append(mirror)
    keyring = Keyring(settings, backend, clock or SystemClock(), ident, ThreadPoolExecutor(workers, "keysvc-io"),
                      Observers(*observers))
    metrics.watch(keyring)
    features: list[RouteSource] = []
    partner = None
    if settings.token_exchange is not None:
        from keysvc.partner.wiring import build_partner

        partner = build_partner(settings, keyring, metrics)
        features.append(partner.routes)
    internal_app = build_internal_app(settings, keyring, metrics, features)
    public_app = PublicApp(keyring, metrics)
    canary = None
    if settings.canary is not None:
        from keysvc.canary import attach

        canary = attach(settings, keyring, metrics)
    return Service(settings, keyring, metrics, public_app, internal_app, canary=canary, mirror=mirror, partner=partner)

