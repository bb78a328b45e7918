"""ZapierGateway against the fake Partner API (tests/zapier_fake) on 127.0.0.1, in this process: every
flow for real over HTTP (token exchange included), with the poll sleeps on a test clock so a run's
back-off costs no wall time. Each test ends with zero schema violations recorded by the fake."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest

from keysvc.client.exchanger import TokenExchanger
from keysvc.client.oauth import PartnerError
from keysvc.config import Secret
from keysvc.config.exchange import ApiRateLimit, TokenExchangeSettings
from keysvc.errors import Forbidden, InvalidRequest, NotFound, ReconnectRequired, RequestError, Unavailable
from keysvc.partner import gateway_inputs as requests
from keysvc.partner.budget import ApiBudget, Budget, ReplicaBudget, StoreBudget
from keysvc.partner.gateway import ZapierGateway
from keysvc.partner.outbound import AiohttpTokenEndpoint, PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.registry import ConnectionRegistry, MemoryRegistry, StoreRegistry
from keysvc.partner.state import StateCodec, state_key
from keysvc.partner.store import SharedBudget, StoreSettings, open_store
from tests.exchange_support import ISSUER, FakeJwks, FakeSigner, serve
from tests.helpers import SteppedTime
from tests.partner_server import ACCESS_TOKEN, CONNECT_TOKEN
from tests.zapier_fake import InputField, RunBehaviour, ZapierFake, running_zapier

pytestmark = pytest.mark.system

T = TypeVar("T")
USER = ("u-1", "t-9")
CALLBACK = "https://app.example/zapier/callback"


@dataclass
class Rig:
    """The fake, and what builds a gateway talking to it."""

    zapier: ZapierFake
    signer: FakeSigner
    time: SteppedTime = field(default_factory=SteppedTime)

    def settings(self, **overrides: Any) -> TokenExchangeSettings:
        values: dict[str, Any] = {
            "client_id": self.zapier.partner.client_id, "client_secret": Secret(self.zapier.partner.client_secret),
            "token_url": self.zapier.token_url, "api_url": self.zapier.api_url, "redirect_uris": (CALLBACK,),
            "connect_timeout": 2.0, "read_timeout": 5.0, "total_timeout": 10.0,
        }
        return TokenExchangeSettings(**(values | overrides))

    def run(self, use: Callable[[ZapierGateway], Awaitable[T]], *, store: Path | None = None,
            registry: MemoryRegistry | None = None, **overrides: Any) -> T:
        """Build a gateway (fresh caches and budget) and run `use` on it in a new event loop. With `store`
        (a SQLite file), the budget and the registry are the gateway store's, as with token_exchange.store;
        the token exchange goes out through the server's endpoint, within the same budget."""
        settings = self.settings(**overrides)

        async def go() -> T:
            limit = settings.api_rate_limit
            http = PartnerHttp()
            opened = None if store is None else open_store(StoreSettings.from_url(f"sqlite:///{store}"))
            budget: Budget = ReplicaBudget(ApiBudget(limit.per_minute, limit.burst), self.time)
            kept: ConnectionRegistry = registry or MemoryRegistry()
            if opened is not None:
                await opened.migrate()
                budget, kept = StoreBudget(SharedBudget(opened, limit.per_minute, limit.burst)), StoreRegistry(opened)
            endpoint = AiohttpTokenEndpoint(settings, http, budget=budget, clock=self.time, sleep=self.time.sleep)
            try:
                async with TokenExchanger(settings, self.signer, endpoint=endpoint) as exchanger:
                    api = PartnerApi(settings, http, budget, clock=self.time, sleep=self.time.sleep)
                    states = StateCodec(state_key(settings.client_secret.reveal()))
                    gateway = ZapierGateway(exchanger, api, states, clock=self.time, sleep=self.time.sleep,
                                            registry=kept, connect_theme=settings.connect_theme)
                    return await use(gateway)
            finally:
                await http.aclose()
                if opened is not None:
                    await opened.close()

        return asyncio.run(go())

    def exchanges(self, token_type: str = ACCESS_TOKEN) -> int:
        return self.zapier.partner.calls_for(token_type)


