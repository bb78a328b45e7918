"""The trigger-inbox pull API through a real `keysvc serve` process over HTTP, against the fake Trigger Inbox
API on 127.0.0.1 (which accepts the access tokens the fake Partner API's token endpoint issued to keysvc, the
same Bearer token as Zapier's): ensure, list, get, pause, resume, delete, lease with a long poll, ack,
release, lease expiry, a refused token exchanged again, a 429 turned into 503 with the budget cooling.
Every request keysvc sent matched the published document (0 violations) and no answer or log line holds
an access token."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from keysvc.client.zapier import SyncZapierClient
from keysvc.errors import Conflict, NotFound
from tests.helpers import KeysvcProcess, api_key, base_config, remember_secret, run_cli, sha256_hex, write_config
from tests.partner_server import ACCESS_TOKEN
from tests.trigger_inbox_fake import TriggerInboxFake, partner_tokens, running_trigger_inbox
from tests.zapier_fake import ZapierFake, running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
USER = {"user_id": "u-1", "tenant_id": "t-9"}
SUB = {"app": "SlackCLIAPI", "trigger": "new_message", "connection": "4711", "inputs": {"channel": "C1"}}
INBOXES = "/v1/zapier/trigger-inboxes"


@dataclass
class Setup:
    """One keysvc, both fakes, and every answer body seen (checked for tokens at the end)."""

    keysvc: KeysvcProcess
    zapier: ZapierFake
    inbox_api: TriggerInboxFake
    answers: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, client: str = "web", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {api_key(client)}"}
        response = httpx.request(method, self.keysvc.internal + path, headers=headers, timeout=30, **kw)
        self.answers.append(response.text)
        return response

    def ensure(self, key: str, **body: Any) -> httpx.Response:
        return self.call("PUT", f"{INBOXES}/{key}", json={**USER, **SUB, **body})

    def active_inbox(self, key: str) -> str:
        made = self.ensure(key, wait="5s")
        assert made.status_code == 200, made.text
        assert made.json()["inbox"]["status"] == "active"
        return str(made.json()["inbox"]["id"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """keysvc with token_exchange pointing at the Partner API fake and trigger_inbox_url at the inbox fake."""
    tmp = tmp_path_factory.mktemp("trigger-inbox-http")
    with running_zapier() as zapier, running_trigger_inbox(tokens=partner_tokens(zapier.partner),
                                                           activation_delay=0.3) as inbox_api:
        remember_secret(zapier.partner.client_secret)
        secret_file = tmp / "client-secret"
        secret_file.write_text(zapier.partner.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["web"] = {
            "api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": True,
        }
        for name, grant in (("narrow", {"apps": ["SlackCLIAPI"], "triggers": ["new_message"]}),
                            ("actions-only", {"apps": ["SlackCLIAPI"], "actions": ["send_message"]})):
            config["clients"][name] = {"api_key_sha256": sha256_hex(api_key(name)), "keysets": ["zapier"],
                                       "audiences": ["connect.zapier.com"], "max_ttl": "5m", "zapier": grant}
        config["token_exchange"] = {
            "keyset": "zapier", "token_url": zapier.token_url, "api_url": zapier.api_url,
            "trigger_inbox_url": inbox_api.api_url, "client_id": zapier.partner.client_id,
            "client_secret_file": str(secret_file), "run_wait_max": "10s", "lease_wait_max": "5s",
            "total_timeout": "5s", "api_rate_limit": {"per_minute": 6000, "burst": 100},
        }
        path = write_config(tmp / "keysvc.yaml", config)
        with KeysvcProcess(path, name="trigger-inbox") as keysvc:
            zapier.trust(f"{keysvc.public}/.well-known/jwks.json", ISSUER)
            s = Setup(keysvc, zapier, inbox_api)
            yield s
            tokens = list(zapier.partner.issued)
            assert tokens, "keysvc never obtained an access token"
            for token in tokens:
                assert all(token not in text for text in s.answers), "an access token in an answer"
                assert token not in keysvc.log_text(), "an access token in the log"


@pytest.fixture(autouse=True)
def no_violations(setup: Setup) -> Iterator[None]:
    """After every test: every request keysvc sent matched Zapier's published document."""
    yield
    assert setup.inbox_api.violations == []
    assert setup.zapier.violations == []


