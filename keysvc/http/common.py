"""What both listeners share: request headers, request ids, strict JSON bodies, JSON error bodies,
refusing WebSockets.

Repeated request headers: the FIRST of a name counts, on every route of both listeners (`first_headers`;
what Starlette's `request.headers.get()` answers too).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from typing import Any

from starlette.types import Receive, Scope, Send

from keysvc.errors import ClientClosedRequest, InvalidRequest, PayloadTooLarge, RequestError, UnsupportedMediaType

Headers = list[tuple[bytes, bytes]]

MAX_BODY = 64 * 1024
# no dots: a JWT (three dot-separated parts) pasted as a request id must never reach the logs. Matched with
# fullmatch: `$` also matches before a trailing newline, which would let "abc\n" into a log line
_REQUEST_ID = re.compile(r"[A-Za-z0-9_:-]{1,64}")


def error_body(exc: RequestError) -> bytes:
    """`{"error": code, "error_description": text}` (and the error's own `fields()`, such as the
    `connection` of reconnect_required) as bytes."""
    return json.dumps({"error": exc.code, "error_description": exc.description, **exc.fields()}).encode("utf-8")


class _FreshIds:
    """Request ids: a random prefix per process and a counter, 24 hex digits. Unique across replicas,
    restarts and forks without a getrandom() system call per request (an id must be unique, not secret)."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFF:012x}"


_fresh_id = _FreshIds()


def first_headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name; of a header sent more than once, the first."""
    return dict(reversed(scope["headers"]))


def request_id(given: str | None) -> str:
    """The caller's X-Request-ID when it is sane, else a fresh one."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return _fresh_id()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # a key repeated: name the first one seen twice
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidRequest(f"duplicate JSON key {key[:64]!r}")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):  # 1e999 parses to inf, which would be signed as `Infinity`
        raise InvalidRequest(f"number {text[:32]} is out of range")
    return value


# json.loads(text, **hooks) builds a decoder (and its C scanner) per call; this is the same decoder, once
_strict_decode = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                                  parse_float=_finite_float).decode


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, bounded nesting and number size."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    try:
        value = _strict_decode(text)
        # An escaped lone surrogate (\ud800) parses to a str that cannot be encoded as UTF-8 again when
        # the claims are signed: refuse it here as a 400 rather than fail later as a 500. Only a \u escape
        # can make one (the UTF-8 decoder above refuses encoded surrogates), so a body without one skips it.
        if "\\u" in text:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("the JSON body holds an unpaired surrogate escape") from None
    except RecursionError:
        raise InvalidRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints over Python's digit limit
        raise InvalidRequest(f"malformed JSON: {str(exc)[:120]}") from None
    return value


def check_content_type(value: str | None) -> None:
    """Only application/json (any charset parameter must be utf-8)."""
    if value == "application/json":  # what nearly every client sends
        return
    media, _, params = (value or "").partition(";")
    if media.strip().lower() != "application/json":
        raise UnsupportedMediaType("send the body as application/json")
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", "charset=\"utf-8\""):
        raise UnsupportedMediaType("JSON bodies must be UTF-8")


def check_length(value: str | None) -> None:
    """Refuse a declared body over the limit before reading it."""
    if value is None:
        return
    if not (value.isascii() and value.isdigit()):  # str.isdigit() alone accepts "²", which int() refuses
        raise InvalidRequest("invalid Content-Length")
    if len(value.lstrip("0")) > 9 or int(value) > MAX_BODY:  # int() refuses over 4300 digits
        raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")


async def read_json(receive: Receive, content_type: str | None, content_length: str | None) -> Any:
    """The JSON body of an ASGI request: content type, size limit (declared and streamed), strict parsing."""
    check_content_type(content_type)
    check_length(content_length)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
        if not message.get("more_body", False):
            break
        chunks.append(chunk)
    return parse_json(b"".join([*chunks, chunk]) if chunks else chunk)  # one message: no copy


async def refuse_websocket(receive: Receive, send: Send) -> None:
    """Neither listener speaks WebSocket: close the handshake before accepting it (the server answers the
    upgrade request 403). A refusal, not an error: nothing is logged."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1008})
