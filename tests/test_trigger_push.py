"""Push delivery (keysvc.partner.trigger_push) in-process against the fake Trigger Inbox API and a real
receiver on 127.0.0.1 that verifies every request with the `standardwebhooks` package: every injected
message is delivered, none is acked before the receiver answered 2xx (the fake holds it until then), a
failing receiver gets the message again, a delivery that dies mid-way leaves its messages to come back when
the lease expires, and two deliverers (two replicas' worth: their own sessions and budgets) share the
work through Zapier's leases. The inboxes come from a real SQLite gateway store."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keysvc.config.exchange import TokenExchangeSettings
from keysvc.config.secrets import Secret
from keysvc.partner.budget import ApiBudget, ReplicaBudget
from keysvc.partner.outbound import PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.store import InboxRecord, StoreSettings, open_store
from keysvc.partner.store.base import GatewayStore
from keysvc.partner.trigger_inboxes import REAUTH_CODES, TRIGGER_INBOX_API, TriggerInboxes
from keysvc.partner.trigger_push import PushDelivery, Target
from keysvc.partner.triggers.sealing import NotificationSealer
from keysvc.partner.triggers.signing import WebhookSecret
from tests.exchange_support import serve
from tests.trigger_inbox_fake import TriggerInboxFake, running_trigger_inbox

pytestmark = pytest.mark.system

World = tuple["TriggerInboxFake", "Receiver", str]
SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
USER = ("u-push", "t-9")


@dataclass
class Receiver:
    """The partner's service: verifies the signature, fails the first `fail_first` attempts of each
    message, or hangs on `hang` ids; records what it answered 2xx and whether the fake still held it."""

    inbox_api: TriggerInboxFake
    fail_first: int = 0
    hang: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    bad_signatures: int = 0
    acked_early: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        try:
            event = Webhook(SECRET).verify(body, dict(request.headers))
        except Exception:
            self.bad_signatures += 1
            return Response(status_code=400)
        message_id = request.headers["webhook-id"]
        assert event["message"]["id"] == message_id and event["type"] == "zapier.trigger"
        inbox_id = event["inbox"]["id"]
        with self.lock:
            self.attempts[message_id] = self.attempts.get(message_id, 0) + 1
            attempt = self.attempts[message_id]
            if not any(m.id == message_id for m in self.inbox_api.inboxes[inbox_id].messages):
                self.acked_early.append(message_id)  # gone from Zapier before we said 2xx
        for _ in range(600):  # held until the test lets go (at most 30 s)
            if message_id not in self.hang:
                break
            await asyncio.sleep(0.05)
        if attempt <= self.fail_first:
            return JSONResponse({"error": "not now"}, status_code=503)
        with self.lock:
            self.delivered.append(message_id)
        return Response(status_code=204)


class Tokens:
    """The user's access token, as the fake issued it (stands in for the TokenExchanger's cache)."""

    def __init__(self, inbox_api: TriggerInboxFake) -> None:
        self.inbox_api = inbox_api
        self.token: str | None = None

    async def access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> Any:
        if self.token is None:
            self.token = self.inbox_api.issue_token((user_id, tenant_id))
        return type("T", (), {"access_token": self.token})()

    def forget_access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> None:
        self.token = None


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """The fake Trigger Inbox API and the receiver, both served on 127.0.0.1."""
    with running_trigger_inbox() as inbox_api:
        receiver = Receiver(inbox_api)
        with serve(Starlette(routes=[Route("/events", receiver.endpoint, methods=["POST"])])) as url:
            yield inbox_api, receiver, url + "/events"
        assert inbox_api.violations == []


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[GatewayStore]:
    """A real SQLite gateway store."""
    opened = open_store(StoreSettings.from_url(f"sqlite:///{tmp_path}/gateway.db"))
    await opened.migrate()
    try:
        yield opened
    finally:
        await opened.close()


def run_with_store(tmp_path: Path, scenario: Callable[[GatewayStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with sqlite_store(tmp_path) as store:
            await scenario(store)

    asyncio.run(main())


@dataclass
class PushRecord:
    """A push observer that keeps what it was told."""

    outcomes: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    redelivered: int = 0

    def pushed(self, outcome: str, seconds: float, *, lag: float | None = None, redelivered: bool = False) -> None:
        self.outcomes.append(outcome)
        self.lags.extend([lag] if lag is not None else [])
        self.redelivered += redelivered


def deliverer(inbox_api: TriggerInboxFake, url: str, directory: GatewayStore, lease: int = 2,
              timeout: float = 5.0, observer: PushRecord | None = None) -> tuple[PushDelivery, PartnerHttp]:
    """One replica's push delivery: its own session, budget and token cache."""
    settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), total_timeout=5.0)
    http = PartnerHttp()
    budget = ReplicaBudget(ApiBudget(6000, 100))
    api = PartnerApi(settings, http, budget, base_url=inbox_api.api_url, name=TRIGGER_INBOX_API,
                     reauth_codes=REAUTH_CODES)
    inboxes = TriggerInboxes(Tokens(inbox_api), api)
    target = Target(url, (WebhookSecret.parse(SECRET),), lease_seconds=lease, batch=5, timeout=timeout)
    return PushDelivery(inboxes, http, directory, target, observer=observer), http


