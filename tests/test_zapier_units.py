"""The pure parts of the Zapier embed gateway: the Partner API budget, the Connect state, request parsing,
the mapping of partner errors and the run poll schedule. No network, no sleep."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from keysvc.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RequestError,
    Unavailable,
    UpstreamError,
)
from keysvc.partner import gateway_inputs as requests
from keysvc.partner.budget import ApiBudget, Refused
from keysvc.partner.contracts import EXCHANGE, GATEWAY, Contract
from keysvc.partner.exchange_body import parse_body
from keysvc.partner.gateway import poll_delay
from keysvc.partner.partner_api import PartnerUnauthorized, api_error
from keysvc.partner.state import StateCodec, state_key

pytestmark = pytest.mark.unit

APP = "6f1c6c0e-2d6e-4b8e-9b8a-3f0a1f7b2c11"
USER = {"user_id": "u-1", "tenant_id": "t-9"}

# ------------------------------------------------------------------------------------------- budget


def test_budget_allows_a_burst_then_reserves_in_turn() -> None:
    """A full bucket admits `burst` requests at once; the next ones wait 1/rate each, in turn."""
    budget = ApiBudget(per_minute=60, burst=3)
    assert [budget.admit(100.0, 10) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.admit(100.0, 10) == pytest.approx(1.0)
    assert budget.admit(100.0, 10) == pytest.approx(2.0)


def test_budget_refuses_what_it_cannot_admit_within_max_wait() -> None:
    """A request that would wait longer than `max_wait` is refused (not cooling) and spends nothing."""
    budget = ApiBudget(per_minute=60, burst=1)
    assert budget.admit(0.0, 0) == 0.0
    assert budget.admit(0.0, 0.5) == Refused(1, False)
    assert budget.admit(1.0, 0) == 0.0  # the refusal did not spend the token that came back


def test_budget_refills_at_its_rate_up_to_burst() -> None:
    """Tokens come back at per_minute/60 a second, never more than `burst`."""
    budget = ApiBudget(per_minute=120, burst=2)
    assert budget.admit(0.0, 0) == 0.0
    assert budget.admit(0.0, 0) == 0.0
    assert isinstance(budget.admit(0.0, 0), Refused)
    assert budget.admit(1000.0, 0) == 0.0
    assert budget.admit(1000.0, 0) == 0.0
    assert isinstance(budget.admit(1000.0, 0), Refused)


def test_budget_sends_nothing_during_a_cooldown() -> None:
    """After a 429, every request is refused (cooling, with the time left) until Retry-After has passed."""
    budget = ApiBudget(per_minute=600, burst=10)
    budget.cool_down(50.0, 7)
    assert budget.admit(50.0, 100) == Refused(7, True)
    assert budget.admit(56.5, 100) == Refused(1, True)
    assert budget.cooling_for(53.0) == pytest.approx(4.0)
    assert budget.admit(57.0, 100) == pytest.approx(0.1)  # resumes slowly, not with a full burst


def test_budget_cooldown_keeps_the_later_end() -> None:
    """A shorter Retry-After seen later does not shorten a cooldown already running."""
    budget = ApiBudget(per_minute=60, burst=1)
    budget.cool_down(0.0, 30)
    budget.cool_down(1.0, 2)
    assert budget.cooling_for(10.0) == pytest.approx(20.0)


# -------------------------------------------------------------------------------------------- state

KEY = state_key("the-partner-client-secret")


def test_state_round_trips_what_it_is_bound_to() -> None:
    """A sealed state opens to the user, tenant, app and redirect it was sealed for, within its TTL."""
    codec = StateCodec(KEY)
    state = codec.seal("u-1", "t-9", APP, "https://app.example/cb", now=1000.0)
    opened = codec.check(state, 1599.0, "u-1", "t-9", "https://app.example/cb")
    assert (opened.user_id, opened.tenant_id, opened.app, opened.redirect_uri) == (
        "u-1", "t-9", APP, "https://app.example/cb",
    )


def test_state_is_opaque() -> None:
    """Neither the user, the tenant nor the app can be read from a state."""
    state = StateCodec(KEY).seal("user-visible?", "tenant-visible?", APP, None, now=0.0)
    raw = base64.urlsafe_b64decode(state[3:] + "==")
    for secret in (b"user-visible?", b"tenant-visible?", APP.encode()):
        assert secret not in raw and secret.decode() not in state


@pytest.mark.parametrize(
    ("case", "user", "tenant", "redirect", "now"),
    [
        ("another user", "u-2", "t-9", None, 10.0),
        ("another tenant", "u-1", "t-8", None, 10.0),
        ("another redirect", "u-1", "t-9", "https://evil.example/cb", 10.0),
        ("expired", "u-1", "t-9", None, 600.0),
    ],
)
def test_state_refuses_another_flow_or_an_old_one(case: str, user: str, tenant: str, redirect: str | None,
                                                  now: float) -> None:
    """A state checked for another user, tenant or redirect, or after 10 minutes, is a 400."""
    codec = StateCodec(KEY)
    state = codec.seal("u-1", "t-9", APP, "https://app.example/cb", now=0.0)
    with pytest.raises(InvalidRequest):
        codec.check(state, now, user, tenant, redirect)


def _flip(state: str, index: int) -> str:
    chars = list(state)
    chars[index] = "A" if chars[index] != "A" else "B"
    return "".join(chars)


@pytest.mark.parametrize("forge", [
    lambda s: _flip(s, 10), lambda s: _flip(s, -3), lambda s: s[:-4], lambda s: "v1." + "A" * 80,
    lambda s: "v2" + s[2:], lambda s: "", lambda s: "v1.!!!", lambda s: "v1." + "x" * 5000,
])
def test_state_refuses_forged_or_damaged(forge: Any) -> None:
    """Any change to a state, or a state made up, fails closed with a 400."""
    codec = StateCodec(KEY)
    state = codec.seal("u-1", "t-9", APP, None, now=0.0)
    with pytest.raises(InvalidRequest):
        codec.open(forge(state), 1.0)


def test_state_of_another_key_does_not_open() -> None:
    """A state sealed with a key derived from another client secret does not open (domain: this secret)."""
    other = StateCodec(state_key("another-secret")).seal("u-1", "t-9", APP, None, now=0.0)
    with pytest.raises(InvalidRequest):
        StateCodec(KEY).open(other, 1.0)


def test_state_key_is_not_the_secret() -> None:
    """The state key is derived (HKDF), 32 bytes, and differs from the secret's own bytes."""
    assert len(KEY) == 32 and b"the-partner-client-secret" not in KEY