@pytest.fixture
def rig() -> Iterator[Rig]:
    """The fake Partner API, trusting a stand-in signer's JWKS; asserts no schema violation at the end."""
    signer = FakeSigner.generate("ES256")
    with serve(FakeJwks([signer.jwk()]).app()) as jwks_url, \
            running_zapier(f"{jwks_url}/.well-known/jwks.json", ISSUER) as zapier:
        yield Rig(zapier, signer)
        assert zapier.violations == []


def q(**values: str) -> list[tuple[str, str]]:
    return [("user_id", USER[0]), ("tenant_id", USER[1]), *values.items()]


def body(**values: Any) -> dict[str, Any]:
    return {"user_id": USER[0], "tenant_id": USER[1], **values}


@contextmanager
def raises(kind: type[RequestError]) -> Iterator[pytest.ExceptionInfo[RequestError]]:
    with pytest.raises(kind) as info:
        yield info


# ------------------------------------------------------------------------------------ connections


def test_connections_reads_every_page_and_names_a_usable_one(rig: Rig) -> None:
    """25 connections (every 4th expired) come back in full over 3 pages of 10; `usable` is not expired."""
    slack = rig.zapier.add_app("Slack")
    made = rig.zapier.add_connections(USER, slack, 25, expired_every=4)
    rig.zapier.add_connections(("u-2", "t-9"), slack, 3)  # someone else's: never listed
    answer = rig.run(lambda g: g.connections(requests.connections_query(q(app=slack.id))))
    assert [c["id"] for c in answer["connections"]] == [c.id for c in made]
    assert [c["is_expired"] for c in answer["connections"]] == [c.is_expired for c in made]
    assert answer["usable"] == made[0].id
    assert rig.zapier.count("GET /v2/authentications") == 3


def test_connections_usable_is_null_when_all_expired(rig: Rig) -> None:
    """With only expired connections (or none), `usable` is None: the caller opens Connect."""
    slack, empty = rig.zapier.add_app("Slack"), rig.zapier.add_app("Empty")
    rig.zapier.add_connections(USER, slack, 2, expired_every=1)
    assert rig.run(lambda g: g.connections(requests.connections_query(q(app=slack.id))))["usable"] is None
    assert rig.run(lambda g: g.connections(requests.connections_query(q(app=empty.id)))) == {
        "connections": [], "usable": None,
    }


def test_apps_lists_a_page_with_next_offset(rig: Rig) -> None:
    """/v2/apps is one page (the array envelope accepted), next_offset taken from links.next."""
    for n in range(3):
        rig.zapier.add_app(f"App {n}")
    answer = rig.run(lambda g: g.apps(requests.apps_query(q(limit="2"))))
    assert [a["title"] for a in answer["apps"]] == ["App 0", "App 1"] and answer["next_offset"] == 2
    last = rig.run(lambda g: g.apps(requests.apps_query(q(limit="2", offset="2"))))
    assert [a["title"] for a in last["apps"]] == ["App 2"] and last["next_offset"] is None


# ----------------------------------------------------------------------------------------- connect


def test_connect_then_complete_with_the_new_connection(rig: Rig) -> None:
    """connect answers a Connect URL with a fresh connect token, the redirect and the state; complete
    accepts the id the partner handed back for that user and app."""
    slack = rig.zapier.add_app("Slack")

    async def flow(g: ZapierGateway) -> tuple[dict[str, Any], dict[str, Any]]:
        started = await g.connect("web", requests.connect_body(
            body(app=slack.id, connect_app=slack.slug, redirect_uri=CALLBACK), (CALLBACK,)))
        new_id = rig.zapier.connect(USER, slack)
        done = await g.complete("web", requests.complete_body(
            body(state=started["state"], authentication_id=new_id, redirect_uri=CALLBACK)))
        return started, done

    started, done = rig.run(flow)
    url = urlsplit(started["connect_url"])
    params = parse_qs(url.query)
    assert url.path == f"/to/{slack.slug}"
    assert params["redirect_uri"] == [CALLBACK] and params["state"] == [started["state"]]
    assert params["token"][0] and 0 < started["expires_in"] <= 600
    assert done["connection"]["id"] == rig.zapier.connections_of(USER, slack)[-1].id
    assert done["connection"]["is_expired"] is False
    assert rig.exchanges(CONNECT_TOKEN) == 1


