"""Shared fixtures: real key directories, real keysvc processes (stopped after each test)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keysvc import logs
from tests.helpers import KeysvcProcess, base_config, write_config

pytest_plugins = ["tests.kms_server", "tests.postgres_server"]

KINDS = ("unit", "system")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test is exactly one of `unit` (pure logic, in process, temporary directories) or `system`
    (starts a process, a server, moto or a browser, or talks over loopback): refuse the run otherwise,
    before `-m` deselects anything, so `make unit` cannot silently skip an unmarked test."""
    wrong = [
        f"{item.nodeid} ({', '.join(kinds) or 'no mark'})"
        for item in items
        if len(kinds := [k for k in KINDS if any(m.name == k for m in item.iter_markers())]) != 1
    ]
    if wrong:
        raise pytest.UsageError(
            "each test needs exactly one of the marks unit or system (module `pytestmark` or a decorator):\n  "
            + "\n  ".join(wrong)
        )


class LogStream(io.StringIO):
    """A log stream that records each write, and can be made to fail like a broken stdout pipe. Reading
    it (getvalue) first writes the access lines keysvc's handler still holds, as a running server does
    within keysvc.logs.ACCESS_TRAIL: a test's event loop has usually ended by the time it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.broken = False

    def write(self, text: str) -> int:
        if self.broken:
            raise OSError("broken pipe")
        self.writes.append(text)
        return super().write(text)

    def getvalue(self) -> str:
        if logs._handler is not None and logs._handler.stream is self:
            logs._handler.flush()
        return super().getvalue()


@pytest.fixture
def log_stream() -> Iterator[LogStream]:
    """keysvc's logging (keysvc.logs.setup) on a LogStream; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level, saved = list(root.handlers), root.level, logs._handler
    out = LogStream()
    logs.setup("INFO", out)
    yield out
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved_handlers:
        root.addHandler(handler)
    root.setLevel(saved_level)
    logs._handler = saved


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A fresh, real key directory."""
    return tmp_path / "keys"


@pytest.fixture
def keysvc(tmp_path: Path) -> Iterator[Callable[..., KeysvcProcess]]:
    """Factory: start a `keysvc serve` process for a config dict; every process is stopped at the end."""
    started: list[KeysvcProcess] = []

    def start(config: dict[str, Any] | None = None, *, name: str = "keysvc", env: dict[str, str] | None = None,
              config_name: str | None = None) -> KeysvcProcess:
        cfg = config if config is not None else base_config(tmp_path / "keys")
        path = write_config(tmp_path / (config_name or f"{name}-{len(started)}.yaml"), cfg)
        proc = KeysvcProcess(path, name=name, env=env or {})
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()
