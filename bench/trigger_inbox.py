"""Embedded triggers, the pull API: keysvc's added latency per trigger-inbox call.

A real `keysvc serve` (pinned to the server core) drives the fake Trigger Inbox API of the tests
(tests/trigger_inbox_fake, on 127.0.0.1, accepting the fake Partner API's access tokens). Figures:
- p50 latency of GET /v1/zapier/trigger-inboxes/{id} through keysvc against GET /inboxes/{id} sent to the
  fake directly with an access token, interleaved one by one in the same run (target: overhead < 2 ms);
- p50 of a lease of one message through keysvc (POST .../lease, then .../ack of it) against the same two
  calls sent to the fake directly.
Push delivery (messages/s per replica, end-to-end lag) is not measured here yet.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import Row, api_key, arguments, base_config, keysvc_server, machine_line, report, spread, workspace
from tests.helpers import remember_secret
from tests.trigger_inbox_fake import TriggerInboxFake, partner_tokens, running_trigger_inbox
from tests.zapier_fake import Budget, ZapierFake, running_zapier

TITLE = "Embedded triggers: the pull API (fake Trigger Inbox API on loopback)"
USER = ("u-1", "t-9")
ISSUER = "https://issuer.example/zapier"
SUB = {"app": "SlackCLIAPI", "trigger": "new_message", "connection": "4711", "inputs": {"channel": "C1"}}


def config(zapier: ZapierFake, inbox_api: TriggerInboxFake, workdir: Path) -> dict[str, Any]:
    """keysvc against both fakes, a budget that never binds, access log off."""
    secret = workdir / "client-secret"
    secret.write_text(remember_secret(zapier.partner.client_secret))
    cfg = base_config(workdir / "keys")
    cfg["clients"]["signer"]["zapier"] = True
    cfg["token_exchange"] = {
        "token_url": zapier.token_url, "api_url": zapier.api_url, "trigger_inbox_url": inbox_api.api_url,
        "client_id": zapier.partner.client_id, "client_secret_file": str(secret),
        "api_rate_limit": {"per_minute": 1_000_000, "burst": 10_000},
    }
    cfg["log"] = {"access": False}
    return cfg


def timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = arguments(__doc__ or TITLE, runs=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per latency run (default 200)")
    args = parser.parse_args()
    with (workspace("triggers") as workdir, running_zapier(budget=Budget(per_ip=None, per_partner=None)) as zapier,
          running_trigger_inbox(tokens=partner_tokens(zapier.partner)) as inbox_api,
          keysvc_server(config(zapier, inbox_api, workdir), workdir, "triggers") as proc):
        zapier.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
        user = {"user_id": USER[0], "tenant_id": USER[1]}
        ours = {"Authorization": f"Bearer {api_key('signer')}"}
        base = f"{proc.internal}/v1/zapier/trigger-inboxes"
        with httpx.Client(timeout=10) as client:
            made = client.put(f"{base}/bench", json={**user, **SUB, "wait": 5}, headers=ours)
            assert made.status_code == 200 and made.json()["inbox"]["status"] == "active", made.text
            inbox_id = made.json()["inbox"]["id"]
            token = zapier.access_token(USER)
            theirs = {"Authorization": f"Bearer {token}"}
            direct_base = f"{inbox_api.api_url}/inboxes/{inbox_id}"

            def get_through() -> None:
                assert client.get(f"{base}/{inbox_id}", params=user, headers=ours).status_code == 200

            def get_direct() -> None:
                assert client.get(direct_base, headers=theirs).status_code == 200

            def lease_through() -> None:
                inbox_api.inject(inbox_id, {"n": 1})
                lease = client.post(f"{base}/{inbox_id}/lease", json={**user, "limit": 1}, headers=ours).json()
                acked = client.post(f"{base}/{inbox_id}/ack", json={**user, "lease_id": lease["lease_id"]},
                                    headers=ours)
                assert len(lease["messages"]) == 1 and acked.status_code == 200

            def lease_direct() -> None:
                inbox_api.inject(inbox_id, {"n": 1})
                lease = client.post(f"{direct_base}/messages/lease", json={"lease_limit": 1}, headers=theirs).json()
                acked = client.post(f"{direct_base}/messages/ack", json={"lease_id": lease["lease_id"]},
                                    headers=theirs)
                assert len(lease["results"]) == 1 and acked.status_code == 200

            def medians(a: Callable[[], None], b: Callable[[], None], n: int, runs: int) -> tuple[list[float],
                                                                                               list[float]]:
                through, direct = [], []
                for _ in range(runs):
                    xs = [(timed(a), timed(b)) for _ in range(n)]
                    through.append(statistics.median(x for x, _ in xs) * 1000)
                    direct.append(statistics.median(y for _, y in xs) * 1000)
                return through, direct

            medians(get_through, get_direct, max(10, args.requests // 10), 1)  # warm-up
            get_t, get_d = medians(get_through, get_direct, args.requests, args.runs)
            lease_t, lease_d = medians(lease_through, lease_direct, max(10, args.requests // 2), args.runs)
        violations = len(inbox_api.violations)
    get_over = [t - d for t, d in zip(get_t, get_d, strict=True)]
    lease_over = [t - d for t, d in zip(lease_t, lease_d, strict=True)]
    rows = [
        Row("p50 GET /v1/zapier/trigger-inboxes/{id} through keysvc", statistics.median(get_t), "ms",
            baseline="fake directly", baseline_value=statistics.median(get_d), runs=spread(get_t)),
        Row("p50 overhead of keysvc per inbox call", statistics.median(get_over), "ms", target=2, at_most=True,
            target_on_value=True, runs=spread(get_over)),
        Row("p50 lease 1 + ack through keysvc (2 calls)", statistics.median(lease_t), "ms",
            baseline="fake directly", baseline_value=statistics.median(lease_d), runs=spread(lease_t)),
        Row("p50 overhead of keysvc per lease + ack", statistics.median(lease_over), "ms", runs=spread(lease_over)),
    ]
    notes = [machine_line(), f"{args.requests} sequential keep-alive requests per run, {args.runs} runs, medians;"
             f" schema violations recorded by the fake: {violations}"]
    report(TITLE, rows, notes, args.json)
    if violations:
        raise SystemExit("the fake recorded schema violations")


if __name__ == "__main__":
    main()