@pytest.mark.parametrize("case", ["someone else's", "expired", "another app", "made up"])
def test_complete_refuses_an_id_the_user_does_not_own_live(rig: Rig, case: str) -> None:
    """An id of another user, an expired one, one of another app or an unknown one: 403, never accepted."""
    slack, other = rig.zapier.add_app("Slack"), rig.zapier.add_app("Other")
    cid = {
        "someone else's": lambda: rig.zapier.add_connection(("u-2", "t-9"), slack).id,
        "expired": lambda: rig.zapier.add_connection(USER, slack, expired=True).id,
        "another app": lambda: rig.zapier.add_connection(USER, other).id,
        "made up": lambda: "999999",
    }[case]()

    async def flow(g: ZapierGateway) -> None:
        started = await g.connect("web", requests.connect_body(body(app=slack.id, connect_app=slack.slug), ()))
        await g.complete("web", requests.complete_body(body(state=started["state"], authentication_id=cid)))

    with raises(Forbidden):
        rig.run(flow)


def test_complete_refuses_a_state_of_another_user_or_redirect(rig: Rig) -> None:
    """A state replayed by another user, or with another redirect, is a 400 before any Partner API call."""
    slack = rig.zapier.add_app("Slack")
    cid = rig.zapier.add_connection(USER, slack).id

    async def flow(g: ZapierGateway, tamper: dict[str, Any]) -> None:
        started = await g.connect("web", requests.connect_body(
            body(app=slack.id, connect_app=slack.slug, redirect_uri=CALLBACK), (CALLBACK,)))
        await g.complete("web", requests.complete_body(
            {**body(state=started["state"], authentication_id=cid), **tamper}))

    for tamper in ({"user_id": "u-2"}, {"tenant_id": "t-1"}, {"redirect_uri": "https://evil.example/cb"}):
        with raises(InvalidRequest):
            rig.run(lambda g, t=tamper: flow(g, t))  # type: ignore[misc]
    assert rig.zapier.count("GET /v2/authentications") == 0


def test_complete_reports_the_partners_error_with_its_code(rig: Rig) -> None:
    """The redirect's `error=access_denied` is a 400 carrying that code; an undocumented code is refused
    when parsed (400 invalid_request, not repeated)."""
    slack = rig.zapier.add_app("Slack")

    async def flow(g: ZapierGateway, error: str) -> None:
        started = await g.connect("web", requests.connect_body(body(app=slack.id, connect_app=slack.slug), ()))
        await g.complete("web", requests.complete_body(
            body(state=started["state"], error=error, error_description="The user said no")))

    for error, code in (("access_denied", "access_denied"), ("server_error", "server_error")):
        with raises(PartnerError) as info:
            rig.run(lambda g, e=error: flow(g, e))  # type: ignore[misc]
        assert (info.value.status, info.value.code) == (400, code)
    with raises(InvalidRequest) as refused:
        rig.run(lambda g: flow(g, 'bad"code'))
    assert refused.value.code == "invalid_request" and "bad" not in refused.value.description


# --------------------------------------------------------------------------------- actions and runs


def seed_actions(rig: Rig) -> tuple[Any, Any, str]:
    slack = rig.zapier.add_app("Slack")
    rig.zapier.add_action(slack, "send_message", "Send Message", "WRITE", fields=[
        InputField("channel", is_required=True, choices=[(f"C{n}", f"#chan{n}") for n in range(15)]),
        InputField("text"),
    ])
    rig.zapier.add_action(slack, "find_user", "Find User", "SEARCH")
    return slack, rig.zapier.connections, rig.zapier.add_connection(USER, slack).id


