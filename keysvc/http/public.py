"""The public listener: JWKS, OpenID discovery and health, as a raw ASGI app (no framework on the partner's
hot path).

The JWKS body, ETag and headers are built once per change of the key set, the discovery documents once per
configuration (keysvc.discovery); a request only looks them up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from keysvc import discovery
from keysvc.config import Settings
from keysvc.errors import MethodNotAllowed, NotFound, RequestError, Unavailable
from keysvc.feature import PublicRoute
from keysvc.http.common import Headers, first_headers, refuse_websocket, request_id
from keysvc.http.error_answers import error_answer, log_unexpected, send_error
from keysvc.jwks import JwksDocument
from keysvc.keyring import Keyring
from keysvc.logs import LOG, event
from keysvc.metrics import Metrics

_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_WELL_KNOWN = "/.well-known/jwks.json"
_NEVER = 1000  # above every HTTP status


class _Heads(NamedTuple):
    """The response headers of one JWKS version, built once."""

    full: Headers  # 200
    common: Headers  # 304 (and the tail of 200)
    etag: bytes


def _cache_heads(etag: str, length: int, cache_control: bytes) -> _Heads:
    """The headers of a cacheable JSON document (a JWKS, a discovery document) of `length` bytes."""
    tag = etag.encode("ascii")
    common = [(b"cache-control", cache_control), (b"etag", tag)]
    return _Heads([_JSON, (b"content-length", str(length).encode("ascii")), *common], common, tag)


def _etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """RFC 9110 §13.1.2: weak comparison, a list of tags, or `*`."""
    if if_none_match == etag:  # a verifier revalidating sends back the ETag it was given: no parsing
        return True
    value = if_none_match.decode("latin-1")
    if value.strip() == "*":
        return True
    text = etag.decode("ascii")
    return any(tag.strip().removeprefix("W/") == text for tag in value.split(","))


class PublicApp:
    """GET|HEAD /.well-known/jwks.json, /keysets/{name}/jwks.json, /.well-known/openid-configuration,
    /keysets/{name}/.well-known/openid-configuration, /healthz, /readyz."""

    def __init__(self, keyring: Keyring, metrics: Metrics, routes: Sequence[PublicRoute] = ()) -> None:
        self.keyring = keyring
        self._routes = tuple(routes)  # the features' public routes (keysvc.feature.PublicRoute), by prefix
        self.metrics = metrics
        self.log_from = log_from(keyring.settings)
        self.default = keyring.settings.default_keyset
        self.cache_control = keyring.settings.jwks.cache_control().encode("ascii")
        self._headers: dict[str, _Heads] = {}  # etag -> the headers of its 200 and 304 answers
        # path -> keyset: one dict lookup routes a JWKS request
        self._jwks_paths = {f"/keysets/{name}/jwks.json": name for name in keyring.settings.keysets}
        if self.default is not None:
            self._jwks_paths[_WELL_KNOWN] = self.default
        # path -> the 200's and 304's headers and the body, or why there is no document (a 404's description)
        self._discovery = discovery_answers(keyring.settings, self.cache_control)

    def _jwks_headers(self, doc: JwksDocument) -> _Heads:
        cached = self._headers.get(doc.etag)
        if cached is None:
            cached = self._headers[doc.etag] = _cache_heads(doc.etag, len(doc.body), self.cache_control)
            if len(self._headers) > 64:
                self._headers = {doc.etag: cached}
        return cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            elif scope["type"] == "websocket":
                await refuse_websocket(receive, send)
            return
        started = time.perf_counter()
        headers = first_headers(scope)
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        try:
            status = await self._route(scope, headers, rid, send, receive)
        except Exception as exc:  # a RequestError, or a bug answered as the JSON 500
            status = await self._error(scope, exc, rid, send)
        if status >= self.log_from:
            event(LOG, "access", {
                # an unknown path is the caller's text (it may hold a token pasted by mistake): not logged
                "listener": "public", "method": scope["method"],
                "path": scope["path"][:200] if status != 404 else "(unknown)", "status": status,
                "request_id": rid, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            })

    async def _error(self, scope: Scope, exc: Exception, rid: str, send: Send) -> int:
        """Answer an exception (keysvc.http.error_answers); errors only, never the JWKS hot path: 404/405 from
        scanners, 503 while nothing is loaded."""
        answer = error_answer(exc)
        if isinstance(exc, RequestError):
            route = type(exc).__name__
        else:
            route = "unexpected"
            log_unexpected(exc, "public", rid)
        await send_error(send, answer, head=scope["method"] == "HEAD", tail=[(b"x-request-id", rid.encode())])
        self.metrics.answered("public", route, answer.status)
        return answer.status

    async def _route(self, scope: Scope, headers: dict[bytes, bytes], rid: str, send: Send,
                     receive: Receive) -> int:
        path: str = scope["path"]
        name = self._jwks_paths.get(path)
        if name is not None:
            _check_method(scope)
            return await self._jwks(scope, name, headers, rid, send)
        if path == _WELL_KNOWN or (path.startswith("/keysets/") and path.endswith("/jwks.json")):
            self.metrics.jwks_answered("-", 404)  # never the caller's path as a label
            raise NotFound("no such keyset")
        if path.endswith(discovery.WELL_KNOWN):
            return await self._discovery_answer(scope, path, headers, rid, send)
        if path in ("/healthz", "/readyz"):
            _check_method(scope)
            if path == "/readyz" and not self.keyring.ready():
                raise Unavailable("no active key loaded yet for every keyset", retry_after=5)
            body = json.dumps({"status": "ok" if path == "/healthz" else "ready"}).encode()
            await _respond(send, scope, 200, [_JSON, _NO_STORE, (b"x-request-id", rid.encode())], body)
            self.metrics.answered("public", path[1:], 200)
            return 200
        for route in self._routes:
            if path.startswith(route.prefix):
                status = await route.handle(scope, receive, send)
                self.metrics.answered("public", route.name, status)
                return status
        raise NotFound("no such resource")

    async def _jwks(self, scope: Scope, name: str, headers: dict[bytes, bytes], rid: str, send: Send) -> int:
        view = self.keyring.view(name)
        if view is None or not view.document.kids:
            # fail closed: never serve an empty key set as if it were fine
            self.metrics.jwks_answered(name, 503)
            raise Unavailable("the key set is not loaded yet", retry_after=5)
        doc = view.document
        full, common, etag = self._jwks_headers(doc)
        rid_header = (b"x-request-id", rid.encode())
        inm = headers.get(b"if-none-match")
        if inm is not None and _etag_matches(inm, etag):
            await send({"type": "http.response.start", "status": 304, "headers": [*common, rid_header]})
            await send({"type": "http.response.body", "body": b""})
            self.metrics.jwks_answered(name, 304)
            return 304
        await send({"type": "http.response.start", "status": 200, "headers": [*full, rid_header]})
        head = scope["method"] == "HEAD"
        await send({"type": "http.response.body", "body": b"" if head else doc.body})
        self.metrics.jwks_answered(name, 200, 0 if head else len(doc.body))
        return 200

    async def _discovery_answer(self, scope: Scope, path: str, headers: dict[bytes, bytes], rid: str,
                                send: Send) -> int:
        """A discovery document, answered as the JWKS is (304 on a matching If-None-Match), or a 404."""
        answer = self._discovery.get(path)
        if not isinstance(answer, _Document):
            raise NotFound(answer or "no such keyset")  # counted by _error, as every error
        _check_method(scope)
        rid_header = (b"x-request-id", rid.encode())
        inm = headers.get(b"if-none-match")
        if inm is not None and _etag_matches(inm, answer.heads.etag):
            await send({"type": "http.response.start", "status": 304, "headers": [*answer.heads.common, rid_header]})
            await send({"type": "http.response.body", "body": b""})
            status = 304
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [*answer.heads.full, rid_header]})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else answer.body})
            status = 200
        self.metrics.answered("public", "openid-configuration", status)
        return status


class _Document(NamedTuple):
    """A discovery document as served: its headers and body."""

    heads: _Heads
    body: bytes


def discovery_answers(settings: Settings, cache_control: bytes) -> dict[str, _Document | str]:
    """Each discovery path of the public listener -> its document, or why there is none (no absolute JWKS
    URL is configured for the keyset: the path answers 404 with that reason). Logs once which keysets are
    not discoverable, and which issuers a discoverer would not reach here."""
    answers: dict[str, _Document | str] = {}
    undiscoverable = []
    for keyset in settings.keysets.values():
        doc = discovery.build(keyset, settings.public_url)
        answer: _Document | str
        if doc is None:
            undiscoverable.append(keyset.name)
            answer = (f"OpenID discovery is off for keyset {keyset.name!r}: no absolute JWKS URL is configured "
                      f"(set public_url, or keysets.{keyset.name}.jwks_uri)")
        else:
            answer = _Document(_cache_heads(doc.etag, len(doc.body), cache_control), doc.body)
            if settings.public_url is not None and not discovery.issuer_discoverable(
                    keyset, settings.public_url, keyset.default):
                LOG.warning("issuer not discoverable here", extra={
                    "keyset": keyset.name, "issuer": keyset.issuer,
                    "served_at": list(discovery.served_at(keyset, settings.public_url, keyset.default)),
                    "hint": "verifiers fetch <issuer>/.well-known/openid-configuration: make the issuer one "
                            "of served_at without that suffix, or serve it there through a proxy"})
        answers[discovery.keyset_path(keyset.name)] = answer
        if keyset.default:
            answers[discovery.WELL_KNOWN] = answer
    if undiscoverable:
        LOG.info("openid discovery off", extra={
            "keysets": undiscoverable, "reason": "no absolute JWKS URL: set public_url or keysets.<name>.jwks_uri"})
    return answers


def log_from(settings: Settings) -> int:
    """The lowest status the public listener logs an access line for. By default (`log.public: errors`)
    only errors: the successful JWKS and health hits are the bulk of the traffic and are counted in
    metrics; a line for each would be a large share of what they cost (see README, Configuration)."""
    if not settings.access_log:
        return _NEVER
    return 0 if settings.log_public == "all" else 400


def _check_method(scope: Scope) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        raise MethodNotAllowed("only GET and HEAD are allowed here", allow="GET, HEAD")


async def _respond(send: Send, scope: Scope, status: int, headers: Headers, body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
