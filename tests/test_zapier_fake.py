"""The fake Partner API (tests/zapier_fake) behaves as the published document says, seen with a plain httpx client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]

from tests.exchange_support import ISSUER, FakeJwks, FakeSigner, serve
from tests.partner_server import ACCESS_TOKEN, CONNECT_TOKEN, EXTERNAL_JWT, GRANT_TYPE, Grant
from tests.zapier_fake import App, Budget, InputField, RunBehaviour, ZapierFake, running_zapier, schemas

ALICE = ("u-alice", "t-1")
BOB = ("u-bob", "t-1")


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mismatches(schema: schemas.Schema, value: Any) -> list[str]:
    """Every way `value` fails `schema` (empty when it matches)."""
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(value)]


@pytest.fixture
def clock() -> ManualClock:
    """The fake's clock for rate windows and action-id lifetimes."""
    return ManualClock()


@pytest.fixture
def zapier(clock: ManualClock) -> Iterator[ZapierFake]:
    """A running fake with one app that needs auth, one action with a paged SELECT field."""
    with running_zapier(clock=clock, budget=Budget(per_ip=None, per_partner=None)) as fake:
        slack = fake.add_app("Slack", categories=("team-chat",))
        channels = [(f"C{i:02}", f"#channel-{i}") for i in range(23)]
        fake.add_action(
            slack,
            "send_message",
            "Send Message",
            fields=[InputField("channel", is_required=True, choices=channels), InputField("text")],
        )
        fake.add_action(slack, "new_message", "New Message", action_type="READ")
        yield fake


def slack(fake: ZapierFake) -> App:
    """The seeded app."""
    return next(a for a in fake.apps.values() if a.title == "Slack")


def client(fake: ZapierFake, user: tuple[str, str] = ALICE, token: str | None = None) -> httpx.Client:
    """An httpx client on the fake's Partner API with `user`'s access token."""
    bearer = token if token is not None else fake.access_token(user)
    return httpx.Client(base_url=fake.api_url, headers={"Authorization": f"Bearer {bearer}"}, timeout=10)


def lookup(http: httpx.Client, app: App, action_type: str | None = None) -> dict[str, str]:
    """key -> id from one actions lookup."""
    params = {"app": app.id, **({"action_type": action_type} if action_type else {})}
    answer = http.get("/v2/actions", params=params)
    assert answer.status_code == 200
    assert mismatches(schemas.one_element_array(schemas.ACTIONS_RESPONSE), answer.json()) == []
    return {a["key"]: a["id"] for a in answer.json()[0]["data"]}


