"""Structured JSON logs on stdout, and the audit trail (who did what to which key, when; never a secret).

Hot paths (every signature's audit line, every access line) pass their fields in one record attribute
(`event()`), so the formatter copies one dict instead of scanning the record's `__dict__`; lines logged
with `extra=` (uvicorn's, and the rest of keysvc's) are formatted as before.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

AUDIT = logging.getLogger("keysvc.audit")
LOG = logging.getLogger("keysvc")

FIELDS = "keysvc_fields"  # the record attribute that holds an event()'s fields
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, and the record's extra fields."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(default=str, separators=(",", ":"))
        self._second, self._stamp = -1, ""  # the last whole second formatted, and its text

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        doc: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(fields(record))
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_info[0].__name__  # the type only: a traceback may quote secrets
        return self._encoder.encode(doc)


def fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The extra fields of a record: an event()'s dict, else the non-standard attributes."""
    given: Mapping[str, Any] | None = record.__dict__.get(FIELDS)
    if given is not None:
        return given
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def setup(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log line as JSON to `stream` (stdout by default; idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_keysvc", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler._keysvc = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # What JsonFormatter never writes, so no record needs to collect it: the caller's file and line (a
    # stack walk per record), thread and process names. The switches the logging docs list under
    # "Optimization"; together about a third of the cost of a record.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # keysvc writes its own access log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, values: Mapping[str, Any], /, level: int = logging.INFO) -> None:
    """Log event `name` with `values` as its fields (one attribute: the cheap path for hot lines)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={FIELDS: values})


def audit(name: str, /, **values: Any) -> None:
    """Record an audit event (key operations, signatures). Fields must never hold secrets."""
    event(AUDIT, name, {"audit": True, **values})
