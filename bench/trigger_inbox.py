"""Embedded triggers, the pull API: keysvc's added latency per trigger-inbox call.

A real `keysvc serve` (pinned to the server core) drives the fake Trigger Inbox API of the tests
(tests/trigger_inbox_fake, on 127.0.0.1, accepting the fake Partner API's access tokens). Figures:
- p50 latency of GET /v1/zapier/trigger-inboxes/{id} through keysvc against GET /inboxes/{id} sent to the
  fake directly with an access token, interleaved one by one in the same run (target: overhead < 2 ms);
- p50 of a lease of one message through keysvc (POST .../lease, then .../ack of it) against the same two
  calls sent to the fake directly.
- push delivery (keysvc.partner.trigger_push, first in this process: one deliverer is one replica's engine, with
  its own aiohttp session and a budget that never binds) to a receiver verifying every signature with
  `standardwebhooks`: messages per second of one deliverer draining 4 inboxes, and the end-to-end lag of one
  message (injected -> notification -> lease -> POST -> the receiver has it), p50 over `--lags` messages.
  Then the same two figures through a real `keysvc serve` with push delivery on (a SQLite gateway store):
  4 inboxes ensured through /v1/zapier, the fake's own notifications to keysvc's public listener.
  With a real Partner API budget (60 requests/minute) the ceiling is the budget: a lease of 10 messages
  and its ack are 2 requests, so about 300 messages per minute.
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


def push_figures(inbox_api: TriggerInboxFake, token_for: Callable[[], str], messages: int,
                 lags: int) -> tuple[float, list[float]]:
    """(messages per second of one deliverer, lags in ms) against a standardwebhooks-verifying receiver."""
    import asyncio
    import base64
    import tempfile
    import threading

    from standardwebhooks import Webhook
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from keysvc.config.exchange import TokenExchangeSettings, TriggerDeliverySettings
    from keysvc.config.secrets import Secret
    from keysvc.partner.budget import ApiBudget, ReplicaBudget
    from keysvc.partner.outbound import PartnerHttp
    from keysvc.partner.partner_api import PartnerApi
    from keysvc.partner.store import InboxRecord, StoreSettings, open_store
    from keysvc.partner.trigger_inboxes import REAUTH_CODES, TRIGGER_INBOX_API, TriggerInboxes
    from keysvc.partner.trigger_notify import PREFIX, Push
    from tests.exchange_support import serve

    secret = "whsec_" + base64.b64encode(b"b" * 32).decode()
    verifier = Webhook(secret)
    arrived: dict[str, float] = {}
    lock = threading.Lock()

    async def endpoint(request: Request) -> Response:
        verifier.verify(await request.body(), dict(request.headers))
        with lock:
            arrived.setdefault(request.headers["webhook-id"], time.perf_counter())
        return Response(status_code=204)

    class Tokens:
        token: str | None = None

        async def access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> Any:
            if self.token is None:
                self.token = token_for()
            return type("T", (), {"access_token": self.token})()

        def forget_access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> None:
            self.token = None

    def ensure(key: str) -> str:
        token = token_for()
        answer = httpx.put(f"{inbox_api.api_url}/inboxes", headers={"Authorization": f"Bearer {token}"},
                           json={"key": key, "subscription": {"app_key": "SlackCLIAPI", "action_key": "x"}})
        assert answer.status_code in (200, 201), answer.text
        return str(answer.json()["id"])

    async def run(url: str, db: str) -> tuple[float, list[float]]:
        store = open_store(StoreSettings.from_url(f"sqlite:///{db}"))
        await store.migrate()
        http = PartnerHttp()
        settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"))
        api = PartnerApi(settings, http, ReplicaBudget(ApiBudget(1_000_000, 10_000)), base_url=inbox_api.api_url,
                         name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
        inboxes = TriggerInboxes(Tokens(), api)
        push = Push(TriggerDeliverySettings(url, Secret(secret), "http://127.0.0.1:9", lease=60), inboxes, http,
                    store)
        try:
            records = []
            for n in range(4):
                key = f"bench-push-{n}-{time.monotonic_ns()}"
                inbox_id = await asyncio.to_thread(ensure, key)
                records.append(InboxRecord(inbox_id, USER[1], USER[0], key, "SlackCLIAPI", "x"))
                await store.record_inbox(records[-1])
            for r in records:
                inbox_api.inject(r.inbox_id, *({"n": i} for i in range(messages // 4)))
            started = time.perf_counter()
            while any(inbox_api.pending(r.inbox_id) for r in records):
                await push.delivery.sweep()
            rate = (messages // 4 * 4) / (time.perf_counter() - started)
            lag_ms = []
            record = records[0]
            token = push.sealer.seal(record.inbox_id, record.user_id, record.tenant_id)
            for _ in range(lags):
                [message_id] = inbox_api.inject(record.inbox_id, {"lag": True})
                injected = time.perf_counter()
                push.delivery.notified(push.sealer, token)  # what POST {PREFIX}{token} does
                while message_id not in arrived:
                    await asyncio.sleep(0.0005)
                lag_ms.append((arrived[message_id] - injected) * 1000)
                while inbox_api.pending(record.inbox_id):
                    await asyncio.sleep(0.001)
            assert PREFIX
            return rate, lag_ms
        finally:
            await push.delivery.aclose()
            await http.aclose()
            await store.close()

    with serve(Starlette(routes=[Route("/events", endpoint, methods=["POST"])])) as base, \
            tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(run(base + "/events", f"{tmp}/gateway.db"))


def push_through_serve(zapier: ZapierFake, inbox_api: TriggerInboxFake, workdir: Path, messages: int,
                       lags: int) -> tuple[float, list[float]]:
    """The same two push figures through a real `keysvc serve` (push delivery on, SQLite gateway store):
    4 inboxes ensured through /v1/zapier, `messages` injected at Zapier, Zapier's notifications to keysvc's
    public listener, keysvc leasing and POSTing to a `standardwebhooks`-verifying receiver. (messages per
    second from the injection to the receiver's last 2xx; lags in ms, one message at a time)."""
    import base64
    import socket
    import threading

    from standardwebhooks import Webhook
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from tests.exchange_support import serve

    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    verifier = Webhook(secret)
    arrived: dict[str, float] = {}
    lock = threading.Lock()

    async def endpoint(request: Request) -> Response:
        verifier.verify(await request.body(), dict(request.headers))
        with lock:
            arrived.setdefault(request.headers["webhook-id"], time.perf_counter())
        return Response(status_code=204)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    (workdir / "webhook-secret").write_text(secret + "\n")
    with serve(Starlette(routes=[Route("/events", endpoint, methods=["POST"])])) as receiver:
        cfg = config(zapier, inbox_api, workdir)  # the same keys directory: the JWKS Zapier trusts already
        cfg["listen"]["public"] = f"127.0.0.1:{port}"
        cfg["token_exchange"]["store"] = {"url": f"sqlite:///{workdir}/push-gateway.db"}
        cfg["token_exchange"]["trigger_delivery"] = {
            "url": receiver + "/events", "secret_file": str(workdir / "webhook-secret"), "lease": "60s",
            "public_url": f"http://127.0.0.1:{port}"}
        with keysvc_server(cfg, workdir, "push") as proc, httpx.Client(timeout=30) as client:
            ours = {"Authorization": f"Bearer {api_key('signer')}"}
            ids = []
            for n in range(4):
                made = client.put(f"{proc.internal}/v1/zapier/trigger-inboxes/push-{n}-{time.monotonic_ns()}",
                                  json={"user_id": USER[0], "tenant_id": USER[1], **SUB, "wait": 5}, headers=ours)
                assert made.status_code == 200, made.text
                ids.append(made.json()["inbox"]["id"])
            per_inbox = messages // 4
            started = time.perf_counter()
            sent = [m for inbox_id in ids for m in inbox_api.inject(inbox_id, *({"n": i} for i in range(per_inbox)))]
            deadline = time.monotonic() + 120
            while not all(m in arrived for m in sent):
                assert time.monotonic() < deadline, f"{sum(m in arrived for m in sent)} of {len(sent)} arrived"
                time.sleep(0.002)
            rate = len(sent) / (max(arrived[m] for m in sent) - started)
            lag_ms = []
            for _ in range(lags):
                injected = time.perf_counter()
                [message_id] = inbox_api.inject(ids[0], {"lag": True})
                while message_id not in arrived:
                    assert time.perf_counter() - injected < 30, "a message never arrived"
                    time.sleep(0.0005)
                lag_ms.append((arrived[message_id] - injected) * 1000)
                while inbox_api.pending(ids[0]):
                    time.sleep(0.001)
    return rate, lag_ms


def timed(step: Callable[[], None]) -> float:
    started = time.perf_counter()
    step()
    return time.perf_counter() - started


def main() -> None:
    parser = arguments(__doc__ or TITLE, runs=3)
    parser.add_argument("--requests", type=int, default=200, help="requests per latency run (default 200)")
    parser.add_argument("--messages", type=int, default=400, help="messages pushed for the rate (default 400)")
    parser.add_argument("--lags", type=int, default=50, help="messages timed end to end (default 50)")
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
        rates, lags, served_rates, served_lags = [], [], [], []
        for run in range(args.runs):
            rate, lag = push_figures(inbox_api, lambda: zapier.access_token(USER), args.messages, args.lags)
            rates.append(rate)
            lags.append(statistics.median(lag))
            with workspace(f"push-{run}") as pushdir:
                (pushdir / "keys").symlink_to(workdir / "keys")
                rate, lag = push_through_serve(zapier, inbox_api, pushdir, args.messages, args.lags)
            served_rates.append(rate)
            served_lags.append(statistics.median(lag))
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
        Row("push delivery, one replica's deliverer", statistics.median(rates), "messages/s", runs=spread(rates),
            note="4 inboxes, leases of 10, budget not binding"),
        Row("push delivery lag, inject -> receiver (p50)", statistics.median(lags), "ms", runs=spread(lags),
            note="notification -> lease -> signed POST"),
        Row("push delivery through keysvc serve (SQLite store)", statistics.median(served_rates), "messages/s",
            baseline="one deliverer in process", baseline_value=statistics.median(rates), runs=spread(served_rates),
            note="4 inboxes ensured through /v1/zapier; Zapier's notification to the public listener"),
        Row("push delivery lag through keysvc serve, inject -> receiver (p50)", statistics.median(served_lags), "ms",
            runs=spread(served_lags), note="the fake's notification thread, keysvc's route, lease, signed POST"),
    ]
    notes = [machine_line(), f"{args.requests} sequential keep-alive requests per run, {args.runs} runs, medians;"
             f" schema violations recorded by the fake: {violations}"]
    report(TITLE, rows, notes, args.json)
    if violations:
        raise SystemExit("the fake recorded schema violations")


if __name__ == "__main__":
    main()
