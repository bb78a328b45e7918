"""keysvc's core Prometheus metrics, in one registry per process. An optional part (the partner side, the
canary) defines its own metrics and the service registers them through the seam (keysvc.feature:
`Feature.metrics`), so this module names no feature.

Only `Metrics` writes its metrics: the keyring tells it events (`notify`), the request paths call a method
named for what they answered (`signed`, `sign_refused`, `jwks_answered`, `answered`, `client_rate_limited`).
tests/test_architecture.py fails when any other module names one of its metric objects.

Labels hold only bounded, non-secret values: configured client and keyset names, our own kids, outcomes.
Never a caller-supplied value, a user id or a token. Keyset gauges are computed at scrape time from the
keyring (a custom collector), so they are never stale.

One process per pod serves both listeners (there is no worker option), so a plain registry is exact and
prometheus-client's multiprocess mode is deliberately not used (docs/runbook.md, "Metrics").
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from keysvc.errors import BackendError, BackendUnavailable, KeysvcError, StoreCorrupt
from keysvc.events import KEY_EVENT_KINDS, BackendOperation, Event, ExpBeyondRetention, KeyEvent, Reconciled
from keysvc.lifecycle import State

if TYPE_CHECKING:
    from keysvc.keyring import Keyring

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BACKEND_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# AWS error codes meaning "slow down" (KMS throttles per account and region). Matched on the botocore error
# a backend chained as the cause, so the keyring needs no import of, or change to, a particular backend.
_THROTTLING_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "RequestLimitExceeded",
    "TooManyRequestsException", "LimitExceededException",
})


def backend_outcome(error: BaseException | None) -> str:
    """The bounded `outcome` label of one backend operation: ok | throttled | unavailable | corrupt |
    refused (a lifecycle rule said no, e.g. rotation not yet safe: the store itself is fine) | error."""
    if error is None:
        return "ok"
    if isinstance(error, BackendUnavailable):
        response = getattr(error.__cause__, "response", None)
        code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
        return "throttled" if code in _THROTTLING_CODES else "unavailable"
    if isinstance(error, StoreCorrupt):
        return "corrupt"
    if isinstance(error, KeysvcError) and not isinstance(error, BackendError):
        return "refused"
    return "error"


class Metrics:
    """The metric objects of one process."""

    def __init__(self) -> None:
        # `_created` gauges double the exposition and no rule uses them (process-wide: one process per pod)
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("keysvc_build", "keysvc version and backend", registry=r)
        # the request paths' metrics: incremented on the event loop only (LoopCounter, LoopHistogram)
        self.sign_requests = LoopCounter(
            "keysvc_sign_requests_total", "POST /v1/sign requests", ["client", "keyset", "outcome"], registry=r
        )
        self.sign_latency = LoopHistogram(
            "keysvc_sign_duration_seconds", "Time to sign a token", ["keyset"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens_signed = LoopCounter("keysvc_tokens_signed_total", "Tokens signed", ["keyset", "kid"], registry=r)
        self.token_exp_beyond_retention = Counter(
            "keysvc_token_exp_beyond_retention_total",
            "Tokens refused because their exp would outlive the signing key's retention guarantee (must stay 0)",
            ["keyset"],
            registry=r,
        )
        self.jwks_requests = LoopCounter(
            "keysvc_jwks_requests_total", "JWKS requests", ["keyset", "status"], registry=r
        )
        self.jwks_bytes = LoopCounter(
            "keysvc_jwks_response_bytes_total", "JWKS body bytes served", ["keyset"], registry=r
        )
        self.http_requests = LoopCounter(
            "keysvc_http_requests_total", "HTTP requests", ["listener", "route", "status"], registry=r
        )
        self.backend_ops = Counter(
            "keysvc_backend_operations_total",
            "Backend operations (sync: reconcile + load; sign: remote signature; write: admin rotate/revoke) "
            "by outcome ok|throttled|unavailable|corrupt|error",
            ["operation", "outcome"], registry=r,
        )
        self.backend_latency = Histogram(
            "keysvc_backend_operation_duration_seconds", "Backend operation latency", ["operation"],
            buckets=BACKEND_BUCKETS, registry=r,
        )
        self.key_events = Counter(
            "keysvc_key_events_total", "Key operations audited by this replica (create, activate, destroy, rotate, "
            "revoke, import)", ["keyset", "event"], registry=r
        )
        self.reconcile_errors = Counter(
            "keysvc_reconcile_errors_total", "Failed reconciles (backend unreachable or corrupt)", ["keyset"],
            registry=r,
        )
        self.creation_races_lost = Counter(
            "keysvc_key_creation_races_lost_total", "Key creations lost to another replica", ["keyset"], registry=r
        )
        self.rate_limited = Counter(
            "keysvc_rate_limited_total", "Requests refused by rate limit", ["client"], registry=r
        )
        self._keysets: frozenset[str] = frozenset()  # the configured keysets: key event labels stay bounded

    # What the request paths report, on the event loop. The HTTP layer says what it answered; only this class
    # writes a metric (tests/test_architecture.py: no other module names one of its metric objects).

    def describe(self, version: str, backend: str) -> None:
        """This process's version and backend (keysvc_build_info)."""
        self.build_info.info({"version": version, "backend": backend})

    def answered(self, listener: str, route: str, status: int) -> None:
        """A request answered on `listener` (internal | public); `route` is a bounded name, never a path."""
        self.http_requests.inc((listener, route, str(status)))

    def jwks_answered(self, keyset: str, status: int, body_bytes: int = 0) -> None:
        """A JWKS request (`keyset` is "-" for an unknown one) and the body bytes it sent."""
        self.jwks_requests.inc((keyset, str(status)))
        if body_bytes:
            self.jwks_bytes.inc((keyset,), body_bytes)

    def signed(self, client: str, keyset: str, kid: str, seconds: float) -> None:
        """A /v1/sign request answered with a token signed by `kid`, `seconds` after its body was read."""
        self.sign_latency.observe((keyset,), seconds)
        self.sign_requests.inc((client, keyset, "ok"))
        self.tokens_signed.inc((keyset, kid))

    def sign_refused(self, client: str, keyset: str, code: str) -> None:
        """A /v1/sign request refused with error `code` (`keyset` is "-" when it names no configured one)."""
        self.sign_requests.inc((client, keyset, code))

    def client_rate_limited(self, client: str) -> None:
        """A request refused by its client's rate limit."""
        self.rate_limited.labels(client).inc()

    def watch(self, keyring: Keyring) -> None:
        """Export the keyring's per-keyset state at scrape time."""
        self.registry.register(_KeyringCollector(keyring))

    def prime(self, keysets: Iterable[str]) -> None:
        """Create the series alerts compare against at 0, so the first increment is a visible change."""
        self._keysets = frozenset(keysets)
        for keyset in self._keysets:
            self.token_exp_beyond_retention.labels(keyset)
            self.reconcile_errors.labels(keyset)
            self.creation_races_lost.labels(keyset)
            for event in KEY_EVENT_KINDS:
                self.key_events.labels(keyset, event)
        for operation in ("sync", "sign", "write"):
            self.backend_ops.labels(operation, "ok")
            self.backend_ops.labels(operation, "unavailable")
            self.backend_ops.labels(operation, "throttled")

    def notify(self, event: Event) -> None:
        """Count a keyring event (an observer: keysvc.events). Key events are counted from the same event the
        audit line is written from, whichever path ran the operation, so the metric and the audit trail are
        equal by construction."""
        if isinstance(event, KeyEvent):
            if event.kind in KEY_EVENT_KINDS and event.keyset in self._keysets:
                self.key_events.labels(event.keyset, event.kind).inc()
        elif isinstance(event, BackendOperation):
            self.backend_ops.labels(event.operation, backend_outcome(event.error)).inc()
            self.backend_latency.labels(event.operation).observe(event.seconds)
        elif isinstance(event, Reconciled):
            if event.error is not None:
                self.reconcile_errors.labels(event.keyset).inc()
            elif event.report is not None and event.report.lost_races:
                self.creation_races_lost.labels(event.keyset).inc(event.report.lost_races)
        elif isinstance(event, ExpBeyondRetention):
            self.token_exp_beyond_retention.labels(event.keyset).inc()


