"""The Trigger Inbox fake (tests/trigger_inbox_fake) behaves like Zapier's published API: test
infrastructure, so a few fast checks that its behaviour and its request validation are what the tests of
keysvc will rely on. Its answers are checked against the published answer shapes and read back with
keysvc's own parsers (keysvc.partner.triggers.answers), so fake and parsers agree on the document."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keysvc.partner.triggers.answers import parse_inbox, parse_inbox_page, parse_lease, parse_problem, parse_settled
from tests.exchange_support import serve
from tests.helpers import wait_for
from tests.partner_server import ACCESS_TOKEN, Grant, PartnerState
from tests.trigger_inbox_fake import TriggerInboxFake, partner_tokens, running_trigger_inbox
from tests.trigger_inbox_fake import schemas as s

pytestmark = pytest.mark.system

USER = ("u-1", "t-9")
SUB = {"app_key": "SlackCLIAPI", "action_key": "new_message", "connection_id": "1001", "inputs": {"channel": "C1"}}


@dataclass
class Clock:
    """Epoch seconds that move only when a test says so."""

    now: float

    def __call__(self) -> float:
        return self.now


def _valid(schema: s.Schema, value: Any) -> Any:
    errors = [e.message for e in Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
              .iter_errors(value)]
    assert errors == []
    return value


@pytest.fixture
def clock() -> Clock:
    return Clock(time.time())


@pytest.fixture
def fake(clock: Clock) -> Iterator[TriggerInboxFake]:
    with running_trigger_inbox(clock=clock, activation_delay=5) as running:
        yield running


def _client(fake: TriggerInboxFake, user: tuple[str, str]) -> httpx.Client:
    token = fake.issue_token(user)
    return httpx.Client(base_url=fake.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=5)


@pytest.fixture
def api(fake: TriggerInboxFake) -> Iterator[httpx.Client]:
    with _client(fake, USER) as client:
        yield client


def _ensure(api: httpx.Client, key: str = "orders", sub: dict[str, Any] = SUB, **extra: Any) -> httpx.Response:
    return api.put("/inboxes", json={"key": key, "subscription": sub, **extra})


def _active_inbox(fake: TriggerInboxFake, api: httpx.Client, clock: Clock, **extra: Any) -> str:
    inbox_id: str = _ensure(api, **extra).json()["id"]
    clock.now += 5
    return inbox_id


def test_ensure_is_idempotent_by_key_and_refuses_another_subscription(
        fake: TriggerInboxFake, api: httpx.Client, clock: Clock) -> None:
    """PUT creates once (initializing, active after the delay), returns the same inbox again, and answers 409
    for the same key with another subscription; POST with a taken key is 409 too. No violations."""
    first = _ensure(api)
    assert first.status_code == 201
    inbox = parse_inbox(_valid(s.INBOX, first.json()))
    assert (inbox.status, inbox.key) == ("initializing", "orders")
    again = _ensure(api)
    assert again.status_code == 200 and again.json()["id"] == inbox.id
    clock.now += 5
    assert parse_inbox(_valid(s.INBOX, api.get(f"/inboxes/{inbox.id}").json())).status == "active"
    other = _ensure(api, sub={**SUB, "inputs": {"channel": "C2"}})
    assert other.status_code == 409 and parse_problem(_valid(s.ERROR_ANSWER, other.json())) is not None
    assert api.post("/inboxes", json={"key": "orders", "subscription": SUB}).status_code == 409
    assert _ensure(api, notification_url="http://127.0.0.1:9/n").json()["notification_url"] is None
    assert fake.violations == []


def test_a_lease_is_exclusive_expires_and_gives_its_messages_back(
        fake: TriggerInboxFake, api: httpx.Client, clock: Clock) -> None:
    """Leased messages are not leased again until the lease expires; then they come back (lease_count 2)."""
    inbox_id = _active_inbox(fake, api, clock)
    ids = fake.inject(inbox_id, {"n": 1}, {"n": 2}, {"n": 3})
    first = parse_lease(_valid(s.LEASE_ANSWER, api.post(f"/inboxes/{inbox_id}/messages/lease",
                                                         json={"lease_seconds": 30, "lease_limit": 2}).json()))
    assert [m.id for m in first.messages] == ids[:2]
    second = parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={}).json())
    assert [m.id for m in second.messages] == ids[2:]
    assert parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={}).json()).messages == ()
    clock.now += 31
    fake.tick()
    again = parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={"lease_limit": 100}).json())
    assert [m.id for m in again.messages] == ids[:2]
    assert [m.lease_count for m in again.messages] == [2, 2]
    assert fake.violations == []


def test_ack_removes_and_release_gives_back_by_lease_and_message_ids(
        fake: TriggerInboxFake, api: httpx.Client, clock: Clock) -> None:
    """Ack one message of a lease, release the rest; an unknown or expired lease settles nothing (200)."""
    inbox_id = _active_inbox(fake, api, clock)
    ids = fake.inject(inbox_id, "a", "b", "c")
    lease = parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={"lease_seconds": 60}).json())
    assert lease.lease_id is not None
    acked = api.post(f"/inboxes/{inbox_id}/messages/ack", json={"lease_id": lease.lease_id, "message_ids": [ids[0]]})
    assert parse_settled(_valid(s.ACK_ANSWER, acked.json()), "acked").message_ids == (ids[0],)
    released = api.post(f"/inboxes/{inbox_id}/messages/release", json={"lease_id": lease.lease_id})
    assert parse_settled(_valid(s.RELEASE_ANSWER, released.json()), "released").message_ids == tuple(ids[1:])
    assert fake.pending(inbox_id) == 2
    nothing = api.post(f"/inboxes/{inbox_id}/messages/ack", json={"lease_id": lease.lease_id})
    assert nothing.json() == {"acked_id": None, "results": []}
    relet = parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={"lease_seconds": 1}).json())
    clock.now += 2
    late = api.post(f"/inboxes/{inbox_id}/messages/ack", json={"lease_id": relet.lease_id})
    assert late.json()["results"] == [] and fake.pending(inbox_id) == 2
    assert fake.violations == []


def test_the_list_pages_and_filters(fake: TriggerInboxFake, api: httpx.Client, clock: Clock) -> None:
    """GET /inboxes: count across pages, limit/offset pages, next links, and key and status filters."""
    for i in range(12):
        _ensure(api, key=f"k{i:02}")
    with _client(fake, ("x", "y")) as other:
        _ensure(other, key="theirs")
    first = parse_inbox_page(_valid(s.INBOX_LIST, api.get("/inboxes").json()))
    assert (first.count, len(first.inboxes), first.has_next) == (12, 10, True)
    last = parse_inbox_page(api.get("/inboxes", params={"limit": 5, "offset": 10}).json())
    assert ([i.key for i in last.inboxes], last.has_next) == (["k10", "k11"], False)
    assert [i.key for i in parse_inbox_page(api.get("/inboxes", params={"key": "k03"}).json()).inboxes] == ["k03"]
    clock.now += 5
    api.post(f"/inboxes/{first.inboxes[0].id}/pause")
    paused = parse_inbox_page(api.get("/inboxes", params={"status": "paused"}).json())
    assert [(i.key, i.paused_reason) for i in paused.inboxes] == [("k00", "user")]
    assert fake.violations == []


def test_pause_resume_delete_and_a_drained_paused_inbox(fake: TriggerInboxFake, api: httpx.Client,
                                                        clock: Clock) -> None:
    """Pause keeps messages leasable, drops new ones; drained and paused, a lease is 409; resume goes back
    through initializing; a forced pause for authentication shows in the lease's inbox_attributes; delete."""
    inbox_id = _active_inbox(fake, api, clock)
    fake.inject(inbox_id, "kept")
    assert api.post(f"/inboxes/{inbox_id}/pause").json()["status"] == "paused"
    assert fake.inject(inbox_id, "dropped") == []
    lease = parse_lease(api.post(f"/inboxes/{inbox_id}/messages/lease", json={}).json())
    assert [m.payload for m in lease.messages] == ["kept"]
    api.post(f"/inboxes/{inbox_id}/messages/ack", json={"lease_id": lease.lease_id})
    assert api.post(f"/inboxes/{inbox_id}/messages/lease", json={}).status_code == 409
    assert api.post(f"/inboxes/{inbox_id}/resume").json()["status"] == "initializing"
    clock.now += 5
    fake.force_status(inbox_id, "paused", "authentication")
    fake.inject(inbox_id, "x")
    assert parse_inbox(api.get(f"/inboxes/{inbox_id}").json()).reconnect_required
    assert api.patch(f"/inboxes/{inbox_id}", json={"notification_url": "https://n.example/x"}).status_code == 200
    assert api.delete(f"/inboxes/{inbox_id}").status_code == 204
    assert api.get(f"/inboxes/{inbox_id}").status_code == 404
    assert fake.violations == []


