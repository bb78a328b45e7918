"""TokenExchanger end to end: a partner token server on 127.0.0.1 that fetches the JWKS over HTTP and
verifies the partner JWT with PyJWT, as Zapier would. The signer is the in-test stand-in for keysvc;
tests/test_exchange_keysvc.py repeats the essentials against a real `keysvc serve`.

Every test that builds its exchanger with `exchanger()` runs twice: over the clients' httpx token endpoint
(keysvc.client.token_endpoint) and over the server's aiohttp one (keysvc.partner.outbound), which share
the OAuth rules and the retry loop: both keep every behaviour below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keysvc.client import ExchangeResult, PartnerError, TokenExchanger
from keysvc.client.signer import TokenSigner
from keysvc.client.token_endpoint import token_endpoint_client
from keysvc.config import TokenExchangeSettings
from keysvc.errors import RequestError, Unavailable, UpstreamError
from keysvc.partner.outbound import AiohttpTokenEndpoint, PartnerHttp
from tests.exchange_support import FakeSigner, World, running_world, serve
from tests.partner_server import ACCESS_TOKEN, CONNECT_TOKEN, EXTERNAL_JWT, GRANT_TYPE

pytestmark = pytest.mark.system

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="module")
def world_once() -> Iterator[World]:
    with running_world() as world:
        yield world


TRANSPORTS: dict[int, str] = {}  # id(world) -> the transport its exchangers use in the current test


@pytest.fixture(params=["httpx", "aiohttp"])
def world(world_once: World, request: pytest.FixtureRequest) -> World:
    TRANSPORTS[id(world_once)] = request.param
    world_once.partner.reset()
    for signer in world_once.signers.values():
        signer.calls.clear()
    return world_once


class RecordingSleep:
    """An asyncio.sleep stand-in that records the delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class ServerSideExchanger(TokenExchanger):
    """The server's way: a TokenExchanger over the aiohttp token endpoint, closing its session with it."""

    def __init__(self, settings: TokenExchangeSettings, signer: TokenSigner, **kw: Any) -> None:
        self._http = PartnerHttp()
        endpoint = AiohttpTokenEndpoint(settings, self._http, clock=kw["clock"], sleep=kw["sleep"])
        super().__init__(settings, signer, endpoint=endpoint, **kw)

    async def aclose(self) -> None:
        await super().aclose()
        await self._http.aclose()


def exchanger(world: World, signer: TokenSigner | None = None, **overrides: Any) -> TokenExchanger:
    sleep = overrides.pop("sleep", asyncio.sleep)
    clock = overrides.pop("clock", time.monotonic)
    kind = ServerSideExchanger if TRANSPORTS.get(id(world)) == "aiohttp" else TokenExchanger
    return kind(world.settings(**overrides), signer or world.signers["ES256"], sleep=sleep, clock=clock)


async def access(world: World, *args: str, **overrides: Any) -> ExchangeResult:
    async with exchanger(world, **overrides) as ex:
        return await ex.access_token(*args)


def failure(coro: Awaitable[Any]) -> RequestError:
    with pytest.raises(RequestError) as info:
        run(coro)
    return info.value


# --- the two flows, both client-authentication methods ---------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256", "ES512"])
def test_access_token_flow(world: World, alg: str) -> None:
    """A JWT signed with `alg` is verified by the partner via the JWKS URL and exchanged for an access
    token; the form is RFC 8693's and the signer got exactly sub, the tenant claim and aud."""
    result = run(access(world, "u-1", "t-9", signer=world.signers[alg]))

    assert result.access_token.startswith("at-")
    assert (result.issued_token_type, result.expires_in) == (ACCESS_TOKEN, 3600)
    assert [
        {
            "grant_type": GRANT_TYPE,
            "subject_token_type": EXTERNAL_JWT,
            "requested_token_type": ACCESS_TOKEN,
            "scope": "action:run connection:read connection:write external zap zap:write",
            "client_id": world.partner.client_id,
        }
    ] == world.partner.calls
    expected_sign = {"claims": {"sub": "u-1", "org_id": "t-9", "aud": "connect.zapier.com"}, "ttl": 300}
    assert [expected_sign | {"keyset": "zapier"}] == world.signers[alg].calls


