"""The alert rules: one file in two places, valid, each alert tested by `promtool test rules` against
synthetic series (tests/promtool/keysvc_test.yaml), each with a runbook paragraph.

promtool comes from Debian's `prometheus` package; tests/tools/ensure_promtool.sh installs it (CI calls it
before the suite; this module calls it too when promtool is missing, so `make test` stands alone).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import ROOT

CHART_RULES = ROOT / "helm" / "keysvc" / "files" / "alerts.yaml"
PLAIN_RULES = ROOT / "helm" / "prometheus-rules.yaml"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "keysvc_test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary (installed by tests/tools/ensure_promtool.sh when missing)."""
    found = shutil.which("promtool")
    if found is None:
        subprocess.run(["sh", str(ROOT / "tests" / "tools" / "ensure_promtool.sh")], check=False, timeout=600)
        found = shutil.which("promtool")
    assert found is not None, "promtool is missing: run tests/tools/ensure_promtool.sh (as root)"
    return found


def alerts(path: Path = PLAIN_RULES) -> list[dict[str, Any]]:
    """Every alerting rule of a rule file."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.unit
def test_chart_and_plain_rule_files_hold_the_same_rules() -> None:
    """The PrometheusRule the chart renders and the plain file for non-operator setups never drift."""
    assert yaml.safe_load(CHART_RULES.read_text()) == yaml.safe_load(PLAIN_RULES.read_text())


@pytest.mark.system
def test_rule_files_are_valid(promtool: str) -> None:
    """promtool parses both files and every PromQL expression in them."""
    result = subprocess.run([promtool, "check", "rules", str(PLAIN_RULES), str(CHART_RULES)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.system
def test_each_alert_fires_on_bad_series_and_not_on_healthy_ones(promtool: str) -> None:
    """`promtool test rules`: at each evaluation time exactly the expected alerts fire, with their labels
    and rendered annotations; the healthy series of each group raise nothing."""
    result = subprocess.run([promtool, "test", "rules", str(PROMTOOL_TESTS)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.unit
def test_every_alert_is_exercised_both_ways() -> None:
    """Each alert has a promtool case where it fires, and the suite has at least one case where it stays
    silent (an empty exp_alerts, or healthy series of the same group that must not appear)."""
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]
    fired = {c["alertname"] for t in cases for c in t["alert_rule_test"] if c["exp_alerts"]}
    assert {a["alert"] for a in alerts()} == fired


@pytest.mark.system
def test_the_promtool_cases_catch_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """Mutation check: with one threshold loosened (sign error ratio 5% -> 50%) the cases fail, so they do
    test the rules rather than pass on anything."""
    rules = tmp_path / "helm" / "prometheus-rules.yaml"
    rules.parent.mkdir()
    text = PLAIN_RULES.read_text()
    assert text.count("> 0.05") == 1
    rules.write_text(text.replace("> 0.05", "> 0.5"))
    cases = tmp_path / "tests" / "promtool" / "keysvc_test.yaml"
    cases.parent.mkdir(parents=True)
    cases.write_text(PROMTOOL_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0 and "KeysvcSignErrorRatioHigh" in result.stdout + result.stderr


# The matcher every series selector of the rule files carries; the chart replaces it with its release's.
RELEASE_MATCHER = 'job=~".*keysvc.*"'
SELECTOR = re.compile(r"\b(up|keysvc_\w+)(\{[^}]*\})?")


@pytest.mark.unit
def test_every_selector_carries_the_release_matcher() -> None:
    """Each series selector in each rule names the release matcher, so the chart's substitution scopes
    every rule to its own release; a selector without it would read other releases' series."""
    for rule in alerts():
        for metric, matchers in SELECTOR.findall(rule["expr"]):
            assert matchers.startswith("{" + RELEASE_MATCHER), f"{rule['alert']}: {metric}{matchers}"


@pytest.mark.unit
def test_aggregations_keep_the_namespace() -> None:
    """Each `by (...)` of each rule keeps `namespace` and `job`: two releases named keysvc in two
    namespaces of one Prometheus never merge into one series."""
    for rule in alerts():
        for labels in re.findall(r"\bby \(([^)]*)\)", rule["expr"]):
            assert {"namespace", "job"} <= {x.strip() for x in labels.split(",")}, rule["alert"]