def test_notifications_are_posted_when_messages_become_available(clock: Clock) -> None:
    """Inject, release and an expired lease each POST {inbox_id, received_message_count, redelivery} to the
    inbox's notification_url, with no message content."""
    received: list[Any] = []

    async def receive(request: Request) -> JSONResponse:
        received.append(await request.json())
        return JSONResponse({})

    with ExitStack() as stack:
        receiver = stack.enter_context(serve(Starlette(routes=[Route("/n", receive, methods=["POST"])])))
        fake = stack.enter_context(running_trigger_inbox(clock=clock))
        api = stack.enter_context(_client(fake, USER))
        inbox_id = _ensure(api, notification_url=f"{receiver}/n").json()["id"]
        fake.inject(inbox_id, {"secret": "payload"}, {"n": 2})
        wait_for(lambda: len(received) == 1, 5, "the first notification")
        lease = api.post(f"/inboxes/{inbox_id}/messages/lease", json={"lease_seconds": 1}).json()
        api.post(f"/inboxes/{inbox_id}/messages/release",
                 json={"lease_id": lease["lease_id"], "message_ids": [lease["results"][0]["id"]]})
        wait_for(lambda: len(received) == 2, 5, "the release's notification")
        clock.now += 2
        wait_for(lambda: len(received) == 3, 5, "the expiry's notification")
        for body in received:
            _valid(s.NOTIFICATION, body)
        assert [b["received_message_count"] for b in received] == [2, 1, 1]
        assert all(b["inbox_id"] == inbox_id and "secret" not in str(b) for b in received)
        assert [n.status for n in fake.notifications] == [200, 200, 200]
        assert fake.violations == []


