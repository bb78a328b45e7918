"""Issue 23, hardening round three: each finding as the attacker found it, now refused or bounded.

Unit tests hold the pure rules (caller inputs, partner values, redaction by value, the Connect state's
encoding and key rotation); system tests run the gateway in this process against the fake Partner API on
127.0.0.1 answering, where it matters, exactly the hostile bytes a test gives it (`ZapierFake.serve_raw`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from keysvc.client.exchanger import TokenExchanger
from keysvc.client.oauth import (
    KNOWN_SECRETS,
    MAX_ANSWER,
    Answer,
    AnswerTooLarge,
    KnownSecrets,
    oauth_text,
    parse_retry_after,
    read_bounded,
    token_outcome,
)
from keysvc.client.retry import Failure, shared_deadline, with_retries
from keysvc.config import Secret
from keysvc.config.exchange import TokenExchangeSettings
from keysvc.config.secrets import SecretFile
from keysvc.errors import InvalidRequest, RequestError, Unavailable, UpstreamError
from keysvc.partner import gateway_inputs as requests
from keysvc.partner.budget import ApiBudget
from keysvc.partner.contracts import CONNECT_ERROR
from keysvc.partner.gateway import ZapierGateway
from keysvc.partner.outbound import PartnerHttp
from keysvc.partner.partner_api import PartnerApi, api_error
from keysvc.partner.state import StateCodec, state_key
from tests.exchange_support import ISSUER, FakeJwks, FakeSigner, serve
from tests.partner_server import ACCESS_TOKEN
from tests.zapier_fake import RawAnswer, ZapierFake, running_zapier

T = TypeVar("T")
APP = "6f1c6c0e-2d6e-4b8e-9b8a-3f0a1f7b2c11"
USER = {"user_id": "u-1", "tenant_id": "t-9"}
CALLBACK = "https://app.example/zapier/callback"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = [value]
    return value


# ------------------------------------------------------------------------- item 2: caller inputs


@pytest.mark.unit
@pytest.mark.parametrize("inputs", [
    {"n": 2**64}, {"n": -(2**63) - 1}, {"n": nested(250)}, {"n": float("inf")}, {"n": "x" * 70_000},
], ids=["2**64", "-2**63-1", "250 deep", "infinity", "70 KB"])
@pytest.mark.parametrize("route", ["inputs", "choices", "run"])
def test_inputs_out_of_bounds_are_invalid_request(route: str, inputs: dict[str, Any]) -> None:
    """An integer outside the safe range, nesting 250 deep, a non-finite number or an oversized value in
    `inputs` is a 400 invalid_request at parse time on all three routes (it used to be a 500 in orjson)."""
    body = {**USER, "app": APP, "action_type": "WRITE", "inputs": inputs}
    with pytest.raises(InvalidRequest, match="inputs is out of bounds"):
        if route == "inputs":
            requests.inputs_body(body, "send")
        elif route == "choices":
            requests.choices_body(body, "send", "channel")
        else:
            requests.run_body({**body, "action": "send"}, 30.0)


@pytest.mark.unit
def test_inputs_within_bounds_pass() -> None:
    """Ordinary inputs (strings, safe integers, a few levels of nesting) still pass unchanged."""
    inputs = {"channel": "C1", "count": 2**53 - 1, "nested": nested(30), "ratio": 0.5}
    call = requests.inputs_body({**USER, "app": APP, "action_type": "WRITE", "inputs": inputs}, "send")
    assert call.inputs == inputs


@pytest.mark.unit
@pytest.mark.parametrize("wait", [int("9" * 400), "9" * 400, 1e308, -1, "1e400", [1]])
def test_wait_of_any_size_is_invalid_request(wait: Any) -> None:
    """`wait` of 400 digits (as a number or text), huge, negative or of a wrong type: 400, never a 500."""
    body = {**USER, "app": APP, "action_type": "WRITE", "action": "send", "wait": wait}
    with pytest.raises(InvalidRequest, match="wait must be"):
        requests.run_body(body, 30.0)
    with pytest.raises(InvalidRequest, match="wait must be"):
        requests.run_query([("user_id", "u"), ("tenant_id", "t"), ("wait", str(wait)[:5000])], "r1", 30.0)


# ------------------------------------------------------------------------ item 3: partner values


@pytest.mark.unit
@pytest.mark.parametrize("value, expected", [
    ("9" * 5000, 3600), ("2" * 7, 3600), ("30", 30), ("²", None), ("x" * 5000, None), ("", None),
])
def test_retry_after_of_any_size_is_bounded(value: str, expected: int | None) -> None:
    """A Retry-After of 5000 digits is capped (int() of it used to raise); non-ASCII digits are ignored."""
    assert parse_retry_after(value) == expected
    error = api_error(429, value, None)
    assert isinstance(error, Unavailable) and 1 <= (error.retry_after or 0) <= 3600


async def _chunks(*sizes: int) -> AsyncIterator[bytes]:
    for size in sizes:
        yield b"x" * size


@pytest.mark.unit
@pytest.mark.parametrize("declared, sizes, too_large", [
    (None, (10, 20), False),
    ("30", (10, 20), False),
    (MAX_ANSWER, (MAX_ANSWER,), False),
    (str(MAX_ANSWER), (MAX_ANSWER // 2, MAX_ANSWER // 2), False),
    (MAX_ANSWER + 1, (), True),  # declared too large: refused before a byte is read
    (str(MAX_ANSWER + 1), (), True),
    ("9" * 13, (), True),  # 13 digits: refused without building the number
    ("9" * 5000, (), True),
    (None, (MAX_ANSWER, 1), True),  # streamed past the bound without a length
    ("10", (MAX_ANSWER, 1), True),  # a length that lies
    ("-5", (10,), False),  # not digits: the header is ignored, the stream is bounded
    ("²", (10,), False),
])
def test_an_answer_is_bounded_declared_or_streamed(declared: int | str | None, sizes: tuple[int, ...],
                                                   too_large: bool) -> None:
    """read_bounded, the one 4 MiB bound of both transports (the clients' httpx, the server's aiohttp):
    a declared or streamed length past MAX_ANSWER raises AnswerTooLarge, anything else is read whole."""
    async def read() -> bytes | None:
        try:
            return await read_bounded(declared, _chunks(*sizes))
        except AnswerTooLarge:
            return None

    content = asyncio.run(read())
    assert (content is None) == too_large
    assert content is None or len(content) == sum(sizes)


@pytest.mark.unit
@pytest.mark.parametrize("body", [
    b'{"access_token": "t", "expires_in": 1' + b"0" * 400 + b"}",
    b'{"access_token": "t", "expires_in": 1' + b"0" * 5000 + b"}",
    b'{"access_token": "t", "expires_in": "3600"}',
    b'{"access_token": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"access_token": "' + b"a" * 20_000 + b'"}',
    b'{"access_token": "tok\\u0000en"}',
    b"[" * 100_000,
])
def test_token_answers_malformed_are_502(body: bytes) -> None:
    """An expires_in of 401 (or 5000) digits or of the wrong type, a deeply nested or oversized token: a
    502 Failure, never an exception out of the reading."""
    outcome = token_outcome(Answer(200, None, body), ACCESS_TOKEN)
    assert isinstance(outcome, Failure) and isinstance(outcome.error, UpstreamError)


@pytest.mark.unit
def test_token_endpoint_errors_of_any_shape_are_mapped() -> None:
    """A 503 with a Retry-After of 5000 digits and a body nested 100000 deep is a 503 with a bounded hint."""
    outcome = token_outcome(Answer(503, "9" * 5000, b"[" * 100_000), ACCESS_TOKEN)
    assert isinstance(outcome, Failure) and isinstance(outcome.error, Unavailable)
    assert outcome.error.retry_after == 3600


# -------------------------------------------------------------------------- item 8: redaction


@pytest.mark.unit
def test_known_secrets_are_redacted_by_value_even_short_or_in_part() -> None:
    """A 37-character token echoed whole, a 36-character prefix of the client secret, a 16-character
    middle part of a token: all redacted, though under the 40-character heuristic."""
    known = KnownSecrets()
    token = "Ab3" * 12 + "x"  # 37 characters, no dot: the heuristic alone misses it
    secret = "cs_" + "k9Q2" * 15  # a 63-character client secret
    known.add(token)
    known.add(secret, keep=True)
    for leaked in (token, secret[:36], token[5:21], secret):
        said = known.redact(f"invalid token {leaked}, try again")
        assert leaked not in said and said == "invalid token [redacted] try again"
    assert known.redact("an ordinary description") == "an ordinary description"


@pytest.mark.unit
def test_known_secrets_stay_bounded_and_keep_the_client_secret() -> None:
    """Past its capacity the oldest tokens are forgotten (bounded memory), the client secret never."""
    known = KnownSecrets(capacity=3)
    known.add("the-client-secret-value", keep=True)
    tokens = [chr(65 + n) * 12 + chr(97 + n) * 12 for n in range(5)]  # no slice in common
    for t in tokens:
        known.add(t)
    assert tokens[0] in known.redact(tokens[0]) and tokens[4] not in known.redact(tokens[4])
    assert known.redact("the-client-secret-value") == "[redacted]"


@pytest.mark.unit
def test_oauth_text_redacts_a_token_the_exchange_received() -> None:
    """A token read from a token-endpoint answer is known from then on: the partner's text echoing it (37
    characters, below the length heuristic) is redacted in what keysvc repeats."""
    token = "Zq" * 18 + "7"
    assert token in oauth_text(f"bad {token}")
    outcome = token_outcome(Answer(200, None, f'{{"access_token": "{token}", "expires_in": 60}}'.encode()),
                            ACCESS_TOKEN)
    assert not isinstance(outcome, Failure)
    assert oauth_text(f"bad {token}") == "bad [redacted]"
    assert token not in api_error(400, None, {"errors": [{"detail": f"token {token} is bad"}]}).description


# ------------------------------------------------------------------- item 10: Connect completion


@pytest.mark.unit
@pytest.mark.parametrize("error", ["<script>", "access_denied ", "unknown_error", ["access_denied"], 1, ""])
def test_complete_refuses_an_undocumented_error_without_echoing_it(error: Any) -> None:
    """Only the documented Connect codes pass; anything else is 400 invalid_request, the value not echoed."""
    with pytest.raises(InvalidRequest) as info:
        requests.complete_body({**USER, "state": "v1.x", "error": error})
    assert "<script>" not in info.value.description and "unknown_error" not in info.value.description


@pytest.mark.unit
@pytest.mark.parametrize("error", sorted(CONNECT_ERROR.values))
def test_complete_accepts_the_documented_codes(error: str) -> None:
    """access_denied, invalid_request, server_error, temporarily_unavailable pass."""
    assert requests.complete_body({**USER, "state": "v1.x", "error": error}).error == error


@pytest.mark.unit
def test_state_refuses_non_canonical_encodings() -> None:
    """The state opens only as issued: with `=` padding, with `+/` for `-_`, or with non-zero trailing
    bits it is "not one keysvc issued", though it decodes to the same bytes."""
    codec = StateCodec(state_key("secret"))
    for nonce in (bytes(12), b"\xfb\xff" * 6):
        state = codec.seal("u", "t", APP, None, 1000.0, nonce=nonce)
        assert codec.open(state, 1000.0).user_id == "u"
        body = state[3:]
        padded = state + "=" * (-len(body) % 4 or 4)
        standard = "v1." + body.replace("-", "+").replace("_", "/")
        variants = [padded, standard + ("" if standard != state else "=")]
        last = body[-1]
        if len(body) % 4:  # unused trailing bits: flip the lowest one, same decoded bytes
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
            variants.append(state[:-1] + alphabet[alphabet.index(last) ^ 1])
        for variant in variants:
            assert variant != state
            with pytest.raises(InvalidRequest, match="not one keysvc issued"):
                codec.open(variant, 1000.0)


# --------------------------------------------------------------------- item 11: rotated secret


@pytest.mark.unit
def test_state_key_follows_a_rotated_secret_file_and_accepts_the_previous(tmp_path: Path) -> None:
    """After the secret file is replaced, new states use the new key (a replica started with the new
    secret opens them) and states sealed before the rotation still open (the overlap)."""
    path = tmp_path / "secret"
    path.write_text("old-secret\n")
    secret = SecretFile(path, "token_exchange.client_secret_file")
    codec = StateCodec(secret.reveal)
    before = codec.seal("u", "t", APP, None, 1000.0)
    path.write_text("new-secret-of-another-length\n")
    after = codec.seal("u", "t", APP, None, 1000.0)
    fresh_replica = StateCodec(state_key("new-secret-of-another-length"))
    assert fresh_replica.open(after, 1000.0).user_id == "u"
    assert codec.open(before, 1000.0).user_id == "u"
    old_replica = StateCodec(state_key("old-secret"))
    with pytest.raises(InvalidRequest):
        old_replica.open(after, 1000.0)  # an old replica learns the new key when it reads the file


# ------------------------------------------------------------------------ item 7: one deadline


@pytest.mark.unit
def test_with_retries_ends_by_the_shared_deadline() -> None:
    """Inside shared_deadline(1.0), a loop with total_timeout 10 gets a deadline at most 1 s away, and
    one started after the shared deadline raises 503 at once without an attempt."""
    now = [100.0]
    seen: list[float] = []

    async def attempt(deadline: float) -> str:
        seen.append(deadline - now[0])
        now[0] += 2.0
        return "ok"

    async def go() -> None:
        with shared_deadline(1.0, lambda: now[0]):
            await with_retries(attempt, tries=1, total_timeout=10.0, clock=lambda: now[0])
            with pytest.raises(Unavailable, match="deadline"):
                await with_retries(attempt, tries=1, total_timeout=10.0, clock=lambda: now[0])

    asyncio.run(go())
    assert seen == [1.0]


# ----------------------------------------------------------------- system: the gateway in-process


@dataclass
class Rig:
    """The fake (answering hostile bytes on demand) and a gateway over it with real clocks."""

    zapier: ZapierFake
    signer: FakeSigner

    def settings(self, **overrides: Any) -> TokenExchangeSettings:
        values: dict[str, Any] = {
            "client_id": self.zapier.partner.client_id, "client_secret": Secret(self.zapier.partner.client_secret),
            "token_url": self.zapier.token_url, "api_url": self.zapier.api_url, "redirect_uris": (CALLBACK,),
            "connect_timeout": 2.0, "read_timeout": 2.0, "total_timeout": 3.0, "max_attempts": 2,
        }
        return TokenExchangeSettings(**(values | overrides))

    def run(self, use: Callable[[ZapierGateway], Awaitable[T]], **overrides: Any) -> T:
        settings = self.settings(**overrides)

        async def go() -> T:
            limit = settings.api_rate_limit
            http = PartnerHttp()
            try:
                async with TokenExchanger(settings, self.signer) as exchanger:
                    api = PartnerApi(settings, http, ApiBudget(limit.per_minute, limit.burst), backoff=0.01)
                    gateway = ZapierGateway(exchanger, api, StateCodec(state_key(settings.client_secret.reveal())))
                    return await use(gateway)
            finally:
                await http.aclose()

        return asyncio.run(go())


@pytest.fixture
def rig() -> Iterator[Rig]:
    """The fake Partner API trusting a stand-in signer's JWKS."""
    signer = FakeSigner.generate("ES256")
    with serve(FakeJwks([signer.jwk()]).app()) as jwks_url, \
            running_zapier(f"{jwks_url}/.well-known/jwks.json", ISSUER) as zapier:
        yield Rig(zapier, signer)


