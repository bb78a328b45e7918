"""Slow and idle clients against a real `keysvc serve` (keysvc.http.protocol): thousands of idle and
half-sent connections never make a fresh request wait or get a 503, a head or body not sent in time is
answered 408 JSON and closed, idle connections are closed; plus the settings and the start-up check."""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keysvc.config import ListenTimeouts, parse_settings
from keysvc.errors import ConfigError
from keysvc.http.protocol import UnsupportedUvicorn, check_uvicorn
from keysvc.serve import raise_open_file_limit
from tests.helpers import KeysvcProcess, api_key, base_config, write_config

pytestmark = pytest.mark.system

IDLE_PER_PORT = 2500
SLOWLORIS_PER_PORT = 300
FLOOD_HEAD_TIMEOUT = 8.0  # long enough to open every connection and measure, on two loaded cores


def start(tmp: Path, name: str, **listen: Any) -> KeysvcProcess:
    config = base_config(tmp / "keys")
    config["listen"].update(listen)
    config["log"] = {"access": False}
    return KeysvcProcess(write_config(tmp / f"{name}.yaml", config), name=name).start()


@pytest.fixture(scope="module")
def flooded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """A server whose head timeout outlasts the flood's set-up."""
    proc = start(tmp_path_factory.mktemp("flood"), "keysvc-flood", head_timeout=f"{FLOOD_HEAD_TIMEOUT}s")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """A server with one-second head, body and keep-alive timeouts."""
    proc = start(tmp_path_factory.mktemp("strict"), "keysvc-strict", head_timeout="1s", body_timeout="1s",
                 keepalive_timeout="1s")
    yield proc
    proc.stop()


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(url: str, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address(url), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after `timeout`)."""
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def json_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, json.loads(body)


def still_open(socks: list[socket.socket]) -> int:
    """How many of `socks` the server has neither written to nor closed."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(socks) - len(sel.select(timeout=0))


def closed_by_server(socks: list[socket.socket], timeout: float) -> dict[socket.socket, bytes]:
    """Wait until the server has closed every socket; what each one received."""
    received = {s: b"" for s in socks}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for s in socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while sel.get_map():
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(sel.get_map())} connections still open after {timeout}s")
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[s] += chunk
                else:
                    sel.unregister(s)
    return received


def sign_request(body: bytes, declared: int | None = None) -> bytes:
    return (b"POST /v1/sign HTTP/1.1\r\nHost: keysvc\r\nAuthorization: Bearer " + api_key("signer").encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body) if declared is None else declared).encode() + b"\r\n\r\n" + body)


SIGN_BODY = json.dumps({"claims": {"sub": "u-1", "aud": "connect.zapier.com"}}).encode()


def test_idle_and_half_sent_connections_never_starve_fresh_requests(flooded: KeysvcProcess) -> None:
    """With 2,500 idle and 300 slowloris connections held open against each port (more than the old
    concurrency limit of 2,000 connections), fresh JWKS GETs and /v1/sign calls answer 200, never 503;
    once the head timeout passes, the idle connections are closed without a byte and each slowloris one
    gets a 408 JSON answer, although it kept sending header bytes (the deadline is for the whole head)."""
    raise_open_file_limit()
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    heads = {flooded.public: b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\n",
             flooded.internal: b"POST /v1/sign HTTP/1.1\r\nHost: keysvc\r\n"}
    try:
        for url, head in heads.items():
            idle += [connect(url) for _ in range(IDLE_PER_PORT)]
            slow += [connect(url, head) for _ in range(SLOWLORIS_PER_PORT)]
        opened = time.monotonic()
        statuses = []
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as fresh:
            for _ in range(20):
                statuses.append(fresh.get(flooded.public + "/.well-known/jwks.json").status_code)
                statuses.append(fresh.post(flooded.internal + "/v1/sign", content=SIGN_BODY, headers={
                    "Authorization": f"Bearer {api_key('signer')}", "Content-Type": "application/json"}).status_code)
        for s in slow:
            s.sendall(b"X-Trickle: 1\r\n")
        assert time.monotonic() - opened < FLOOD_HEAD_TIMEOUT, "the flood took too long to measure anything"
        assert still_open(idle + slow) == len(idle) + len(slow)
        assert statuses == [200] * 40

        received = closed_by_server(idle + slow, timeout=FLOOD_HEAD_TIMEOUT + 20)
        assert {received[s] for s in idle} == {b""}
        answers = [json_answer(received[s]) for s in slow]
        assert {status for status, _, _ in answers} == {408}
        assert {body["error"] for _, _, body in answers} == {"request_timeout"}
    finally:
        for s in idle + slow:
            s.close()