def body(auth: str | None, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `{"data": {"authentication", "inputs"}}` body of inputs and choices."""
    return {"data": {"authentication": auth, "inputs": inputs or {}}}


def error_code(answer: httpx.Response) -> str:
    """The single error's code, after checking the document's ErrorResponse shape."""
    assert mismatches(schemas.ERROR_RESPONSE, answer.json()) == []
    (item,) = answer.json()["errors"]
    assert set(item) == {"status", "code", "title", "detail", "source", "meta"}
    assert item["status"] == answer.status_code
    return str(item["code"])


def test_authentications_are_the_users_own_paged_by_links_next(zapier: ZapierFake) -> None:
    """23 connections of one user come in pages of 10, 10 and 3 following links.next; another user's are
    never listed; some items carry the app expanded; each page has the document's object shape."""
    app = slack(zapier)
    mine = zapier.add_connections(ALICE, app, 23, expired_every=4)
    zapier.add_connections(BOB, app, 3)
    seen: list[dict[str, Any]] = []
    sizes = []
    with client(zapier) as http:
        url: str | None = f"/v2/authentications?app={app.id}"
        while url is not None:
            answer = http.get(url)
            assert answer.status_code == 200
            page = answer.json()
            assert mismatches(schemas.AUTHENTICATION_RESPONSE, page) == []
            sizes.append(len(page["data"]))
            seen.extend(page["data"])
            url = page["links"]["next"]
    assert sizes == [10, 10, 3]
    assert [c.id for c in mine] == [item["id"] for item in seen]
    assert {item["is_expired"] for item in seen} == {True, False}
    assert sum(1 for c in mine if c.is_expired) == sum(1 for item in seen if item["is_expired"])
    expanded = [item["app"] for item in seen if isinstance(item["app"], dict)]
    assert expanded and all(a["id"] == app.id for a in expanded)
    assert any(item["app"] == app.id for item in seen)
    assert zapier.violations == []


def test_apps_answer_the_one_element_array_envelope_and_page(zapier: ZapierFake) -> None:
    """GET /v2/apps answers `[{links, meta, data}]` as the document types it, filters by query, pages by
    limit/offset with links.next."""
    for title in ("Gmail", "Google Sheets", "Google Calendar"):
        zapier.add_app(title)
    with client(zapier) as http:
        first = http.get("/v2/apps", params={"query": "google", "limit": 1})
        assert first.status_code == 200
        assert mismatches(schemas.one_element_array(schemas.EXPANDED_APPS_RESPONSE), first.json()) == []
        (page,) = first.json()
        assert page["meta"] == {"count": 2, "limit": 1, "offset": 0}
        second = http.get(page["links"]["next"]).json()[0]
        assert second["links"]["next"] is None
    titles = {page["data"][0]["title"], second["data"][0]["title"]}
    assert titles == {"Google Sheets", "Google Calendar"}
    assert zapier.violations == []


def test_array_envelopes_can_be_switched_off(zapier: ZapierFake) -> None:
    """With `array_envelopes=False` the lists the document wraps in an array come bare (the other form a
    caller accepts), still matching the object schema."""
    zapier.array_envelopes = False
    with client(zapier) as http:
        apps = http.get("/v2/apps").json()
        actions = http.get("/v2/actions", params={"app": slack(zapier).id}).json()
    assert mismatches(schemas.EXPANDED_APPS_RESPONSE, apps) == []
    assert mismatches(schemas.ACTIONS_RESPONSE, actions) == []
    assert [a["key"] for a in actions["data"]] == ["send_message", "new_message"]


def test_action_ids_change_on_every_lookup_and_stale_ones_are_refused(zapier: ZapierFake, clock: ManualClock) -> None:
    """Two lookups give the same keys with different ids; the first lookup's id, another user's id and an id
    older than the lifetime are refused 400 with the document's error; the latest id works."""
    app = slack(zapier)
    conn = zapier.add_connection(ALICE, app)
    with client(zapier) as http, client(zapier, BOB) as other:
        old, new = lookup(http, app), lookup(http, app)
        assert old.keys() == new.keys() == {"send_message", "new_message"}
        assert old["send_message"] != new["send_message"]
        stale = http.post(f"/v2/actions/{old['send_message']}/inputs", json=body(conn.id))
        assert (stale.status_code, error_code(stale)) == (400, "invalid")
        assert "stale" in stale.json()["errors"][0]["detail"]
        foreign = other.post(f"/v2/actions/{new['send_message']}/inputs", json=body(None))
        assert (foreign.status_code, error_code(foreign)) == (400, "invalid")
        fresh = http.post(f"/v2/actions/{new['send_message']}/inputs", json=body(conn.id))
        assert fresh.status_code == 200
        assert mismatches(schemas.INPUT_FIELDS_RESPONSE, fresh.json()) == []
        assert [f["id"] for f in fresh.json()["data"]] == ["channel", "text"]
        clock.now += zapier.action_ids.ttl + 1
        expired = http.post(f"/v2/actions/{new['send_message']}/inputs", json=body(conn.id))
        assert (expired.status_code, error_code(expired)) == (400, "invalid")
    assert zapier.violations == []


def test_choices_page_through_links_next(zapier: ZapierFake) -> None:
    """The SELECT field's 23 choices come 10 a page in the one-element array envelope, `?page=` as text;
    a field without choices is refused."""
    app = slack(zapier)
    conn = zapier.add_connection(ALICE, app)
    values: list[str] = []
    with client(zapier) as http:
        action_id = lookup(http, app)["send_message"]
        url: str | None = f"/v2/actions/{action_id}/inputs/channel/choices"
        pages = []
        while url is not None:
            answer = http.post(url, json=body(conn.id))
            assert answer.status_code == 200
            assert mismatches(schemas.one_element_array(schemas.CHOICE_RESPONSE), answer.json()) == []
            (page,) = answer.json()
            pages.append(page["meta"]["page"])
            values.extend(c["value"] for c in page["data"])
            url = page["links"]["next"]
        not_select = http.post(f"/v2/actions/{action_id}/inputs/text/choices", json=body(conn.id))
    assert pages == [1, 2, 3]
    assert values == [f"C{i:02}" for i in range(23)]
    assert not_select.status_code == 400
    assert zapier.violations == []


def run(http: httpx.Client, app: App, auth: str | None, inputs: dict[str, Any]) -> str:
    """Create an action run of send_message with a fresh id; its run id."""
    action_id = lookup(http, app)["send_message"]
    answer = http.post(
        "/v2/action-runs", json={"data": {"action": action_id, "authentication": auth, "inputs": inputs}}
    )
    assert answer.status_code == 200
    assert mismatches(schemas.RUN_ACTION_RESPONSE, answer.json()) == []
    return str(answer.json()["data"]["id"])


def poll(http: httpx.Client, run_id: str, times: int) -> list[dict[str, Any]]:
    """`times` GETs of the run's status, each checked against the document's shape."""
    out = []
    for _ in range(times):
        answer = http.get(f"/v2/action-runs/{run_id}")
        assert answer.status_code == 200
        out.append(answer.json()["data"])
    return out


def test_runs_pass_through_pending_statuses_then_end(zapier: ZapierFake) -> None:
    """A run answers its pending statuses for the configured polls, then success with results, and stays
    final; a queued throttled run ends `error` with a `throttled` item carrying `delay`."""
    app = slack(zapier)
    conn = zapier.add_connection(ALICE, app)
    zapier.queue_runs(RunBehaviour(pending_polls=3, pending=("queued", "running")), RunBehaviour.throttled(delay=7))
    with client(zapier) as http:
        first = poll(http, run(http, app, conn.id, {"channel": "C01", "text": "hi"}), 5)
        throttled = poll(http, run(http, app, conn.id, {"channel": "C01"}), 2)
        plain = poll(http, run(http, app, conn.id, {"channel": "C02"}), 3)
    assert [d["status"] for d in first] == ["queued", "running", "queued", "success", "success"]
    assert first[-1]["results"] == [{"channel": "C01", "text": "hi"}]
    assert [d["status"] for d in throttled] == ["waiting", "error"]
    assert throttled[-1]["errors"][0]["code"] == "throttled" and throttled[-1]["errors"][0]["delay"] == 7
    assert [d["status"] for d in plain] == ["waiting", "waiting", "success"]
    for data in throttled + plain:  # the document's statuses only (queued/running are outside its enum)
        assert mismatches(schemas.ACTION_RUN_RESPONSE, {"data": data}) == []
    assert zapier.violations == []


def test_runs_end_in_error_for_expired_connection_missing_input_and_throttle_every(zapier: ZapierFake) -> None:
    """An expired connection ends the run `authentication`, a missing required input `user`, and with
    `throttle_every=2` every second run ends `throttled`; another user cannot read a run (404)."""
    app = slack(zapier)
    live, dead = zapier.add_connection(ALICE, app), zapier.add_connection(ALICE, app, expired=True)
    zapier.throttle_every = 2
    with client(zapier) as http, client(zapier, BOB) as other:
        expired = poll(http, run(http, app, dead.id, {"channel": "C01"}), 2)[-1]
        missing = poll(http, run(http, app, live.id, {}), 2)[-1]
        codes = [poll(http, run(http, app, live.id, {"channel": "C01"}), 3)[-1]["errors"] for _ in range(2)]
        foreign = other.get(f"/v2/action-runs/{run(http, app, live.id, {'channel': 'C01'})}")
    assert (expired["status"], expired["errors"][0]["code"]) == ("error", "authentication")
    assert (missing["status"], missing["errors"][0]["code"]) == ("error", "user")
    # runs 1 and 2 above were the 1st and 2nd; these are the 3rd (plain) and 4th (throttled)
    assert [[e["code"] for e in errors] for errors in codes] == [[], ["throttled"]]
    assert (foreign.status_code, error_code(foreign)) == (404, "not_found")
    assert zapier.violations == []


def test_budget_exceeded_answers_429_with_retry_after(zapier: ZapierFake, clock: ManualClock) -> None:
    """Past the per-IP budget the fake answers 429 with Retry-After; refused requests count too; once
    Retry-After seconds have passed one more request is admitted."""
    zapier.budget = Budget(per_ip=3, per_partner=150, window=60.0)
    with client(zapier) as http:
        statuses = []
        for step in range(5):
            clock.now += 1
            statuses.append(http.get("/v2/apps").status_code)
            if step == 3:
                refused = http.get("/v2/apps")
        assert statuses == [200, 200, 200, 429, 429]
        assert (refused.status_code, error_code(refused)) == (429, "throttled")
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        clock.now += retry_after
        assert http.get("/v2/apps").status_code == 200
    assert zapier.count("GET /v2/apps") == 7
    assert zapier.count("GET /v2/apps", status=429) == 3


def test_partner_budget_counts_every_client(zapier: ZapierFake, clock: ManualClock) -> None:
    """The per-partner budget is shared by every user's requests."""
    zapier.budget = Budget(per_ip=None, per_partner=2)
    with client(zapier) as alice, client(zapier, BOB) as bob:
        assert [alice.get("/v2/apps").status_code, bob.get("/v2/apps").status_code] == [200, 200]
        assert bob.get("/v2/apps").status_code == 429


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "where"),
    [
        ("GET", "/v2/authentications", None, 400, "query"),  # app is required
        ("GET", "/v2/authentications?app=not-a-uuid", None, 400, "query"),
        ("GET", "/v2/apps?limit=ten", None, 400, "query"),
        ("GET", "/v2/actions?app={app}&action_type=write", None, 400, "query"),  # enum is upper case
        ("POST", "/v2/action-runs", {"data": {"action": "x", "inputs": {}}}, 400, "body"),  # authentication
        ("POST", "/v2/action-runs", {"action": "x", "authentication": None, "inputs": {}}, 400, "body"),
        ("POST", "/v2/actions/{action}/inputs", {"data": {"authentication": 5, "inputs": {}}}, 400, "body"),
        ("POST", "/v2/actions/{action}/inputs", b"{not json", 400, "body"),
        ("POST", "/v2/actions/{action}/inputs", "form=1", 415, "header"),
        ("GET", "/v2/apps?page=2", None, 200, "query"),  # not a parameter of /v2/apps: ignored, recorded
        ("POST", "/v2/actions/{action}/inputs", {"data": {"authentication": None, "inputs": {}, "x": 1}}, 200, "body"),
        ("GET", "/v2/zaps", None, 404, "path"),
    ],
)
def test_malformed_requests_are_recorded_as_violations(
    zapier: ZapierFake, method: str, path: str, payload: Any, status: int, where: str
) -> None:
    """Each request that does not match the published shapes leaves one violation saying where; those the
    document rejects are answered with its error shape."""
    app = zapier.add_app("Webhooks", needs_auth=False)
    zapier.add_action(app, "post")
    with client(zapier) as http:
        url = path.format(app=app.id, action=lookup(http, app)["post"])
        if isinstance(payload, bytes):
            answer = http.request(method, url, content=payload, headers={"Content-Type": "application/json"})
        elif isinstance(payload, str):
            answer = http.request(method, url, content=payload, headers={"Content-Type": "text/plain"})
        else:
            answer = http.request(method, url, json=payload)
    assert answer.status_code == status
    if status >= 400:
        error_code(answer)
    assert [v.where for v in zapier.violations] == [where]