def test_tokens_missing_unknown_expired_and_shared_with_the_partner_fake(fake: TriggerInboxFake) -> None:
    """No Bearer: 401 and a violation; unknown or expired: 400 unauthenticated (the errors guide); with
    `partner_tokens`, the Partner API fake's access tokens are accepted as they are upstream."""
    assert httpx.get(fake.api_url + "/inboxes").status_code == 401
    assert [v.where for v in fake.violations] == ["header"]
    answer = httpx.get(fake.api_url + "/inboxes", headers={"Authorization": "Bearer nope"})
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "unauthenticated"
    token = fake.issue_token(USER)
    fake.expire_token(token)
    assert httpx.get(fake.api_url + "/inboxes", headers={"Authorization": f"Bearer {token}"}).status_code == 400
    partner = PartnerState(jwks_url="http://127.0.0.1:9/", issuer="i")
    partner.issued["at-1"] = Grant("u-1", "t-9", "external", ACCESS_TOKEN, time.time() + 60)
    partner.issued["ct-1"] = Grant("u-1", "t-9", "external", "connect", time.time() + 60)
    check = partner_tokens(partner)
    assert (check("at-1"), check("ct-1"), check("zz")) == (USER, None, None)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[TriggerInboxFake, httpx.Client]]:
    """One fake for the validation table (a server per case would cost more than the cases)."""
    with running_trigger_inbox() as running, _client(running, USER) as client:
        yield running, client


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "where"),
    [
        ("PUT", "/inboxes", {"key": "k"}, 400, "body"),  # no subscription
        ("PUT", "/inboxes", {"subscription": SUB}, 400, "body"),  # no key
        ("PUT", "/inboxes", {"key": "k" * 101, "subscription": SUB}, 400, "body"),
        ("PUT", "/inboxes", {"key": "k", "subscription": SUB, "colour": 1}, 201, "body"),  # unknown: answered
        ("PUT", "/inboxes", {"name": "k", "subscription": SUB}, 201, "body"),  # deprecated alias: answered
        ("POST", "/inboxes/{id}/messages/lease", {"lease_seconds": 3601}, 400, "body"),
        ("POST", "/inboxes/{id}/messages/lease", {"lease_limit": 0}, 400, "body"),
        ("POST", "/inboxes/{id}/messages/ack", {"lease_id": "l-1"}, 400, "body"),
        ("POST", "/inboxes/{id}/messages/ack", {"lease_id": "{id}", "message_ids": []}, 400, "body"),
        ("GET", "/inboxes?status=sleeping", None, 400, "query"),
        ("GET", "/inboxes?limit=5&limit=6", None, 200, "query"),
        ("GET", "/inboxes/not-a-uuid", None, 404, "path"),
        ("GET", "/nowhere", None, 404, "path"),
    ],
)
def test_every_request_is_validated_and_mismatches_are_recorded(
        shared: tuple[TriggerInboxFake, httpx.Client], method: str, path: str, body: Any, status: int,
        where: str) -> None:
    """A request outside the published shapes is recorded in `violations` (and refused when the document
    refuses it), so a test of keysvc can assert it sent none."""
    fake, api = shared
    existing = fake.inbox_of(USER, "k")  # an earlier case of the table made it
    if existing is not None:
        api.delete(f"/inboxes/{existing.id}")
    inbox_id = _ensure(api, key="base").json()["id"]
    fake.violations.clear()
    path = path.replace("{id}", inbox_id)
    if isinstance(body, dict) and body.get("lease_id") == "{id}":
        body = {**body, "lease_id": inbox_id}
    answer = api.request(method, path, json=body)
    assert answer.status_code == status
    assert [v.where for v in fake.violations] == [where]


