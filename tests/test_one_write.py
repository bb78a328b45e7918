"""keysvc.http.protocol.OneWriteResponses: a response head waits for its body so the two leave in one write, and
nothing is reordered, left unwritten or written to a closed connection. Then the same over real sockets,
through the protocol that arms and flushes it: pipelined requests, HEAD, 304, `Expect: 100-continue`."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from keysvc.http.protocol import OneWriteResponses
from tests.helpers import KeysvcProcess, api_key


class RecordingTransport(asyncio.Transport):
    """A fake transport: what was written, one entry per write() call, and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.unit
def test_an_armed_response_leaves_in_one_write_and_later_chunks_go_straight_through() -> None:
    """Armed at the start of a response: the head waits for the body, both leave in one write; a streamed
    response's later chunks are not held."""
    real = RecordingTransport()
    t = OneWriteResponses(real)
    t.hold_next_write()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert real.writes == []
    t.write(b"chunk 1")
    t.write(b"chunk 2")
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nchunk 1", b"chunk 2"]


@pytest.mark.unit
def test_not_armed_writes_go_straight_through() -> None:
    """An interim `100 Continue` (the protocol does not arm for it) is never held back."""
    real = RecordingTransport()
    OneWriteResponses(real).write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


@pytest.mark.unit
def test_flush_writes_a_head_that_has_no_body() -> None:
    """HEAD: uvicorn writes no body; the protocol flushes when the response is complete."""
    real = RecordingTransport()
    t = OneWriteResponses(real)
    t.hold_next_write()
    t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 914\r\n\r\n")
    t.flush()
    t.flush()
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 914\r\n\r\n"]


@pytest.mark.unit
def test_the_next_response_never_overtakes_a_held_head() -> None:
    """Arming for the next response first writes whatever the previous one left held."""
    real = RecordingTransport()
    t = OneWriteResponses(real)
    t.hold_next_write()
    t.write(b"first head")
    t.hold_next_write()
    t.write(b"second head")
    t.write(b"second body")
    assert real.writes == [b"first head", b"second headsecond body"]


@pytest.mark.unit
def test_close_writes_what_is_held_first() -> None:
    """Closing (Connection: close, errors) never drops a held head."""
    real = RecordingTransport()
    t = OneWriteResponses(real)
    t.hold_next_write()
    t.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    t.close()
    assert (real.writes, real.closed) == ([b"HTTP/1.1 500 Internal Server Error\r\n\r\n"], True)


@pytest.mark.unit
def test_nothing_is_written_to_a_connection_already_closing() -> None:
    """The client went away: a held head is dropped, not written to a dead socket."""
    real = RecordingTransport()
    t = OneWriteResponses(real)
    t.hold_next_write()
    t.write(b"HTTP/1.1 200 OK\r\n\r\n")
    real.closed = True
    t.flush()
    assert real.writes == []


# ------------------------------------------------------------------------------------------ real sockets

def exchange(url: str, data: bytes, expect: int, timeout: float = 5.0) -> list[bytes]:
    """Send raw bytes on one connection and read until `expect` complete responses (by Content-Length)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    responses: list[bytes] = []
    buffer = b""
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        while len(responses) < expect:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {len(responses)} responses: {buffer[:200]!r}"
                buffer += chunk
            head, rest = buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if b" 304 " in head.split(b"\r\n")[0] or head.startswith(b"HTTP/1.1 100") or data.startswith(b"HEAD"):
                length = 0
            while len(rest) < length:
                chunk = sock.recv(65536)
                assert chunk, "connection closed mid-body"
                rest += chunk
            responses.append(head + b"\r\n\r\n" + rest[:length])
            buffer = rest[length:]
    return responses


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One keysvc serve process for the socket tests."""
    from tests.helpers import base_config, write_config

    work = tmp_path_factory.mktemp("one-write")
    proc = KeysvcProcess(write_config(work / "keysvc.yaml", base_config(work / "keys")), name="one-write").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.mark.system
def test_pipelined_requests_get_their_responses_whole_and_in_order(live: KeysvcProcess) -> None:
    """Three requests sent in one packet (HTTP/1.1 pipelining): three complete responses, in order."""
    get = b"GET %s HTTP/1.1\r\nHost: keysvc\r\n\r\n"
    data = get % b"/healthz" + get % b"/.well-known/jwks.json" + get % b"/readyz"
    first, second, third = exchange(live.public, data, 3)
    assert [status(r) for r in (first, second, third)] == [200, 200, 200]
    assert json.loads(first.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}
    assert json.loads(second.split(b"\r\n\r\n", 1)[1])["keys"]
    assert json.loads(third.split(b"\r\n\r\n", 1)[1]) == {"status": "ready"}


@pytest.mark.system
def test_head_and_304_answers_are_not_held_back(live: KeysvcProcess) -> None:
    """HEAD (a head with no body write) and 304 (an empty body) arrive promptly and whole."""
    head = exchange(live.public, b"HEAD /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\n\r\n", 1, timeout=2)[0]
    assert status(head) == 200
    etag = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"etag:"))
    request = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\nIf-None-Match: " + etag + b"\r\n\r\n"
    assert status(exchange(live.public, request, 1, timeout=2)[0]) == 304


@pytest.mark.system
def test_expect_100_continue_gets_the_interim_answer_then_the_token(live: KeysvcProcess) -> None:
    """A client that waits for 100 Continue before sending its body is not left waiting."""
    body = json.dumps({"claims": {"aud": "connect.zapier.com", "sub": "u-1"}}).encode()
    head = (f"POST /v1/sign HTTP/1.1\r\nHost: keysvc\r\nAuthorization: Bearer {api_key('signer')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    host, port = live.internal.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.sendall(head)
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answer = interim.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
        while b'"expires_at"' not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert status(answer) == 200
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["token"].count(".") == 2


@pytest.mark.system
def test_a_held_head_is_not_overtaken_by_the_next_pipelined_response(live: KeysvcProcess) -> None:
    """HEAD's answer is a head with no body write, so it is held to the end of the turn; the next
    pipelined response on the connection must still come after it, not before."""
    data = (b"HEAD /healthz HTTP/1.1\r\nHost: keysvc\r\n\r\n"
            b"GET /readyz HTTP/1.1\r\nHost: keysvc\r\nConnection: close\r\n\r\n")
    host, port = live.public.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=3) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head_answer, rest = received.split(b"\r\n\r\n", 1)
    assert head_answer.startswith(b"HTTP/1.1 200")
    assert b'"ok"' not in received  # HEAD: no body
    assert rest.startswith(b"HTTP/1.1 200")
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1]) == {"status": "ready"}