# ------------------------------------------------------------------------------------------ parsing

GOOD_RUN = {**USER, "app": APP, "action": "send_message", "action_type": "WRITE", "connection": "1001",
            "inputs": {"channel": "C1"}}


@pytest.mark.parametrize(("body", "needle"), [
    ([], "JSON object"),
    ({**GOOD_RUN, "extra": 1}, "unknown field 'extra'"),
    ({k: v for k, v in GOOD_RUN.items() if k != "user_id"}, "user_id is required"),
    ({**GOOD_RUN, "user_id": ""}, "user_id must be"),
    ({**GOOD_RUN, "tenant_id": 9}, "tenant_id must be"),
    ({**GOOD_RUN, "app": "SlackAPI"}, "UUID"),
    ({**GOOD_RUN, "app": 5}, "UUID"),
    ({**GOOD_RUN, "action": "bad key!"}, "action must be"),
    ({**GOOD_RUN, "action_type": "write"}, "action_type must be"),
    ({**GOOD_RUN, "connection": 1001}, "connection must be"),
    ({**GOOD_RUN, "inputs": []}, "inputs must be"),
    ({**GOOD_RUN, "wait": 61}, "wait must be"),
    ({**GOOD_RUN, "wait": "2m"}, "wait must be"),
    ({**GOOD_RUN, "wait": -1}, "wait must be"),
    ({**GOOD_RUN, "wait": True}, "wait must be"),
    ({**GOOD_RUN, "wait": "soon"}, "wait must be"),
])
def test_run_body_refuses_malformed(body: Any, needle: str) -> None:
    """Every malformed run body is an InvalidRequest whose text names what is wrong."""
    with pytest.raises(InvalidRequest) as info:
        requests.run_body(body, 60.0)
    assert needle in info.value.description


def test_run_body_reads_a_good_one() -> None:
    """A good body parses to typed values: the app lower-cased, `wait` as seconds, connection null allowed."""
    parsed = requests.run_body({**GOOD_RUN, "app": APP.upper(), "wait": "30s", "connection": None}, 60.0)
    assert (parsed.call.app, parsed.call.action, parsed.call.connection, parsed.wait) == (
        APP, "send_message", None, 30.0,
    )
    assert requests.run_body({**GOOD_RUN, "wait": 2.5}, 60.0).wait == 2.5
    assert requests.run_body(GOOD_RUN, 60.0).wait == 0.0