def test_bad_tokens_are_refused_401(zapier: ZapierFake) -> None:
    """No token (a violation), an unknown one, an expired one and a connect token all get 401 with the
    document's error and a Bearer challenge; only the missing header counts as a violation."""
    app = slack(zapier)
    good = zapier.access_token(ALICE)
    connect = "ct-test"
    zapier.partner.issued[connect] = Grant(*ALICE, "", CONNECT_TOKEN, time.time() + 60)
    url = f"/v2/authentications?app={app.id}"
    answers = [httpx.get(zapier.api_url + url)]
    for token in ("at-unknown", connect):
        with client(zapier, token=token) as http:
            answers.append(http.get(url))
    with client(zapier, token=good) as http:
        assert http.get(url).status_code == 200
        zapier.expire_access_tokens()
        answers.append(http.get(url))
    assert [a.status_code for a in answers] == [401, 401, 401, 401]
    assert [error_code(a) for a in answers] == ["not_authenticated"] + ["authentication_failed"] * 3
    assert all(a.headers["WWW-Authenticate"] == "Bearer" for a in answers)
    assert [v.where for v in zapier.violations] == ["header"]


def test_token_without_the_scope_is_refused_403(zapier: ZapierFake) -> None:
    """An access token lacking `action:run` may list connections but not create a run (403)."""
    app = slack(zapier)
    with client(zapier, token=zapier.access_token(ALICE, scope="zap connection:read")) as http:
        assert http.get(f"/v2/authentications?app={app.id}").status_code == 200
        action_id = lookup(http, app)["send_message"]
        refused = http.post(
            "/v2/action-runs", json={"data": {"action": action_id, "authentication": None, "inputs": {}}}
        )
    assert (refused.status_code, error_code(refused)) == (403, "permission_denied")


