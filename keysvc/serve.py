"""`keysvc serve`: both listeners and the service behind them in one process and one event loop, until
SIGTERM/SIGINT; then in-flight requests drain and everything the service built is closed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import signal
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from keysvc import tls
from keysvc.config import Address, ListenTimeouts, Settings
from keysvc.errors import KeysvcError
from keysvc.http.protocol import ProtocolConfig, check_uvicorn
from keysvc.logs import LOG
from keysvc.service import Service, build_service

LISTEN_BACKLOG = 4096  # connections the kernel queues before accept(); Linux caps it at net.core.somaxconn


class ListenError(KeysvcError):
    """A listener's address cannot be bound (in use, not an address of this host, a privileged port): the
    server does not start. The message names the address and the listener."""


def bind(address: Address, which: str) -> list[socket.socket]:
    """Bind every address `address` resolves to (as asyncio's create_server would) before anything else
    starts, so a clash is one ListenError naming the address instead of a failure inside a listener task."""
    reason = ""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(address.host or None, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, sockaddr in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        return sockets
    except socket.gaierror as exc:
        reason = f"cannot resolve {address.host!r} ({exc.strerror})"
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
    for sock in sockets:
        sock.close()
    raise ListenError(f"cannot listen on {address} ({which}): {reason}")


def listener(app: Any, host: str, port: int, timeouts: ListenTimeouts | None = None,
             **ssl_options: Any) -> uvicorn.Server:
    """A uvicorn server for one listener on keysvc's HTTP protocol (keysvc.http.protocol)."""
    config = ProtocolConfig(
        app, timeouts=timeouts or ListenTimeouts(), host=host, port=port, lifespan="off", access_log=False,
        log_config=None, server_header=False, date_header=True, timeout_graceful_shutdown=20, loop="auto",
        ws="none", proxy_headers=False, limit_concurrency=None, backlog=LISTEN_BACKLOG, **ssl_options,
    )
    return _Server(config)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone: `serve` handles SIGTERM once for both listeners."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (every connection is a file descriptor;
    the usual soft default, 1024, would refuse connections long before the event loop is busy). The new
    soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):  # some sandboxes refuse: keep the soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(settings: Settings, *, on_ready: Any = None) -> None:
    """Run both listeners until SIGTERM/SIGINT, then drain in-flight requests and stop."""
    check_uvicorn()
    open_files = raise_open_file_limit()
    public_sockets = bind(settings.listen_public, "public")
    try:
        internal_sockets = bind(settings.listen_internal, "internal")
    except ListenError:
        for sock in public_sockets:
            sock.close()
        raise
    bound = (public_sockets, internal_sockets)
    try:
        service = build_service(settings)
        try:
            await _run(settings, service, open_files, on_ready, bound)
        finally:
            await service.aclose()
    finally:
        for sock in (*public_sockets, *internal_sockets):
            sock.close()


async def _run(settings: Settings, service: Service, open_files: int, on_ready: Any,
               bound: tuple[list[socket.socket], list[socket.socket]]) -> None:
    timeouts = settings.listen_timeouts
    public = listener(service.public_app, settings.listen_public.host, settings.listen_public.port, timeouts)
    internal = listener(service.internal_app, settings.listen_internal.host, settings.listen_internal.port, timeouts,
                        **tls.uvicorn_ssl_options(settings.tls))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    tasks = [asyncio.create_task(public.serve(sockets=bound[0])), asyncio.create_task(internal.serve(sockets=bound[1]))]
    while not (public.started and internal.started):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    if public.started and internal.started:
        LOG.info("serving", extra={
            "public": bound_address(public), "internal": bound_address(internal), "backend": settings.backend.type,
            "keysets": list(settings.keysets), "ready": service.keyring.ready(), "open_files_limit": open_files,
        })
        if on_ready is not None:
            on_ready(bound_address(public), bound_address(internal))
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    LOG.info("shutting down: draining in-flight requests")
    public.should_exit = internal.should_exit = True
    with contextlib.suppress(Exception):
        await asyncio.gather(*tasks)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise SystemExit(f"listener failed: {type(task.exception()).__name__}: {task.exception()}")


def bound_address(server: uvicorn.Server) -> str:
    """The address a started server listens on (resolves port 0)."""
    for srv in server.servers:
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            return f"{host}:{port}"
    return "?"
