"""keysvc.feature: what the service opened closes last first, every close hook tried."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from keysvc.feature import Resources

pytestmark = pytest.mark.unit


def test_resources_close_in_reverse_and_a_failure_does_not_stop_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    """Resources.aclose closes the last opened first, logs a failing close hook (by name) and still closes
    everything else; it is then empty, so a second aclose closes nothing twice."""
    closed: list[str] = []

    def hook(name: str, fail: bool = False) -> Callable[[], Awaitable[None]]:
        async def close() -> None:
            closed.append(name)
            if fail:
                raise OSError(f"{name} would not close")

        return close

    resources = Resources()
    for name in ("backend", "pool", "partner", "canary"):
        resources.push(name, hook(name, fail=name == "partner"))
    with caplog.at_level(logging.ERROR, logger="keysvc.service"):
        asyncio.run(resources.aclose())
        asyncio.run(resources.aclose())

    assert closed == ["canary", "partner", "pool", "backend"]
    assert [r.getMessage() for r in caplog.records] == ["closing partner failed"]
    assert resources.names == []