def test_actions_list_stable_keys_without_ids(rig: Rig) -> None:
    """Actions come back by key, title, description and type; Zapier's per-lookup ids never leave."""
    slack, _, _ = seed_actions(rig)
    first = rig.run(lambda g: g.actions(requests.actions_query(q(app=slack.id))))
    second = rig.run(lambda g: g.actions(requests.actions_query(q(app=slack.id, action_type="SEARCH"))))
    assert [a["key"] for a in first["actions"]] == ["send_message", "find_user"]
    assert all(set(a) == {"key", "title", "description", "action_type"} for a in first["actions"])
    assert [a["key"] for a in second["actions"]] == ["find_user"]


def test_inputs_and_choices_resolve_a_fresh_id_each_time(rig: Rig) -> None:
    """Inputs and two pages of choices: each call looks the action up again (the fake refuses stale ids)."""
    slack, _, cid = seed_actions(rig)
    call = dict(app=slack.id, action_type="WRITE", connection=cid, inputs={})

    async def flow(g: ZapierGateway) -> tuple[Any, ...]:
        fields = await g.inputs(requests.inputs_body(body(**call), "send_message"))
        page1 = await g.choices(requests.choices_body(body(**call), "send_message", "channel"))
        page2 = await g.choices(requests.choices_body(body(**call, page=2), "send_message", "channel"))
        return fields, page1, page2

    fields, page1, page2 = rig.run(flow)
    assert [f["id"] for f in fields["fields"]] == ["channel", "text"]
    assert len(page1["choices"]) == 10 and page1["next_page"] == 2
    assert len(page2["choices"]) == 5 and page2["next_page"] is None
    assert rig.zapier.count("GET /v2/actions") == 3


def test_run_waits_for_the_result_with_back_off(rig: Rig) -> None:
    """A run that is pending for 3 polls answers 200 success within `wait`, polled after 1, 2, 4, 8 s:
    Partner API calls = 1 lookup + 1 create + the polls; one token exchange for two runs."""
    slack, _, cid = seed_actions(rig)
    rig.zapier.queue_runs(RunBehaviour(pending_polls=3), RunBehaviour(pending_polls=0))
    run = body(app=slack.id, action="send_message", action_type="WRITE", connection=cid,
               inputs={"channel": "C1", "text": "hi"}, wait=30)

    async def flow(g: ZapierGateway) -> tuple[Any, Any]:
        return await g.run("web", requests.run_body(run, 60)), await g.run("web", requests.run_body(run, 60))

    first, second = rig.run(flow)
    assert first.status_code == 200 and first.body["status"] == "success"
    assert first.body["results"] == [{"channel": "C1", "text": "hi"}] and first.body["errors"] == []
    assert rig.time.slept[:4] == [1.0, 2.0, 4.0, 8.0]
    assert second.status_code == 200
    assert rig.zapier.count("POST /v2/action-runs") == 2 and rig.zapier.count("GET /v2/actions") == 2
    assert rig.zapier.count("GET /v2/action-runs/{id}") == 4 + 1
    assert rig.exchanges() == 1


def test_run_without_wait_is_pending_then_polled(rig: Rig) -> None:
    """No `wait`: 202 pending with the run's id and no poll; GET with a wait then answers the result."""
    slack, _, cid = seed_actions(rig)
    rig.zapier.queue_runs(RunBehaviour(pending_polls=2))
    run = body(app=slack.id, action="send_message", action_type="WRITE", connection=cid, inputs={"channel": "C1"})

    async def flow(g: ZapierGateway) -> tuple[Any, Any]:
        created = await g.run("web", requests.run_body(run, 60))
        status = await g.run_status(requests.run_query(q(wait="10"), created.body["id"], 60))
        return created, status

    created, status = rig.run(flow)
    assert created.status_code == 202 and created.body == {"id": created.body["id"], "status": "pending"}
    assert status.status_code == 200 and status.body["status"] == "success"
    assert rig.zapier.count("GET /v2/action-runs/{id}") == 3


