"""PartnerApi against a scripted Partner API on 127.0.0.1: which calls are retried (reads) and which never
are (creating a run), envelopes, and the budget's cooldown after a 429. Sleeps are on a test clock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from keysvc.client.oauth import MAX_ANSWER
from keysvc.config import Secret
from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import RequestError, Unavailable, UpstreamError
from keysvc.partner.budget import ApiBudget
from keysvc.partner.outbound import PartnerHttp, env_proxy
from keysvc.partner.partner_api import PartnerApi, PartnerUnauthorized
from tests.exchange_support import serve
from tests.helpers import SteppedTime

pytestmark = pytest.mark.system

TOKEN = "at-scripted-access-token-0123456789abcdef"


@dataclass
class Script:
    """Answers in order (status, body, headers), each after `delay` seconds; records what arrived."""

    answers: list[tuple[int, Any, dict[str, str]]] = field(default_factory=list)
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    delay: float = 0.0

    def app(self) -> Starlette:
        async def any_path(request: Request) -> Response:
            self.seen.append((request.method, request.url.path, request.headers.get("authorization")))
            self.requests.append(request)
            self.bodies.append(await request.body())
            await asyncio.sleep(self.delay)
            status, body, headers = self.answers.pop(0) if self.answers else (200, {"data": []}, {})
            if isinstance(body, bytes):
                return Response(body, status_code=status, headers=headers)
            if callable(body):  # an async generator function: streamed, without a Content-Length
                return StreamingResponse(body(), status_code=status, headers=headers)
            return JSONResponse(body, status_code=status, headers=headers)

        return Starlette(routes=[Route("/{path:path}", any_path, methods=["GET", "POST"])])


@pytest.fixture
def script() -> Iterator[tuple[Script, str]]:
    """The scripted server and its base URL."""
    s = Script()
    with serve(s.app()) as url:
        yield s, url


def call(url: str, method: str, clock: SteppedTime | None = None, budget: ApiBudget | None = None,
         retry: bool = True, times: int = 1, **settings_overrides: Any) -> dict[str, Any]:
    """`times` calls through one PartnerApi (one HTTP session); the last one's answer."""
    settings = TokenExchangeSettings(**{"client_id": "c", "client_secret": Secret("s"), "api_url": url,
                                        "max_attempts": 4, "total_timeout": 30.0, **settings_overrides})
    clock = clock or SteppedTime(0.0)

    async def go() -> dict[str, Any]:
        http = PartnerHttp()
        try:
            api = PartnerApi(settings, http, budget or ApiBudget(6000, 100), clock=clock, sleep=clock.sleep)
            for _ in range(times):
                if method == "GET":
                    answer = await api.get("authentications", "/v2/authentications", TOKEN, {"app": "x"})
                else:
                    answer = await api.post("run_create", "/v2/action-runs", TOKEN, {"data": {}}, retry=retry)
            return answer
        finally:
            await http.aclose()

    return asyncio.run(go())


def error_body(status: int, detail: str = "detail") -> dict[str, Any]:
    return {"errors": [{"status": status, "code": "c", "title": "t", "detail": detail, "source": None}]}


def test_reads_are_retried_after_5xx_and_succeed(script: tuple[Script, str]) -> None:
    """A GET answered 503 then 500 then 200 returns the 200; the token went as a Bearer each time."""
    s, url = script
    s.answers = [(503, error_body(503), {"Retry-After": "2"}), (500, error_body(500), {}), (200, {"data": [1]}, {})]
    clock = SteppedTime(0.0)
    assert call(url, "GET", clock) == {"data": [1]}
    assert [a for a, _, _ in s.seen] == ["GET"] * 3 and all(h == f"Bearer {TOKEN}" for _, _, h in s.seen)
    assert clock.slept[0] >= 2.0  # Retry-After honoured