def test_exchanged_access_token_identifies_the_user_and_connect_adds_a_connection(zapier: ZapierFake) -> None:
    """A partner JWT exchanged at the fake's token endpoint gives an access token for (sub, tenant): it lists
    that user's connections only, and the one `connect()` creates appears with the returned id."""
    app = slack(zapier)
    zapier.add_connections(BOB, app, 2)
    signer = FakeSigner.generate("ES256")
    with serve(FakeJwks([signer.jwk()]).app()) as jwks_url:
        zapier.trust(f"{jwks_url}/.well-known/jwks.json", ISSUER)
        now = int(time.time())
        claims = {"sub": ALICE[0], "org_id": ALICE[1], "aud": "connect.zapier.com", "iss": ISSUER}
        partner_jwt = jwt.encode(
            {**claims, "iat": now, "nbf": now, "exp": now + 120},
            signer.key,
            algorithm="ES256",
            headers={"kid": signer.kid},
        )
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": partner_jwt,
            "subject_token_type": EXTERNAL_JWT,
            "requested_token_type": ACCESS_TOKEN,
            "scope": "external connection:read zap",
            "client_id": zapier.partner.client_id,
            "client_secret": zapier.partner.client_secret,
        }
        exchanged = httpx.post(zapier.token_url, data=form, timeout=10)
    assert exchanged.status_code == 200, exchanged.text
    before = zapier.connections_of(ALICE, app)
    new_id = zapier.connect(ALICE, app)
    with client(zapier, token=exchanged.json()["access_token"]) as http:
        listed = http.get(f"/v2/authentications?app={app.id}").json()["data"]
    assert before == []
    assert [item["id"] for item in listed] == [new_id]
    assert listed[0]["is_expired"] is False
    assert zapier.violations == []