def q(**values: str) -> list[tuple[str, str]]:
    return [("user_id", USER["user_id"]), ("tenant_id", USER["tenant_id"]), *values.items()]


def listing(rig: Rig, app: str) -> Callable[[ZapierGateway], Awaitable[Any]]:
    return lambda g: g.connections(requests.connections_query(q(app=app)))


@pytest.mark.system
@pytest.mark.parametrize("nxt", [
    "http://[::1/v2/authentications?offset=10", "https://api.example/v2/authentications?offset=" + "9" * 5000,
    "https://api.example/v2/authentications?offset=-1", "x" * 5000, "?offset=%FF%FE",
])
def test_a_broken_links_next_is_502(rig: Rig, nxt: str) -> None:
    """An unparseable links.next, an offset of 5000 digits, a negative one: 502, never a 500."""
    slack = rig.zapier.add_app("Slack")
    rig.zapier.serve_raw("GET /v2/authentications", RawAnswer.json({"data": [], "links": {"next": nxt}}))
    with pytest.raises(UpstreamError, match=r"links\.next"):
        rig.run(listing(rig, slack.id))


@pytest.mark.system
def test_an_endless_listing_ends_by_the_request_deadline(rig: Rig) -> None:
    """A links.next that never ends, each page taking 0.2 s: one listing with total_timeout 1 s ends
    within about that (503), not after 100 pages."""
    slack = rig.zapier.add_app("Slack")
    slow = RawAnswer(chunks=(b'{"data": [], ', b'"links": {"next": "https://x.example/a?offset=10"}}'), pause=0.1)
    rig.zapier.serve_raw("GET /v2/authentications", slow, times=200)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        rig.run(listing(rig, slack.id), total_timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert rig.zapier.count("GET /v2/authentications") == 0  # served raw: the fake's own handler never ran
    assert 200 - len(rig.zapier.raw_next) <= 8


@pytest.mark.system
@pytest.mark.parametrize("run", [
    {"status": ["success"], "errors": []}, {"status": "success", "errors": 7}, {"status": None, "errors": "x"},
    {"status": {"a": 1}},
])
def test_a_created_run_is_never_lost(rig: Rig, run: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """POST /v2/action-runs succeeded, then the run's status is a list or its errors a number: the caller
    gets the run id (202 pending) and the zapier.run audit line is written."""
    slack = rig.zapier.add_app("Slack")
    rig.zapier.add_action(slack, "send", "Send", "WRITE")
    rig.zapier.serve_raw("POST /v2/action-runs", RawAnswer.json({"data": {"type": "run", "id": "run-77"}}))
    rig.zapier.serve_raw("GET /v2/action-runs/", RawAnswer.json({"data": run}), times=10)
    body = {**USER, "app": slack.id, "action": "send", "action_type": "WRITE", "connection": None, "wait": 0.5}
    caplog.set_level("INFO")
    answer = rig.run(lambda g: g.run("web", requests.run_body(body, 30.0)))
    assert answer.status_code == 202 and answer.body == {"id": "run-77", "status": "pending"}
    assert any("zapier.run" in r.getMessage() or getattr(r, "event", None) == "zapier.run"
               for r in caplog.records)


@pytest.mark.system
@pytest.mark.parametrize("endpoint, answer", [
    ("GET /v2/apps", RawAnswer.json(b'{"data": [' + b"[" * 300 + b"]" * 300 + b"]}")),
    ("GET /v2/apps", RawAnswer.json({"data": "x"})),
    ("GET /v2/apps", RawAnswer.json({}, 429, **{"Retry-After": "9" * 5000})),
    ("GET /v2/apps", RawAnswer.json({}, 503, **{"Retry-After": "²"})),
    ("GET /v2/apps", RawAnswer.json(b'{"data": [], "x": ' + b"1" * 5000 + b"}")),
    ("GET /v2/apps", RawAnswer(chunks=(b" " * 65536,), repeat=80)),  # 5 MiB, undeclared
    ("POST /oauth/token", RawAnswer.json({"access_token": "t", "expires_in": int("1" + "0" * 400)})),
    ("POST /oauth/token", RawAnswer.json({}, 503, **{"Retry-After": "9" * 5000})),
    ("POST /oauth/token", RawAnswer(chunks=(b" " * 65536,), repeat=80)),
])
def test_hostile_answers_are_502_or_503(rig: Rig, endpoint: str, answer: RawAnswer) -> None:
    """Deep nesting, a wrong type, a Retry-After of 5000 digits, an integer of 5000 digits, a 5 MiB body,
    an expires_in of 401 digits: each a 502 or 503 (RequestError), never another exception."""
    rig.zapier.serve_raw(endpoint, answer, times=5)
    with pytest.raises(RequestError) as info:
        rig.run(lambda g: g.apps(requests.apps_query(q())))
    assert info.value.status in (502, 503)


@pytest.mark.system
def test_partner_text_echoing_known_secrets_is_redacted(rig: Rig) -> None:
    """The Partner API's detail echoing the user's access token (any length) or a 36-character prefix of
    the client secret: neither is in the error keysvc answers."""
    slack = rig.zapier.add_app("Slack")
    secret = "cs-" + "Q7wE" * 10  # 43 characters
    KNOWN_SECRETS.add(secret, keep=True)
    rig.zapier.serve_raw("GET /v2/authentications",
                         RawAnswer.json({"errors": [{"detail": f"client {secret[:36]} refused"}]}, 400))
    with pytest.raises(InvalidRequest) as info:
        rig.run(listing(rig, slack.id))
    assert secret[:36] not in info.value.description and "[redacted]" in info.value.description
    token = "Yt5" * 12 + "u"  # a 37-character access token, issued by the token endpoint
    rig.zapier.serve_raw("POST /oauth/token", RawAnswer.json(
        {"access_token": token, "issued_token_type": ACCESS_TOKEN, "expires_in": 600}))
    rig.zapier.serve_raw("GET /v2/authentications",
                         RawAnswer.json({"errors": [{"detail": f"bad bearer {token}"}]}, 400))
    with pytest.raises(InvalidRequest) as info:
        rig.run(listing(rig, slack.id))
    assert token not in info.value.description and "[redacted]" in info.value.description


@pytest.mark.system
@pytest.mark.parametrize("answer", [
    RawAnswer(chunks=(b" " * 65536,), repeat=80),  # 5 MiB streamed, no Content-Length
    RawAnswer(headers=(("content-type", "application/json"), ("content-length", "314572800")), chunks=(b"{}",)),
], ids=["streamed", "declared"])
def test_the_clients_token_endpoint_bounds_its_answer(rig: Rig, answer: RawAnswer) -> None:
    """The clients' httpx token endpoint (keysvc.client.token_endpoint) reads at most 4 MiB of an answer,
    as the server's way out does: a 5 MiB body is a 502, not held in memory."""
    rig.zapier.serve_raw("POST /oauth/token", answer, times=3)

    async def go() -> None:
        async with TokenExchanger(rig.settings(), rig.signer) as exchanger:
            await exchanger.access_token("u-1", "t-9")

    with pytest.raises(UpstreamError, match="4 MiB"):
        asyncio.run(go())