def test_a_non_json_body_is_a_violation(fake: TriggerInboxFake, api: httpx.Client) -> None:
    """A body sent without Content-Type: application/json is refused 415 and recorded."""
    answer = api.put("/inboxes", content=b'{"key": "k"}')
    assert answer.status_code == 415 and fake.violations[0].where == "header"


def test_throttling_injected_and_by_budget(clock: Clock) -> None:
    """fail_next answers the next requests 429 with Retry-After; `per_minute` is a sliding budget."""
    with running_trigger_inbox(clock=clock, per_minute=3) as fake, _client(fake, USER) as api:
        fake.fail_next(429, 1, retry_after=7)
        first = api.get("/inboxes")
        assert (first.status_code, first.headers["retry-after"]) == (429, "7")
        assert [api.get("/inboxes").status_code for _ in range(3)] == [200, 200, 429]
        clock.now += 61
        assert api.get("/inboxes").status_code == 200
        assert fake.violations == []


def test_the_control_endpoints_drive_the_fake_over_http(fake: TriggerInboxFake, api: httpx.Client,
                                                        clock: Clock) -> None:
    """Another process can inject messages, force a status, expire a token and read the state over HTTP."""
    inbox_id = _active_inbox(fake, api, clock)
    with httpx.Client(base_url=fake.control_url) as control:
        _drive(fake, api, control, inbox_id)


def _drive(fake: TriggerInboxFake, api: httpx.Client, control: httpx.Client, inbox_id: str) -> None:
    ids = control.post(f"/inboxes/{inbox_id}/messages", json={"payloads": [1, 2]}).json()["message_ids"]
    assert len(ids) == 2 and fake.pending(inbox_id) == 2
    control.post(f"/inboxes/{inbox_id}/status", json={"status": "paused", "paused_reason": "partner_revoked"})
    assert api.get(f"/inboxes/{inbox_id}").json()["paused_reason"] == "partner_revoked"
    control.post("/fail", json={"status": 503, "count": 1, "code": "unavailable", "retry_after": None})
    assert api.get("/inboxes").status_code == 503
    control.post("/tokens/expire", json={"token": api.headers["authorization"][7:]})
    assert api.get("/inboxes").status_code == 400
    state = control.get("/state").json()
    assert state["inboxes"][inbox_id]["pending"] == 2 and state["violations"] == []


def test_concurrent_leases_never_hand_out_the_same_message(fake: TriggerInboxFake, api: httpx.Client,
                                                           clock: Clock) -> None:
    """Four consumers leasing at once: every message is leased by exactly one of them (exclusive leases)."""
    inbox_id = _active_inbox(fake, api, clock)
    injected = set(fake.inject(inbox_id, *range(60)))
    seen: list[str] = []

    def consume() -> None:
        with _client(fake, USER) as mine:
            while True:
                lease = mine.post(f"/inboxes/{inbox_id}/messages/lease", json={"lease_limit": 3}).json()
                if not lease["results"]:
                    return
                seen.extend(m["id"] for m in lease["results"])

    workers = [threading.Thread(target=consume) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20)
    assert sorted(seen) == sorted(injected)
    assert fake.violations == []


def test_a_malformed_request_is_recorded_even_when_refused_for_its_token(fake: TriggerInboxFake) -> None:
    """Validation does not depend on the answer: a bad body with an unknown token is still a violation."""
    answer = httpx.post(f"{fake.api_url}/inboxes/{'0' * 8}-0000-4000-8000-{'0' * 12}/messages/lease",
                        json={"lease_limit": 1000}, headers={"Authorization": "Bearer unknown"})
    assert answer.status_code == 400 and answer.json()["errors"][0]["code"] == "unauthenticated"
    assert [(v.where, v.message.split(":")[0]) for v in fake.violations] == [("body", "/lease_limit")]