def test_ensure_is_idempotent_waits_until_active_and_refuses_another_subscription(setup: Setup) -> None:
    """PUT creates the inbox (initializing), PUT again with `wait` answers the same inbox once active, and
    the same key with another trigger is 409 conflict naming the Trigger Inbox API."""
    first = setup.ensure("orders")
    assert first.status_code == 200, first.text
    inbox = first.json()["inbox"]
    assert inbox["status"] == "initializing" and inbox["key"] == "orders"
    assert {k: inbox[k] for k in ("app", "trigger", "connection")} == {k: SUB[k] for k in ("app", "trigger",
                                                                                          "connection")}
    assert inbox["reconnect_required"] is False
    again = setup.ensure("orders", wait="5s")
    assert again.status_code == 200 and again.json()["inbox"]["id"] == inbox["id"]
    assert again.json()["inbox"]["status"] == "active"
    other = setup.ensure("orders", trigger="new_reaction")
    assert other.status_code == 409 and other.json()["error"] == "conflict"
    assert "Trigger Inbox API" in other.json()["error_description"]
    got = setup.call("GET", f"{INBOXES}/{inbox['id']}", params=USER)
    assert got.status_code == 200 and got.json()["inbox"]["id"] == inbox["id"]


def test_list_reads_every_page_and_filters_by_status(setup: Setup) -> None:
    """With more inboxes than one page, the list has them all; `status` filters; bad input is 400."""
    user = {"user_id": "u-many", "tenant_id": "t-9"}
    for n in range(12):
        made = setup.call("PUT", f"{INBOXES}/many-{n}", json={**user, **SUB})
        assert made.status_code == 200, made.text
    before = setup.inbox_api.count("GET /inboxes")
    listed = setup.call("GET", INBOXES, params=user)
    assert listed.status_code == 200, listed.text
    assert sorted(i["key"] for i in listed.json()["inboxes"]) == sorted(f"many-{n}" for n in range(12))
    assert setup.inbox_api.count("GET /inboxes") - before >= 1
    time.sleep(0.4)  # activation_delay passes
    active = setup.call("GET", INBOXES, params={**user, "status": "active"})
    assert len(active.json()["inboxes"]) == 12
    assert setup.call("GET", INBOXES, params={**user, "status": "sleepy"}).status_code == 400


def test_lease_waits_for_a_message_injected_mid_wait_then_ack(setup: Setup) -> None:
    """A lease with `wait` answers as soon as a message injected 0.5 s later is there; ack removes it; an
    empty lease within `wait` is 200 with no messages."""
    inbox_id = setup.active_inbox("wait-for-it")
    empty = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER, "wait": "0.3"})
    assert empty.status_code == 200 and empty.json() == {"lease_id": None, "leased_until": None, "messages": []}
    timer = threading.Timer(0.5, setup.inbox_api.inject, (inbox_id, {"text": "hello"}))
    timer.start()
    started = time.monotonic()
    leased = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER, "wait": "4s", "lease": "1m"})
    timer.join()
    assert leased.status_code == 200, leased.text
    assert time.monotonic() - started < 3.5
    body = leased.json()
    assert [m["payload"] for m in body["messages"]] == [{"text": "hello"}]
    acked = setup.call("POST", f"{INBOXES}/{inbox_id}/ack", json={**USER, "lease_id": body["lease_id"]})
    assert acked.status_code == 200 and acked.json() == {"acked": [body["messages"][0]["id"]]}
    assert setup.inbox_api.pending(inbox_id) == 0


