"""What keysvc answers and pushes about trigger inboxes (keysvc.partner.triggers.delivery), and the layering
of keysvc.partner.triggers: pure, importing only keysvc.errors, keysvc.config and its own modules."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook

from keysvc.partner.triggers.answers import parse_inbox, parse_lease
from keysvc.partner.triggers.delivery import delivery, inbox_view, lease_view
from keysvc.partner.triggers.signing import WebhookSecret
from tests.test_architecture import IO_LIBRARIES, closure, edges, modules, under
from tests.test_trigger_inbox_answers import INBOX, LEASED, MSG

pytestmark = pytest.mark.unit

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def test_the_views_use_keysvc_names_for_zapier_members() -> None:
    """inbox_view and lease_view: the internal routes' members (`app`, `trigger`, `connection`, `attributes`)."""
    assert inbox_view(parse_inbox(INBOX)) == {
        "id": INBOX["id"], "key": "orders", "status": "paused", "paused_reason": "authentication",
        "app": "SlackCLIAPI", "trigger": "new_message", "connection": "1001"}
    view = lease_view(parse_lease(LEASED))
    assert view["leased_until"] == "2026-11-07T05:37:00Z" and view["lease_id"] == LEASED["lease_id"]
    assert view["messages"] == [{"id": MSG, "payload": LEASED["results"][0]["payload"],
                                 "attributes": {"lease_count": 2}}]


def test_a_push_delivery_verifies_and_carries_the_message_id_for_deduplication() -> None:
    """The delivery body and headers pass the standardwebhooks verifier; webhook-id is the message id."""
    lease = parse_lease(LEASED)
    headers, body = delivery(WebhookSecret.parse(SECRET), parse_inbox(INBOX), "u-1", "t-9", lease.messages[0],
                             int(time.time()))
    assert headers["webhook-id"] == MSG and headers["Content-Type"] == "application/json"
    event = Webhook(SECRET).verify(body, headers)
    assert (event["type"], event["user_id"], event["tenant_id"], event["message"]["id"]) == (
        "zapier.trigger", "u-1", "t-9", MSG)
    assert event["inbox"]["trigger"] == "new_message"


@pytest.mark.parametrize("module", sorted(m for m in modules() if m.startswith("keysvc.partner.triggers")))
def test_the_trigger_inbox_package_stays_pure(module: str) -> None:
    """The Trigger Inbox's pure pieces import only errors, config, themselves and the partner's pure
    declarations (each field's rule in keysvc.partner.fields, the routes' contracts), and load no I/O library
    at import (HTTP, AWS, the server), not even through those."""
    direct = {e.target for e in edges() if e.source == module and e.target.startswith("keysvc")}
    allowed = ("keysvc.errors", "keysvc.config", "keysvc.partner.triggers", "keysvc.partner.fields",
               "keysvc.partner.contracts")
    assert sorted(t for t in direct if not under(t, allowed)) == []
    assert sorted(t for t in closure(module, lazy=False) if under(t, IO_LIBRARIES)) == []