class LoopCounter(Collector):
    """A labelled counter of the request paths, incremented on the event loop thread only.

    prometheus_client's Counter takes a lock and makes four calls per increment (~0.8 us in a loop, more
    between requests as caches go cold; four increments per signed token). Here an increment is one dict
    update: no lock is needed because every increment and every scrape (the /metrics route) runs on the
    event loop. Exposed exactly like a Counter of the same name.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *,
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation = name.removesuffix("_total"), documentation
        self._labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}  # label values -> total; bounded like the labels
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        """Add `amount` to the series of `labels` (one value per label name, in order)."""
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class LoopHistogram(Collector):
    """A labelled histogram of the request paths, observed on the event loop thread only (see LoopCounter).
    Buckets as prometheus_client's Histogram: a value lands in the first bucket whose bound is >= it."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation = name, documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in (*self._bounds, math.inf)]  # type: ignore[no-untyped-call]
        self.series: dict[tuple[str, ...], list[float]] = {}  # label values -> [count per bucket..., +Inf, sum]
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        """Record one observation in the series of `labels`."""
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self._bounds) + 2)
        series[bisect_left(self._bounds, value)] += 1
        series[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for labels, series in list(self.series.items()):
            family.add_metric(labels, list(zip(self._les, accumulate(series[:-1]), strict=True)), sum_value=series[-1])
        yield family


class _KeyringCollector(Collector):
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def collect(self) -> Iterator[Metric]:
        now = self.keyring.clock.now()
        age = GaugeMetricFamily(
            "keysvc_active_key_age_seconds", "Age of the active key since activation", labels=["keyset"]
        )
        until = GaugeMetricFamily(
            "keysvc_next_activation_seconds", "Seconds until the pending key activates", labels=["keyset"]
        )
        states = GaugeMetricFamily("keysvc_keys", "Keys by state", labels=["keyset", "state"])
        pending = GaugeMetricFamily(
            "keysvc_pending_key_present", "1 when a pending key is published", labels=["keyset"]
        )
        sync = GaugeMetricFamily(
            "keysvc_backend_last_sync_timestamp_seconds", "Last successful backend sync", labels=["keyset"]
        )
        up = GaugeMetricFamily("keysvc_backend_up", "1 when the last backend sync succeeded", labels=["keyset"])
        ready = GaugeMetricFamily("keysvc_keyset_ready", "1 when an active key is loaded", labels=["keyset"])
        period = GaugeMetricFamily("keysvc_rotation_period_seconds", "Configured rotation period", labels=["keyset"])
        etag = InfoMetricFamily("keysvc_jwks", "The JWKS currently served", labels=["keyset"])
        for name in self.keyring.settings.keysets:
            view = self.keyring.view(name)
            health = self.keyring.health.get(name)
            sync.add_metric([name], health.last_sync if health else 0.0)
            up.add_metric([name], 1.0 if health and health.ok else 0.0)
            period.add_metric([name], self.keyring.settings.keysets[name].rotation_period)
            if view is None:
                ready.add_metric([name], 0.0)
                continue
            ready.add_metric([name], 1.0 if view.minter is not None else 0.0)
            counts = {s: 0 for s in State}
            for key in view.status.keys:
                counts[key.state] += 1
            for state, n in counts.items():
                states.add_metric([name, state.value], n)
            if view.status.active is not None:
                age.add_metric([name], now - view.status.active.activates_at)
            upcoming = [k.record.activates_at for k in view.status.keys if k.state is State.PENDING]
            pending.add_metric([name], 1.0 if upcoming else 0.0)
            if upcoming:
                until.add_metric([name], min(upcoming) - now)
            etag.add_metric([name], {"etag": view.document.etag.strip('"'), "keys": str(len(view.document.kids))})
        yield from (age, until, states, pending, sync, up, ready, period, etag)
