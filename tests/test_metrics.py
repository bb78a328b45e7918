"""/metrics of a real `keysvc serve`: names, types and values across a sign, a JWKS 200/304, a rotation and
a backend failure; nothing secret or caller-chosen in a label; every metric the alerts and the dashboard
query exists."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, KeysvcProcess, api_key, base_config, wait_for, write_config

Sample = tuple[str, frozenset[tuple[str, str]]]
SUB = "user-4f1c9e-not-a-label"  # a caller-chosen value that must never become a label


class Scrape:
    """One parsed /metrics answer: sample values and family types."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[Sample, float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for s in family.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def get(self, name: str, **labels: str) -> float:
        """The value of one sample (0 when absent)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def matching(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {lbl: v for (n, lbl), v in self.values.items() if n == name and want <= lbl}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """One server for the module (30-day keys, refreshing every 500 ms so a backend failure shows fast), with
    every feature that defines metrics configured (the partner side and the canary register theirs through
    the seam: an unconfigured feature exports nothing); the canary checks once an hour, never in this run."""
    tmp = tmp_path_factory.mktemp("metrics")
    config = base_config(tmp / "keys")
    config["backend"]["refresh_interval"] = "500ms"
    secret = tmp / "client-secret"
    secret.write_text("s3cr3t\n")
    config["token_exchange"] = {"keyset": "zapier", "token_url": "http://127.0.0.1:9/oauth/token",
                                "api_url": "http://127.0.0.1:9", "client_id": "keysvc",
                                "client_secret_file": str(secret)}
    config["canary"] = {"jwks_url": "http://127.0.0.1:9/.well-known/jwks.json", "interval": "1h"}
    proc = KeysvcProcess(write_config(tmp / "metrics.yaml", config), name="metrics")
    proc.start()
    yield proc
    proc.stop()


def scrape(proc: KeysvcProcess) -> Scrape:
    """GET /metrics on the internal listener."""
    response = httpx.get(f"{proc.internal}/metrics", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return Scrape(response.text)


ALLOWED_LABELS = {"keyset", "client", "outcome", "kid", "status", "listener", "route", "operation", "event", "state",
                  "etag", "keys", "result", "backend", "version", "le",
                  "budget", "registry"}  # the gateway's budget and connection registry: shared or local


@pytest.mark.system
def test_names_types_and_labels_follow_the_conventions(server: KeysvcProcess) -> None:
    """Every keysvc_ family has a TYPE; counters end in _total; durations and timestamps are in seconds;
    only known, bounded label names appear; neither the caller's sub nor an API key is anywhere."""
    assert server.sign(claims={"sub": SUB, "aud": "connect.zapier.com"}).status_code == 200
    result = scrape(server)
    ours = {name: kind for name, kind in result.types.items() if name.startswith("keysvc_")}
    assert len(ours) >= 30
    for name, kind in ours.items():
        if kind == "counter":
            assert f"# TYPE {name}_total counter" in result.text, name
        if {"duration", "age", "timestamp", "period"} & set(name.split("_")):  # words: not "messages"
            assert name.endswith("_seconds"), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|days)$", name), name
    for (name, labels), _ in result.values.items():
        if name.startswith("keysvc_"):
            assert {k for k, _ in labels} <= ALLOWED_LABELS, (name, labels)
    assert SUB not in result.text and api_key("signer") not in result.text
    assert "process_cpu_seconds_total" in result.text and "python_info" in result.text
    assert "_created" not in result.text  # one sample per counter child, not two


@pytest.mark.system
def test_a_signature_counts_by_client_keyset_outcome_and_kid(server: KeysvcProcess) -> None:
    """One good sign adds 1 to requests{outcome=ok}, tokens_signed{kid}, the latency histogram and the
    internal HTTP counter; a refused one counts under its error code; no token exceeds its retention."""
    before = scrape(server)
    ok = server.sign()
    assert ok.status_code == 200
    kid = ok.json()["kid"]
    assert server.sign(claims={"sub": "u", "aud": "not-allowed.example"}).status_code == 403
    after = scrape(server)
    assert after.types["keysvc_sign_requests"] == "counter"
    assert after.types["keysvc_sign_duration_seconds"] == "histogram"

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert delta("keysvc_sign_requests_total", client="signer", keyset="zapier", outcome="ok") == 1
    assert delta("keysvc_sign_requests_total", client="signer", keyset="-", outcome="forbidden") == 1
    assert delta("keysvc_tokens_signed_total", keyset="zapier", kid=kid) == 1
    assert delta("keysvc_sign_duration_seconds_count", keyset="zapier") == 1
    assert delta("keysvc_http_requests_total", listener="internal", route="sign", status="200") == 1
    assert delta("keysvc_http_requests_total", listener="internal", route="sign", status="403") == 1
    assert after.get("keysvc_token_exp_beyond_retention_total", keyset="zapier") == 0
    assert ("keysvc_token_exp_beyond_retention_total", frozenset({("keyset", "zapier")})) in after.values


