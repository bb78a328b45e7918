"""The HTTP/1.1 protocol both listeners speak: uvicorn's httptools protocol with the bounds a public edge
needs and one write per response.

- Time: a request head must arrive within `head` seconds (counted from the connection's start, or from
  the first byte of a later request head), a body within `body` seconds of its head; past either, the
  answer is 408 `request_timeout` and the connection is closed (silently when nothing was sent). Idle
  keep-alive connections close after `keepalive` seconds (uvicorn's own timer).
- Space: a request head over MAX_REQUEST_HEAD bytes is answered 431 and the connection closed.
- Every refusal the protocol writes itself (400 malformed, 408, 431, 503) is the JSON error contract.
- Load: only requests in flight count against MAX_IN_FLIGHT (never open connections, so idle ones cannot
  starve real requests); past it the answer is 503 `unavailable` with Retry-After.
- One write: a response's head waits for its body (OneWriteResponses).

It relies on uvicorn internals that are not public API (`_start_asgi_task`, the cycle's `transport`,
`send_400_response`): `check_uvicorn()` verifies them at start-up, and pyproject.toml pins uvicorn to the
minor version they were checked against.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from keysvc import tls
from keysvc.config import ListenTimeouts
from keysvc.errors import InvalidRequest, KeysvcError, RequestError, RequestTimeout, Unavailable
from keysvc.http.common import error_body

MAX_REQUEST_HEAD = 16 * 1024  # request line + headers, bytes; past it: 431 and the connection closed
MAX_IN_FLIGHT = 2000  # requests being answered at once, per listener; past it: 503
BUSY_RETRY_AFTER = 1  # seconds


class UnsupportedUvicorn(KeysvcError):
    """The installed uvicorn lacks a hook the protocol overrides."""


def check_uvicorn(protocol: type = HttpToolsProtocol, cycle: type = RequestResponseCycle) -> None:
    """Refuse to start on a uvicorn whose httptools protocol no longer has the hooks overridden here."""
    needed = {
        "HttpToolsProtocol._start_asgi_task(cycle, app)": _params(protocol, "_start_asgi_task") == [
            "self", "cycle", "app"],
        "HttpToolsProtocol.send_400_response(msg)": _params(protocol, "send_400_response") == ["self", "msg"],
        "HttpToolsProtocol._unsupported_upgrade_warning()": _params(
            protocol, "_unsupported_upgrade_warning") == ["self"],
        "RequestResponseCycle(transport=..., expect_100_continue=...)": {"transport", "expect_100_continue"} <= set(
            _params(cycle, "__init__")),
    }
    missing = [hook for hook, present in needed.items() if not present]
    if missing:
        raise UnsupportedUvicorn(
            f"uvicorn {uvicorn.__version__} does not provide {', '.join(missing)}, which keysvc's HTTP protocol "
            "overrides; install the uvicorn version pyproject.toml names"
        )


def _params(cls: type, name: str) -> list[str]:
    function = getattr(cls, name, None)
    return list(inspect.signature(function).parameters) if callable(function) else []


class ProtocolConfig(uvicorn.Config):
    """uvicorn's Config plus what KeysvcHttpProtocol reads from it: the listener's timeouts."""

    def __init__(self, app: Any, *, timeouts: ListenTimeouts, **options: Any) -> None:
        # uvicorn's keep-alive timer takes whole seconds: a fraction rounds up
        super().__init__(app, http=KeysvcHttpProtocol, timeout_keep_alive=math.ceil(timeouts.keepalive), **options)
        self.timeouts = timeouts


def refusal(status_line: bytes, exc: RequestError) -> bytes:
    """A complete `Connection: close` response carrying exc's JSON error body."""
    body = error_body(exc)
    headers = b"".join(f"{k}: {v}\r\n".encode() for k, v in exc.headers().items())
    return (b"HTTP/1.1 " + status_line + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n" + headers + b"connection: close\r\n\r\n" + body)


HEAD_TIMEOUT = refusal(b"408 Request Timeout", RequestTimeout("the request head was not sent in time"))
BODY_TIMEOUT = refusal(b"408 Request Timeout", RequestTimeout("the request body was not sent in time"))
HEAD_TOO_LARGE = refusal(b"431 Request Header Fields Too Large", InvalidRequest("request headers too large"))
MALFORMED = refusal(b"400 Bad Request", InvalidRequest("malformed HTTP request"))
_BUSY = Unavailable("too many requests in flight, retry later", retry_after=BUSY_RETRY_AFTER)


async def busy(scope: Any, receive: Any, send: Any) -> None:
    """The ASGI answer past MAX_IN_FLIGHT: 503 `unavailable` with Retry-After."""
    body = error_body(_BUSY)
    await send({"type": "http.response.start", "status": 503, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(BUSY_RETRY_AFTER).encode()), (b"connection", b"close"),
    ]})
    await send({"type": "http.response.body", "body": body})


