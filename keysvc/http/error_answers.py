"""The one error table of both listeners: an exception -> the status, headers and JSON body answered.

Every route answers its errors through `error_answer`: the public app, the internal listener's fast
routes (POST /v1/sign) and the Starlette exception handlers of the other internal routes. So the same
error has the same answer everywhere:

    status       RequestError.status, or 500 for anything else
    headers      content-type: application/json
                 cache-control: no-store
                 the error's own: Allow (405), WWW-Authenticate (401), Retry-After (429, 503)
                 content-length, then x-request-id (added by whoever sends the answer)
    body         {"error": code, "error_description": text}, plus the error's own fields() (409
                 reconnect_required: "connection")

An exception that is not a RequestError is a bug: it is answered `500 internal_error` with a fixed body,
and logged once, at error level, with the request id and the exception's type only. Never its message,
which may quote a secret (a header, a claim, a key path).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import Send

from keysvc.errors import MethodNotAllowed, NotFound, RequestError
from keysvc.http.common import Headers, error_body
from keysvc.logs import LOG


class ErrorAnswer(NamedTuple):
    """What an error is answered with (headers without content-length and x-request-id)."""

    status: int
    headers: Headers
    body: bytes


_COMMON: Headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
INTERNAL_ERROR = ErrorAnswer(500, _COMMON, b'{"error":"internal_error","error_description":"internal error"}')


def error_answer(exc: BaseException) -> ErrorAnswer:
    """The answer to an exception: a RequestError's own, anything else 500 internal_error."""
    if not isinstance(exc, RequestError):
        return INTERNAL_ERROR
    own = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in exc.headers().items()]
    return ErrorAnswer(exc.status, [*_COMMON, *own], error_body(exc))


def log_unexpected(exc: BaseException, listener: str, request_id: str | None) -> None:
    """The one error line of an unexpected exception: its type, never its message."""
    LOG.error("unexpected error", extra={
        "listener": listener, "request_id": request_id, "error_type": type(exc).__name__,
    })


async def send_error(send: Send, answer: ErrorAnswer, *, head: bool = False,
                     tail: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Send an error answer over raw ASGI; `tail`: headers after content-length (x-request-id); `head`:
    a HEAD request (headers only)."""
    length = (b"content-length", str(len(answer.body)).encode("ascii"))
    await send({"type": "http.response.start", "status": answer.status,
                "headers": [*answer.headers, length, *tail]})
    await send({"type": "http.response.body", "body": b"" if head else answer.body})


def error_response(exc: BaseException) -> Response:
    """An error answer as a Starlette Response (the same headers, in the same order, as send_error)."""
    answer = error_answer(exc)
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in answer.headers}
    return Response(answer.body, status_code=answer.status, headers=headers)


def from_http_exception(exc: HTTPException) -> RequestError:
    """Starlette's own HTTPExceptions (no route, wrong method, ...) as keysvc errors."""
    if exc.status_code == 404:
        return NotFound("no such resource")
    if exc.status_code == 405:
        # Starlette joins a set: the order would change from one process to the next
        methods = sorted(m.strip() for m in (exc.headers or {}).get("Allow", "").split(",") if m.strip())
        return MethodNotAllowed("method not allowed here", allow=", ".join(methods))
    mapped = RequestError(str(exc.detail)[:200])
    mapped.status = exc.status_code
    return mapped


async def _on_request_error(conn: HTTPConnection, exc: Exception) -> Response:
    return error_response(exc)


async def _on_http_exception(conn: HTTPConnection, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # type narrowing: only HTTPException is routed here  # nosec B101
    return error_response(from_http_exception(exc))


async def _on_unexpected(conn: HTTPConnection, exc: Exception) -> Response:
    log_unexpected(exc, "internal", conn.scope.get("state", {}).get("request_id"))
    return error_response(exc)


# Starlette's exception_handlers: the most specific class wins; Exception is its 500 handler
STARLETTE_HANDLERS = {RequestError: _on_request_error, HTTPException: _on_http_exception, Exception: _on_unexpected}