@pytest.mark.system
def test_jwks_200_and_304_are_counted_with_bytes(server: KeysvcProcess) -> None:
    """A JWKS GET counts a 200 and its body bytes; a conditional GET counts a 304 and no bytes; the ETag
    served is the one in keysvc_jwks_info."""
    before = scrape(server)
    full = server.jwks()
    assert full.status_code == 200
    etag = full.headers["etag"]
    again = httpx.get(server.public + "/.well-known/jwks.json", headers={"If-None-Match": etag}, timeout=10)
    assert again.status_code == 304
    after = scrape(server)
    assert after.get("keysvc_jwks_requests_total", keyset="zapier", status="200") - \
        before.get("keysvc_jwks_requests_total", keyset="zapier", status="200") == 1
    assert after.get("keysvc_jwks_requests_total", keyset="zapier", status="304") - \
        before.get("keysvc_jwks_requests_total", keyset="zapier", status="304") == 1
    assert after.get("keysvc_jwks_response_bytes_total", keyset="zapier") - \
        before.get("keysvc_jwks_response_bytes_total", keyset="zapier") == len(full.content)
    info = after.matching("keysvc_jwks_info", keyset="zapier")
    assert [dict(lbl)["etag"] for lbl in info] == [etag.strip('"')]
    assert after.types["keysvc_jwks_info"] == "gauge"  # an info metric, as the text format exposes it


@pytest.mark.system
def test_rotation_changes_key_events_and_gauges(server: KeysvcProcess) -> None:
    """A forced rotation through the admin API: rotate and create events +1, a successful backend write,
    the active key age restarts near 0, one key is now retiring, a new pending key is due in ~30 days, and
    the JWKS ETag changes."""
    # so that the old active key's age is visibly above the new one's
    before = wait_for(lambda: (s := scrape(server)).get("keysvc_active_key_age_seconds", keyset="zapier") > 1.0
                      and s, 10, "the active key to be over a second old")
    sent = time.time()
    old_etag = dict(next(iter(before.matching("keysvc_jwks_info", keyset="zapier"))))["etag"]
    response = httpx.post(f"{server.internal}/v1/keysets/zapier/rotate", json={"force": True},
                          headers={"Authorization": f"Bearer {api_key('admin')}"}, timeout=10)
    assert response.status_code == 200, response.text
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return after.get(name, **labels) - before.get(name, **labels)

    assert delta("keysvc_key_events_total", keyset="zapier", event="rotate") == 1
    assert delta("keysvc_key_events_total", keyset="zapier", event="create") == 1
    assert delta("keysvc_backend_operations_total", operation="write", outcome="ok") == 1
    # the new key activated after the request was sent: younger than the time since then, however slow
    assert after.get("keysvc_active_key_age_seconds", keyset="zapier") <= time.time() - sent + 0.01
    assert after.get("keysvc_keys", keyset="zapier", state="retiring") == 1
    assert after.get("keysvc_keys", keyset="zapier", state="active") == 1
    assert after.get("keysvc_pending_key_present", keyset="zapier") == 1
    assert 29 * 86400 < after.get("keysvc_next_activation_seconds", keyset="zapier") <= 30 * 86400
    new_etag = dict(next(iter(after.matching("keysvc_jwks_info", keyset="zapier"))))["etag"]
    assert new_etag != old_etag
    assert after.get("keysvc_rotation_period_seconds", keyset="zapier") == 30 * 86400
    # a refused rotation (the new pending key is not yet safe) is a write refused, not a store failure
    refused = httpx.post(f"{server.internal}/v1/keysets/zapier/rotate",
                         headers={"Authorization": f"Bearer {api_key('admin')}"}, timeout=10)
    assert refused.status_code == 409
    assert scrape(server).get("keysvc_backend_operations_total", operation="write", outcome="refused") == 1


@pytest.mark.system
def test_backend_failure_shows_in_metrics_not_in_readiness(server: KeysvcProcess) -> None:
    """With the keyset directory replaced by a regular file (root ignores chmod, so this is how a test
    makes listdir fail), syncs count as unavailable, reconcile errors rise, backend_up drops to 0 and the
    last-sync timestamp stops, while the JWKS and /readyz keep answering 200. Restoring the directory
    brings backend_up back to 1."""
    keys = server.config_path.parent / "keys" / "zapier"
    assert keys.is_dir()
    moved = keys.with_name("zapier.moved")
    before = scrape(server)
    keys.rename(moved)
    try:
        keys.write_text("not a directory")
        failing = wait_for(lambda: (s := scrape(server)).get("keysvc_backend_up", keyset="zapier") == 0 and s, 8,
                           "backend_up to drop to 0")
        assert failing.get("keysvc_backend_operations_total", operation="sync", outcome="unavailable") > \
            before.get("keysvc_backend_operations_total", operation="sync", outcome="unavailable")
        assert failing.get("keysvc_reconcile_errors_total", keyset="zapier") > \
            before.get("keysvc_reconcile_errors_total", keyset="zapier")
        stalled = failing.get("keysvc_backend_last_sync_timestamp_seconds", keyset="zapier")
        failed = failing.get("keysvc_backend_operations_total", operation="sync", outcome="unavailable")
        later = wait_for(lambda: (s := scrape(server)).get("keysvc_backend_operations_total", operation="sync",
                                                           outcome="unavailable") >= failed + 2 and s,
                         8, "two more syncs to fail")
        assert later.get("keysvc_backend_last_sync_timestamp_seconds", keyset="zapier") == stalled
        assert server.jwks().status_code == 200
        assert httpx.get(server.public + "/readyz", timeout=10).status_code == 200
        assert later.get("keysvc_keyset_ready", keyset="zapier") == 1
    finally:
        keys.unlink(missing_ok=True)
        moved.rename(keys)
    recovered = wait_for(lambda: (s := scrape(server)).get("keysvc_backend_up", keyset="zapier") == 1 and s, 8,
                         "backend_up to come back")
    assert recovered.get("keysvc_backend_last_sync_timestamp_seconds", keyset="zapier") > stalled
    assert any(line.get("event") == "backend sync failed" and line.get("level") == "warning"
               for line in server.lines())


