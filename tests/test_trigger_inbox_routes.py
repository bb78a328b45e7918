"""The trigger-inbox routes' contracts (keysvc.partner.contracts.TRIGGERS) agree with their parsers
(keysvc.partner.triggers.inputs), their OpenAPI entries are well formed and merged with the gateway's, and
the Trigger Inbox API's errors name it, not the Partner API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keysvc.errors import InvalidRequest, Unavailable
from keysvc.partner.contracts import TRIGGERS, Contract, gateway_paths
from keysvc.partner.partner_api import PartnerUnauthorized, api_error
from keysvc.partner.trigger_inboxes import TRIGGER_INBOX_API, poll_delay
from keysvc.partner.triggers import inputs

pytestmark = pytest.mark.unit

INBOX_ID = "0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6978"
PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "zapier_inbox_ensure": lambda f: inputs.ensure_body("orders", f, 60),
    "zapier_inboxes": lambda f: inputs.list_query(f.items()),
    "zapier_inbox": lambda f: inputs.inbox_query(f.items(), INBOX_ID),
    "zapier_inbox_delete": lambda f: inputs.inbox_query(f.items(), INBOX_ID),
    "zapier_inbox_pause": lambda f: inputs.inbox_body(f, INBOX_ID),
    "zapier_inbox_resume": lambda f: inputs.inbox_body(f, INBOX_ID),
    "zapier_inbox_lease": lambda f: inputs.lease_body(f, INBOX_ID, 30),
    "zapier_inbox_ack": lambda f: inputs.settle_body(f, INBOX_ID),
    "zapier_inbox_release": lambda f: inputs.settle_body(f, INBOX_ID),
}


def test_every_trigger_route_has_a_parser_under_test() -> None:
    """The table below names every trigger-inbox contract, and no other."""
    assert sorted(c.name for c in TRIGGERS) == sorted(PARSERS)


@pytest.mark.parametrize("contract", TRIGGERS, ids=lambda c: c.name)
def test_each_parser_agrees_with_its_declared_contract(contract: Contract) -> None:
    """A request made of the contract's required fields parses; without any one of them, or with an
    undeclared field, it is refused: the OpenAPI entry and the parser say the same thing."""
    parse = PARSERS[contract.name]
    required = {f.name: f.example for f in contract.fields if f.required}
    parse(dict(required))
    for name in required:
        with pytest.raises(InvalidRequest):
            parse({k: v for k, v in required.items() if k != name})
    with pytest.raises(InvalidRequest):
        parse({**required, "undeclared": "x"})


def test_openapi_merges_the_methods_of_one_path() -> None:
    """GET, PUT and DELETE of one inbox share a path item; DELETE answers 204; every route is there."""
    paths = gateway_paths()
    item = paths["/v1/zapier/trigger-inboxes/{inbox}"]
    assert set(item) == {"get", "put", "delete"}
    assert "204" in item["delete"]["responses"] and "200" not in item["delete"]["responses"]
    for c in TRIGGERS:
        assert paths[c.path][c.method.lower()]["operationId"] == c.name
    assert "/v1/zapier/action-runs" in paths


def test_trigger_inbox_errors_name_their_api() -> None:
    """An error of the Trigger Inbox API says so (the operator looks at the right dashboard)."""
    assert isinstance(api_error(401, None, {}, TRIGGER_INBOX_API), PartnerUnauthorized)
    busy = api_error(429, "7", {"errors": [{"code": "throttled", "detail": "slow down"}]}, TRIGGER_INBOX_API)
    assert isinstance(busy, Unavailable) and busy.retry_after == 7
    assert "Trigger Inbox API" in busy.description and "Partner API" not in busy.description


def test_poll_delay_grows_and_is_capped() -> None:
    """Back-off between looks at an inbox: 0.25 s doubling to at most 4 s."""
    assert [poll_delay(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]


def _exchange(**extra: Any) -> Any:
    from keysvc.config.exchange import parse_token_exchange

    raw = {"client_id": "c", "client_secret_env": "ZS", **extra}
    return parse_token_exchange(raw, {"zapier": "ES256"}, environ={"ZS": "s", "WH": SECRET})


SECRET = "whsec_" + "a2V5c3ZjLXRlc3Qtd2ViaG9vay1zZWNyZXQtMzI="  # base64 of 29 bytes (24 to 64)


def test_trigger_settings_defaults_and_limits() -> None:
    """trigger_inbox_url defaults to Zapier's and is https (plain http only to loopback); lease_wait_max
    defaults to 30 s and is at most 10 minutes; trigger_delivery is off unless configured."""
    from keysvc.errors import ConfigError

    d = _exchange()
    assert d.trigger_inbox_url == "https://api.zapier.com/trigger-inbox/v1" and d.lease_wait_max == 30.0
    assert d.trigger_delivery is None
    assert _exchange(trigger_inbox_url="http://127.0.0.1:9/ti", lease_wait_max="2m").lease_wait_max == 120.0
    for bad in ({"trigger_inbox_url": "http://zapier.example/ti"}, {"lease_wait_max": "11m"},
                {"lease_wait_max": "0s"}):
        with pytest.raises(ConfigError):
            _exchange(**bad)


def test_trigger_delivery_settings_are_checked() -> None:
    """trigger_delivery needs the gateway store, url, a whsec_ secret and public_url; lease is whole seconds
    within 1 s..1 h."""
    from keysvc.errors import ConfigError

    good = {"url": "https://events.example.com/z", "secret_env": "WH", "public_url": "https://keys.example.com/"}
    store = {"url": "sqlite:////tmp/keysvc-test-gateway.db"}
    with pytest.raises(ConfigError, match=r"token_exchange\.store"):
        _exchange(trigger_delivery=good)
    t = _exchange(trigger_delivery=good, store=store).trigger_delivery
    assert t.url == good["url"] and t.public_url == "https://keys.example.com" and t.lease == 300.0
    assert t.sweep_interval == 300.0 and SECRET not in repr(t)
    for bad in ({"url": "http://events.example.com"}, {"secret_env": "ZS"}, {"lease": "2h"}, {"lease": "1.5s"},
                {"public_url": None}, {"surprise": 1}):
        with pytest.raises(ConfigError):
            _exchange(trigger_delivery={k: v for k, v in {**good, **bad}.items() if v is not None}, store=store)


def test_a_features_public_route_is_served_by_the_public_listener(tmp_path: Path) -> None:
    """Feature.public: the public listener hands requests under the route's prefix to its handler (raw
    ASGI), answers a RequestError it raises as JSON (404 for a forged token, 405 with Allow), counts it
    under the route's bounded name, and leaves every other path as before."""
    from keysvc.errors import MethodNotAllowed, NotFound
    from keysvc.feature import PublicRoute
    from keysvc.http.public import PublicApp
    from keysvc.metrics import Metrics
    from tests.test_discovery import SettingsOnly, ask, settings_with

    async def handle(scope: Any, receive: Any, send: Any) -> int:
        if scope["method"] != "POST":
            raise MethodNotAllowed("only POST", allow="POST")
        if not scope["path"].endswith("/good"):
            raise NotFound("no such resource")
        await send({"type": "http.response.start", "status": 202, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
        return 202

    metrics = Metrics()
    route = PublicRoute("/zapier/inbox-notifications/", "zapier_inbox_notification", handle)
    app = PublicApp(SettingsOnly(settings_with(tmp_path)), metrics, [route])  # type: ignore[arg-type]
    assert ask(app, "POST", "/zapier/inbox-notifications/good").status_code == 202
    forged = ask(app, "POST", "/zapier/inbox-notifications/forged")
    assert forged.status_code == 404 and forged.json()["error"] == "not_found"
    wrong = ask(app, "GET", "/zapier/inbox-notifications/good")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert ask(app, "POST", "/somewhere-else").status_code == 404
    assert ask(app, "GET", "/healthz").status_code == 200