def test_leases_are_exclusive_release_returns_and_expiry_returns(setup: Setup) -> None:
    """A second lease gets none of the first's messages; release gives one back at once; a lease that
    expires gives its messages back too (lease_count grows)."""
    inbox_id = setup.active_inbox("exclusive")
    setup.inbox_api.inject(inbox_id, {"n": 1}, {"n": 2})
    leased_at = time.monotonic()
    first = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER, "limit": 1, "lease": "3s"}).json()
    second = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER, "limit": 5, "lease": "1m"}).json()
    assert len(first["messages"]) == 1 and len(second["messages"]) == 1
    assert first["messages"][0]["id"] != second["messages"][0]["id"]
    nothing = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER}).json()
    assert nothing["messages"] == []
    released = setup.call("POST", f"{INBOXES}/{inbox_id}/release", json={
        **USER, "lease_id": second["lease_id"], "message_ids": [second["messages"][0]["id"]]})
    assert released.json() == {"released": [second["messages"][0]["id"]]}
    time.sleep(max(0.0, leased_at + 3.3 - time.monotonic()))  # the first lease (3 s) has expired
    back = setup.call("POST", f"{INBOXES}/{inbox_id}/lease", json={**USER, "limit": 5}).json()
    assert sorted(m["id"] for m in back["messages"]) == sorted(
        [first["messages"][0]["id"], second["messages"][0]["id"]])
    assert all(m["attributes"]["lease_count"] == 2 for m in back["messages"])


def test_pause_resume_reconnect_and_delete(setup: Setup) -> None:
    """Pause and resume answer the inbox; an inbox Zapier paused for `authentication` says
    reconnect_required; delete is 204 and the inbox is gone (404)."""
    inbox_id = setup.active_inbox("switches")
    paused = setup.call("POST", f"{INBOXES}/{inbox_id}/pause", json=USER)
    assert paused.status_code == 200 and paused.json()["inbox"]["status"] == "paused"
    assert paused.json()["inbox"]["paused_reason"] == "user"
    resumed = setup.call("POST", f"{INBOXES}/{inbox_id}/resume", json=USER)
    assert resumed.json()["inbox"]["status"] in ("initializing", "active")
    setup.inbox_api.force_status(inbox_id, "paused", "authentication")
    got = setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER).json()["inbox"]
    assert got["reconnect_required"] is True
    gone = setup.call("DELETE", f"{INBOXES}/{inbox_id}", params=USER)
    assert gone.status_code == 204 and gone.content == b""
    missing = setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_malformed_requests_are_400_before_any_call(setup: Setup) -> None:
    """Bad keys, ids, bodies and waits are 400 JSON and reach no Zapier endpoint."""
    before = sum(setup.inbox_api.counts().values())
    cases = [
        ("PUT", f"{INBOXES}/bad%20key", {"json": {**USER, **SUB}}),
        ("PUT", f"{INBOXES}/ok", {"json": {**USER, **SUB, "wait": "1h"}}),
        ("PUT", f"{INBOXES}/ok", {"json": {**USER, **SUB, "extra": 1}}),
        ("GET", f"{INBOXES}/not-a-uuid", {"params": USER}),
        ("POST", f"{INBOXES}/0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6978/lease", {"json": {**USER, "wait": "10m"}}),
        ("POST", f"{INBOXES}/0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6978/ack", {"json": {**USER, "lease_id": "x"}}),
        ("GET", INBOXES, {"params": {"user_id": "u-1"}}),
    ]
    for method, path, kw in cases:
        answer = setup.call(method, path, **kw)
        assert answer.status_code == 400, (path, answer.text)
        assert set(answer.json()) == {"error", "error_description"}
    assert sum(setup.inbox_api.counts().values()) == before


def test_a_refused_token_is_exchanged_again_once(setup: Setup) -> None:
    """Zapier's 400 `unauthenticated` (an expired access token) makes keysvc drop the cached token,
    exchange a new one and retry once: the caller sees 200."""
    inbox_id = setup.active_inbox("reauth")
    exchanges = setup.zapier.partner.calls_for(ACCESS_TOKEN)
    refused = setup.inbox_api.count("GET /inboxes/{id}", 400)
    setup.zapier.expire_access_tokens()
    got = setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER)
    assert got.status_code == 200, got.text
    assert setup.inbox_api.count("GET /inboxes/{id}", 400) == refused + 1
    assert setup.zapier.partner.calls_for(ACCESS_TOKEN) == exchanges + 1