def _referenced_metrics() -> set[str]:
    rules = yaml.safe_load((ROOT / "helm" / "prometheus-rules.yaml").read_text())
    board = json.loads((ROOT / "helm" / "keysvc" / "files" / "dashboard.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return set(re.findall(r"\bkeysvc_[a-z_]+\b", "\n".join(exprs)))


@pytest.mark.system
def test_every_metric_the_alerts_and_dashboard_query_is_exported(server: KeysvcProcess) -> None:
    """A typo in an alert or a panel would silently never fire / show nothing: each keysvc_ name they use
    is a sample name or a declared family of a running server."""
    result = scrape(server)
    exported = {name for name, _ in result.values} | set(re.findall(r"^# TYPE (\S+)", result.text, re.MULTILINE))
    for family, kind in result.types.items():
        if kind == "histogram":
            exported |= {family + "_bucket", family + "_sum", family + "_count"}
        if kind == "info":
            exported.add(family + "_info")
    missing = sorted(_referenced_metrics() - exported)
    assert not missing, missing


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    """`error` as `raise error from cause` leaves it."""
    error.__cause__ = cause
    return error


@pytest.mark.unit
def test_backend_outcome_tells_kms_throttling_from_other_failures() -> None:
    """The outcome label comes from the error a backend raised and the botocore error it chained: AWS's
    throttling codes are `throttled`, other unavailability `unavailable`, unreadable records `corrupt`,
    a lifecycle refusal `refused`; KMS throttling is therefore counted without any KMS-specific code."""
    from botocore.exceptions import ClientError

    from keysvc.errors import BackendUnavailable, Conflict, StoreCorrupt
    from keysvc.metrics import backend_outcome

    def aws(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "Sign")

    assert backend_outcome(None) == "ok"
    assert backend_outcome(_raised_from(BackendUnavailable("KMS Sign failed"), aws("ThrottlingException"))) == \
        "throttled"
    assert backend_outcome(_raised_from(BackendUnavailable("KMS Sign failed"), aws("DisabledException"))) == \
        "unavailable"
    assert backend_outcome(BackendUnavailable("key directory unreadable")) == "unavailable"
    assert backend_outcome(StoreCorrupt("bad record")) == "corrupt"
    assert backend_outcome(Conflict("not yet safe")) == "refused"
    assert backend_outcome(OSError("disk")) == "error"


@pytest.mark.unit
def test_loop_metrics_expose_exactly_what_prometheus_client_would() -> None:
    """LoopCounter and LoopHistogram (the request paths' lock-free metrics) write the same exposition text
    as prometheus_client's Counter and Histogram given the same increments and observations, bucket
    edges included (a value equal to a bound lands in that bound's bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

    from keysvc.metrics import LATENCY_BUCKETS, LoopCounter, LoopHistogram

    disable_created_metrics()  # type: ignore[no-untyped-call]  # as keysvc.metrics does
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = LoopCounter("x_requests_total", "Requests", ["client", "status"], registry=ours)
    reference = Counter("x_requests_total", "Requests", ["client", "status"], registry=theirs)
    histogram = LoopHistogram("x_duration_seconds", "Latency", ["keyset"], buckets=LATENCY_BUCKETS, registry=ours)
    expected = Histogram("x_duration_seconds", "Latency", ["keyset"], buckets=LATENCY_BUCKETS, registry=theirs)
    for client, status, amount in [("a", "200", 1), ("b", "403", 1), ("a", "200", 2.5), ("c", "200", 914)]:
        counter.inc((client, status), amount)
        reference.labels(client, status).inc(amount)
    for keyset, value in [("z", 0.0005), ("z", 0.0004), ("z", 0.003), ("y", 7.0), ("z", 5.0), ("y", 0.0)]:
        histogram.observe((keyset,), value)
        expected.labels(keyset).observe(value)
    assert generate_latest(ours).decode() == generate_latest(theirs).decode()
