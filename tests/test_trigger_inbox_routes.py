"""The trigger-inbox routes' contracts (keysvc.partner.contracts.TRIGGERS) agree with their parsers
(keysvc.partner.triggers.inputs), their OpenAPI entries are well formed and merged with the gateway's, and
the Trigger Inbox API's errors name it, not the Partner API."""

from __future__ import annotations

from collections.abc import Callable
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