def test_the_python_client_drives_the_whole_loop(setup: Setup) -> None:
    """SyncZapierClient's inbox methods: ensure (wait), list, get, lease with wait, release, lease, ack,
    pause, resume, delete; keysvc errors come back as keysvc.errors classes."""
    with SyncZapierClient(setup.keysvc.internal, api_key("web")) as zapier:
        made = zapier.ensure_inbox("u-1", "t-9", "client-loop", SUB["app"], SUB["trigger"], SUB["connection"],
                                   SUB["inputs"], wait=5)
        inbox_id = made["inbox"]["id"]
        assert made["inbox"]["status"] == "active"
        assert inbox_id in [i["id"] for i in zapier.inboxes("u-1", "t-9", status="active")["inboxes"]]
        assert zapier.inbox("u-1", "t-9", inbox_id)["inbox"]["key"] == "client-loop"
        [message_id] = setup.inbox_api.inject(inbox_id, {"text": "one"})
        lease = zapier.lease("u-1", "t-9", inbox_id, limit=5, lease=60, wait=2)
        assert [m["id"] for m in lease["messages"]] == [message_id]
        assert zapier.release("u-1", "t-9", inbox_id, lease["lease_id"]) == {"released": [message_id]}
        again = zapier.lease("u-1", "t-9", inbox_id)
        assert zapier.ack("u-1", "t-9", inbox_id, again["lease_id"], [message_id]) == {"acked": [message_id]}
        assert zapier.pause_inbox("u-1", "t-9", inbox_id)["inbox"]["status"] == "paused"
        assert zapier.resume_inbox("u-1", "t-9", inbox_id)["inbox"]["status"] in ("initializing", "active")
        zapier.delete_inbox("u-1", "t-9", inbox_id)
        with pytest.raises(NotFound):
            zapier.inbox("u-1", "t-9", inbox_id)
        with pytest.raises(Conflict):
            zapier.ensure_inbox("u-1", "t-9", "orders", SUB["app"], "other_trigger")


def test_the_cli_drives_an_inbox(setup: Setup) -> None:
    """`keysvc zapier ensure-inbox`, `inboxes`, `lease`, `ack`, `release`, `pause-inbox`, `resume-inbox`,
    `delete-inbox` print JSON and exit 0; a refused call is one `keysvc: CODE: ...` line and exit 1."""
    env = {"KEYSVC_API_KEY": api_key("web")}
    base = ("zapier", "--url", setup.keysvc.internal)
    who = ("--user", "u-cli", "--tenant", "t-9")

    def cli(*args: str) -> Any:
        done = run_cli(*base, *args, *who, env=env)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    made = cli("ensure-inbox", "--key", "cli", "--app", "SlackCLIAPI", "--trigger", "new_message",
               "--connection", "4711", "--inputs", '{"channel": "C1"}', "--wait", "5")
    inbox_id = made["inbox"]["id"]
    assert made["inbox"]["status"] == "active"
    assert [i["id"] for i in cli("inboxes", "--status", "active")["inboxes"]] == [inbox_id]
    [first, second] = setup.inbox_api.inject(inbox_id, {"n": 1}, {"n": 2})
    lease = cli("lease", inbox_id, "--limit", "5", "--lease", "60")
    assert sorted(m["id"] for m in lease["messages"]) == sorted([first, second])
    assert cli("release", inbox_id, "--lease-id", lease["lease_id"], "--message-id", second) == {"released": [second]}
    assert cli("ack", inbox_id, "--lease-id", lease["lease_id"], "--message-id", first) == {"acked": [first]}
    assert cli("pause-inbox", inbox_id)["inbox"]["status"] == "paused"
    assert cli("resume-inbox", inbox_id)["inbox"]["status"] in ("initializing", "active")
    assert cli("delete-inbox", inbox_id) == {"deleted": inbox_id}
    gone = run_cli(*base, "inbox", inbox_id, *who, env=env)
    assert gone.returncode == 1 and gone.stderr.startswith("keysvc: not_found: ")