def test_client_secret_basic(world: World) -> None:
    """With client_secret_basic the secret travels in the Authorization header (form-urlencoded parts,
    RFC 6749 §2.3.1), not in the form; the partner accepts it."""
    world.partner.client_auth = "client_secret_basic"

    result = run(access(world, "u-1", "t-9", client_auth="client_secret_basic"))

    assert result.access_token.startswith("at-")
    assert "client_id" not in world.partner.calls[0]


def test_wrong_client_auth_method_is_our_fault(world: World) -> None:
    """The partner expects Basic and we post the secret: invalid_client becomes 502 upstream_error that
    blames keysvc's credentials, never the caller, and does not name the secret."""
    world.partner.client_auth = "client_secret_basic"

    error = failure(access(world, "u-1", "t-9"))

    assert (UpstreamError, 502, "upstream_error") == (type(error), error.status, error.code)
    assert "keysvc's own client credentials" in error.description
    assert world.partner.client_secret not in str(error)


def test_connect_token_from_access_token(world: World) -> None:
    """connect_from=access_token: the JWT buys an access token, which buys a connect token whose resource
    is the app's Connect URL; the answer carries the Connect URL with the token."""

    async def go() -> ExchangeResult:
        async with exchanger(world) as ex:
            return await ex.connect_token("u-1", "t-9", "SlackAPI")

    result = run(go())

    assert result.access_token.startswith("ct-")
    assert (result.issued_token_type, result.expires_in) == (CONNECT_TOKEN, 360)
    assert f"https://connect.zapier.com/to/SlackAPI?token={result.access_token}" == result.connect_url
    access_call, connect_call = world.partner.calls
    assert access_call["requested_token_type"] == ACCESS_TOKEN
    assert (
        connect_call["subject_token_type"],
        connect_call["requested_token_type"],
        connect_call["resource"],
    ) == (ACCESS_TOKEN, CONNECT_TOKEN, "https://connect.zapier.com/to/SlackAPI")


def test_connect_token_from_jwt(world: World) -> None:
    """connect_from=jwt (the older flow): one exchange, the partner JWT straight to a connect token."""

    async def go() -> ExchangeResult:
        async with exchanger(world, connect_from="jwt", client_auth="client_secret_basic") as ex:
            return await ex.connect_token("u-1", "t-9", "GoogleSheetsV2API")

    world.partner.client_auth = "client_secret_basic"
    result = run(go())

    assert result.access_token.startswith("ct-")
    [call] = world.partner.calls
    assert (call["subject_token_type"], call["requested_token_type"]) == (EXTERNAL_JWT, CONNECT_TOKEN)
    assert call["resource"] == "https://connect.zapier.com/to/GoogleSheetsV2API"


def test_connect_tokens_are_never_cached(world: World) -> None:
    """Three connect tokens for one user are three connect exchanges (single use), on one cached access
    token."""

    async def go() -> list[ExchangeResult]:
        async with exchanger(world) as ex:
            return [await ex.connect_token("u-1", "t-9", "SlackAPI") for _ in range(3)]

    results = run(go())

    assert len({r.access_token for r in results}) == 3
    assert (world.partner.calls_for(ACCESS_TOKEN), world.partner.calls_for(CONNECT_TOKEN)) == (1, 3)


def test_connect_recovers_from_a_revoked_cached_access_token(world: World) -> None:
    """When the partner no longer honours the cached access token (invalid_grant), the connect flow drops
    it and retries once with a fresh one."""

    async def go() -> ExchangeResult:
        async with exchanger(world) as ex:
            await ex.access_token("u-1", "t-9")
            world.partner.issued.clear()  # the partner revoked everything it issued
            return await ex.connect_token("u-1", "t-9", "SlackAPI")

    result = run(go())

    assert result.access_token.startswith("ct-")
    assert (world.partner.calls_for(ACCESS_TOKEN), world.partner.calls_for(CONNECT_TOKEN)) == (2, 2)


# --- the partner refuses the JWT -------------------------------------------------------------------


def test_expired_jwt_is_invalid_grant(world: World) -> None:
    """A JWT signed ten minutes ago has expired: the partner says invalid_grant, we answer 400 with it."""
    old = world.signers["ES256"]
    past = FakeSigner(old.key, old.kid, old.alg, clock=lambda: time.time() - 600)

    error = failure(access(world, "u-1", "t-9", signer=past))

    assert (PartnerError, 400, "invalid_grant") == (type(error), error.status, error.code)
    assert "expired" in error.description


