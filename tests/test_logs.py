"""keysvc.logs: one JSON layout for every line, per-request lines in order and never lost."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keysvc import logs
from tests.conftest import LogStream

pytestmark = pytest.mark.unit


def lines(out: LogStream) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_three_kinds_of_line_share_one_layout(log_stream: LogStream) -> None:
    """A record, a key-operation audit and a per-request line have the same envelope fields."""
    logs.LOG.info("jwks changed", extra={"keyset": "zapier"})
    logs.audit("key.create", keyset="zapier", kid="k1")
    logs.audit_request("token.sign", {"client": "svc", "kid": "k1"})
    got = lines(log_stream)
    assert [line["event"] for line in got] == ["jwks changed", "key.create", "token.sign"]
    assert [list(line)[:4] for line in got] == [["ts", "level", "logger", "event"]] * 3
    assert [line["logger"] for line in got] == ["keysvc", "keysvc.audit", "keysvc.audit"]
    assert {k: got[2][k] for k in ("client", "kid", "audit")} == {"client": "svc", "kid": "k1", "audit": True}
    assert all(str(line["ts"]).endswith("Z") and len(str(line["ts"])) == 24 for line in got)


def written(out: LogStream) -> list[list[object]]:
    """The `n` of the lines of each write so far (without flushing what the handler holds)."""
    return [[json.loads(line)["n"] for line in text.splitlines()] for text in out.writes]


def test_access_lines_leave_with_the_next_write_and_keep_their_order(log_stream: LogStream) -> None:
    """Inside an event loop, access lines are held past the end of the turn; the next audit line takes them
    along in the same write, and a record logged meanwhile is written after them."""

    async def scenario() -> list[list[list[object]]]:
        seen = []
        logs.event(logs.LOG, "access", {"n": 1})
        logs.event(logs.LOG, "access", {"n": 2})
        await asyncio.sleep(0)
        seen.append(written(log_stream))  # nothing written yet
        logs.audit_request("token.sign", {"n": 3})
        seen.append(written(log_stream))
        logs.event(logs.LOG, "access", {"n": 4})
        logs.LOG.info("record", extra={"n": 5})
        logs.event(logs.LOG, "access", {"n": 6})
        logs.audit_request("token.sign", {"n": 7})
        seen.append(written(log_stream))
        return seen

    after_turn, after_audit, at_end = asyncio.run(scenario())
    assert after_turn == []
    assert after_audit == [[1, 2, 3]]
    assert at_end == [[1, 2, 3], [4], [5], [6, 7]]


def test_an_access_line_waits_at_most_access_trail(log_stream: LogStream) -> None:
    """With nothing else written, a held access line is written by itself ACCESS_TRAIL seconds after it
    was logged, not later; a line logged after that write is bounded the same way."""

    async def scenario() -> list[tuple[int, float]]:
        loop = asyncio.get_running_loop()
        seen = []
        for n in (1, 2):
            logged = loop.time()
            logs.event(logs.LOG, "access", {"n": n})
            while len(written(log_stream)) < n and loop.time() - logged < 5:
                await asyncio.sleep(0.002)
            seen.append((len(written(log_stream)), loop.time() - logged))
        return seen

    got = asyncio.run(scenario())
    assert [count for count, _ in got] == [1, 2]
    assert all(logs.ACCESS_TRAIL * 0.9 <= waited < logs.ACCESS_TRAIL + 1.0 for _, waited in got), got


def test_lines_held_are_written_by_flush_at_exit(log_stream: LogStream) -> None:
    """A line still held is written by the handler's flush (what logging.shutdown() calls at exit, and
    what a stopping loop would otherwise skip), so none is lost on a clean stop."""

    async def log_then_flush() -> tuple[int, int]:
        logs.event(logs.LOG, "access", {"n": 1})
        held = len(written(log_stream))
        assert logs._handler is not None
        logs._handler.flush()
        return held, len(lines(log_stream))

    assert asyncio.run(log_then_flush()) == (0, 1)


def test_outside_an_event_loop_lines_are_written_at_once(log_stream: LogStream) -> None:
    """With no running loop nothing would write a held line later: it goes out immediately (CLI)."""
    logs.event(logs.LOG, "access", {"n": 1})
    assert written(log_stream) == [[1]]


def test_a_busy_turn_holds_at_most_max_pending_lines(log_stream: LogStream) -> None:
    """Memory is bounded: past MAX_PENDING held lines, they are written without waiting for the trail."""

    async def burst() -> int:
        for n in range(logs.MAX_PENDING):
            logs.event(logs.LOG, "access", {"n": n})
        return sum(len(w) for w in written(log_stream))

    assert asyncio.run(burst()) == logs.MAX_PENDING


@dataclass
class _Holder:
    name: str
    secret: str = field(repr=False)


def test_odd_values_stay_ascii_json_and_hide_what_repr_hides(log_stream: LogStream) -> None:
    """Non-ASCII text is escaped (a line is ASCII whatever the stream's encoding), integers past 64 bits
    are written exactly, and a dataclass is written as its repr, never its hidden fields."""
    logs.audit_request("token.sign", {"sub": "Zoë", "big": 2**70, "holder": _Holder("a", "s3cr3t")})
    raw = log_stream.getvalue()
    assert raw.isascii()
    assert "s3cr3t" not in raw
    line = lines(log_stream)[0]
    assert (line["sub"], line["big"], line["holder"]) == ("Zoë", 2**70, "_Holder(name='a')")


def test_levels_and_disabled_loggers_are_respected(log_stream: LogStream) -> None:
    """Per-request access lines obey the logger's level like records do (audit lines do not: above)."""
    logs.LOG.setLevel(logging.WARNING)
    try:
        logs.event(logs.LOG, "access", {"n": 1})
        logs.LOG.warning("kept")
    finally:
        logs.LOG.setLevel(logging.NOTSET)
    assert [line["event"] for line in lines(log_stream)] == ["kept"]


def test_audit_lines_are_written_at_every_level(log_stream: LogStream) -> None:
    """At level ERROR (root and keysvc.audit alike), the key-operation and per-request audit lines are
    still written (as `info` lines marked audit), while an info record and an access line are not."""
    logging.getLogger().setLevel(logging.ERROR)
    logs.AUDIT.setLevel(logging.CRITICAL)
    try:
        logs.LOG.info("chatter")
        logs.event(logs.LOG, "access", {"n": 1})
        logs.audit("key.rotate", keyset="zapier", kid="k1")
        logs.audit_requests("token.sign", [{"kid": "k1"}, {"kid": "k2"}])
    finally:
        logs.AUDIT.setLevel(logging.NOTSET)
    got = lines(log_stream)
    assert [(line["event"], line["level"], line["audit"]) for line in got] == [
        ("key.rotate", "info", True), ("token.sign", "info", True), ("token.sign", "info", True)]


def test_without_keysvc_logging_set_up_lines_go_through_logging() -> None:
    """Embedded use (no setup()): per-request lines are ordinary records any handler can see, the audit
    ones at every level."""
    saved = logs._handler
    logs._handler = None
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Collect()
    logs.AUDIT.addHandler(handler)
    logs.AUDIT.setLevel(logging.ERROR)  # an audit line is written whatever the level
    try:
        logs.audit_request("token.sign", {"kid": "k1"})
    finally:
        logs.AUDIT.removeHandler(handler)
        logs.AUDIT.setLevel(logging.NOTSET)
        logs._handler = saved
    assert [(r.getMessage(), logs.fields(r)) for r in seen] == [("token.sign", {"audit": True, "kid": "k1"})]


def test_lines_written_during_a_request_carry_its_id(log_stream: LogStream) -> None:
    """With REQUEST_ID set (as the access log does per request), a record and a per-request audit line
    carry it; a line naming its own request_id keeps it; once reset, lines carry none."""
    token = logs.REQUEST_ID.set("req-1")
    try:
        logs.LOG.error("backend failed", extra={"keyset": "zapier"})
        logs.audit("key.revoke", kid="k1")
        logs.audit_request("token.exchange", {"client": "svc"})
        logs.LOG.info("explicit", extra={"request_id": "req-own"})
        assert logs.request_fields({"a": 1}) == {"a": 1, "request_id": "req-1"}
    finally:
        logs.REQUEST_ID.reset(token)
    logs.LOG.info("later")
    assert logs.request_fields({"a": 1}) == {"a": 1}
    got = {str(line["event"]): line.get("request_id") for line in lines(log_stream)}
    assert got == {"backend failed": "req-1", "key.revoke": "req-1", "token.exchange": "req-1",
                   "explicit": "req-own", "later": None}


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(values=st.dictionaries(st.sampled_from(["ts", "level", "event", "audit", "client", "n", "é", ""]) | st.text(
    max_size=6), _json_values, max_size=5), event=st.sampled_from(["access", "token.sign", "café"]),
       audit=st.booleans())
def test_a_line_is_the_json_of_its_document(values: dict[str, object], event: str, audit: bool) -> None:
    """However a line is written (head remembered, values encoded on their own, or the whole document
    encoded), it is exactly the JSON of {ts, level, logger, event, [audit], **values}, and ASCII."""
    formatter = logs.JsonFormatter()
    for _ in range(2):  # the second time, the head is the remembered one
        text = formatter.line(1_700_000_000.25, "info", "keysvc", event, values, audit)
        doc = {"ts": "2023-11-14T22:13:20.250Z", "level": "info", "logger": "keysvc", "event": event,
               **({"audit": True} if audit else {})}
        doc.update(values)
        try:  # what encoding the whole document writes
            expected = orjson.dumps(doc, default=str).decode("ascii")
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            expected = json.dumps(doc, separators=(",", ":"), default=str)
        assert text == expected
        assert text.isascii()