def test_a_half_sent_head_gets_408_json_after_the_head_timeout(strict: KeysvcProcess) -> None:
    """A request line and one header, then nothing: 408 `request_timeout` JSON, `Connection: close`, after
    about the head timeout (1 s here), on both ports."""
    for url in (strict.public, strict.internal):
        started = time.monotonic()
        with connect(url, b"GET /healthz HTTP/1.1\r\nHost: keysvc\r\n") as sock:
            status, headers, body = json_answer(read_until_closed(sock, timeout=10))
        elapsed = time.monotonic() - started
        assert (status, headers["content-type"], headers["connection"]) == (408, "application/json", "close")
        assert body["error"] == "request_timeout" and body["error_description"]
        assert 0.9 <= elapsed < 6


def test_a_trickled_head_is_cut_at_the_head_timeout(strict: KeysvcProcess) -> None:
    """Slowloris: a header byte every 0.2 s resets nothing; the head deadline counts from the first byte."""
    started = time.monotonic()
    with connect(strict.public, b"GET /healthz HTTP/1.1\r\n") as sock:
        with pytest.raises(OSError):  # the server closes while we still trickle
            for _ in range(100):
                time.sleep(0.2)
                sock.sendall(b"X")
                if time.monotonic() - started > 10:
                    break
        elapsed = time.monotonic() - started
    assert elapsed < 6


def test_a_connection_that_sends_nothing_is_closed_silently(strict: KeysvcProcess) -> None:
    """No byte sent, no request to answer: the connection is closed after the head timeout, with no answer."""
    started = time.monotonic()
    with connect(strict.internal) as sock:
        assert read_until_closed(sock, timeout=10) == b""
    assert 0.9 <= time.monotonic() - started < 6


def test_a_stalled_body_gets_408_json_after_the_body_timeout(strict: KeysvcProcess) -> None:
    """An authenticated /v1/sign that declares 50 bytes and sends 10: 408 `request_timeout` JSON and the
    connection closed after the body timeout; the server keeps signing for others."""
    started = time.monotonic()
    with connect(strict.internal, sign_request(SIGN_BODY[:10], declared=50)) as sock:
        status, _, body = json_answer(read_until_closed(sock, timeout=10))
    assert (status, body["error"]) == (408, "request_timeout")
    assert 0.9 <= time.monotonic() - started < 6
    assert strict.sign().status_code == 200


def test_a_body_sent_in_pieces_within_the_deadline_is_served(strict: KeysvcProcess) -> None:
    """The body deadline bounds the whole body, not each read: a body in three pieces well within it signs."""
    request = sign_request(SIGN_BODY)
    with connect(strict.internal) as sock:
        head_end = request.index(b"\r\n\r\n") + 4
        sock.sendall(request[: head_end + 5])
        time.sleep(0.2)
        sock.sendall(request[head_end + 5 : head_end + 20])
        time.sleep(0.2)
        sock.sendall(request[head_end + 20 :])
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(strict: KeysvcProcess) -> None:
    """After a complete answer, a kept-alive connection that sends nothing more is closed (1 s here)."""
    started = time.monotonic()
    with connect(strict.public, b"GET /healthz HTTP/1.1\r\nHost: keysvc\r\n\r\n") as sock:
        answered = read_until_closed(sock, timeout=10)
    assert answered.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in answered.lower()
    assert 0.9 <= time.monotonic() - started < 6


def test_a_websocket_upgrade_is_answered_as_plain_http(strict: KeysvcProcess) -> None:
    """No listener speaks WebSocket: an Upgrade request gets the route's ordinary answer, never a 500."""
    with connect(strict.public, b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: keysvc\r\nConnection: Upgrade\r\n"
                 b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"\r\n") as sock:
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")


def test_listen_timeouts_are_read_from_the_listen_section(tmp_path: Path) -> None:
    """`listen.head_timeout`, `body_timeout` and `keepalive_timeout` take durations; defaults 10s, 30s, 5s."""
    config = base_config(tmp_path)
    assert parse_settings(config).listen_timeouts == ListenTimeouts(head=10, body=30, keepalive=5)
    config["listen"].update(head_timeout="2s", body_timeout="1m", keepalive_timeout=3)
    assert parse_settings(config).listen_timeouts == ListenTimeouts(head=2, body=60, keepalive=3)


def test_a_zero_timeout_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """0 would close every connection at once: the configuration is refused."""
    config = base_config(tmp_path)
    config["listen"]["body_timeout"] = "0s"
    with pytest.raises(ConfigError) as err:
        parse_settings(config)
    assert err.value.field == "listen.body_timeout"


class ProtocolWithoutHooks:
    """A fake uvicorn protocol class from a version that renamed the hooks keysvc overrides."""

    def send_400_response(self, msg: str) -> None:
        """Present, with the expected signature."""


def test_start_up_refuses_a_uvicorn_without_the_overridden_hooks() -> None:
    """The installed uvicorn passes; one lacking `_start_asgi_task` is refused with its version named."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    check_uvicorn()
    with pytest.raises(UnsupportedUvicorn) as err:
        check_uvicorn(ProtocolWithoutHooks, RequestResponseCycle)
    assert f"uvicorn {uvicorn.__version__}" in str(err.value)
    assert "_start_asgi_task" in str(err.value)
