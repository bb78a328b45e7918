"""Strict parsing of the trigger-inbox routes' inputs (keysvc.partner.triggers.inputs): good requests come
out typed with their defaults; each malformed field is a 400 InvalidRequest naming it."""

from __future__ import annotations

from typing import Any

import pytest

from keysvc.errors import InvalidRequest
from keysvc.partner.triggers.inputs import (
    EnsureInbox,
    InboxRef,
    LeaseCall,
    ListInboxes,
    SettleCall,
    User,
    ensure_body,
    inbox_body,
    inbox_query,
    lease_body,
    list_query,
    settle_body,
)

pytestmark = pytest.mark.unit

ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
LEASE = "019ce2fe-5ed1-7318-8a60-33dffd911f6a"
MSG = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
WHO = {"user_id": "u-1", "tenant_id": "t-9"}
USER = User("u-1", "t-9")
ENSURE = {**WHO, "app": "SlackCLIAPI", "trigger": "new_message", "connection": "1001",
          "inputs": {"channel": "C1", "n": [1, 2.5]}}


def test_good_requests_come_out_typed_with_defaults() -> None:
    """Each route's input, with the defaults the table names (limit 10, lease 5m, wait 0)."""
    assert ensure_body("orders.v1", ENSURE, 60) == EnsureInbox(
        USER, "orders.v1", "SlackCLIAPI", "new_message", "1001", {"channel": "C1", "n": [1, 2.5]}, 0.0)
    assert ensure_body("k", {**ENSURE, "connection": None, "inputs": None, "wait": "30s"}, 60).wait == 30.0
    assert ensure_body("k", {**WHO, "app": "slack@latest", "trigger": "t"}, 60).connection is None
    assert list_query([("user_id", "u-1"), ("tenant_id", "t-9"), ("status", "paused")]) == ListInboxes(
        USER, "paused")
    assert inbox_query([("user_id", "u-1"), ("tenant_id", "t-9")], ID) == InboxRef(USER, ID)
    assert inbox_body(WHO, ID) == InboxRef(USER, ID)
    assert lease_body(WHO, ID, 30) == LeaseCall(USER, ID, 10, 300, 0.0)
    assert lease_body({**WHO, "limit": 100, "lease": "1h", "wait": 30}, ID, 30) == LeaseCall(USER, ID, 100, 3600, 30.0)
    assert lease_body({**WHO, "limit": "1", "lease": "1s", "wait": "2.5"}, ID, 30) == LeaseCall(USER, ID, 1, 1, 2.5)
    assert settle_body({**WHO, "lease_id": LEASE}, ID) == SettleCall(USER, ID, LEASE, None)
    assert settle_body({**WHO, "lease_id": LEASE, "message_ids": [MSG]}, ID).message_ids == (MSG,)


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels - 1):
        value = {"a": value}
    return value


BAD_ENSURE: list[tuple[str, Any, str]] = [
    ("", ENSURE, "inbox key"),
    ("k" * 101, ENSURE, "inbox key"),
    ("-leading", ENSURE, "inbox key"),
    ("has space", ENSURE, "inbox key"),
    ("k/../x", ENSURE, "inbox key"),
    ("k", [], "JSON object"),
    ("k", {**ENSURE, "unknown": 1}, "unknown field"),
    ("k", {**ENSURE, "user_id": None}, "user_id"),
    ("k", {**ENSURE, "tenant_id": "t 9"}, "tenant_id"),
    ("k", {**ENSURE, "app": None}, "app"),
    ("k", {**ENSURE, "app": "Slack CLI"}, "app"),
    ("k", {**ENSURE, "trigger": ""}, "trigger"),
    ("k", {**ENSURE, "connection": 1001}, "connection"),
    ("k", {**ENSURE, "inputs": []}, "inputs"),
    ("k", {**ENSURE, "inputs": {"n": 2**53}}, "integer"),
    ("k", {**ENSURE, "inputs": {"n": -(2**63)}}, "integer"),
    ("k", {**ENSURE, "inputs": {"x": float("inf")}}, "finite"),
    ("k", {**ENSURE, "inputs": _deep(17)}, "deeper"),
    ("k", {**ENSURE, "inputs": {"blob": "x" * (64 << 10)}}, "bytes"),
    ("k", {**ENSURE, "wait": "61s"}, "wait"),
    ("k", {**ENSURE, "wait": "-1s"}, "wait"),
    ("k", {**ENSURE, "wait": True}, "wait"),
]


