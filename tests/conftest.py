"""Shared fixtures: real key directories, real keysvc processes (stopped after each test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import KeysvcProcess, base_config, write_config

pytest_plugins = ["tests.kms_server"]


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
