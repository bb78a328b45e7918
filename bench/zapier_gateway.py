"""The Zapier embed gateway: Partner API calls per action run, and keysvc's own latency per gateway call.

A real `keysvc serve` (pinned to the server core) drives the fake Partner API of the tests
(tests/zapier_fake, on 127.0.0.1, no rate limit). Figures:
- Partner API calls per completed action run beyond its polls (target <= 2: one actions lookup for a
  fresh id, one POST), and token exchanges per run once the access token is cached (target 0);
- p50 latency of GET /v1/zapier/connections through keysvc against GET /v2/authentications sent to the
  fake directly with an access token, interleaved in the same run (target: p50 overhead < 2 ms), and
  keysvc's CPU time per gateway call over those runs (from /proc: user + system, every thread).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    Row,
    api_key,
    arguments,
    base_config,
    cpu_seconds,
    keysvc_server,
    machine_line,
    report,
    spread,
    workspace,
)
from tests.helpers import remember_secret
from tests.partner_server import ACCESS_TOKEN
from tests.zapier_fake import Budget, RunBehaviour, ZapierFake, running_zapier

TITLE = "Zapier embed gateway (fake Partner API on loopback)"
USER = ("u-1", "t-9")
ISSUER = "https://issuer.example/zapier"


def config(zapier: ZapierFake, workdir: Path) -> dict[str, Any]:
    """keysvc with the gateway against the fake, a budget that never binds, access log off."""
    secret = workdir / "client-secret"
    secret.write_text(remember_secret(zapier.partner.client_secret))
    cfg = base_config(workdir / "keys")
    cfg["clients"]["signer"]["zapier"] = True
    cfg["token_exchange"] = {
        "token_url": zapier.token_url, "api_url": zapier.api_url, "client_id": zapier.partner.client_id,
        "client_secret_file": str(secret), "api_rate_limit": {"per_minute": 1_000_000, "burst": 10_000},
    }
    cfg["log"] = {"access": False}
    return cfg


def timed(client: httpx.Client, url: str, **kw: Any) -> float:
    """Seconds for one GET that must answer 200."""
    started = time.perf_counter()
    response = client.get(url, **kw)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed


def latency(keysvc: str, zapier: ZapierFake, app: str, requests: int, runs: int) -> tuple[list[float], list[float]]:
    """Median latencies (ms) per run: through keysvc, and the fake directly; interleaved one by one."""
    token = zapier.access_token(USER)
    through, direct = [], []
    with httpx.Client(timeout=10) as client:
        headers = {"Authorization": f"Bearer {api_key('signer')}"}
        params = {"user_id": USER[0], "tenant_id": USER[1], "app": app}
        for _ in range(runs):
            a: list[float] = []
            b: list[float] = []
            for _ in range(requests):
                a.append(timed(client, f"{keysvc}/v1/zapier/connections", params=params, headers=headers))
                b.append(timed(client, f"{zapier.api_url}/v2/authentications", params={"app": app},
                               headers={"Authorization": f"Bearer {token}"}))
            through.append(statistics.median(a) * 1000)
            direct.append(statistics.median(b) * 1000)
    return through, direct


def calls_per_run(keysvc: str, zapier: ZapierFake, app: str, connection: str, runs: int) -> tuple[float, float, float]:
    """(Partner API calls per run beyond its polls, polls per run, token exchanges per run), warm cache."""
    body = {"user_id": USER[0], "tenant_id": USER[1], "app": app, "action": "send_message", "action_type": "WRITE",
            "connection": connection, "inputs": {"channel": "C1"}, "wait": 20}
    headers = {"Authorization": f"Bearer {api_key('signer')}"}
    zapier.run_behaviour = RunBehaviour(pending_polls=1)
    with httpx.Client(timeout=30) as client:
        assert client.post(f"{keysvc}/v1/zapier/action-runs", json=body, headers=headers).status_code == 200
        before, exchanges = len(zapier.log), zapier.partner.calls_for(ACCESS_TOKEN)
        for _ in range(runs):
            answer = client.post(f"{keysvc}/v1/zapier/action-runs", json=body, headers=headers)
            assert answer.status_code == 200 and answer.json()["status"] == "success", answer.text
    calls = zapier.log[before:]
    polls = sum(1 for c in calls if c.endpoint == "GET /v2/action-runs/{id}")
    return (len(calls) - polls) / runs, polls / runs, (zapier.partner.calls_for(ACCESS_TOKEN) - exchanges) / runs


def main() -> None:
    parser = arguments(__doc__ or TITLE, runs=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per latency run (default 200)")
    parser.add_argument("--action-runs", type=int, default=3, help="action runs counted (default 3)")
    args = parser.parse_args()
    with workspace("zapier") as workdir, running_zapier(budget=Budget(per_ip=None, per_partner=None)) as zapier:
        slack = zapier.add_app("Slack")
        zapier.add_action(slack, "send_message", "Send Message", "WRITE")
        connection = zapier.add_connections(USER, slack, 3)[0].id
        with keysvc_server(config(zapier, workdir), workdir, "zapier") as proc:
            zapier.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
            through, direct = latency(proc.internal, zapier, slack.id, max(10, args.requests // 10), 1)  # warm-up
            assert proc.proc is not None
            cpu_before = cpu_seconds(proc.proc.pid)
            through, direct = latency(proc.internal, zapier, slack.id, args.requests, args.runs)
            cpu_per_call = (cpu_seconds(proc.proc.pid) - cpu_before) / (args.requests * args.runs) * 1000
            beyond, polls, exchanges = calls_per_run(proc.internal, zapier, slack.id, connection, args.action_runs)
        violations = len(zapier.violations)
    overheads = [t - d for t, d in zip(through, direct, strict=True)]
    rows = [
        Row("Partner API calls per run beyond its polls", beyond, "calls", target=2, at_most=True,
            target_on_value=True, note=f"{polls:g} polls per run"),
        Row("token exchanges per run (access token cached)", exchanges, "exchanges", target=0, at_most=True,
            target_on_value=True),
        Row("p50 GET /v1/zapier/connections through keysvc", statistics.median(through), "ms",
            baseline="fake directly", baseline_value=statistics.median(direct), runs=spread(through)),
        Row("p50 overhead of keysvc per gateway call", statistics.median(overheads), "ms", target=2, at_most=True,
            target_on_value=True, runs=spread(overheads)),
        Row("keysvc CPU per gateway call (latency runs)", cpu_per_call, "ms"),
    ]
    notes = [machine_line(), f"{args.requests} sequential keep-alive requests per run, {args.runs} runs, medians;"
             f" schema violations recorded by the fake: {violations}"]
    report(TITLE, rows, notes, args.json)
    if violations:
        raise SystemExit("the fake recorded schema violations")


if __name__ == "__main__":
    main()