class OneWriteResponses(asyncio.Transport):
    """What the request/response cycles of one connection write through: a response's first write (its
    head) is held until its second (the body) and both leave in one send() instead of two (uvicorn writes
    the head as soon as the app sends `http.response.start`; each write to an idle socket is a system
    call). Measured on one core: JWKS +21%, POST /v1/sign +10% requests per second (docs/benchmarks.md).

    The protocol arms it when a cycle starts (not for `Expect: 100-continue`, whose interim answer must not
    wait) and flushes it when the response is complete (HEAD: no body is written), before closing and
    before answering by itself (400, 408, 431). Nothing is scheduled on the event loop (no callback per
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


_HEAD, _BODY, _BETWEEN = "head", "body", "between"  # what the client is sending: the parser's position


class KeysvcHttpProtocol(HttpToolsProtocol):
    """One connection of either listener (see the module docstring for the bounds it enforces).

    The head is measured twice: parsed (URL and headers, refused mid-parse) and received while still
    incomplete (a head that never ends). A deadline timer exists only while the client owes bytes: a
    request that arrives whole in one read arms none (the first request's, armed when the connection
    opens, is cancelled)."""

    def __init__(self, config: uvicorn.Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if not isinstance(config, ProtocolConfig):
            raise TypeError("KeysvcHttpProtocol needs a ProtocolConfig (its timeouts)")
        self._timeouts = config.timeouts
        self._sending = _HEAD
        self._timer: asyncio.TimerHandle | None = None
        self._timer_for = _BETWEEN  # the phase the armed timer bounds
        self._received = 0  # bytes received since the current head began
        self._parsed = 0  # bytes of URL and headers parsed in the current head
        self._too_large = False
        self._one_write: OneWriteResponses | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(_HEAD)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._sending is _HEAD:
            self._received += len(data)
        elif self._sending is _BETWEEN and data:  # the first bytes of the next request head
            self._sending, self._received = _HEAD, len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._sending is _HEAD and self._received > MAX_REQUEST_HEAD:
            self._refuse(HEAD_TOO_LARGE)
        elif self._sending is not self._timer_for:
            self._arm(self._sending)

    def on_message_begin(self) -> None:
        self._sending, self._parsed = _HEAD, 0
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
        self._sending, self._received = _BODY, 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._sending = _BETWEEN

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if len(self.tasks) >= MAX_IN_FLIGHT:
            app = busy
        if self._one_write is None:  # one per connection: its cycles write one after another
            self._one_write = OneWriteResponses(self.transport)
        cycle.transport = self._one_write
        if not cycle.waiting_for_100_continue:
            self._one_write.hold_next_write()
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        self._flush_held()
        super().on_response_complete()

    def _unsupported_upgrade_warning(self) -> None:
        """An Upgrade request is answered as plain HTTP; uvicorn's two warnings per request would let any
        client fill the logs."""

    def _count(self, n: int) -> None:
        self._parsed += n
        if self._parsed > MAX_REQUEST_HEAD:
            self._too_large = True
            raise ValueError("request head too large")  # httptools aborts: send_400_response below

    def send_400_response(self, msg: str) -> None:
        """httptools refused the request (uvicorn has logged why): JSON, not uvicorn's plain-text 400."""
        self._refuse(HEAD_TOO_LARGE if self._too_large else MALFORMED)

    # ------------------------------------------------------------------------------------- deadlines

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._timer_for = phase
        if phase is _HEAD:
            self._timer = self.loop.call_later(self._timeouts.head, self._head_timed_out)
        elif phase is _BODY:
            self._timer = self.loop.call_later(self._timeouts.body, self._body_timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_for = _BETWEEN

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._received == 0 or (self.cycle is not None and not self.cycle.response_complete):
            # nothing sent (no request to answer), or a pipelined head behind a response still being written
            self.transport.close()
        else:
            self._refuse(HEAD_TIMEOUT)

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:  # answered already (e.g. 401): just close
            self._flush_held()
            self.transport.close()
        else:
            self._refuse(BODY_TIMEOUT)

    def _flush_held(self) -> None:
        if self._one_write is not None:
            self._one_write.flush()

    def _refuse(self, response: bytes) -> None:
        """Answer `response` (a complete Connection: close response) and close."""
        self._disarm()
        self._flush_held()
        self.transport.write(response)
        self.transport.close()