def test_run_that_outlasts_wait_is_pending_and_created_once(rig: Rig) -> None:
    """A run still pending at the end of `wait` answers 202; it was created exactly once."""
    slack, _, cid = seed_actions(rig)
    rig.zapier.queue_runs(RunBehaviour(pending_polls=100))
    run = body(app=slack.id, action="send_message", action_type="WRITE", connection=cid,
               inputs={"channel": "C1"}, wait=5)
    answer = rig.run(lambda g: g.run("web", requests.run_body(run, 60)))
    assert answer.status_code == 202 and sum(rig.time.slept) <= 5.0
    assert rig.zapier.count("POST /v2/action-runs") == 1


def test_run_throttled_by_the_partner_ends_error_with_its_delay(rig: Rig) -> None:
    """A run Zapier throttles ends `error` with the `throttled` item and its `delay`, not re-created."""
    slack, _, cid = seed_actions(rig)
    rig.zapier.queue_runs(RunBehaviour.throttled(delay=3))
    run = body(app=slack.id, action="send_message", action_type="WRITE", connection=cid,
               inputs={"channel": "C1"}, wait=20)
    answer = rig.run(lambda g: g.run("web", requests.run_body(run, 60)))
    assert answer.status_code == 200 and answer.body["status"] == "error"
    assert answer.body["errors"][0]["code"] == "throttled" and answer.body["errors"][0]["delay"] == 3
    assert rig.zapier.count("POST /v2/action-runs") == 1


def test_unknown_action_key_is_404_and_creates_nothing(rig: Rig) -> None:
    """A key the app does not have is a 404; no run is created."""
    slack, _, cid = seed_actions(rig)
    run = body(app=slack.id, action="no_such", action_type="WRITE", connection=cid, inputs={})
    with raises(NotFound):
        rig.run(lambda g: g.run("web", requests.run_body(run, 60)))
    assert rig.zapier.count("POST /v2/action-runs") == 0


def test_partner_400_for_the_connection_is_reconnect_required(rig: Rig) -> None:
    """An expired connection given to inputs: Zapier's 400 blames /data/authentication, so the answer is
    409 reconnect_required naming that connection (the front end opens Connect with reconnect_id)."""
    slack, _, _ = seed_actions(rig)
    expired = rig.zapier.add_connection(USER, slack, expired=True).id
    call = body(app=slack.id, action_type="WRITE", connection=expired, inputs={})
    with raises(ReconnectRequired) as info:
        rig.run(lambda g: g.inputs(requests.inputs_body(call, "send_message")))
    assert info.value.connection == expired and info.value.status == 409
    assert info.value.fields() == {"connection": expired}


def test_partner_400_is_our_400_with_its_detail(rig: Rig) -> None:
    """A choices call for an input without choices: the partner's 400 is a 400 carrying its detail."""
    slack, _, _ = seed_actions(rig)
    conn = rig.zapier.add_connection(USER, slack).id
    call = body(app=slack.id, action_type="WRITE", connection=conn, inputs={})
    with raises(InvalidRequest) as info:
        rig.run(lambda g: g.choices(requests.choices_body(call, "send_message", "no-such-input")))
    assert "choices" in info.value.description


# ------------------------------------------------------------------------------ tokens and budget


def test_revoked_access_token_is_dropped_and_replaced_once(rig: Rig) -> None:
    """After the partner answers 401 to a cached token, the gateway exchanges anew and the call succeeds."""
    slack = rig.zapier.add_app("Slack")
    rig.zapier.add_connection(USER, slack)
    query = requests.connections_query(q(app=slack.id))

    async def flow(g: ZapierGateway) -> dict[str, Any]:
        await g.connections(query)
        rig.zapier.expire_access_tokens()
        return await g.connections(query)

    assert len(rig.run(flow)["connections"]) == 1
    assert rig.exchanges() == 2
    assert rig.zapier.count("GET /v2/authentications", status=401) == 1