async def active_inbox(inbox_api: TriggerInboxFake, directory: GatewayStore, key: str) -> InboxRecord:
    token = inbox_api.issue_token(USER)
    inbox = await asyncio.to_thread(_ensure, inbox_api, token, key)
    record = InboxRecord(inbox, USER[1], USER[0], key, "SlackCLIAPI", "new_message")
    await directory.record_inbox(record)
    return record


def _ensure(inbox_api: TriggerInboxFake, token: str, key: str) -> str:
    import httpx

    answer = httpx.put(f"{inbox_api.api_url}/inboxes", headers={"Authorization": f"Bearer {token}"},
                       json={"key": key, "subscription": {"app_key": "SlackCLIAPI", "action_key": "new_message"}})
    assert answer.status_code in (200, 201), answer.text
    return str(answer.json()["id"])


async def until_empty(push: PushDelivery, inbox_api: TriggerInboxFake, inbox_id: str, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while inbox_api.pending(inbox_id) and asyncio.get_running_loop().time() < deadline:
        await push.sweep()
        await asyncio.sleep(0.1)


def test_a_failing_receiver_gets_every_message_again_none_acked_before_2xx(world: World, tmp_path: Path) -> None:
    """The receiver answers 503 to the first two attempts of every message: the messages are released
    and delivered again; in the end all 7 were delivered, acked only after their 2xx, signatures valid; the
    observer saw every redelivery (each message leased 3 times: 2 redeliveries) and each delivered message's lag."""
    async def scenario(store: GatewayStore) -> None:
        inbox_api, receiver, url = world
        receiver.fail_first = 2
        record = await active_inbox(inbox_api, store, "push-failing")
        ids = inbox_api.inject(record.inbox_id, *({"n": n} for n in range(7)))
        seen = PushRecord()
        push, http = deliverer(inbox_api, url, store, observer=seen)
        try:
            await until_empty(push, inbox_api, record.inbox_id, 20)
        finally:
            await http.aclose()
        assert sorted(set(receiver.delivered)) == sorted(ids)
        assert all(receiver.attempts[i] >= 3 for i in ids)
        assert receiver.acked_early == [] and receiver.bad_signatures == 0
        assert inbox_api.pending(record.inbox_id) == 0
        # at least once: a lease that expires under a slow machine may deliver a message once more
        assert seen.outcomes.count("delivered") >= 7 and seen.outcomes.count("refused") >= 14
        assert seen.redelivered >= 14  # every attempt after a message's first lease
        assert len(seen.lags) == seen.outcomes.count("delivered") and all(0.0 <= lag < 60.0 for lag in seen.lags)


    run_with_store(tmp_path, scenario)


def test_a_delivery_that_dies_midway_leaves_its_messages_for_another_replica(world: World, tmp_path: Path) -> None:
    """Replica A leases (2 s) and dies while the receiver holds the first message (its task cancelled,
    nothing acked or released); after the lease expires replica B delivers every message."""
    async def scenario(store: GatewayStore) -> None:
        inbox_api, receiver, url = world
        record = await active_inbox(inbox_api, store, "push-crash")
        ids = inbox_api.inject(record.inbox_id, {"n": 1}, {"n": 2})
        receiver.hang = {ids[0]}
        a, http_a = deliverer(inbox_api, url, store, lease=2, timeout=20)
        b, http_b = deliverer(inbox_api, url, store, lease=2)
        try:
            dying = asyncio.create_task(a.deliver(record))
            await asyncio.sleep(0.5)
            dying.cancel()  # the crash: no ack, no release
            await asyncio.gather(dying, return_exceptions=True)
            await http_a.aclose()
            assert inbox_api.pending(record.inbox_id) == 2
            receiver.hang = set()
            early = await b.deliver(record)
            assert early.leased == 0  # still under A's lease: B gets nothing yet
            await until_empty(b, inbox_api, record.inbox_id, 10)
        finally:
            await http_b.aclose()
        assert sorted(set(receiver.delivered)) == sorted(ids)
        assert receiver.acked_early == []


    run_with_store(tmp_path, scenario)


def test_two_replicas_delivering_at_once_deliver_every_message(world: World, tmp_path: Path) -> None:
    """Two deliverers sweep the same inboxes concurrently while messages keep arriving: every message is
    delivered (at least once), none acked before its 2xx, and nothing is left in Zapier."""
    async def scenario(store: GatewayStore) -> None:
        inbox_api, receiver, url = world
        records = [await active_inbox(inbox_api, store, f"push-pair-{n}") for n in range(3)]
        a, http_a = deliverer(inbox_api, url, store)
        b, http_b = deliverer(inbox_api, url, store)
        ids: list[str] = []
        try:
            for round_ in range(4):
                for r in records:
                    ids += inbox_api.inject(r.inbox_id, *({"round": round_, "n": n} for n in range(4)))
                await asyncio.gather(a.sweep(), b.sweep())
            for _ in range(20):
                if not any(inbox_api.pending(r.inbox_id) for r in records):
                    break
                await asyncio.gather(a.sweep(), b.sweep())
        finally:
            await http_a.aclose()
            await http_b.aclose()
        assert len(ids) == 48 and sorted(set(receiver.delivered)) == sorted(ids)
        assert receiver.acked_early == [] and receiver.bad_signatures == 0


    run_with_store(tmp_path, scenario)


def test_a_notification_token_names_the_inbox_and_a_forged_one_is_refused(world: World, tmp_path: Path) -> None:
    """A sealed token delivers its inbox in the background; a forged one is a 404 (BadSealedToken)."""
    async def scenario(store: GatewayStore) -> None:
        from keysvc.partner.triggers.sealing import BadSealedToken

        inbox_api, receiver, url = world
        record = await active_inbox(inbox_api, store, "push-notified")
        [message_id] = inbox_api.inject(record.inbox_id, {"hello": "world"})
        sealer = NotificationSealer(b"n" * 32)
        push, http = deliverer(inbox_api, url, store)
        try:
            token = sealer.seal(record.inbox_id, record.user_id, record.tenant_id)
            assert push.notified(sealer, token) == record.inbox_id
            for _ in range(100):
                if message_id in receiver.delivered and not inbox_api.pending(record.inbox_id):
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(BadSealedToken):
                push.notified(sealer, token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
            await push.aclose()
        finally:
            await http.aclose()
        assert receiver.delivered == [message_id] and inbox_api.pending(record.inbox_id) == 0


    run_with_store(tmp_path, scenario)


def test_an_inboxs_subscription_comes_from_the_store_when_it_recorded_the_inbox(world: World, tmp_path: Path) -> None:
    """The least-privilege look-up (TriggerInboxes.subscription): an inbox the store recorded for this user
    answers its app and trigger with no call to Zapier; one recorded for another user costs one GET of the
    inbox, Zapier's answer wins over the record and is remembered (no second GET)."""
    from keysvc.partner.triggers.inputs import User

    async def scenario(store: GatewayStore) -> None:
        inbox_api = world[0]
        record = await active_inbox(inbox_api, store, "least-privilege")
        settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), total_timeout=5.0)
        http = PartnerHttp()
        api = PartnerApi(settings, http, ReplicaBudget(ApiBudget(6000, 100)), base_url=inbox_api.api_url,
                         name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
        inboxes = TriggerInboxes(Tokens(inbox_api), api)
        inboxes.push_to(store, lambda inbox, user, tenant: f"http://127.0.0.1:1/{inbox}")
        try:
            owner = User(USER[0], USER[1])
            before = sum(inbox_api.counts().values())
            assert await inboxes.subscription(owner, record.inbox_id) == ("SlackCLIAPI", "new_message")
            assert sum(inbox_api.counts().values()) == before, "the store knew the inbox: no call to Zapier"
            await store.record_inbox(InboxRecord(record.inbox_id, "t-9", "u-other", "x", "GmailAPI", "new_email"))
            before = inbox_api.counts()
            # the record now names another user: not trusted for this caller, Zapier is asked
            assert await inboxes.subscription(owner, record.inbox_id) == ("SlackCLIAPI", "new_message")
            assert inbox_api.counts() - before == {"GET /inboxes/{id}": 1}
            await store.delete_inbox(record.inbox_id)  # Zapier's answer is remembered: no second GET
            assert await inboxes.subscription(owner, record.inbox_id) == ("SlackCLIAPI", "new_message")
            assert inbox_api.counts() - before == {"GET /inboxes/{id}": 1}
        finally:
            await http.aclose()

    run_with_store(tmp_path, scenario)


def test_the_sweep_notices_an_inbox_paused_for_authentication(world: World, tmp_path: Path) -> None:
    """A recorded inbox Zapier paused for `authentication` and drained answers the sweep's lease 409; the
    sweep then GETs it once, so its status is counted (paused for authentication) with no caller involved
    (that GET is TriggerInboxes.inbox, which also expires the inbox's connection in the registry)."""
    from keysvc.partner.registry import MemoryRegistry

    class Seen:
        def __init__(self) -> None:
            self.statuses: list[tuple[str, str | None]] = []

        def messages(self, event: str, count: int) -> None:
            """Not needed here."""

        def inbox_seen(self, status: str, paused_reason: str | None = None) -> None:
            self.statuses.append((status, paused_reason))

    async def scenario(store: GatewayStore) -> None:
        inbox_api, _, url = world
        record = await active_inbox(inbox_api, store, "paused-for-auth")
        inbox_api.force_status(record.inbox_id, "paused", "authentication")
        settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), total_timeout=5.0)
        http = PartnerHttp()
        api = PartnerApi(settings, http, ReplicaBudget(ApiBudget(6000, 100)), base_url=inbox_api.api_url,
                         name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
        seen, registry = Seen(), MemoryRegistry()
        inboxes = TriggerInboxes(Tokens(inbox_api), api, observer=seen, registry=registry)
        target = Target(url, (WebhookSecret.parse(SECRET),), lease_seconds=2, batch=5, timeout=5.0)
        push = PushDelivery(inboxes, http, store, target)
        try:
            before = inbox_api.counts()
            await push.sweep()
            assert inbox_api.counts() - before == {"POST /inboxes/{inbox_id}/messages/lease": 1,
                                                   "GET /inboxes/{id}": 1}
            assert ("paused", "authentication") in seen.statuses
        finally:
            await push.aclose()
            await http.aclose()

    run_with_store(tmp_path, scenario)


def test_the_notification_route_answers_202_at_once_and_delivers(world: World, tmp_path: Path) -> None:
    """POST {public_url}/zapier/inbox-notifications/{sealed}: 202 and the inbox delivered in the background;
    the URL keysvc gives the inbox is that route; a forged token is 404, another method 405, a body over
    64 KiB 413 (the listener answers those errors as JSON)."""
    from keysvc.config.exchange import TriggerDeliverySettings
    from keysvc.errors import MethodNotAllowed, NotFound, PayloadTooLarge
    from keysvc.partner.trigger_notify import PREFIX, Push

    inbox_api, receiver, url = world

    async def call(push: Push, method: str, path: str, body: bytes = b"{}") -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        chunks = [body[i:i + 4096] for i in range(0, len(body), 4096)] or [b""]

        async def receive() -> dict[str, Any]:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        status = await push.route().handle({"type": "http", "method": method, "path": path}, receive, send)
        assert status == sent[0]["status"]
        return sent

    async def scenario(store: GatewayStore) -> None:
        record = await active_inbox(inbox_api, store, "push-route")
        [message_id] = inbox_api.inject(record.inbox_id, {"via": "notification"})
        one, http = deliverer(inbox_api, url, store)
        settings = TriggerDeliverySettings(url, Secret(SECRET), "https://keys.example.com", lease=60)
        push = Push(settings, one._inboxes, http, store)
        try:
            notification_url = push.notification_url(record.inbox_id, record.user_id, record.tenant_id)
            assert notification_url.startswith("https://keys.example.com" + PREFIX)
            assert record.user_id not in notification_url and record.inbox_id not in notification_url
            path = notification_url.removeprefix("https://keys.example.com")
            answer = await call(push, "POST", path, b'{"inbox_id": "x", "received_message_count": 1}')
            assert answer[0]["status"] == 202
            for _ in range(100):
                if message_id in receiver.delivered and not inbox_api.pending(record.inbox_id):
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(NotFound):
                await call(push, "POST", PREFIX + "A" * 80)
            with pytest.raises(MethodNotAllowed):
                await call(push, "GET", path)
            with pytest.raises(PayloadTooLarge):
                await call(push, "POST", path, b"x" * (65 << 10))
            await push.delivery.aclose()
        finally:
            await http.aclose()
        assert receiver.delivered == [message_id]

    run_with_store(tmp_path, scenario)


def _worker(inbox_api: TriggerInboxFake, url: str, db: Path, lease: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KEYSVC_TEST_INBOX_TOKEN": inbox_api.issue_token(USER)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.trigger_push_worker", inbox_api.api_url, url,
                             f"sqlite:///{db}", str(lease)], env=env, stdout=subprocess.PIPE,
                            cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"sweeping"
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_kill_9_of_a_replica_mid_delivery_and_two_replicas_at_once(world: World, tmp_path: Path) -> None:
    """Real processes on one SQLite store: replica A leases (3 s) and is killed with SIGKILL while the
    receiver holds its first POST; the messages come back when the lease expires and replicas B and C,
    sweeping at the same time while more messages arrive, deliver every one; nothing was acked before its
    2xx and every signature verified."""
    inbox_api, receiver, url = world
    db = tmp_path / "gateway.db"

    async def prepare(store: GatewayStore) -> list[InboxRecord]:
        return [await active_inbox(inbox_api, store, f"push-kill-{n}") for n in range(2)]

    records: list[InboxRecord] = []

    async def scenario(store: GatewayStore) -> None:
        records.extend(await prepare(store))

    run_with_store(tmp_path, scenario)
    ids = inbox_api.inject(records[0].inbox_id, {"n": 1}, {"n": 2})
    receiver.hang = set(ids)
    a = _worker(inbox_api, url, db, 3)
    try:
        deadline = time.monotonic() + 10
        while not receiver.attempts and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.attempts, "replica A never POSTed"
        a.kill()  # SIGKILL, mid-delivery: no ack, no release
        a.wait()
        assert a.returncode == -9
        assert inbox_api.pending(records[0].inbox_id) == 2 and receiver.delivered == []
        receiver.hang = set()
        b, c = _worker(inbox_api, url, db, 3), _worker(inbox_api, url, db, 3)
        try:
            for n in range(3):
                ids += inbox_api.inject(records[n % 2].inbox_id, *({"more": n, "i": i} for i in range(5)))
                time.sleep(0.2)
            deadline = time.monotonic() + 20
            while any(inbox_api.pending(r.inbox_id) for r in records) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            for proc in (b, c):
                _stop(proc)
    finally:
        _stop(a)
    assert not any(inbox_api.pending(r.inbox_id) for r in records)
    assert sorted(set(receiver.delivered)) == sorted(ids) and len(ids) == 17
    assert receiver.acked_early == [] and receiver.bad_signatures == 0