@pytest.mark.system
def test_the_promtool_cases_catch_merged_namespaces(promtool: str, tmp_path: Path) -> None:
    """Mutation check: with `namespace` dropped from every aggregation, the two-namespace case fails (a
    staging and a prod release would look like one release with divergent replicas)."""
    rules = tmp_path / "helm" / "prometheus-rules.yaml"
    rules.parent.mkdir()
    rules.write_text(PLAIN_RULES.read_text().replace("by (namespace, ", "by ("))
    cases = tmp_path / "tests" / "promtool" / "keysvc_test.yaml"
    cases.parent.mkdir(parents=True)
    cases.write_text(PROMTOOL_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0 and "KeysvcJwksDivergent" in result.stdout + result.stderr


ZAPIER_FAILING = 'outcome=~"timeout|unreachable|upstream_error|malformed|unavailable|unauthorized"'


@pytest.mark.system
@pytest.mark.parametrize(("broken", "mutant", "alert"), [
    # every outcome but ok counted as Zapier's failure: staging's callers' mistakes and 429s would page
    (ZAPIER_FAILING, 'outcome!="ok"', "KeysvcZapierApiFailing"),
    # pending answers (polls) counted as finished runs: prod's 40% error ratio would drop to 13%
    ('status=~"success|error"', 'status=~".+"', "KeysvcZapierRunsFailing"),
])
def test_the_promtool_cases_catch_a_miscounted_zapier_rule(promtool: str, tmp_path: Path, broken: str,
                                                            mutant: str, alert: str) -> None:
    """Mutation check: with the gateway alerts counting what they must not (callers' mistakes and 429s as
    Zapier failures, pending polls as finished runs), the two-namespace cases fail."""
    text = PLAIN_RULES.read_text()
    assert text.count(broken) == 1
    rules = tmp_path / "helm" / "prometheus-rules.yaml"
    rules.parent.mkdir()
    rules.write_text(text.replace(broken, mutant))
    cases = tmp_path / "tests" / "promtool" / "keysvc_test.yaml"
    cases.parent.mkdir(parents=True)
    cases.write_text(PROMTOOL_TESTS.read_text())
    result = subprocess.run([promtool, "test", "rules", str(cases)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0 and alert in result.stdout + result.stderr


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.unit
def test_every_alert_has_a_runbook_paragraph() -> None:
    """Each alert's runbook_url points at an existing heading of docs/runbook.md, with text under it, and
    each has a severity, a summary and a description."""
    text = RUNBOOK.read_text()
    sections = dict(re.findall(r"^#{2,3} (.+)\n+((?:(?!#{2,3} ).*\n?)*)", text, flags=re.MULTILINE))
    anchors = {_anchor(h): body for h, body in sections.items()}
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("docs/runbook.md#" + rule["alert"].lower()), url
        body = anchors.get(rule["alert"].lower())
        assert body is not None and len(body.split()) > 30, f"no runbook paragraph for {rule['alert']}"
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


DASHBOARD = ROOT / "helm" / "keysvc" / "files" / "dashboard.json"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the Grafana dashboard, with Grafana's variables filled in."""
    import json

    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    fill = {"$__rate_interval": "5m", "$__range": "6h", "$namespace": ".*", "$job": ".*", "$pod": ".*",
            "$keyset": ".*"}
    out = []
    for expr in exprs:
        for var, value in fill.items():
            expr = expr.replace(var, value)
        out.append(expr)
    return out


@pytest.mark.system
def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Each dashboard panel's query parses (checked by promtool as recording rules), and the dashboard has
    the panels the issue asks for."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q} for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = "\n".join(queries)
    for metric in ("keysvc_active_key_age_seconds", "keysvc_next_activation_seconds", "keysvc_keys",
                   "keysvc_jwks_info", "keysvc_sign_requests_total", "keysvc_sign_duration_seconds_bucket",
                   "keysvc_backend_operations_total", "keysvc_canary_success",
                   "keysvc_zapier_api_requests_total", "keysvc_zapier_action_runs_total",
                   "keysvc_zapier_api_budget_total"):
        assert metric in text, metric


@pytest.mark.unit
def test_dashboard_filters_by_namespace_and_pod() -> None:
    """The dashboard has namespace, job, pod and keyset variables, and every series selector of every panel
    filters on the namespace and pod ones, so two releases named keysvc never share a panel line."""
    import json

    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "job", "pod", "keyset"]
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            for metric, matchers in SELECTOR.findall(target["expr"]):
                assert 'namespace=~"$namespace"' in matchers and 'pod=~"$pod"' in matchers, (
                    f"{panel['title']}: {metric}{matchers}")