def test_after_a_429_nothing_is_sent_until_retry_after(rig: Rig) -> None:
    """Past the partner's budget: a 503 with Retry-After, then 503s that never reach the partner."""
    slack = rig.zapier.add_app("Slack")
    rig.zapier.budget.per_ip = 2
    query = requests.connections_query(q(app=slack.id))

    async def flow(g: ZapierGateway) -> list[RequestError]:
        errors: list[RequestError] = []
        for _ in range(5):
            try:
                await g.connections(query)
            except Unavailable as exc:
                errors.append(exc)
        return errors

    errors = rig.run(flow)
    assert len(errors) == 3 and all(e.retry_after and e.retry_after >= 1 for e in errors)
    assert rig.zapier.count("GET /v2/authentications") == 3  # 2 admitted, 1 refused with 429, then silence


def test_replica_budget_limits_what_reaches_the_partner(rig: Rig) -> None:
    """With api_rate_limit 1 a minute, burst 2: the token exchange and the first call spend it (an exchange
    counts against the budget), the second call is refused (503) without being sent."""
    slack = rig.zapier.add_app("Slack")
    query = requests.connections_query(q(app=slack.id))

    async def flow(g: ZapierGateway) -> RequestError | None:
        await g.connections(query)
        try:
            await g.connections(query)
        except Unavailable as exc:
            return exc
        return None

    error = rig.run(flow, api_rate_limit=ApiRateLimit(per_minute=1, burst=2))
    assert isinstance(error, Unavailable) and error.retry_after is not None and error.retry_after > 5
    assert rig.zapier.count("GET /v2/authentications") == 1


def test_bare_list_envelopes_are_accepted_too(rig: Rig) -> None:
    """With the fake answering apps, actions and choices as bare `{links, meta, data}` objects (the other
    form the document allows), listing apps, actions and choices and running an action all work."""
    rig.zapier.array_envelopes = False
    slack, _, cid = seed_actions(rig)
    rig.zapier.queue_runs(RunBehaviour(pending_polls=0))
    call = dict(app=slack.id, action_type="WRITE", connection=cid, inputs={})

    async def flow(g: ZapierGateway) -> tuple[Any, ...]:
        apps = await g.apps(requests.apps_query(q()))
        actions = await g.actions(requests.actions_query(q(app=slack.id)))
        choices = await g.choices(requests.choices_body(body(**call), "send_message", "channel"))
        run = await g.run("web", requests.run_body(body(**call, action="send_message", wait=5), 60))
        return apps, actions, choices, run

    apps, actions, choices, run = rig.run(flow)
    assert [a["id"] for a in apps["apps"]] == [slack.id]
    assert [a["key"] for a in actions["actions"]] == ["send_message", "find_user"]
    assert len(choices["choices"]) == 10 and run.status_code == 200


# ------------------------------------------------- the gateway store: registry, single-use state, cooldown

STORES = ["memory", "sqlite"]


def store_of(kind: str, tmp_path: Path) -> Path | None:
    return tmp_path / "gateway.db" if kind == "sqlite" else None


def run_call(connection: str | None = None, **extra: Any) -> dict[str, Any]:
    values = body(app=extra.pop("app"), action="send_message", action_type="WRITE",
                  inputs={"channel": "C1", "text": "hi"}, wait=30, **extra)
    return values if connection is None else {**values, "connection": connection}


@pytest.mark.parametrize("kind", STORES)
def test_omitted_connection_uses_the_recorded_one_or_is_409(rig: Rig, kind: str, tmp_path: Path) -> None:
    """Omitting `connection` before any is recorded: 409 connection_required, nothing sent to create a run;
    once /connections found a usable one, inputs and runs use it (memory registry and the store's)."""
    slack, _, _cid = seed_actions(rig)
    call = body(app=slack.id, action_type="WRITE", inputs={})

    async def flow(g: ZapierGateway) -> tuple[str, dict[str, Any], Any]:
        try:
            await g.inputs(requests.inputs_body(call, "send_message"))
        except RequestError as exc:
            refused = exc.code
        await g.connections(requests.connections_query(q(app=slack.id)))
        fields = await g.inputs(requests.inputs_body(call, "send_message"))
        ran = await g.run("web", requests.run_body(run_call(app=slack.id), 60))
        return refused, fields, ran

    refused, fields, ran = rig.run(flow, store=store_of(kind, tmp_path))
    assert refused == "connection_required"
    assert [f["id"] for f in fields["fields"]][:1] == ["channel"]
    assert ran.status_code == 200 and ran.body["status"] == "success"
    assert rig.zapier.count("POST /v2/action-runs") == 1