def test_unknown_kid_is_invalid_grant(world: World) -> None:
    """A JWT whose kid is not in the JWKS (the key was never published) is refused: 400 invalid_grant."""
    unpublished = FakeSigner.generate("ES256")

    error = failure(access(world, "u-1", "t-9", signer=unpublished))

    assert (PartnerError, 400, "invalid_grant") == (type(error), error.status, error.code)


def test_jwt_living_longer_than_5_minutes_is_refused(world: World) -> None:
    """The partner refuses exp more than 5 minutes after iat; settings.jwt_ttl guards against it."""
    error = failure(access(world, "u-1", "t-9", jwt_ttl=600))

    assert (error.status, error.code) == (400, "invalid_grant")


def test_invalid_client(world: World) -> None:
    """Partner invalid_client (our credentials) -> 502 upstream_error; neither secret nor JWT in it."""
    world.partner.mode = "invalid_client"

    error = failure(access(world, "u-1", "t-9"))

    assert (UpstreamError, 502) == (type(error), error.status)
    assert world.partner.client_secret not in error.description
    assert len(world.partner.calls) == 1  # not retried


# --- retries: 429 / 503 / 5xx / timeouts ------------------------------------------------------------


def test_429_is_retried_after_retry_after(world: World) -> None:
    """One 429 with Retry-After: 1, then success: two calls, and the pause honoured the header."""
    world.partner.mode, world.partner.failures, world.partner.retry_after = "rate_limited", 1, "1"
    sleep = RecordingSleep()

    result = run(access(world, "u-1", "t-9", sleep=sleep))

    assert result.access_token.startswith("at-")
    assert len(world.partner.calls) == 2
    assert [round(d, 3) for d in sleep.delays] == [1.0]


def test_429_for_good_is_503_with_retry_after(world: World) -> None:
    """A partner that keeps answering 429 gets max_attempts tries, then we answer 503 with Retry-After."""
    world.partner.mode, world.partner.retry_after = "rate_limited", "2"
    sleep = RecordingSleep()

    error = failure(access(world, "u-1", "t-9", sleep=sleep, max_attempts=3))

    assert (Unavailable, 503, 2) == (type(error), error.status, error.retry_after)
    assert error.headers() == {"Retry-After": "2"}
    assert len(world.partner.calls) == 3
    assert all(d >= 2 for d in sleep.delays)


def test_retry_after_beyond_the_budget_is_not_waited_for(world: World) -> None:
    """Retry-After: 120 exceeds total_timeout: no sleep, one call, 503 passing the 120 s on."""
    world.partner.mode, world.partner.retry_after = "unavailable", "120"
    sleep = RecordingSleep()

    error = failure(access(world, "u-1", "t-9", sleep=sleep))

    assert (Unavailable, 120) == (type(error), error.retry_after)
    assert (sleep.delays, len(world.partner.calls)) == ([], 1)


def test_503_then_success(world: World) -> None:
    """A 503 with Retry-After is retried after the real pause, within the total budget."""
    world.partner.mode, world.partner.failures, world.partner.retry_after = "unavailable", 1, "1"
    started = time.monotonic()

    result = run(access(world, "u-1", "t-9"))

    assert result.access_token.startswith("at-")
    assert len(world.partner.calls) == 2
    assert 1.0 <= time.monotonic() - started < world.settings().total_timeout


def test_500_for_good_is_502(world: World) -> None:
    """Repeated 500s are retried, then answered 502 upstream_error (never 500)."""
    world.partner.mode = "server_error"
    sleep = RecordingSleep()

    error = failure(access(world, "u-1", "t-9", sleep=sleep, max_attempts=2))

    assert (UpstreamError, 502) == (type(error), error.status)
    assert len(world.partner.calls) == 2


def test_slow_partner_times_out_as_503(world: World) -> None:
    """A partner slower than read_timeout: the request gives up within total_timeout and answers 503."""
    world.partner.delay = 3.0
    started = time.monotonic()

    error = failure(access(world, "u-1", "t-9", read_timeout=0.2, total_timeout=0.5))

    assert (Unavailable, 503) == (type(error), error.status)
    assert time.monotonic() - started < world.partner.delay  # gave up: did not wait for the answer


