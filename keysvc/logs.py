"""Structured JSON logs on stdout, and the audit trail (who did what to which key, when; never a secret)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

AUDIT = logging.getLogger("keysvc.audit")
LOG = logging.getLogger("keysvc")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_info[0].__name__  # the type only: a traceback may quote secrets
        return json.dumps(doc, default=str, separators=(",", ":"))


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
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "apscheduler"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # keysvc writes its own access log
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)


def audit(event: str, **fields: Any) -> None:
    """Record an audit event (key operations, signatures). Fields must never hold secrets."""
    AUDIT.info(event, extra={"audit": True, **fields})