@pytest.mark.parametrize(("items", "needle"), [
    ([("user_id", "u-1"), ("tenant_id", "t-9")], "app must be"),
    ([("user_id", "u-1"), ("tenant_id", "t-9"), ("app", APP), ("app", APP)], "repeated"),
    ([("user_id", "u-1"), ("tenant_id", "t-9"), ("app", APP), ("page", "2")], "unknown query parameter"),
    ([("tenant_id", "t-9"), ("app", APP)], "user_id is required"),
    ([("user_id", "u 1"), ("tenant_id", "t-9"), ("app", APP)], "user_id must be"),
])
def test_connections_query_refuses_malformed(items: list[tuple[str, str]], needle: str) -> None:
    """Query parameters are as strict as bodies: unknown, repeated, missing and malformed ones are 400s."""
    with pytest.raises(InvalidRequest) as info:
        requests.connections_query(items)
    assert needle in info.value.description


@pytest.mark.parametrize(("items", "ok"), [
    ([("limit", "100")], True), ([("limit", "101")], False), ([("limit", "0")], False),
    ([("offset", "-1")], False), ([("offset", "x")], False), ([("query", "slack")], True),
])
def test_apps_query_bounds(items: list[tuple[str, str]], ok: bool) -> None:
    """`limit` is 1 to 100 and `offset` a whole number; anything else is a 400."""
    full = [("user_id", "u-1"), ("tenant_id", "t-9"), *items]
    if ok:
        requests.apps_query(full)
    else:
        with pytest.raises(InvalidRequest):
            requests.apps_query(full)


def test_connect_body_allows_only_registered_redirects() -> None:
    """`redirect_uri` must equal one of redirect_uris: a prefix, a case change or another one is a 400."""
    registered = ("https://app.example/zapier/callback",)
    body = {**USER, "app": APP, "redirect_uri": registered[0]}
    assert requests.connect_body(body, registered).redirect_uri == registered[0]
    for other in (registered[0] + "/x", registered[0].upper(), "https://evil.example/", registered[0] + "?a=1"):
        with pytest.raises(InvalidRequest):
            requests.connect_body({**body, "redirect_uri": other}, registered)
    parsed = requests.connect_body({**USER, "app": APP}, ())
    assert (parsed.redirect_uri, parsed.connect_app) == (None, APP)


@pytest.mark.parametrize(("body", "needle"), [
    ({**USER}, "state is required"),
    ({**USER, "state": "s"}, "exactly one of"),
    ({**USER, "state": "s", "authentication_id": "1", "error": "access_denied"}, "exactly one of"),
    ({**USER, "state": "s", "authentication_id": 1001}, "authentication_id must be"),
    ({**USER, "state": "s", "error": 5}, "error must be"),
])
def test_complete_body_refuses_malformed(body: Any, needle: str) -> None:
    """The completion needs the state and exactly one of the id and the partner's error."""
    with pytest.raises(InvalidRequest) as info:
        requests.complete_body(body)
    assert needle in info.value.description


# ------------------------------------------------------------------------------------ error mapping

def _errors(detail: str) -> dict[str, Any]:
    return {"errors": [{"status": 0, "code": "c", "title": "t", "detail": detail, "source": None, "meta": None}]}


@pytest.mark.parametrize(("status", "retry_after", "expected", "code"), [
    (400, None, InvalidRequest, "invalid_request"),
    (422, None, InvalidRequest, "invalid_request"),
    (401, None, PartnerUnauthorized, "upstream_error"),
    (403, None, Forbidden, "forbidden"),
    (404, None, NotFound, "not_found"),
    (409, None, Conflict, "conflict"),
    (429, "17", Unavailable, "unavailable"),
    (503, None, Unavailable, "unavailable"),
    (500, None, UpstreamError, "upstream_error"),
    (502, None, UpstreamError, "upstream_error"),
    (418, None, UpstreamError, "upstream_error"),
])
def test_partner_errors_map_to_ours(status: int, retry_after: str | None, expected: type[RequestError],
                                    code: str) -> None:
    """Each partner status maps to the documented keysvc error; 429/503 carry a Retry-After."""
    error = api_error(status, retry_after, _errors("the channel does not exist"))
    assert (type(error), error.code) == (expected, code)
    if status in (429, 503):
        assert error.retry_after == (17 if retry_after else 5)
    assert "the channel does not exist" in error.description


def test_partner_detail_is_sanitised() -> None:
    """A token-like run or control characters in the partner's detail never reach our answer."""
    jwt_like = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJlc2lnbmF0dXJl"
    error = api_error(400, None, _errors(f"bad token {jwt_like}\n\"quoted\""))
    assert jwt_like not in error.description and "\n" not in error.description
    assert "[redacted]" in error.description
    assert api_error(400, None, "not json").description.endswith("(HTTP 400)")


