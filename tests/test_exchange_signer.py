"""RemoteSigner's reading of keysvc's /v1/sign answers. The success path and real refusals run against a
real keysvc in test_exchange_keysvc.py; here a fake transport plays the rarer answers."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from keysvc.client import RemoteSigner, SignedToken
from keysvc.errors import Forbidden, InvalidRequest, RateLimited, RequestError, Unavailable, UpstreamError

pytestmark = pytest.mark.unit

API_KEY = "ks_test_remote_signer_key_1234567890"


def sign_with(answer: httpx.Response | Exception) -> tuple[SignedToken | RequestError, list[httpx.Request]]:
    """Sign once through a transport that records the request and gives `answer`."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def go() -> SignedToken:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            signer = RemoteSigner("http://keysvc.internal:8081/", API_KEY, client=client)
            return await signer.sign({"sub": "u-1", "aud": "connect.zapier.com"}, 300, "zapier")

    try:
        return asyncio.run(go()), seen
    except RequestError as exc:
        return exc, seen


def test_request_shape() -> None:
    """POST {base}/v1/sign with the Bearer API key and the documented JSON body; the answer is read."""
    body = {"token": "a.b.c", "kid": "k1", "alg": "ES256", "expires_at": 1764300000}

    result, [request] = sign_with(httpx.Response(200, json=body))

    assert result == SignedToken("a.b.c", "k1", "ES256", 1764300000)
    assert (request.method, str(request.url)) == ("POST", "http://keysvc.internal:8081/v1/sign")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {
        "keyset": "zapier",
        "claims": {"sub": "u-1", "aud": "connect.zapier.com"},
        "ttl": 300,
    }


def err(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "error_description": f"said {code}"}, headers=headers)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (err(400, "invalid_request"), (InvalidRequest, None)),
        (err(401, "invalid_client"), (UpstreamError, None)),
        (err(403, "forbidden"), (Forbidden, None)),
        (err(429, "rate_limited", **{"Retry-After": "3"}), (RateLimited, 3)),
        (err(503, "unavailable", **{"Retry-After": "5"}), (Unavailable, 5)),
        (err(503, "unavailable"), (Unavailable, 1)),
        (err(500, "internal_error"), (UpstreamError, None)),
        (httpx.Response(200, json={"token": "a.b.c"}), (UpstreamError, None)),
        (httpx.Response(200, json={"token": "a.b.c", "kid": "k", "alg": "ES256", "expires_at": "1"}),
         (UpstreamError, None)),
        (httpx.Response(200, text="<html>"), (UpstreamError, None)),
        (httpx.ConnectError("refused"), (Unavailable, 1)),
        (httpx.ReadTimeout("slow"), (Unavailable, 1)),
    ],
)  # fmt: skip
def test_answers_map_to_keysvc_errors(answer: Any, expected: tuple[type, int | None]) -> None:
    """keysvc's refusals keep their class; our own bad API key, 5xx and garbage are 502; network
    failures are 503; the API key never appears in the error."""
    result, _ = sign_with(answer)

    assert isinstance(result, RequestError)
    assert (type(result), result.retry_after) == expected
    assert API_KEY not in str(result)


def test_repr_hides_the_api_key() -> None:
    """The signer's repr names the URL only."""

    async def go() -> str:
        async with RemoteSigner("http://keysvc:8081", API_KEY) as signer:
            return repr(signer)

    assert asyncio.run(go()) == "RemoteSigner('http://keysvc:8081/v1/sign')"