def test_creating_a_run_is_never_retried(script: tuple[Script, str]) -> None:
    """POST /v2/action-runs answered 500 is a 502 after ONE request: a retry could run the action twice."""
    s, url = script
    s.answers = [(500, error_body(500), {}), (200, {"data": {"id": "r"}}, {})]
    with pytest.raises(UpstreamError):
        call(url, "POST", retry=False)
    assert len(s.seen) == 1


def test_a_429_cools_the_budget_down(script: tuple[Script, str]) -> None:
    """A 429 is a 503 with Zapier's Retry-After; the next call is refused without being sent."""
    s, url = script
    s.answers = [(429, error_body(429), {"Retry-After": "30"})]
    budget, clock = ApiBudget(600, 10), SteppedTime(0.0)
    with pytest.raises(Unavailable) as first:
        call(url, "GET", clock, budget)
    with pytest.raises(Unavailable) as second:
        call(url, "GET", clock, budget)
    assert (first.value.retry_after, len(s.seen)) == (30, 1)
    assert second.value.retry_after is not None and 1 <= second.value.retry_after <= 30


@pytest.mark.parametrize(("answer", "expected"), [
    ((401, error_body(401), {}), PartnerUnauthorized),
    ((200, b"not json", {}), UpstreamError),
    ((200, [1, 2], {}), UpstreamError),
    ((200, [{"data": [], "links": {}}], {}), None),  # the document's one-element array envelope
])
def test_answers_map_to_results_or_errors(script: tuple[Script, str], answer: tuple[int, Any, dict[str, str]],
                                          expected: type[RequestError] | None) -> None:
    """401 is PartnerUnauthorized (the gateway renews the token); garbage is a 502; [object] is the object."""
    s, url = script
    s.answers = [answer]
    if expected is None:
        assert call(url, "GET") == {"data": [], "links": {}}
    else:
        with pytest.raises(expected):
            call(url, "GET")
        assert len(s.seen) == 1  # neither 401 nor a malformed 2xx is retried


def test_errors_never_carry_the_token(script: tuple[Script, str]) -> None:
    """A partner detail echoing our bearer token comes back redacted."""
    s, url = script
    s.answers = [(400, error_body(400, f"bad token {TOKEN}"), {})]
    with pytest.raises(RequestError) as info:
        call(url, "GET")
    assert TOKEN not in info.value.description and "[redacted]" in info.value.description


@pytest.mark.parametrize("token", ["at-with\r\nX-Injected: 1", "at-with\x00nul", "at-é", "at with space"])
def test_a_token_unfit_for_a_header_is_a_502_and_nothing_is_sent(script: tuple[Script, str], token: str) -> None:
    """An access token with control characters, spaces or non-ASCII (a broken partner) is a 502, not a 500,
    not retried, and never reaches the wire (no header injection)."""
    s, url = script
    settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), api_url=url, max_attempts=4)

    async def go() -> None:
        http = PartnerHttp()
        try:
            await PartnerApi(settings, http, ApiBudget(6000, 100)).get("authentications", "/v2/x", token)
        finally:
            await http.aclose()

    with pytest.raises(UpstreamError) as info:
        asyncio.run(go())
    assert s.seen == [] and token not in info.value.description


def test_a_cookie_the_partner_sets_is_never_sent_back(script: tuple[Script, str]) -> None:
    """A Set-Cookie on one user's call is not stored: the next call over the same session sends no Cookie
    header (a cookie must never ride on another user's call; the API is bearer-token based)."""
    s, url = script
    s.answers = [(200, {"data": []}, {"Set-Cookie": "session=abc123; Path=/"}), (200, {"data": []}, {})]
    call(url.replace("127.0.0.1", "localhost"), "GET", times=2)  # a host name: jars refuse cookies of IPs
    assert len(s.requests) == 2
    assert [r.headers.get("cookie") for r in s.requests] == [None, None]