# --------------------------------------------------------------------------------------------- poll

def test_poll_delay_grows_from_one_to_eight_seconds_and_honours_hints() -> None:
    """Polls back off 1, 2, 4, 8, 8 s; a partner `delay` or Retry-After longer than that wins."""
    assert [poll_delay(n, None) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert poll_delay(0, 5.0) == 5.0
    assert poll_delay(3, 2.0) == 8.0


REDIRECT = "https://app.example/zapier/callback"
# each gateway route's parser, with what it needs besides the fields (and, for complete, the one of
# authentication_id / error it needs, which a list of required fields cannot say)
PARSERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "zapier_apps": (lambda f: requests.apps_query(f.items()), {}),
    "zapier_connections": (lambda f: requests.connections_query(f.items()), {}),
    "zapier_actions": (lambda f: requests.actions_query(f.items()), {}),
    "zapier_connect": (lambda f: requests.connect_body(f, (REDIRECT,)), {}),
    "zapier_complete": (requests.complete_body, {"authentication_id": "conn-1"}),
    "zapier_inputs": (lambda f: requests.inputs_body(f, "send_message"), {}),
    "zapier_choices": (lambda f: requests.choices_body(f, "send_message", "channel"), {}),
    "zapier_run": (lambda f: requests.run_body(f, 30.0), {}),
    "zapier_run_status": (lambda f: requests.run_query(f.items(), "run-1", 30.0), {}),
    "token_exchange": (parse_body, {}),
}


def test_every_partner_route_has_a_parser_under_test() -> None:
    """The table above covers every declared partner route (a new route cannot skip the agreement test)."""
    assert sorted(c.name for c in (*GATEWAY, EXCHANGE)) == sorted(PARSERS)


@pytest.mark.parametrize("contract", (*GATEWAY, EXCHANGE), ids=lambda c: c.name)
def test_each_parser_agrees_with_its_declared_contract(contract: Contract) -> None:
    """A route's parser accepts a request made of its contract's required fields (their examples), refuses it
    without any one of them, and refuses a field the contract does not declare: the OpenAPI entry derived from
    the contract and the parser say the same thing."""
    parse, extra = PARSERS[contract.name]
    required = {f.name: f.example for f in contract.fields if f.required}
    parse({**required, **extra})
    for name in required:
        with pytest.raises(InvalidRequest):
            parse({k: v for k, v in {**required, **extra}.items() if k != name})
    with pytest.raises(InvalidRequest, match="unknown"):
        parse({**required, **extra, "undeclared": "x"})


def test_a_429_without_retry_after_cools_down_60_seconds() -> None:
    """Zapier's documented cooldown after a 429 is 60 s: without Retry-After, the Partner API's and the
    token endpoint's 429 both say 60 (a 503 without it keeps the short default); with it, its value."""
    from keysvc.client.oauth import Answer, partner_error

    assert api_error(429, None, {}).retry_after == 60
    assert api_error(429, "7", {}).retry_after == 7
    assert api_error(503, None, {}).retry_after == 5
    assert partner_error(Answer(429, None, b"{}")).retry_after == 60
    assert partner_error(Answer(503, None, b"{}")).retry_after == 5


def test_reconnect_required_carries_the_connection_in_the_error_body() -> None:
    """409 reconnect_required answers `connection` next to error and error_description; connection_required
    and conflict are 409s of the same table."""
    import json

    from keysvc.errors import ConnectionRequired, ReconnectRequired
    from keysvc.http.error_answers import error_answer

    answer = error_answer(ReconnectRequired("reconnect it", "1002"))
    assert answer.status == 409
    assert json.loads(answer.body) == {"error": "reconnect_required", "error_description": "reconnect it",
                                       "connection": "1002"}
    assert json.loads(error_answer(ConnectionRequired("none")).body)["error"] == "connection_required"


def test_omitting_connection_is_told_apart_from_null() -> None:
    """`connection` omitted: the gateway uses the recorded one; `connection: null`: an app without auth."""
    base = {"user_id": "u", "tenant_id": "t", "app": "8a1b22bf-a70a-470c-b84a-291dfa6acc81", "action_type": "WRITE"}
    assert requests.inputs_body(base, "send").connection_given is False
    given = requests.inputs_body({**base, "connection": None}, "send")
    assert given.connection_given is True and given.connection is None