@pytest.mark.parametrize("kind", STORES)
def test_a_polled_run_ending_in_an_authentication_error_expires_its_connection(rig: Rig, kind: str,
                                                                               tmp_path: Path) -> None:
    """The same end seen by GET /v1/zapier/action-runs/{id}: the caller created the run with `wait` 0 and
    polls it. 409 reconnect_required naming the connection the run was created with, which is expired
    (omitting `connection` is then 409 connection_required), in the replica that created the run and, with
    the gateway store, in another replica too."""
    slack, _, cid = seed_actions(rig)
    store = store_of(kind, tmp_path)

    async def create(g: ZapierGateway) -> str:
        await g.connections(requests.connections_query(q(app=slack.id)))  # records cid
        rig.zapier.connections_of(USER, slack)[0].is_expired = True
        created = await g.run("web", requests.run_body({**run_call(app=slack.id), "wait": 0}, 60))
        assert created.status_code == 202
        return str(created.body["id"])

    async def poll(g: ZapierGateway, run_id: str) -> list[Any]:
        seen: list[Any] = []
        for call in (lambda: g.run_status(requests.run_query(q(wait="10"), run_id, 60)),
                     lambda: g.run("web", requests.run_body(run_call(app=slack.id), 60))):
            try:
                seen.append(await call())
            except RequestError as exc:
                seen.append((exc.code, exc.fields()))
        return seen

    async def one_replica(g: ZapierGateway) -> list[Any]:
        return await poll(g, await create(g))

    assert rig.run(one_replica, store=store) == [("reconnect_required", {"connection": cid}),
                                                 ("connection_required", {})]
    if kind == "sqlite":  # another replica on the same store polls a run the first one created
        rig.zapier.connections_of(USER, slack)[0].is_expired = False
        run_id = rig.run(create, store=store)
        assert rig.run(lambda g: poll(g, run_id), store=store) == [("reconnect_required", {"connection": cid}),
                                                                   ("connection_required", {})]


def test_a_polled_run_keysvc_did_not_create_answers_its_error_as_it_is(rig: Rig) -> None:
    """Without a store, another replica (a fresh registry) does not know the run's connection: its poll
    answers the run's authentication error as Zapier gave it (200, status error), and nothing is expired."""
    slack, _, _cid = seed_actions(rig)

    async def create(g: ZapierGateway) -> str:
        await g.connections(requests.connections_query(q(app=slack.id)))
        rig.zapier.connections_of(USER, slack)[0].is_expired = True
        created = await g.run("web", requests.run_body({**run_call(app=slack.id), "wait": 0}, 60))
        return str(created.body["id"])

    run_id = rig.run(create)
    answer = rig.run(lambda g: g.run_status(requests.run_query(q(wait="10"), run_id, 60)))
    assert answer.status_code == 200 and answer.body["status"] == "error"
    assert [e["code"] for e in answer.body["errors"]] == ["authentication"]