def test_an_answer_over_the_size_bound_is_a_502_and_is_not_read_whole(script: tuple[Script, str]) -> None:
    """A 2xx body larger than MAX_ANSWER (declared, or streamed without a length) is a 502 after one
    request, not retried: a partner cannot make a replica hold an answer of any size."""
    s, url = script
    big = b'{"data":"' + b"x" * MAX_ANSWER + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    for body in (big, stream):
        s.answers, s.seen = [(200, body, {})], []
        with pytest.raises(UpstreamError) as info:
            call(url, "GET")
        assert len(s.seen) == 1 and "more than 4 MiB" in info.value.description


def test_a_redirect_is_an_error_and_is_not_followed(script: tuple[Script, str]) -> None:
    """A 302 is a 502 after one request: the Location is never visited, so the bearer token goes to
    api_url and nowhere else."""
    s, url = script
    s.answers = [(302, {"data": []}, {"Location": f"{url}/elsewhere"})]
    with pytest.raises(UpstreamError) as info:
        call(url, "GET")
    assert [path for _, path, _ in s.seen] == ["/v2/authentications"]
    assert "HTTP 302" in info.value.description


def test_the_request_carries_the_query_the_json_body_and_the_headers(script: tuple[Script, str]) -> None:
    """A POST sends its body as JSON with its content type, a GET its query, both the bearer token and
    Accept: application/json."""
    s, url = script
    call(url, "POST", retry=False)
    call(url, "GET")
    post, get = s.requests
    assert (post.headers["content-type"], s.bodies[0]) == ("application/json", b'{"data":{}}')
    assert (get.url.path, get.url.query, s.bodies[1]) == ("/v2/authentications", "app=x", b"")
    assert {r.headers["accept"] for r in s.requests} == {"application/json"}


def test_a_partner_slower_than_read_timeout_is_a_503_after_every_attempt(script: tuple[Script, str]) -> None:
    """No byte within read_timeout is a timeout: retried (a read), then 503 with Retry-After."""
    s, url = script
    s.delay = 1.0
    with pytest.raises(Unavailable) as info:
        call(url, "GET", read_timeout=0.1, max_attempts=2)
    assert len(s.seen) == 2
    assert "timed out" in info.value.description and info.value.retry_after == 1


def test_a_partner_that_never_accepts_the_connection_is_a_503_within_connect_timeout() -> None:
    """A connection that never completes (a listener whose backlog is full drops the SYN) is a timeout
    after connect_timeout per attempt, not after the read timeout or the whole budget."""
    with socket.socket() as listener, socket.socket() as queued:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued.connect(listener.getsockname())  # fills the backlog: later connections hang
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            call(f"http://127.0.0.1:{listener.getsockname()[1]}", "GET", max_attempts=2, connect_timeout=0.2,
                 read_timeout=30.0)
        elapsed = time.monotonic() - started
    assert "timed out" in info.value.description and elapsed < 10.0  # 2 x 0.2 s, far from 30 s


def test_an_unreachable_partner_is_a_503() -> None:
    """Nothing listening at api_url is a 503 after the attempts, naming the error class, not the token."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(Unavailable) as info:
            call(f"http://127.0.0.1:{port}", "GET", max_attempts=2)
    assert "unreachable" in info.value.description and TOKEN not in info.value.description


@pytest.mark.parametrize(("environ", "url", "expected"), [
    ({}, "https://api.zapier.com", None),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.zapier.com", "http://proxy:3128"),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "http://api.zapier.com", None),
    ({"ALL_PROXY": "http://all:3128"}, "http://api.zapier.com", "http://all:3128"),
    ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "zapier.com"}, "https://api.zapier.com", None),
])
def test_the_proxy_is_the_environments(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], url: str,
                                       expected: str | None) -> None:
    """As with the service's httpx clients: <scheme>_PROXY, else ALL_PROXY, unless NO_PROXY covers the host."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert env_proxy(url) == expected
