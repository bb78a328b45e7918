"""keysvc.http.protocol.KeysvcHttpProtocol driven directly, over a recording transport: only requests in
flight count against MAX_IN_FLIGHT (open connections never do), the refusal past it is the JSON 503
contract with Retry-After, and a malformed request gets a JSON 400."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from uvicorn.server import ServerState

from keysvc.config import ListenTimeouts
from keysvc.http.protocol import MAX_IN_FLIGHT, KeysvcHttpProtocol, ProtocolConfig
from tests.test_one_write import RecordingTransport

pytestmark = pytest.mark.system

REQUEST = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\n\r\n"


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """A constant 200 answer."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


class PeerTransport(RecordingTransport):
    """The recording transport with the peer and socket names uvicorn reads when a connection opens."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name, default)


async def answer(state: ServerState, request: bytes = REQUEST) -> bytes:
    """What one connection of a listener in `state` answers to `request`."""
    config = ProtocolConfig(ok_app, timeouts=ListenTimeouts(), lifespan="off", log_config=None, access_log=False)
    protocol = KeysvcHttpProtocol(config=config, server_state=state, app_state={})
    transport = PeerTransport()
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(20):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    return b"".join(transport.writes)


def test_open_connections_do_not_count_against_the_limit() -> None:
    """Far more open connections than MAX_IN_FLIGHT, none with a request in flight: a request is served."""

    async def scenario() -> bytes:
        state = ServerState()
        state.connections.update(object() for _ in range(MAX_IN_FLIGHT * 3))  # type: ignore[misc]
        return await answer(state)

    assert asyncio.run(scenario()).startswith(b"HTTP/1.1 200 ")


def test_past_the_in_flight_limit_the_answer_is_json_503_with_retry_after() -> None:
    """MAX_IN_FLIGHT requests already being answered: the next one gets 503 `unavailable` JSON,
    Retry-After and Connection: close, never uvicorn's plain-text 503."""

    async def scenario() -> bytes:
        state = ServerState()
        state.tasks.update(object() for _ in range(MAX_IN_FLIGHT))  # type: ignore[misc]
        return await answer(state)

    raw = asyncio.run(scenario())
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert {b"content-type: application/json", b"retry-after: 1", b"connection: close"} <= set(head.split(b"\r\n"))
    assert json.loads(body)["error"] == "unavailable"


def test_a_malformed_request_gets_a_json_400_not_uvicorns_plain_text() -> None:
    """Bytes httptools cannot parse: 400 `invalid_request` JSON and the connection closed."""
    raw = asyncio.run(answer(ServerState(), b"GET / HTTP/1.1\r\nHost: keysvc\r\nbroken header\r\n\r\n"))
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert {b"content-type: application/json", b"connection: close"} <= set(head.split(b"\r\n"))
    assert json.loads(body) == {"error": "invalid_request", "error_description": "malformed HTTP request"}
