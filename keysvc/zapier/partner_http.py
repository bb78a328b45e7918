"""The HTTP session of the Partner API calls: one aiohttp session per replica, opened on the first call.

    http = PartnerHttp(api_url)
    answer = await http.send("GET", "/v2/authentications", token, params=..., body=None, connect=2.0, read=5.0)
    answer.status, answer.retry_after, answer.content      (the body as bytes, read whole)
    await http.aclose()

aiohttp, not httpx: httpx's client cost about 1 ms of keysvc's CPU per Partner API call on the
reference machine, aiohttp about a quarter of it, and the gateway makes one call per request.

What the session never does: store or send a cookie (the Partner API is bearer-token based, and a cookie
one user's call received must never ride on another user's call), follow a redirect (a 3xx is an
answer, and the token goes to `api_url` only), or hold an answer over MAX_ANSWER bytes (AnswerTooLarge,
declared or streamed: nothing more is read). What it keeps from the service's httpx clients: the same
TLS trust (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else certifi's bundle), the proxy the environment names for
`api_url` (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`; read once, not per call), idle
connections closed after 5 s.

Timeouts per call: `connect` bounds waiting for a pooled connection and opening one, `read` each wait
for the partner's bytes once the request is sent; the caller bounds the whole call by its deadline, which
is also what bounds writing a body (aiohttp has no per-write timeout; bodies are at most about the 64 KiB
the internal listener accepts).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx

KEEPALIVE = 5.0  # seconds an idle connection is kept: httpx's default, below common server idle timeouts
MAX_ANSWER = 4 * 1024 * 1024  # bytes of one answer, at most (a page of the Partner API is a few KiB)


class AnswerTooLarge(Exception):
    """The partner's answer is larger than MAX_ANSWER: nothing more of it is read."""


@dataclass(frozen=True)
class Answer:
    """The partner's answer: status, its Retry-After header, the body."""

    status: int
    retry_after: str | None
    content: bytes


class PartnerHttp:
    """Requests to the Partner API over one pooled session (see the module docstring)."""

    def __init__(self, api_url: str, *, keepalive: float = KEEPALIVE) -> None:
        self._base = api_url.rstrip("/")
        self._proxy = env_proxy(api_url)
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"PartnerHttp({self._base!r}, open={self._session is not None})"

    async def send(self, method: str, path: str, token: str, *, params: Mapping[str, str] | None,
                   body: bytes | None, connect: float, read: float) -> Answer:
        """One request to `api_url` + `path` with the user's bearer token; aiohttp's errors (TimeoutError,
        aiohttp.ClientError) pass through for the caller to map."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(connect=connect, sock_read=read)
        async with self._open().request(method, self._base + path, params=params, data=body, headers=headers,
                                        timeout=timeout, allow_redirects=False, proxy=self._proxy) as response:
            content = await _bounded(response)
        return Answer(response.status, response.headers.get("Retry-After"), content)

    async def aclose(self) -> None:
        """Close the session and its connections (a no-op if no call was made)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        # Opened inside the event loop that serves the calls, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=httpx.create_ssl_context(), keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        return self._session


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, or AnswerTooLarge past MAX_ANSWER bytes (declared or received): a partner cannot make
    a replica hold an answer of any size in memory."""
    if (response.content_length or 0) > MAX_ANSWER:
        raise AnswerTooLarge
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER:
            raise AnswerTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for `url`, as httpx reads it: `<scheme>_PROXY`, else `ALL_PROXY`;
    none for a host `NO_PROXY` covers."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")
