"""`keysvc serve`: both listeners, the keyring and its schedule, in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from keysvc import __version__, tls
from keysvc.backends.registry import open_backend
from keysvc.clock import Clock, SystemClock
from keysvc.config import Settings
from keysvc.http.context import RouteSource
from keysvc.http.internal import build_internal_app
from keysvc.http.public import PublicApp
from keysvc.keyring import Keyring
from keysvc.logs import AUDIT, LOG
from keysvc.metrics import Metrics

SCHEDULE_SLACK = 0.05  # run just after a lifecycle instant, never just before it


@dataclass
class Service:
    """Everything one replica runs."""

    settings: Settings
    keyring: Keyring
    metrics: Metrics
    public_app: Any
    internal_app: Any
    scheduler: AsyncIOScheduler | None = None
    canary: Any = None  # keysvc.canary.Canary.run when `canary` is configured

    async def start(self) -> None:
        """Load keys (creating the first ones if needed) and start the schedule."""
        await self.keyring.refresh_all()
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self._tick, "interval", seconds=self.settings.backend.refresh_interval, id="refresh",
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )
        if self.canary is not None and self.settings.canary is not None:
            # first run one interval after start: the listeners are not serving yet at this point
            scheduler.add_job(
                self.canary, "interval", seconds=self.settings.canary.interval, id="canary",
                max_instances=1, coalesce=True, misfire_grace_time=None,
            )
        scheduler.start()
        self.scheduler = scheduler
        self._schedule_next_change()

    async def _tick(self) -> None:
        await self.keyring.refresh_all()
        self._schedule_next_change()

    def _schedule_next_change(self) -> None:
        """A one-off refresh just after the next activation/removal, so writes that follow an instant
        (the next pending key, destroying a retired key) happen without waiting for the interval."""
        if self.scheduler is None:
            return
        at = self.keyring.next_change()
        if at == float("inf"):
            return
        when = datetime.fromtimestamp(max(at, time.time()) + SCHEDULE_SLACK, UTC)
        self.scheduler.add_job(self._tick, "date", run_date=when, id="next-change", replace_existing=True,
                               misfire_grace_time=None)

    def stop(self) -> None:
        """Stop the schedule and release the backend."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.keyring.close()
        AUDIT.removeHandler(self.metrics.key_event_counter)


