"""One replica's parts, wired: backend, keyring, its observers (audit log, metrics), both ASGI apps, the
schedule, and the optional parts, each a `Feature` (keysvc.feature: the S3 mirror, the partner side, the
canary), built by the functions of FEATURES when configured. `build_service` builds them (no I/O) and
keeps what it opened in `Resources`, closed in reverse order if building fails halfway; `Service.start`
loads keys and starts the schedule; `Service.aclose` stops the schedule and closes everything opened, last
first, every close tried. The listeners are keysvc.serve's."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keysvc import __version__
from keysvc.audit import AuditLog
from keysvc.backends.registry import open_backend
from keysvc.clock import Clock, SystemClock
from keysvc.config import Settings
from keysvc.events import Event, Observer, Observers
from keysvc.feature import Feature, Resources, sync_hook
from keysvc.http.internal import build_internal_app
from keysvc.http.public import PublicApp
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics

SCHEDULE_SLACK = 0.05  # run just after a lifecycle instant, never just before it


@dataclass
class Service:
    """Everything one replica runs."""

    settings: Settings
    keyring: Keyring
    metrics: Metrics
    public_app: Any
    internal_app: Any
    features: list[Feature]
    resources: Resources
    scheduler: AsyncIOScheduler | None = None

    def feature(self, name: str) -> Feature | None:
        """The feature called `name` when it is configured."""
        return next((f for f in self.features if f.name == name), None)

    async def start(self) -> None:
        """Load keys (creating the first ones if needed) and start the schedule."""
        await self.keyring.refresh_all()
        for feature in self.features:
            if feature.start is not None:
                await feature.start()
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self._tick, "interval", seconds=self.settings.backend.refresh_interval, id="refresh",
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )
        for job in (job for feature in self.features for job in feature.jobs):
            # first run one interval after start: the listeners are not serving yet at this point
            scheduler.add_job(
                job.run, "interval", seconds=job.interval, id=job.name,
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
        """Stop the schedule, then close everything that was opened, last first (the features, then the
        keyring's I/O pool and backend); a failing close is logged and the rest still close."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        await self.resources.aclose()


class FeatureObservers:
    """The features' keyring observers, told after the audit log and metrics (the keyring is built before
    the features that need it, so they join here once built)."""

    def __init__(self) -> None:
        self.observers: list[Observer] = []

    def __repr__(self) -> str:
        return f"FeatureObservers({', '.join(type(o).__name__ for o in self.observers)})"

    def notify(self, event: Event) -> None:
        """Tell each feature's observer, in order."""
        for observer in self.observers:
            observer.notify(event)


def instance_id() -> str:
    """Who this replica is, for `created_by` and logs (pod name on Kubernetes)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def _mirror(settings: Settings, keyring: Keyring) -> Feature:
    from keysvc.mirror.sync import mirror_feature  # boto3: loaded only when configured

    return mirror_feature(settings)


def _partner(settings: Settings, keyring: Keyring) -> Feature:
    from keysvc.partner.wiring import partner_feature  # aiohttp: loaded only when configured

    return partner_feature(settings, keyring)


def _canary(settings: Settings, keyring: Keyring) -> Feature:
    from keysvc.canary import canary_feature

    return canary_feature(settings, keyring)


# the optional parts, in the order they are built (and told keyring events); closed in reverse
FEATURES: tuple[tuple[str, Callable[[Settings, Keyring], Feature]], ...] = (
    ("mirror", _mirror), ("token_exchange", _partner), ("canary", _canary),
)


def build_service(settings: Settings, clock: Clock | None = None) -> Service:
    """Wire settings, backend, keyring, metrics, the configured features and both apps (no I/O yet). If
    building fails halfway, what was already built is closed (last first) before the error propagates."""
    resources = Resources()
    try:
        return _build(settings, clock, resources)
    except BaseException:
        resources.close_from_sync()
        raise


def _build(settings: Settings, clock: Clock | None, resources: Resources) -> Service:
    ident = instance_id()
    backend = open_backend(settings.backend, ident)
    resources.push("backend", sync_hook(backend.close))
    # one I/O thread per pooled backend connection (KMS: botocore's pool), so a burst of remote signatures
    # queues in the pool instead of waiting on connections
    workers = int(getattr(backend, "max_workers", 8))
    metrics = Metrics()
    metrics.describe(__version__, settings.backend.type)
    metrics.prime(settings.keysets)
    late = FeatureObservers()
    observers: list[Observer] = [AuditLog(), metrics, late]  # the audit line first: it precedes the answer
    executor = ThreadPoolExecutor(workers, "keysvc-io")
    resources.push("keyring I/O pool", sync_hook(lambda: executor.shutdown(wait=False, cancel_futures=True)))
    keyring = Keyring(settings, backend, clock or SystemClock(), ident, executor, Observers(*observers))
    metrics.watch(keyring)
    features: list[Feature] = []
    for section, build in FEATURES:
        if getattr(settings, section) is None:
            continue
        feature = build(settings, keyring)
        if feature.close is not None:
            resources.push(feature.name, feature.close)
        features.append(feature)
        for collector in feature.metrics:
            metrics.registry.register(collector)
        if feature.observer is not None:
            late.observers.append(feature.observer)
    internal_app = build_internal_app(settings, keyring, metrics, features)
    public_app = PublicApp(keyring, metrics, [f.public for f in features if f.public is not None])
    return Service(settings, keyring, metrics, public_app, internal_app, features, resources)