def test_a_clients_grant_limits_its_apps_and_triggers_before_any_call(setup: Setup) -> None:
    """`zapier: {apps, triggers}`: ensure of another trigger or app is 403 before any call to Zapier; a
    client granted no trigger may not use any inbox route; the list shows only allowed inboxes."""
    before = sum(setup.inbox_api.counts().values())
    other = setup.call("PUT", f"{INBOXES}/narrow-1", client="narrow", json={**USER, **SUB, "trigger": "new_reaction"})
    assert other.status_code == 403 and other.json()["error"] == "forbidden"
    app = setup.call("PUT", f"{INBOXES}/narrow-2", client="narrow", json={**USER, **SUB, "app": "GmailAPI"})
    assert app.status_code == 403
    for method, path, kw in (("PUT", f"{INBOXES}/x", {"json": {**USER, **SUB}}), ("GET", INBOXES, {"params": USER})):
        assert setup.call(method, path, client="actions-only", **kw).status_code == 403
    assert sum(setup.inbox_api.counts().values()) == before
    setup.ensure("granted-other", trigger="new_reaction")  # by `web`, which may use everything
    made = setup.call("PUT", f"{INBOXES}/granted", client="narrow", json={**USER, **SUB})
    assert made.status_code == 200, made.text
    listed = setup.call("GET", INBOXES, client="narrow", params=USER).json()["inboxes"]
    assert listed and {i["trigger"] for i in listed} == {"new_message"}


def test_routes_by_inbox_id_check_the_inboxs_own_app_and_trigger(setup: Setup) -> None:
    """A client granted only `new_message` may not pause, resume, delete, lease, ack or release an inbox of
    another trigger: 403 `forbidden` with no state-changing call to Zapier (keysvc remembers the app and
    trigger of the inboxes it ensured, so no call at all); an inbox id keysvc never saw for that user costs
    one GET first (here Zapier's 404: not that user's); its own inbox works; a client with `zapier: true`
    sends no look-up."""
    made = setup.ensure("foreign-trigger", trigger="new_reaction", wait="5s")
    assert made.status_code == 200, made.text
    foreign = made.json()["inbox"]["id"]
    settle = {**USER, "lease_id": "00000000-0000-4000-8000-000000000001"}
    calls = (("POST", "/pause", {"json": USER}), ("POST", "/resume", {"json": USER}),
             ("DELETE", "", {"params": USER}), ("POST", "/lease", {"json": USER}),
             ("POST", "/ack", {"json": settle}), ("POST", "/release", {"json": settle}))
    before = setup.inbox_api.counts()
    for method, suffix, kw in calls:
        refused = setup.call(method, f"{INBOXES}/{foreign}{suffix}", client="narrow", **kw)
        assert refused.status_code == 403, (suffix, refused.text)
        assert refused.json()["error"] == "forbidden"
    assert setup.inbox_api.counts() - before == {}
    stranger = {"user_id": "u-stranger", "tenant_id": "t-9"}
    unseen = setup.call("POST", f"{INBOXES}/{foreign}/pause", client="narrow", json=stranger)
    assert unseen.status_code == 404 and unseen.json()["error"] == "not_found", unseen.text
    assert setup.inbox_api.counts() - before == {"GET /inboxes/{id}": 1}
    own = setup.call("PUT", f"{INBOXES}/narrow-own", client="narrow", json={**USER, **SUB, "wait": "5s"})
    assert own.status_code == 200, own.text
    own_id = own.json()["inbox"]["id"]
    paused = setup.call("POST", f"{INBOXES}/{own_id}/pause", client="narrow", json=USER)
    assert paused.status_code == 200 and paused.json()["inbox"]["status"] == "paused"
    before = setup.inbox_api.counts()
    assert setup.call("POST", f"{INBOXES}/{foreign}/pause", json=USER).status_code == 200  # `web`: zapier: true
    assert setup.inbox_api.counts() - before == {"POST /inboxes/{id}/pause": 1}


