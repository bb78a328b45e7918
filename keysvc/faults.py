"""Crash checkpoints: named points on the write paths where a test can kill the process (`kill -9`).

    KEYSVC_CRASH_AT=<name>:<n>    SIGKILL this process at the n-th time `checkpoint(name)` is reached

The variable is read once, the first time a checkpoint is reached, and only from the environment of the
process: no configuration key, API or signal can arm it, so a deployed replica cannot be made to crash
through keysvc itself (whoever can set a process's environment can already kill it). Unarmed, a checkpoint
costs one dict increment: checkpoints sit on key-store writes only (a few per rotation), never on a
request path.

`hits()` returns how often each checkpoint was reached in this process, so a test can enumerate every
(name, n) a scenario passes through and then crash at each of them in a fresh process.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "KEYSVC_CRASH_AT"

_hits: Counter[str] = Counter()
_armed: tuple[str, int] | None = None
_read = False


def _parse(spec: str) -> tuple[str, int] | None:
    name, sep, count = spec.rpartition(":")
    if not sep or not name or not count.isdigit() or int(count) < 1:
        return None
    return name, int(count)


def checkpoint(name: str) -> None:
    """Mark a crash point. Kills the process (SIGKILL, no cleanup, no flush) when armed for this hit."""
    global _armed, _read
    if not _read:
        _armed, _read = _parse(os.environ.get(ENV, "")), True
    _hits[name] += 1
    if _armed is not None and _armed == (name, _hits[name]):
        os.kill(os.getpid(), signal.SIGKILL)


def hits() -> dict[str, int]:
    """How many times each checkpoint was reached in this process so far."""
    return dict(_hits)