def instance_id() -> str:
    """Who this replica is, for `created_by` and logs (pod name on Kubernetes)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


def build_service(settings: Settings, clock: Clock | None = None) -> Service:
    """Wire settings, backend, keyring, metrics and both apps (no I/O yet)."""
    ident = instance_id()
    backend = open_backend(settings.backend, ident)
    # one I/O thread per pooled backend connection (KMS: botocore's pool), so a burst of remote signatures
    # queues in the pool instead of waiting on connections
    workers = int(getattr(backend, "max_workers", 8))
    keyring = Keyring(settings, backend, clock or SystemClock(), ident, ThreadPoolExecutor(workers, "keysvc-io"))
    metrics = Metrics()
    metrics.build_info.info({"version": __version__, "backend": settings.backend.type})
    metrics.watch(keyring)
    metrics.prime(settings.keysets)
    AUDIT.addHandler(metrics.key_event_counter)
    keyring.on_reconcile.append(_count_reconcile(metrics))
    keyring.on_backend_op.append(metrics.backend_op)
    keyring.on_exp_violation.append(_report_exp_violation(metrics))
    features: list[RouteSource] = []
    if settings.token_exchange is not None:
        from keysvc.exchange.wiring import exchange_routes
        from keysvc.zapier.routes import zapier_routes

        features.append(functools.partial(exchange_routes, settings, keyring, metrics))
        features.append(functools.partial(zapier_routes, settings, keyring, metrics))
    internal_app = build_internal_app(settings, keyring, metrics, features)
    public_app = PublicApp(keyring, metrics)
    if settings.mirror is not None:
        from keysvc.mirror_hook import attach_mirror

        attach_mirror(settings, keyring)
    canary = None
    if settings.canary is not None:
        from keysvc.canary import attach

        canary = attach(settings, keyring, metrics)
    return Service(settings, keyring, metrics, public_app, internal_app, canary=canary)


def _report_exp_violation(metrics: Metrics) -> Any:
    def hook(keyset: str, ttl: int) -> None:
        metrics.token_exp_beyond_retention.labels(keyset).inc()
        LOG.error("token refused: exp beyond the keyset's retention guarantee", extra={"keyset": keyset, "ttl": ttl})

    return hook


def _count_reconcile(metrics: Metrics) -> Any:
    def hook(keyset: str, report: Any, error: BaseException | None) -> None:
        # backend operations are counted by the keyring's on_backend_op hook, key events by their audit event
        if error is not None:
            metrics.reconcile_errors.labels(keyset).inc()
            return
        if report.lost_races:
            metrics.creation_races_lost.labels(keyset).inc(report.lost_races)

    return hook


MAX_REQUEST_HEAD = 16 * 1024  # request line + headers, bytes; past it: 431 and the connection closed


class OneWriteResponses(asyncio.Transport):
    """What the request/response cycles of one connection write through: a response's first write (its
    head) is held until its second (the body) and both leave in one send() instead of two (uvicorn writes
    the head as soon as the app sends `http.response.start`; each write to an idle socket is a system
    call). Measured on one core: JWKS +21%, POST /v1/sign +10% requests per second (docs/benchmarks.md).

    The protocol arms it when a cycle starts (not for `Expect: 100-continue`, whose interim answer must not
    wait) and flushes it when the response is complete (HEAD: no body is written), before closing and
    before answering by itself (400, 431). Nothing is scheduled on the event loop (no callback per
    response); a streamed response's head waits for its first chunk."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._held: bytes | None = None
        self._hold_next = False

    def hold_next_write(self) -> None:
        """A response begins: hold its first write until the next one."""
        self.flush()
        self._hold_next = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._hold_next:
            self._hold_next, self._held = False, bytes(data)
        elif self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held + data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Write what is held (the response is complete, the connection closes, the protocol answers)."""
        self._hold_next = False
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)


def _http_protocol() -> Any:
    """httptools (fast) with a bound on the request head, or h11 (bounded by uvicorn) without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools on CPython
        return "h11"

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn applies `h11_max_incomplete_event_size` to h11 only: httptools buffers any number of
        header bytes, so one client could make a replica hold megabytes per connection (header flood).
        The head is measured twice: parsed (URL and headers, refused mid-parse) and received while still
        incomplete (a head that never ends); past MAX_REQUEST_HEAD the answer is 431 and the connection
        is closed."""

        _in_head = True
        _received = 0  # bytes received since the current head began
        _parsed = 0  # bytes of URL and headers parsed in the current head
        _too_large = False
        _one_write: OneWriteResponses | None = None

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._received += len(data)
            super().data_received(data)
            if self._in_head and self._received > MAX_REQUEST_HEAD and not self.transport.is_closing():
                self._refuse()

        def on_message_begin(self) -> None:
            self._in_head, self._parsed = True, 0
            super().on_message_begin()
            if self.scheme == "https":  # the verified client certificate's identities, for mTLS clients
                extension = tls.scope_extension(self.transport.get_extra_info("ssl_object"))
                self.scope["extensions"] = {**self.scope.get("extensions", {}), **extension}

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_head, self._received = False, 0
            super().on_headers_complete()

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            if self._one_write is None:  # one per connection: its cycles write one after another
                self._one_write = OneWriteResponses(self.transport)
            cycle.transport = self._one_write
            if not cycle.waiting_for_100_continue:
                self._one_write.hold_next_write()
            super()._start_asgi_task(cycle, app)

        def on_response_complete(self) -> None:
            self._flush_held()
            super().on_response_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head = True

        def _count(self, n: int) -> None:
            self._parsed += n
            if self._parsed > MAX_REQUEST_HEAD:
                self._too_large = True
                raise ValueError("request head too large")  # httptools aborts: send_400_response below

        def send_400_response(self, msg: str) -> None:
            self._flush_held()  # a response head still held goes out before this answer
            if self._too_large:
                self._refuse()
            else:
                super().send_400_response(msg)

        def _flush_held(self) -> None:
            if self._one_write is not None:
                self._one_write.flush()

        def _refuse(self) -> None:
            self._flush_held()
            body = b'{"error":"invalid_request","error_description":"request headers too large"}'
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            self.transport.close()

    return BoundedHttpToolsProtocol


def _server(app: Any, host: str, port: int, sock: socket.socket | None, **ssl_options: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="off", access_log=False, log_config=None, server_header=False,
        date_header=True, timeout_graceful_shutdown=20, loop="auto", http=_http_protocol(), proxy_headers=False,
        limit_concurrency=2000, h11_max_incomplete_event_size=MAX_REQUEST_HEAD, **ssl_options,
    )
    return _Server(config)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone: `serve` handles SIGTERM once for both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, *, on_ready: Any = None) -> None:
    """Run both listeners until SIGTERM/SIGINT, then drain in-flight requests and stop."""
    service = build_service(settings)
    public = _server(service.public_app, settings.listen_public.host, settings.listen_public.port, None)
    internal = _server(service.internal_app, settings.listen_internal.host, settings.listen_internal.port, None,
                       **tls.uvicorn_ssl_options(settings.tls))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    tasks = [asyncio.create_task(public.serve()), asyncio.create_task(internal.serve())]
    while not (public.started and internal.started):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    if public.started and internal.started:
        LOG.info("serving", extra={
            "public": _bound(public), "internal": _bound(internal), "backend": settings.backend.type,
            "keysets": list(settings.keysets), "ready": service.keyring.ready(),
        })
        if on_ready is not None:
            on_ready(_bound(public), _bound(internal))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    LOG.info("shutting down: draining in-flight requests")
    public.should_exit = internal.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.gather(*tasks)
    service.stop()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise SystemExit(f"listener failed: {type(task.exception()).__name__}: {task.exception()}")


def _bound(server: uvicorn.Server) -> str:
    """The address a started server listens on (resolves port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            return f"{host}:{port}"
    return "?"
