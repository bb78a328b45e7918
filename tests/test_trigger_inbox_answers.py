"""Parsing Zapier's Trigger Inbox answers (keysvc.partner.triggers.answers): published shapes come out
typed; anything else -- and any JSON at all, by the property test -- is one BadPartnerAnswer (502)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keysvc.errors import UpstreamError
from keysvc.partner.triggers.answers import (
    BadPartnerAnswer,
    Inbox,
    InboxPage,
    Lease,
    Notification,
    Problem,
    Settled,
    parse_inbox,
    parse_inbox_page,
    parse_lease,
    parse_notification,
    parse_problem,
    parse_settled,
)

pytestmark = pytest.mark.unit

ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
LEASE = "019ce2fe-5ed1-7318-8a60-33dffd911f6a"
MSG = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
INBOX: dict[str, Any] = {
    "id": ID,
    "created_at": "2026-11-07T05:31:56Z",
    "status": "paused",
    "subscription": {"app_key": "SlackCLIAPI", "action_key": "new_message", "connection_id": "1001",
                     "inputs": {"channel": "C1"}},
    "key": "orders",
    "name": "orders",
    "paused_reason": "authentication",
    "notification_url": None,
}
MESSAGE: dict[str, Any] = {"id": MSG, "created_at": "2026-11-07T05:32:00.123Z", "status": "leased",
                           "payload": {"text": "hi", "n": [1, 2.5, None]}, "message_attributes": {"lease_count": 2}}
LEASED: dict[str, Any] = {"lease_id": LEASE, "leased_until": "2026-11-07T05:37:00Z", "results": [MESSAGE],
                          "inbox_attributes": {"status": "active", "paused_reason": None}}


def test_an_inbox_comes_out_typed() -> None:
    """Every member of the published Inbox is read and typed; a pause for authentication needs a reconnect."""
    inbox = parse_inbox(INBOX)
    assert inbox.id == ID and inbox.key == "orders" and inbox.status == "paused"
    assert inbox.subscription.connection_id == "1001" and inbox.subscription.inputs == {"channel": "C1"}
    assert inbox.created_at == datetime(2026, 11, 7, 5, 31, 56, tzinfo=UTC)
    assert inbox.reconnect_required


def test_the_deprecated_name_stands_in_for_a_missing_key_and_a_new_status_word_is_accepted() -> None:
    """`name` is the older documents' key; a status Zapier adds later (same form) does not break parsing."""
    older = {k: v for k, v in INBOX.items() if k != "key"} | {"status": "migrating", "paused_reason": None}
    inbox = parse_inbox(older)
    assert (inbox.key, inbox.status, inbox.reconnect_required) == ("orders", "migrating", False)


def test_a_list_page_a_lease_and_the_settled_answers_come_out_typed() -> None:
    """List page, lease (message, lease count, inbox attributes), ack and release answers."""
    page = parse_inbox_page({"count": 11, "next": "https://api.zapier.com/x?offset=10", "previous": None,
                             "results": [INBOX]})
    assert isinstance(page, InboxPage) and page.count == 11 and page.has_next and len(page.inboxes) == 1
    lease = parse_lease(LEASED)
    assert isinstance(lease, Lease) and lease.lease_id == LEASE and lease.inbox is not None
    assert lease.messages[0].lease_count == 2 and lease.messages[0].payload == MESSAGE["payload"]
    empty = parse_lease({"lease_id": None, "leased_until": None, "results": [],
                         "inbox_attributes": {"status": "active", "paused_reason": None}})
    assert empty.messages == () and empty.lease_id is None
    assert parse_settled({"acked_id": LEASE, "results": [MESSAGE]}, "acked") == Settled(LEASE, (MSG,))
    assert parse_settled({"released_id": None, "results": []}, "released") == Settled(None, ())


def test_an_error_body_and_a_notification_come_out_typed() -> None:
    """The errors guide's envelope gives code and a cleaned detail; the messageAvailable body its three members."""
    body = {"errors": [{"code": "unauthenticated", "detail": "Token has\nexpired.", "status": 400}]}
    assert parse_problem(body) == Problem("unauthenticated", "Token has expired.")
    assert parse_problem({"detail": "x"}) is None and parse_problem([]) is None
    assert parse_problem({"errors": [{"code": "Not A Word", "detail": 5}]}) == Problem(None, None)
    note = {"inbox_id": ID, "received_message_count": 3, "redelivery": False}
    assert parse_notification(note) == Notification(ID, 3, False)


