"""The seam of the service's optional parts (the S3 mirror, the partner side, the canary): each is a
`Feature`, and the service knows features, never what is inside one.

    Feature(name,
            routes=...,     # RouteSource: its routes on the internal listener (keysvc.http.context)
            openapi=...,    # OpenApiPart: its `paths` and component `schemas`, merged by keysvc.openapi
            metrics=...,    # Prometheus collectors it defines (registry=None), registered by the service
            observer=...,   # a keyring events observer (keysvc.events), told after the audit log and metrics
            jobs=...,       # Job(name, interval, run): scheduled by Service.start
            public=...,     # PublicRoute: a path prefix of the public listener it answers (raw ASGI)
            start=...,      # async start hook, awaited by Service.start before the listeners serve (it
                            # must not fail the service: a feature's outage is the feature's to handle)
            close=...,      # async close hook, run by Service.aclose in reverse order of opening
            part=...)       # the object behind it (the partner side, the mirror, the canary), for tests

`Resources` is what the service opened, in order: `aclose()` closes it in reverse order, each hook in its
own try (a failure is logged and the rest still close), like svcs' `Registry.aclose`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.registry import Collector
    from starlette.types import Receive, Scope, Send

    from keysvc.events import Observer
    from keysvc.http.context import RouteSource

log = logging.getLogger("keysvc.service")

CloseHook = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class OpenApiPart:
    """A feature's share of the OpenAPI document: `paths` entries and `components.schemas` entries."""

    paths: Mapping[str, Any] = field(default_factory=dict)
    schemas: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """A coroutine function the schedule runs every `interval` seconds (first run one interval after start)."""

    name: str
    interval: float
    run: Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class PublicRoute:
    """Requests of the public listener under `prefix`: `handle` answers one (raw ASGI) and returns its
    status; a RequestError it raises is answered as JSON by the listener. `name` is the bounded metric label."""

    prefix: str
    name: str
    handle: Callable[[Scope, Receive, Send], Awaitable[int]]


@dataclass(frozen=True)
class Feature:
    """One optional part of the service: what it contributes, and how it is closed (module docstring)."""

    name: str
    routes: RouteSource | None = None
    openapi: OpenApiPart = field(default_factory=OpenApiPart)
    metrics: Sequence[Collector] = ()
    observer: Observer | None = None
    jobs: Sequence[Job] = ()
    public: PublicRoute | None = None
    start: CloseHook | None = None
    close: CloseHook | None = None
    part: object = None


class Resources:
    """What was opened, in order; closed in reverse order, every hook tried (module docstring)."""

    def __init__(self) -> None:
        self._hooks: list[tuple[str, CloseHook]] = []

    def __repr__(self) -> str:
        return f"Resources({', '.join(name for name, _ in self._hooks)})"

    @property
    def names(self) -> list[str]:
        """What is open, in the order it was opened."""
        return [name for name, _ in self._hooks]

    def push(self, name: str, close: CloseHook) -> None:
        """Remember one opened thing and how to close it."""
        self._hooks.append((name, close))

    async def aclose(self) -> None:
        """Close everything, last opened first; a failing hook is logged and the others still run."""
        while self._hooks:
            name, close = self._hooks.pop()
            try:
                await close()
            except Exception:  # one failure must not leave the rest open
                log.exception("closing %s failed", name)

    def close_from_sync(self) -> None:
        """`aclose()` from synchronous code, whether or not an event loop runs in this thread (building the
        service failed halfway: what was built holds no connection yet, only pools and clients to release)."""
        thread = threading.Thread(target=asyncio.run, args=(self.aclose(),), name="keysvc-cleanup")
        thread.start()
        thread.join()


def sync_hook(close: Callable[[], object]) -> CloseHook:
    """An async close hook over a synchronous close."""

    async def hook() -> None:
        close()

    return hook