def test_an_ensure_may_omit_the_connection_it_named_before(setup: Setup) -> None:
    """`connection` omitted on ensure: with none recorded for (user, app key), 409 connection_required
    before any call to Zapier; `connection: null` is an app without authentication; once an ensure named
    a connection Zapier took, later ensures of that app may omit it; an inbox seen paused for
    `authentication` marks it expired: re-ensuring that inbox from the registry is 409 reconnect_required
    naming the connection, and a new ensure omitting it is 409 connection_required again."""
    user = {"user_id": "u-registry", "tenant_id": "t-9"}
    bare = {k: v for k, v in SUB.items() if k != "connection"}
    before = sum(setup.inbox_api.counts().values())
    missing = setup.call("PUT", f"{INBOXES}/reg-0", json={**user, **bare})
    assert missing.status_code == 409 and missing.json()["error"] == "connection_required", missing.text
    assert sum(setup.inbox_api.counts().values()) == before
    no_auth = setup.call("PUT", f"{INBOXES}/reg-null", json={**user, **bare, "connection": None})
    assert no_auth.status_code == 200 and no_auth.json()["inbox"]["connection"] is None, no_auth.text
    named = setup.call("PUT", f"{INBOXES}/reg-1", json={**user, **SUB, "wait": "5s"})
    assert named.status_code == 200, named.text
    omitted = setup.call("PUT", f"{INBOXES}/reg-2", json={**user, **bare, "wait": "5s"})
    assert omitted.status_code == 200, omitted.text
    assert omitted.json()["inbox"]["connection"] == SUB["connection"]
    setup.inbox_api.force_status(omitted.json()["inbox"]["id"], "paused", "authentication")
    again = setup.call("PUT", f"{INBOXES}/reg-2", json={**user, **bare})
    assert again.status_code == 409 and again.json()["error"] == "reconnect_required", again.text
    assert again.json()["connection"] == SUB["connection"]
    expired = setup.call("PUT", f"{INBOXES}/reg-3", json={**user, **bare})
    assert expired.status_code == 409 and expired.json()["error"] == "connection_required", expired.text


def test_a_connection_completed_through_connect_serves_inboxes_of_its_app_key(setup: Setup) -> None:
    """Connect opened with `connect_app` naming the app by key (`SlackCLIAPI`) records the completed
    connection under that key too, so an ensure of an inbox of that app key may omit `connection` right
    after Connect (the gateway's own entry stays keyed by the app's UUID)."""
    user = {"user_id": "u-connected", "tenant_id": "t-9"}
    slack = setup.zapier.add_app("Slack CLI", slug="SlackCLIAPI")
    started = setup.call("POST", "/v1/zapier/connect", json={**user, "app": slack.id, "connect_app": "SlackCLIAPI"})
    assert started.status_code == 200, started.text
    setup.answers.pop()  # the Connect URL carries the connect token by design (the end check is for access tokens)
    new_id = setup.zapier.connect(("u-connected", "t-9"), slack)
    done = setup.call("POST", "/v1/zapier/connect/complete",
                      json={**user, "state": started.json()["state"], "authentication_id": new_id})
    assert done.status_code == 200, done.text
    bare = {k: v for k, v in SUB.items() if k != "connection"}
    made = setup.call("PUT", f"{INBOXES}/after-connect", json={**user, **bare})
    assert made.status_code == 200, made.text
    assert made.json()["inbox"]["connection"] == new_id


def test_zz_429_is_503_with_retry_after_and_the_budget_cools(setup: Setup) -> None:
    """Zapier's 429 answers 503 unavailable with Retry-After; during the cooldown keysvc sends nothing to
    Zapier (the shared Partner API budget) and answers 503 at once."""
    inbox_id = setup.active_inbox("throttled")
    setup.inbox_api.fail_next(429, 1, retry_after=2)
    first = setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER)
    assert first.status_code == 503 and first.json()["error"] == "unavailable"
    assert int(first.headers["retry-after"]) >= 1
    assert "Trigger Inbox API" in first.json()["error_description"]
    sent = sum(setup.inbox_api.counts().values())
    second = setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER)
    assert second.status_code == 503 and "retry-after" in second.headers
    assert sum(setup.inbox_api.counts().values()) == sent
    time.sleep(2.2)
    assert setup.call("GET", f"{INBOXES}/{inbox_id}", params=USER).status_code == 200