@pytest.mark.parametrize(("key", "body", "named"), BAD_ENSURE)
def test_a_malformed_ensure_is_refused_naming_the_field(key: str, body: Any, named: str) -> None:
    """PUT /v1/zapier/trigger-inboxes/{key}: every bad key, field, input or wait is a 400 that says which."""
    with pytest.raises(InvalidRequest, match=named):
        ensure_body(key, body, 60)


BAD_LEASE: list[tuple[Any, str]] = [
    ({**WHO, "limit": 0}, "limit"), ({**WHO, "limit": 101}, "limit"), ({**WHO, "limit": True}, "limit"),
    ({**WHO, "limit": 1.5}, "limit"), ({**WHO, "lease": "0s"}, "lease"), ({**WHO, "lease": "500ms"}, "lease"),
    ({**WHO, "lease": "1h1s"}, "lease"), ({**WHO, "lease": "1.5s"}, "whole seconds"),
    ({**WHO, "lease": "soon"}, "lease"), ({**WHO, "wait": "31s"}, "lease_wait_max"),
    ({**WHO, "wait": float("nan")}, "wait"), ({**WHO, "extra": 1}, "unknown"), ({"user_id": "u"}, "tenant_id"),
]


@pytest.mark.parametrize(("body", "named"), BAD_LEASE)
def test_a_malformed_lease_is_refused_naming_the_field(body: Any, named: str) -> None:
    """POST .../lease: limit 1-100, lease 1 s to 1 h in whole seconds, wait up to lease_wait_max."""
    with pytest.raises(InvalidRequest, match=named):
        lease_body(body, ID, 30)


BAD_SETTLE: list[tuple[Any, str]] = [
    (WHO, "lease_id"), ({**WHO, "lease_id": "lease-1"}, "lease_id"), ({**WHO, "lease_id": LEASE, "message_ids": []},
                                                                       "message_ids"),
    ({**WHO, "lease_id": LEASE, "message_ids": [MSG, MSG]}, "distinct"),
    ({**WHO, "lease_id": LEASE, "message_ids": ["m-1"]}, "message_ids"),
    ({**WHO, "lease_id": LEASE, "message_ids": MSG}, "message_ids"),
    ({**WHO, "lease_id": LEASE, "message_ids": [MSG] * 101}, "message_ids"),
]


@pytest.mark.parametrize(("body", "named"), BAD_SETTLE)
def test_a_malformed_ack_or_release_is_refused(body: Any, named: str) -> None:
    """POST .../ack and .../release: a lease id (UUID) and, optionally, 1-100 distinct message ids."""
    with pytest.raises(InvalidRequest, match=named):
        settle_body(body, ID)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: list_query([("user_id", "u"), ("tenant_id", "t"), ("status", "gone")]), "status"),
        (lambda: list_query([("user_id", "u"), ("user_id", "v"), ("tenant_id", "t")]), "repeated"),
        (lambda: list_query([("user_id", "u"), ("tenant_id", "t"), ("key", "k")]), "unknown"),
        (lambda: inbox_query([("user_id", "u"), ("tenant_id", "t")], "not-a-uuid"), "inbox id"),
        (lambda: inbox_query([("tenant_id", "t")], ID), "user_id"),
        (lambda: inbox_body({**WHO, "x": 1}, ID), "unknown"),
        (lambda: lease_body(WHO, ID + "0", 30), "inbox id"),
    ],
)
def test_malformed_queries_and_ids_are_refused(call: Any, named: str) -> None:
    """List, get, delete, pause and resume: known parameters only, once each, and a UUID inbox id."""
    with pytest.raises(InvalidRequest, match=named):
        call()