def test_unreachable_partner_is_503(world: World) -> None:
    """Nothing listens at the token URL: connection refused becomes 503 unavailable with Retry-After."""
    error = failure(access(world, "u-1", "t-9", token_url="http://127.0.0.1:9/oauth/token", total_timeout=0.5))

    assert (Unavailable, 1) == (type(error), error.retry_after)


# --- the access-token cache and single-flight ------------------------------------------------------


def test_100_concurrent_requests_make_one_upstream_call(world: World) -> None:
    """100 concurrent requests for one user: exactly one signature, one exchange, one token for all."""
    world.partner.delay = 0.2

    async def go() -> list[ExchangeResult]:
        async with exchanger(world) as ex:
            return await asyncio.gather(*(ex.access_token("u-1", "t-9") for _ in range(100)))

    results = run(go())

    assert len({r.access_token for r in results}) == 1
    assert (len(world.partner.calls), len(world.signers["ES256"].calls)) == (1, 1)


def test_a_failure_wakes_every_waiter_and_is_not_cached(world: World) -> None:
    """20 waiters on one failing exchange all get its error from one call; the next request tries anew."""
    world.partner.mode, world.partner.failures, world.partner.delay = "invalid_grant", 1, 0.2

    async def go() -> tuple[list[Any], ExchangeResult]:
        async with exchanger(world) as ex:
            calls = (ex.access_token("u-1", "t-9") for _ in range(20))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            return outcomes, await ex.access_token("u-1", "t-9")

    outcomes, later = run(go())

    assert {"invalid_grant"} == {getattr(o, "code", None) for o in outcomes}
    assert later.access_token.startswith("at-")
    assert len(world.partner.calls) == 2


def test_cache_key_is_user_tenant_scope(world: World) -> None:
    """Same user, tenant and scope (in any order) share a token; another user, tenant or scope does not."""

    async def go() -> list[str]:
        async with exchanger(world) as ex:
            asks = [
                ("u-1", "t-9", "external action:run"),
                ("u-1", "t-9", "action:run external"),
                ("u-2", "t-9", "external action:run"),
                ("u-1", "t-8", "external action:run"),
                ("u-1", "t-9", "external"),
            ]
            return [(await ex.access_token(*ask)).access_token for ask in asks]

    tokens = run(go())

    assert tokens[0] == tokens[1]
    assert len(set(tokens)) == 4
    assert len(world.partner.calls) == 4


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cached_until_expires_in_minus_margin(world: World) -> None:
    """expires_in 100 and margin 60: served from cache (with a shrinking expires_in) for 40 s, then
    exchanged again."""
    world.partner.access_expires_in = 100
    clock = FakeClock()

    async def go() -> list[ExchangeResult]:
        async with exchanger(world, clock=clock, cache_margin=60) as ex:
            first = await ex.access_token("u-1", "t-9")
            clock.now += 39
            second = await ex.access_token("u-1", "t-9")
            clock.now += 2
            third = await ex.access_token("u-1", "t-9")
            return [first, second, third]

    first, second, third = run(go())

    assert (first.access_token, 100, 61) == (second.access_token, first.expires_in, second.expires_in)
    assert third.access_token != first.access_token
    assert len(world.partner.calls) == 2


def test_a_cookie_the_token_endpoint_sets_never_rides_on_the_next_exchange() -> None:
    """The exchanges' HTTP client (the one the service builds) stores no cookie: a Set-Cookie answered to
    one user's exchange is not sent with the next one, which may be another user's; a redirect is an
    answer, not followed."""
    seen: list[str | None] = []

    async def token(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        return JSONResponse({"access_token": "at"}, headers={"Set-Cookie": "session=abc123; Path=/"})

    async def moved(request: Request) -> JSONResponse:
        return JSONResponse({}, status_code=302, headers={"Location": "/token"})

    async def exchanges(url: str) -> list[int]:
        async with token_endpoint_client() as client:
            return [(await client.post(url + path, data={"n": "1"})).status_code
                    for path in ("/token", "/token", "/moved")]

    app = Starlette(routes=[Route("/token", token, methods=["POST"]), Route("/moved", moved, methods=["POST"])])
    with serve(app) as url:
        statuses = asyncio.run(exchanges(url.replace("127.0.0.1", "localhost")))  # jars refuse IP hosts' cookies
    assert statuses == [200, 200, 302]
    assert seen == [None, None]
