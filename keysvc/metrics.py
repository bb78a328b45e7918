"""Every Prometheus metric of keysvc, defined in one place, in one registry per process.

Labels hold only bounded, non-secret values: configured client and keyset names, our own kids, outcomes.
Never a caller-supplied value, a user id or a token. Keyset gauges are computed at scrape time from the
keyring (a custom collector), so they are never stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from keysvc.lifecycle import State

if TYPE_CHECKING:
    from keysvc.keyring import Keyring

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """The metric objects of one process."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("keysvc_build", "keysvc version and backend", registry=r)
        self.sign_requests = Counter(
            "keysvc_sign_requests_total", "POST /v1/sign requests", ["client", "keyset", "outcome"], registry=r
        )
        self.sign_latency = Histogram(
            "keysvc_sign_duration_seconds", "Time to sign a token", ["keyset"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens_signed = Counter("keysvc_tokens_signed_total", "Tokens signed", ["keyset", "kid"], registry=r)
        self.token_exp_beyond_retention = Counter(
            "keysvc_token_exp_beyond_retention_total",
            "Tokens whose exp outlives the signing key's retention guarantee (must stay 0)",
            ["keyset"],
            registry=r,
        )
        self.jwks_requests = Counter(
            "keysvc_jwks_requests_total", "JWKS requests", ["keyset", "status"], registry=r
        )
        self.jwks_bytes = Counter("keysvc_jwks_response_bytes_total", "JWKS body bytes served", ["keyset"], registry=r)
        self.http_requests = Counter(
            "keysvc_http_requests_total", "HTTP requests", ["listener", "route", "status"], registry=r
        )
        self.backend_ops = Counter(
            "keysvc_backend_operations_total", "Backend operations", ["operation", "outcome"], registry=r
        )
        self.backend_latency = Histogram(
            "keysvc_backend_operation_duration_seconds", "Backend operation latency", ["operation"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.key_events = Counter(
            "keysvc_key_events_total", "Key lifecycle writes", ["keyset", "event"], registry=r
        )
        self.reconcile_errors = Counter(
            "keysvc_reconcile_errors_total", "Failed reconciles (backend unreachable or corrupt)", ["keyset"], registry=r
        )
        self.creation_races_lost = Counter(
            "keysvc_key_creation_races_lost_total", "Key creations lost to another replica", ["keyset"], registry=r
        )
        self.rate_limited = Counter("keysvc_rate_limited_total", "Requests refused by rate limit", ["client"], registry=r)
        self.exchange_calls = Counter(
            "keysvc_token_exchange_upstream_total", "Token-exchange upstream calls", ["outcome"], registry=r
        )
        self.exchange_latency = Histogram(
            "keysvc_token_exchange_upstream_duration_seconds", "Token-exchange upstream latency",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.exchange_cache = Counter(
            "keysvc_token_exchange_cache_total", "Token-exchange access-token cache lookups", ["result"], registry=r
        )
        self.canary_success = Gauge(
            "keysvc_canary_success", "1 when the last canary verification through the public JWKS URL passed",
            ["keyset"], registry=r,
        )
        self.canary_latency = Gauge(
            "keysvc_canary_duration_seconds", "Duration of the last canary", ["keyset"], registry=r
        )
        self.canary_runs = Counter("keysvc_canary_runs_total", "Canary runs", ["keyset", "outcome"], registry=r)
        self.canary_etag = Info("keysvc_canary_observed", "ETag the canary saw at the public URL", ["keyset"], registry=r)

    def watch(self, keyring: Keyring) -> None:
        """Export the keyring's per-keyset state at scrape time."""
        self.registry.register(_KeyringCollector(keyring))


class _KeyringCollector(Collector):
    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    def collect(self) -> Iterator[Metric]:
        now = self.keyring.clock.now()
        age = GaugeMetricFamily("keysvc_active_key_age_seconds", "Age of the active key since activation", labels=["keyset"])
        until = GaugeMetricFamily(
            "keysvc_next_activation_seconds", "Seconds until the pending key activates", labels=["keyset"]
        )
        states = GaugeMetricFamily("keysvc_keys", "Keys by state", labels=["keyset", "state"])
        pending = GaugeMetricFamily("keysvc_pending_key_present", "1 when a pending key is published", labels=["keyset"])
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
