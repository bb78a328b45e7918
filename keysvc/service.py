"""One replica's parts, wired: backend, keyring, metrics, both ASGI apps, the schedule, the optional S3
mirror and canary. `build_service` builds them (no I/O), `Service.start` loads keys and starts the
schedule, `Service.close` releases everything that was built. The listeners are keysvc.serve's."""

from __future__ import annotations

import functools
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keysvc import __version__
from keysvc.backends.registry import open_backend
from keysvc.clock import Clock, SystemClock
from keysvc.config import Settings
from keysvc.http.context import RouteSource
from keysvc.http.internal import build_internal_app
from keysvc.http.public import PublicApp
from keysvc.keyring import Keyring
from keysvc.logs import AUDIT, LOG
from keysvc.metrics import Metrics

if TYPE_CHECKING:  # the mirror loads boto3: imported only when configured
    from keysvc.mirror_hook import MirrorSync

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

    def _schedule_next_change(self) -> None:
        """A one-off refresh just after the next activation/removal, so writes that follow an instant
        (the next pending key, destroying a retired key) happen without waiting for the interval."""
        if self.scheduler is None:
            return
        at = self.keyring.next_change()
        if at == float("inf"):
            return
        when = datetime.fromtimestamp(max(at, time.time()) + SCHEDULE_SLACK, UTC)
        self.scheduler.add_job(self._tick, "date", run_date=when, id="next-change", replace_existing=True,
                               misfire_grace_time=None)

    def close(self) -> None:
        """Stop the schedule, then release what was built: the mirror's writer and S3 client, the
        keyring's I/O pool and backend, the audit handler counting key events."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self.mirror is not None:
            self.mirror.close()
        self.keyring.close()
        AUDIT.removeHandler(self.metrics.key_event_counter)


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
    keyring = Keyring(settings, backend, clock or SystemClock(), ident, ThreadPoolExecutor(workers, "keysvc-io"))
    metrics = Metrics()
    metrics.build_info.info({"version": __version__, "backend": settings.backend.type})
    metrics.watch(keyring)
    metrics.prime(settings.keysets)
    AUDIT.addHandler(metrics.key_event_counter)
    keyring.on_reconcile.append(_count_reconcile(metrics))
    keyring.on_backend_op.append(metrics.backend_op)
    keyring.on_exp_violation.append(_report_exp_violation(metrics))
    features: list[RouteSource] = []
    if settings.token_exchange is not None:
        from keysvc.exchange.wiring import exchange_routes
        from keysvc.zapier.routes import zapier_routes

        features.append(functools.partial(exchange_routes, settings, keyring, metrics))
        features.append(functools.partial(zapier_routes, settings, keyring, metrics))
    internal_app = build_internal_app(settings, keyring, metrics, features)
    public_app = PublicApp(keyring, metrics)
    mirror = None
    if settings.mirror is not None:
        from keysvc.mirror_hook import attach_mirror

        mirror = attach_mirror(settings, keyring)
    canary = None
    if settings.canary is not None:
        from keysvc.canary import attach

        canary = attach(settings, keyring, metrics)
    return Service(settings, keyring, metrics, public_app, internal_app, canary=canary, mirror=mirror)


def _report_exp_violation(metrics: Metrics) -> Any:
    def hook(keyset: str, ttl: int) -> None:
        metrics.token_exp_beyond_retention.labels(keyset).inc()
        LOG.error("token refused: exp beyond the keyset's retention guarantee", extra={"keyset": keyset, "ttl": ttl})

    return hook


def _count_reconcile(metrics: Metrics) -> Any:
    def hook(keyset: str, report: Any, error: BaseException | None) -> None:
        # backend operations are counted by the keyring's on_backend_op hook, key events by their audit event
        if error is not None:
            metrics.reconcile_errors.labels(keyset).inc()
            return
        if report.lost_races:
            metrics.creation_races_lost.labels(keyset).inc(report.lost_races)

    return hook