def _with(base: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    node: Any = out
    for step in path[:-1]:
        node = node[step]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


BAD_INBOXES = [
    (("id",), "not-a-uuid"), (("id",), KeyError), (("id",), 7), (("status",), "Active!"), (("status",), None),
    (("paused_reason",), "x" * 65), (("key",), "k" * 101), (("key",), ""), (("subscription",), []),
    (("subscription", "app_key"), None), (("subscription", "inputs"), "channel=C1"),
    (("subscription", "inputs"), {"n": 2**64}), (("subscription", "connection_id"), 1001),
    (("notification_url",), "h" * 2049), (("created_at",), "yesterday"), (("created_at",), 5),
]


@pytest.mark.parametrize(("path", "value"), BAD_INBOXES)
def test_a_malformed_inbox_is_a_bad_partner_answer(path: tuple[str, ...], value: Any) -> None:
    """Each member outside its type or bound makes the whole answer a 502, naming the member."""
    with pytest.raises(BadPartnerAnswer) as caught:
        parse_inbox(_with(INBOX, path, value))
    assert caught.value.status == 502 and isinstance(caught.value, UpstreamError)
    assert str(path[-1]) in caught.value.description or path == ("subscription",)


BAD_LEASES = [
    (("lease_id",), None),  # messages nobody could ack
    (("leased_until",), None),
    (("results",), [MESSAGE] * 101),
    (("results",), [MESSAGE, MESSAGE]),  # the same message twice in one lease
    (("results", 0, "id"), "m-1"),
    (("results", 0, "message_attributes", "lease_count"), -1),
    (("results", 0, "message_attributes", "lease_count"), True),
    (("results", 0, "payload"), {"blob": "x" * (1 << 20)}),
    (("inbox_attributes",), {"paused_reason": None}),
]


@pytest.mark.parametrize(("path", "value"), BAD_LEASES)
def test_a_malformed_lease_is_a_bad_partner_answer(path: tuple[str | int, ...], value: Any) -> None:
    """Leases that could not be acked, oversized payloads, duplicates and mistyped counts are refused."""
    with pytest.raises(BadPartnerAnswer):
        parse_lease(_with(LEASED, path, value))


def test_a_payload_nested_beyond_the_bound_is_refused_without_recursion() -> None:
    """A payload 10 000 levels deep is refused (bounded depth), not a RecursionError."""
    deep: Any = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(BadPartnerAnswer):
        parse_lease(_with(LEASED, ("results", 0, "payload"), deep))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
    | st.sampled_from([ID, LEASE, MSG, "active", "paused", "2026-11-07T05:31:56Z", "acked"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "status", "results", "lease_id", "leased_until", "payload", "subscription",
                         "app_key", "action_key", "inputs", "count", "next", "acked_id", "message_attributes",
                         "lease_count", "inbox_attributes", "key", "inbox_id", "received_message_count",
                         "redelivery", "errors", "code", "detail"]) | st.text(max_size=5), inner, max_size=6),
    max_leaves=25,
)
PARSERS = [parse_inbox, parse_inbox_page, parse_lease, parse_notification,
           lambda v: parse_settled(v, "acked"), lambda v: parse_settled(v, "released")]
TYPED = (Inbox, InboxPage, Lease, Notification, Settled)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, which=st.integers(0, len(PARSERS) - 1))
def test_any_json_is_either_a_typed_answer_or_a_bad_partner_answer(value: Any, which: int) -> None:
    """Whatever JSON Zapier sends, a parser answers a typed value or raises BadPartnerAnswer, nothing else."""
    try:
        parsed = PARSERS[which](value)
    except BadPartnerAnswer:
        return
    assert isinstance(parsed, TYPED)


@settings(max_examples=60, deadline=None)
@given(value=JSON)
def test_any_json_error_body_is_a_problem_or_none(value: Any) -> None:
    """parse_problem never raises: a body of any shape is a bounded Problem or None."""
    problem = parse_problem({"errors": [value]} if isinstance(value, dict) else value)
    assert problem is None or (isinstance(problem, Problem) and len(problem.detail or "") <= 500)


@settings(max_examples=80, deadline=None)
@given(inputs=JSON, payload=JSON)
def test_arbitrary_inputs_and_payloads_inside_valid_answers(inputs: Any, payload: Any) -> None:
    """Values Zapier controls inside an otherwise valid answer: typed if JSON-safe, else BadPartnerAnswer."""
    try:
        inbox: Inbox | None = parse_inbox(_with(INBOX, ("subscription", "inputs"), inputs))
    except BadPartnerAnswer:
        inbox = None
    assert inbox is None or inbox.subscription.inputs == inputs
    try:
        lease: Lease | None = parse_lease(_with(LEASED, ("results", 0, "payload"), payload))
    except BadPartnerAnswer:
        lease = None
    assert lease is None or lease.messages[0].payload == payload
