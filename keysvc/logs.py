"""Structured JSON logs on stdout, and the audit trail (who did what to which key, when; never a secret).

Three ways to write a line, all in the same JSON layout and to the same stream, in order:
- `LOG.info(...)` with `extra=` (keysvc's and uvicorn's ordinary lines): through `logging`.
- `audit(name, ...)`: key operations, through `logging` too, so the handlers on `keysvc.audit` see them
  (written by keysvc.audit.AuditLog, an observer of the keyring's KeyEvents).

Audit lines (`audit()`, `audit_request()`, `audit_requests()`) are written at every log level: they are the
record of who did what, not chatter, so KEYSVC_LOG_LEVEL=error keeps them (their `level` reads "info").
- The lines written per request, `event()` (access lines) and `audit_request()` / `audit_requests()` (one
  per token signed or exchanged): formatted by keysvc's handler directly, without a `LogRecord` (about
  6 us less per line). Audit lines are written before the responses they describe are sent (the tokens of
  one signing batch in one write), so no token leaves without its audit line on the stream. Access lines
  are held and leave with the next write: the next audit line's, a record's, or at the latest
  ACCESS_TRAIL seconds after they were logged (one write instead of two per signed token).

The request id: the internal listener's access log sets `REQUEST_ID` (a contextvar) for the time of each
request (keysvc.http.access_log), so every line written during it carries `request_id`, also the lines of
code that knows nothing of HTTP (the keyring; the backends, whose writes `Keyring._write` runs in the I/O
pool in a copy of the request's context; the service's hooks): a record's through the formatter, a
per-request line through `request_fields` (the keyring stamps the audit fields of a token when it is asked
for, as a batch of signatures runs in one request's context). A line that names its own `request_id` keeps
it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import orjson

AUDIT = logging.getLogger("keysvc.audit")
LOG = logging.getLogger("keysvc")

FIELDS = "keysvc_fields"  # the record attribute that holds an event()'s fields
MAX_PENDING = 256  # access lines held before a write, at most (a busy event-loop turn)
ACCESS_TRAIL = 0.05  # seconds an access line may wait for the next write, at most
MAX_HEADS = 1024  # kinds of line (level, logger, event) whose head JsonFormatter remembers
_HEAD_KEYS = frozenset({"ts", "level", "logger", "event", "audit"})  # members a line's values may replace
# dataclasses and datetimes go to `default=str` as with the stdlib encoder: a dataclass's repr hides what
# its fields mark repr=False (key material), which orjson's own dataclass encoding would not
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
# the id of the request being answered, in this task (and in the I/O threads it runs work in)
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("keysvc_request_id", default=None)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, and the record's extra fields."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(default=str, separators=(",", ":"))
        self._second, self._stamp = -1, ""  # the last whole second formatted, and its text
        self._heads: dict[tuple[str, str, str, bool], str] = {}  # see _head

    def format(self, record: logging.LogRecord) -> str:
        extra = fields(record)
        if (rid := REQUEST_ID.get()) is not None and "request_id" not in extra:
            extra = {**extra, "request_id": rid}
        if record.exc_info and record.exc_info[0] is not None:
            # the type only: a traceback may quote secrets
            extra = {**extra, "exception": record.exc_info[0].__name__}
        return self.line(record.created, record.levelname.lower(), record.name, record.getMessage(), extra)

    def line(self, created: float, level: str, logger: str, event: str, values: Mapping[str, Any],
             audit: bool = False) -> str:
        """The JSON text of one line (no newline); `audit` adds `"audit": true` before the values."""
        second = int(created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        ts = f"{self._stamp}.{int((created - second) * 1000):03d}Z"
        head = self._heads.get((level, logger, event, audit))
        if head is None:
            head = self._head(level, logger, event, audit)
        if head and _HEAD_KEYS.isdisjoint(values):
            # The same text as the document below, without building it: the head's members are written
            # once per (level, logger, event) and the values encoded on their own.
            try:
                body = orjson.dumps(values, default=str, option=_ORJSON_OPTIONS).decode("ascii")
            except (orjson.JSONEncodeError, UnicodeDecodeError):
                pass  # the stdlib writes it below
            else:
                return f'{{"ts":"{ts}",{head},{body[1:]}' if len(body) > 2 else f'{{"ts":"{ts}",{head}}}'
        doc: dict[str, Any] = {"ts": ts, "level": level, "logger": logger, "event": event}
        if audit:
            doc["audit"] = True
        doc.update(values)
        try:
            text = orjson.dumps(doc, default=str, option=_ORJSON_OPTIONS).decode("ascii")
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            # integers past 64 bits, non-str keys, or non-ASCII text: the stdlib writes \u escapes, so a
            # line stays ASCII whatever the stream's encoding
            text = self._encoder.encode(doc)
        return text

    def _head(self, level: str, logger: str, event: str, audit: bool) -> str:
        """The members after `ts` of a line (`"level":..,"logger":..,"event":..[,"audit":true]`), remembered
        for the first MAX_HEADS kinds of line; "" when they are not ASCII (the document path writes those)."""
        if not (level.isascii() and logger.isascii() and event.isascii()):
            return ""
        encode = self._encoder.encode
        head = f'"level":{encode(level)},"logger":{encode(logger)},"event":{encode(event)}'
        if audit:
            head += ',"audit":true'
        if len(self._heads) < MAX_HEADS:
            self._heads[(level, logger, event, audit)] = head
        return head


class JsonHandler(logging.StreamHandler[TextIO]):
    """The handler `setup()` installs: JSON lines from records, and the per-request lines written without
    a record (`write()`), in the order they were logged."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.json = JsonFormatter()
        self.setFormatter(self.json)
        self._pending: list[str] = []  # per-request lines not written yet, each ending in a newline
        self._trail: asyncio.AbstractEventLoop | None = None  # the loop a flush is due on, within ACCESS_TRAIL

    def write(self, logger: str, event: str, lines: Sequence[Mapping[str, Any]], *, now: bool,
              audit: bool = False) -> None:
        """Write per-request lines (one per mapping): at once (`now`, with the lines held before them), or
        with the next write, within ACCESS_TRAIL seconds."""
        created, line = time.time(), self.json.line
        if len(lines) == 1:
            text = line(created, "info", logger, event, lines[0], audit) + "\n"
        else:
            text = "".join([line(created, "info", logger, event, values, audit) + "\n" for values in lines])
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            pending = self._pending
            if now or len(pending) >= MAX_PENDING - 1:  # out now, after the lines held
                if pending:
                    pending.append(text)
                    text = "".join(pending)
                    pending.clear()
                self.stream.write(text)
                self.stream.flush()
                return
            pending.append(text)
            if self._trail is None or self._trail.is_closed():  # no flush due yet: one within ACCESS_TRAIL
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no event loop in this thread: nothing would write it later
                    self.flush()
                    return
                self._trail = loop
                loop.call_later(ACCESS_TRAIL, self._trail_elapsed)

    def _trail_elapsed(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._trail = None
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            try:
                self.flush()  # the lines held were logged first
            except Exception:  # as StreamHandler.emit does: a broken stream is reported, never raised
                self.handleError(record)
                return
        super().emit(record)

    def flush(self) -> None:
        """Write the lines held, then flush the stream (also what logging.shutdown() calls at exit)."""
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self.stream.write(text)
            super().flush()


_handler: JsonHandler | None = None  # the handler setup() installed, for the per-request lines


def request_fields(values: Mapping[str, Any]) -> Mapping[str, Any]:
    """`values` with the current request's id (when there is one and `values` names none)."""
    rid = REQUEST_ID.get()
    if rid is None or "request_id" in values:
        return values
    return {**values, "request_id": rid}


def fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The extra fields of a record: an event()'s dict, else the non-standard attributes."""
    given: Mapping[str, Any] | None = record.__dict__.get(FIELDS)
    if given is not None:
        return given
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line as JSON to `stream` (stdout by default; idempotent)."""
    global _handler
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_keysvc", False):
            old.flush()
            root.removeHandler(old)
    handler = JsonHandler(stream or sys.stdout)
    handler._keysvc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    # What JsonFormatter never writes, so no record needs to collect it: thread and process names (public
    # switches the logging docs list under "Optimization"). The caller's file and line stay collected:
    # per-request lines make no LogRecord at all (event(), audit_requests()), so the stack walk only costs
    # the rare records, and setting the private `logging._srcfile` would change it for every library.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # keysvc writes its own access log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def _write(logger: logging.Logger, name: str, lines: Sequence[Mapping[str, Any]], now: bool,
           audit: bool = False) -> None:
    # an audit line is a record of what happened, not chatter: no level silences it (see `audit`)
    if not audit and not logger.isEnabledFor(logging.INFO):
        return
    handler = _handler
    if handler is None or handler not in logging.getLogger().handlers:  # keysvc's logging is not set up
        for values in lines:
            if audit:
                _audit_record(name, {"audit": True, **values})
            else:
                logger.info(name, extra={FIELDS: values})
        return
    handler.write(logger.name, name, lines, now=now, audit=audit)


def _audit_record(name: str, values: Mapping[str, Any]) -> None:
    """Hand an audit record (level INFO) to the handlers of `keysvc.audit` and its ancestors, whatever the
    loggers' levels: `Logger.handle` skips the level checks that `Logger.info` makes, `logging.disable`
    included (a disabled logger, a filter and a handler's own level still apply: explicit choices of an
    embedder, never set by keysvc)."""
    if AUDIT.disabled:
        return
    record = AUDIT.makeRecord(AUDIT.name, logging.INFO, "(audit)", 0, name, (), None, extra={FIELDS: values})
    AUDIT.handle(record)


def event(logger: logging.Logger, name: str, values: Mapping[str, Any], /) -> None:
    """A per-request line (the access log), written with the next write, within ACCESS_TRAIL seconds. It
    reaches keysvc's handler only: handlers added to `logger` do not see it."""
    _write(logger, name, (values,), False)


def audit(name: str, /, **values: Any) -> None:
    """Record an audit event (key operations) through logging, at every log level: KEYSVC_LOG_LEVEL=error
    silences keysvc's info lines, never its audit trail. Fields must never hold secrets."""
    _audit_record(name, {"audit": True, **values})


def audit_request(name: str, values: Mapping[str, Any], /) -> None:
    """Record the audit line of one request (a token signed or exchanged), written at once: call it before
    the response is sent. Handlers added to `keysvc.audit` do not see it. Never a secret in `values`."""
    audit_requests(name, (request_fields(values),))


def audit_requests(name: str, lines: Sequence[Mapping[str, Any]], /) -> None:
    """audit_request() for several requests (the tokens of one signing batch), in one write."""
    _write(AUDIT, name, lines, True, audit=True)
