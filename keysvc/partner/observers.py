"""The partner side's Prometheus metrics, defined here and registered through the seam (Feature.metrics):
one object is the token exchange's observer (upstream calls, the access-token cache), the Partner API's
(calls by endpoint, the budget) and the gateway's (action-run answers).

Labels hold only bounded, non-secret values: outcomes, cache results, our fixed endpoint names (never a
path), run statuses.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from keysvc.metrics import BACKEND_BUCKETS, LATENCY_BUCKETS
from keysvc.partner.triggers.answers import RECONNECT_REASONS, STATUSES

INBOX_STATUSES = (*STATUSES, "paused_authentication", "other")
# a message's lag, creation at Zapier to the receiver's 2xx: seconds normally, up to the lease and sweep
# intervals (minutes) when a notification was missed or an attempt failed, hours when the receiver is down
LAG_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)


class PartnerMetrics:
    """The partner side's metrics (an ExchangeObserver, an ApiObserver and the gateway's `on_run`)."""

    def __init__(self) -> None:
        self.exchange_calls = Counter(
            "keysvc_token_exchange_upstream_total", "Token-exchange upstream calls", ["outcome"], registry=None
        )
        self.exchange_latency = Histogram(
            "keysvc_token_exchange_upstream_duration_seconds", "Token-exchange upstream latency",
            buckets=LATENCY_BUCKETS, registry=None,
        )
        self.exchange_cache = Counter(
            "keysvc_token_exchange_cache_total", "Token-exchange access-token cache lookups", ["result"], registry=None
        )
        # `endpoint` is our fixed name of a Partner API call, never a path
        self.zapier_calls = Counter(
            "keysvc_zapier_api_requests_total", "Partner API requests by endpoint (apps, authentications, actions, "
            "inputs, choices, run_create, run_get) and outcome", ["endpoint", "outcome"], registry=None,
        )
        self.zapier_latency = Histogram(
            "keysvc_zapier_api_duration_seconds", "Partner API request latency", ["endpoint"],
            buckets=BACKEND_BUCKETS, registry=None,
        )
        self.zapier_runs = Counter(
            "keysvc_zapier_action_runs_total", "Action-run answers by status (success, error, pending)", ["status"],
            registry=None,
        )
        self.zapier_budget = Counter(
            "keysvc_zapier_api_budget_total", "Partner API requests (token exchanges included) the budget delayed "
            "(waited) or refused (refused: api_rate_limit spent; cooling: after a 429), by budget (shared: every "
            "replica's, in the gateway store; local: this replica's own or the store's fallback)",
            ["result", "budget"], registry=None,
        )
        self.inbox_messages = Counter(
            "keysvc_zapier_inbox_messages_total", "Trigger-inbox messages leased, acked and released through keysvc",
            ["event"], registry=None,
        )
        self.inboxes_seen = Counter(
            "keysvc_zapier_inboxes_seen_total", "Trigger inboxes keysvc saw in Zapier's answers, by status "
            "(paused_authentication: paused until the user reconnects)", ["status"], registry=None,
        )
        self.push_deliveries = Counter(
            "keysvc_zapier_push_deliveries_total", "Trigger-inbox messages POSTed to trigger_delivery.url: "
            "delivered (2xx, then acked), refused (another status, released), failed (no answer, left leased)",
            ["outcome"], registry=None,
        )
        self.push_latency = Histogram(
            "keysvc_zapier_push_duration_seconds", "One POST to trigger_delivery.url", buckets=BACKEND_BUCKETS,
            registry=None,
        )
        self.push_lag = Histogram(
            "keysvc_zapier_push_lag_seconds", "From a trigger-inbox message's creation at Zapier to its 2xx from "
            "trigger_delivery.url", buckets=LAG_BUCKETS, registry=None,
        )
        for outcome in ("delivered", "refused", "failed"):
            self.push_deliveries.labels(outcome)
        for event in ("leased", "acked", "released", "redelivered"):
            self.inbox_messages.labels(event)
        for status in INBOX_STATUSES:
            self.inboxes_seen.labels(status)
        for result in ("waited", "refused", "cooling"):
            for kind in ("shared", "local"):
                self.zapier_budget.labels(result, kind)  # at 0 from the start, so alerts see the first increment
        self.gateway_store_up = Gauge(
            "keysvc_gateway_store_up", "1 when the gateway store answers (or none is configured), 0 while this "
            "replica cannot reach it (the budget is then on its local fallback)", registry=None,
        )
        self.registry_lookups = Counter(
            "keysvc_zapier_registry_total", "Connection registry lookups for calls that omitted `connection` "
            "(hit, miss) and connections marked expired (expired), by registry (shared or local)",
            ["result", "registry"], registry=None,
        )
        for result in ("hit", "miss", "expired"):
            for kind in ("shared", "local"):
                self.registry_lookups.labels(result, kind)
        for status in ("success", "error", "pending"):
            self.zapier_runs.labels(status)

    def collectors(self) -> list[Collector]:
        """Every metric, for the service's registry."""
        return [self.exchange_calls, self.exchange_latency, self.exchange_cache, self.zapier_calls,
                self.zapier_latency, self.zapier_runs, self.zapier_budget, self.gateway_store_up, self.registry_lookups,
                self.inbox_messages, self.inboxes_seen, self.push_deliveries, self.push_latency,
                self.push_lag]

    def watch_store(self, up: Callable[[], bool]) -> None:
        """`keysvc_gateway_store_up` reads `up()` at scrape time."""
        self.gateway_store_up.set_function(lambda: 1.0 if up() else 0.0)

    def upstream(self, outcome: str, seconds: float) -> None:
        """One request to the partner's token endpoint."""
        self.exchange_calls.labels(outcome).inc()
        self.exchange_latency.observe(seconds)

    def cache(self, result: str) -> None:
        """One access-token cache lookup."""
        self.exchange_cache.labels(result).inc()

    def call(self, endpoint: str, outcome: str, seconds: float) -> None:
        """One Partner API request."""
        self.zapier_calls.labels(endpoint, outcome).inc()
        self.zapier_latency.labels(endpoint).observe(seconds)

    def budget(self, result: str, kind: str = "local") -> None:
        """A request delayed or refused by the budget (`kind`: shared or local)."""
        self.zapier_budget.labels(result, kind).inc()

    def registry(self, result: str, kind: str) -> None:
        """A registry lookup (hit, miss) or a connection marked expired, in the shared or local registry."""
        self.registry_lookups.labels(result, kind).inc()

    def run(self, status: str) -> None:
        """One action-run answer of the gateway."""
        self.zapier_runs.labels(status).inc()

    def messages(self, event: str, count: int) -> None:
        """`count` trigger-inbox messages leased, acked or released."""
        self.inbox_messages.labels(event).inc(count)

    def inbox_seen(self, status: str, paused_reason: str | None = None) -> None:
        """One inbox in an answer, by status (an unknown word is `other`: the label stays bounded)."""
        if status == "paused" and paused_reason in RECONNECT_REASONS:
            status = "paused_authentication"
        self.inboxes_seen.labels(status if status in INBOX_STATUSES else "other").inc()

    def pushed(self, outcome: str, seconds: float, *, lag: float | None = None, redelivered: bool = False) -> None:
        """One POST of push delivery to the partner's service (its lag when delivered; a redelivery counted)."""
        self.push_deliveries.labels(outcome).inc()
        self.push_latency.observe(seconds)
        if redelivered:
            self.inbox_messages.labels("redelivered").inc()
        if lag is not None:
            self.push_lag.observe(max(0.0, lag))