@pytest.mark.parametrize("kind", STORES)
def test_run_ending_in_an_authentication_error_expires_the_connection(rig: Rig, kind: str, tmp_path: Path) -> None:
    """A run whose connection Zapier finds expired ends with an `authentication` error: 409
    reconnect_required naming it; the expired connection is never used again (omitting `connection` is
    409 connection_required) until a new Connect completes, which records the renewed connection."""
    slack, _, cid = seed_actions(rig)

    async def flow(g: ZapierGateway) -> list[Any]:
        seen: list[Any] = []
        await g.connections(requests.connections_query(q(app=slack.id)))  # records cid
        rig.zapier.connections_of(USER, slack)[0].is_expired = True
        for _ in range(2):
            try:
                await g.run("web", requests.run_body(run_call(app=slack.id), 60))
            except RequestError as exc:
                seen.append((exc.code, exc.fields()))
        started = await g.connect("web", requests.connect_body(body(app=slack.id, reconnect_id=cid), (CALLBACK,)))
        renewed = rig.zapier.connect(USER, slack, reconnect_id=cid)
        await g.complete("web", requests.complete_body(body(state=started["state"], authentication_id=renewed)))
        seen.append(await g.run("web", requests.run_body(run_call(app=slack.id), 60)))
        return seen

    first, second, third = rig.run(flow, store=store_of(kind, tmp_path))
    assert first == ("reconnect_required", {"connection": cid})
    assert second == ("connection_required", {})
    assert third.status_code == 200 and third.body["status"] == "success"
    assert rig.zapier.count("POST /v2/action-runs") == 2  # the expired one once, then the renewed one


@pytest.mark.parametrize("kind", STORES)
def test_a_completed_connect_state_is_single_use(rig: Rig, kind: str, tmp_path: Path) -> None:
    """Completing Connect twice with the same state: the second is 400, even with the same id."""
    slack = rig.zapier.add_app("Slack")

    async def flow(g: ZapierGateway) -> str:
        started = await g.connect("web", requests.connect_body(body(app=slack.id), (CALLBACK,)))
        new_id = rig.zapier.connect(USER, slack)
        done = requests.complete_body(body(state=started["state"], authentication_id=new_id))
        await g.complete("web", done)
        try:
            await g.complete("web", done)
        except InvalidRequest as exc:
            return exc.description
        return "accepted twice"

    assert "single-use" in rig.run(flow, store=store_of(kind, tmp_path))


def test_connect_url_carries_the_theme_and_the_token_asks_connection_write_only(rig: Rig) -> None:
    """`theme` on the Connect URL: the call's own, else token_exchange.connect_theme; the connect token
    exchange asks for `connection:write` only, not the access token's scope."""
    slack = rig.zapier.add_app("Slack")

    async def flow(g: ZapierGateway) -> list[str]:
        own = await g.connect("web", requests.connect_body(body(app=slack.id, theme="acme-dark"), (CALLBACK,)))
        default = await g.connect("web", requests.connect_body(body(app=slack.id), (CALLBACK,)))
        return [parse_qs(urlsplit(a["connect_url"]).query)["theme"][0] for a in (own, default)]

    assert rig.run(flow, connect_theme="acme") == ["acme-dark", "acme"]
    scopes = {c["scope"] for c in rig.zapier.partner.calls if c.get("requested_token_type") == CONNECT_TOKEN}
    assert scopes == {"connection:write"}
    with raises(InvalidRequest):
        requests.connect_body(body(app=slack.id, theme="no spaces"), (CALLBACK,))


@pytest.mark.parametrize("kind", STORES)
def test_during_a_cooldown_no_token_exchange_reaches_zapier(rig: Rig, kind: str, tmp_path: Path) -> None:
    """After a 429, another user's call needs a token exchange: it is held back too (503 with Retry-After)
    and nothing at all goes to Zapier, token endpoint included, with or without the store."""
    slack = rig.zapier.add_app("Slack")
    rig.zapier.budget.per_ip = 1

    async def flow(g: ZapierGateway) -> list[str]:
        codes = []
        for user in ("u-1", "u-1", "u-2"):
            try:
                await g.connections(requests.connections_query(
                    [("user_id", user), ("tenant_id", USER[1]), ("app", slack.id)]))
                codes.append("ok")
            except Unavailable as exc:
                assert exc.retry_after is not None and exc.retry_after >= 1
                codes.append(exc.code)
        return codes

    assert rig.run(flow, store=store_of(kind, tmp_path)) == ["ok", "unavailable", "unavailable"]
    assert rig.exchanges() == 1  # u-2's exchange never left
    assert rig.zapier.count("GET /v2/authentications") == 2
