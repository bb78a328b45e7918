"""The internal listener: /v1/sign, admin key operations, /metrics. Never exposed outside the cluster."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from json.encoder import encode_basestring
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from keysvc import operations
from keysvc.config import ClientSettings, Settings
from keysvc.errors import (
    Forbidden,
    InvalidClient,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestError,
)
from keysvc.http.common import MAX_BODY, check_content_type, check_length, error_body, parse_json, request_id
from keysvc.keyring import Keyring
from keysvc.logs import LOG, event
from keysvc.metrics import Metrics
from keysvc.openapi import openapi_endpoint
from keysvc.ratelimit import TokenBucket, retry_after
from keysvc.tls import client_identities
from keysvc.tokens import check_sign_request

Headers = list[tuple[bytes, bytes]]
Handler = Callable[[Request], Awaitable[Response]]

_json_string = encode_basestring  # a str as a JSON string, as json.dumps(ensure_ascii=False) writes it
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")
_ALLOW_POST = (b"allow", b"POST")
_INTERNAL_ERROR = b'{"error":"internal_error","error_description":"internal error"}'


class Authenticator:
    """Maps an `Authorization: Bearer <api key>` header, or a verified client certificate, to a client.

    The key is hashed (SHA-256) and looked up by digest; the stored digest is then compared in constant
    time. Looking up by digest leaks nothing useful about the key: an attacker cannot steer SHA-256.
    A client certificate (mTLS, keysvc.tls) counts only when the request has no Authorization header;
    when both are sent they must name the same client.
    """

    def __init__(self, clients: Mapping[str, ClientSettings]) -> None:
        self._by_digest = {c.api_key_sha256: c for c in clients.values()}
        self._by_subject = {subject: c for c in clients.values() for subject in c.cert_subjects}

    def authenticate(self, authorization: str | None, cert_identities: tuple[str, ...] = ()) -> ClientSettings:
        """The client, or InvalidClient."""
        if not cert_identities:  # no client certificate: the API key alone
            return self._by_key(authorization)
        by_cert = next((self._by_subject[i] for i in cert_identities if i in self._by_subject), None)
        if authorization is None:
            if by_cert is None:
                raise InvalidClient("the client certificate names no configured client")
            return by_cert
        client = self._by_key(authorization)
        if by_cert is not None and by_cert is not client:
            raise InvalidClient("the client certificate and the API key name different clients")
        return client

    def _by_key(self, authorization: str | None) -> ClientSettings:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise InvalidClient("send an API key as 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        client = self._by_digest.get(digest)
        expected = client.api_key_sha256 if client is not None else "0" * 64
        if not hmac.compare_digest(expected, digest) or client is None:
            raise InvalidClient("invalid API key")
        return client


class InternalApi:
    """Route handlers of the internal listener."""

    def __init__(self, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        self.settings = settings
        self.keyring = keyring
        self.metrics = metrics
        self.auth = Authenticator(settings.clients)
        self.buckets = {
            c.name: TokenBucket(c.rate_limit.rate, c.rate_limit.burst)
            for c in settings.clients.values()
            if c.rate_limit
        }

    # ----------------------------------------------------------------------------------- helpers

    def authorize(self, scope: Scope, authorization: str | None) -> ClientSettings:
        """Authenticate (API key or verified client certificate) and rate-limit the caller of a request;
        the client's name goes to the request state for the access log, 429s included."""
        client = self.auth.authenticate(authorization, client_identities(scope))
        scope.setdefault("state", {})["client"] = client.name
        bucket = self.buckets.get(client.name)
        if bucket is not None and (wait := bucket.take(time.monotonic())) > 0:
            self.metrics.rate_limited.labels(client.name).inc()  # refusals only: not the hot path
            raise RateLimited("too many requests for this client", retry_after=retry_after(wait))
        return client

    def client(self, request: Request) -> ClientSettings:
        """Authenticate and rate-limit the caller (Starlette routes)."""
        return self.authorize(request.scope, request.headers.get("authorization"))

    def admin(self, request: Request) -> ClientSettings:
        """Authenticate a caller who must be an admin client."""
        client = self.client(request)
        if not client.admin:
            raise Forbidden("this operation needs an admin client")
        return client

    async def body(self, request: Request, *, optional: bool = False) -> Any:
        """The JSON body of a Starlette route's request (see read_json); `optional`: none sent is {}."""
        if optional and request.headers.get("content-length") in (None, "0") and "content-type" not in request.headers:
            return {}
        return await read_json(request.receive, request.headers.get("content-type"),
                               request.headers.get("content-length"))

    # ------------------------------------------------------------------------------------ routes

    async def sign(self, client: ClientSettings, body: Any) -> bytes:
        """POST /v1/sign past authentication and body parsing: check, sign, count, audit; the JSON answer."""
        started = time.perf_counter()
        try:
            checked = check_sign_request(body, client, self.settings.keysets)
        except RequestError as exc:
            keyset = body.get("keyset") if isinstance(body, dict) else None
            label = keyset if isinstance(keyset, str) and keyset in self.settings.keysets else "-"
            self.metrics.sign_requests.inc((client.name, label, exc.code))
            raise
        try:
            token = await self.keyring.sign(checked.keyset, checked.claims, checked.ttl, audit={
                "client": client.name, "keyset": checked.keyset, "sub": _short(checked.claims.get("sub")),
                "aud": checked.claims.get("aud"),
            })
        except RequestError as exc:
            self.metrics.sign_requests.inc((client.name, checked.keyset, exc.code))
            raise
        self.metrics.sign_latency.observe((checked.keyset,), time.perf_counter() - started)
        self.metrics.sign_requests.inc((client.name, checked.keyset, "ok"))
        self.metrics.tokens_signed.inc((checked.keyset, token.kid))
        # What json.dumps(answer, ensure_ascii=False, separators=(",", ":")) writes, without its generic
        # machinery; a compact JWS is base64url and dots only, so it needs no escaping.
        kid, alg = _json_string(token.kid), _json_string(token.alg)
        return f'{{"token":"{token.token}","kid":{kid},"alg":{alg},"expires_at":{token.expires_at:d}}}'.encode()

    async def list_keys(self, request: Request) -> Response:
        """GET /v1/keys (admin)"""
        self.admin(request)
        now = self.keyring.clock.now()
        rows: list[dict[str, object]] = []
        for name, ks in self.settings.keysets.items():
            view = self.keyring.view(name)
            if view is not None:
                rows.extend(operations.describe(list(view.records), ks, now))
        return JSONResponse({"keys": rows})

    async def rotate(self, request: Request) -> Response:
        """POST /v1/keysets/{name}/rotate (admin): promote the pending key now."""
        client = self.admin(request)
        body = await self.body(request, optional=True)
        if not isinstance(body, dict) or set(body) - {"force"} or not isinstance(body.get("force", False), bool):
            raise InvalidRequest('the body is optional: {"force": true|false}')
        name = request.path_params["name"]
        ks = self.settings.keysets.get(name)
        if ks is None:
            raise NotFound("no such keyset")
        record = await self.keyring.run_blocking(
            lambda: operations.rotate(self.keyring.backend, ks, self.keyring.clock.now, f"client:{client.name}",
                                      force=body.get("force", False))
        )
        await self.keyring.refresh(name)
        return JSONResponse({"keyset": name, "active_kid": record.kid, "activated_at": record.activates_at})

    async def revoke(self, request: Request) -> Response:
        """POST /v1/keys/{kid}/revoke (admin)"""
        client = self.admin(request)
        await self.body(request, optional=True)
        kid = request.path_params["kid"]
        keysets = dict(self.settings.keysets)
        record = await self.keyring.run_blocking(
            lambda: operations.revoke(
                self.keyring.backend, keysets, kid, self.keyring.clock.now, f"client:{client.name}"
            )
        )
        await self.keyring.refresh(record.keyset)
        return JSONResponse({"keyset": record.keyset, "kid": record.kid, "revoked_at": record.revoked_at})

    async def metrics_endpoint(self, request: Request) -> Response:
        """GET /metrics (Prometheus exposition)"""
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(self, request: Request) -> Response:
        """GET /healthz on the internal port (for probes that only reach this port)."""
        return JSONResponse({"status": "ok"})


async def read_json(receive: Receive, content_type: str | None, content_length: str | None) -> Any:
    """The JSON body of an ASGI request: content type, size limit (declared and streamed), strict parsing."""
    check_content_type(content_type)
    check_length(content_length)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise PayloadTooLarge(f"bodies are limited to {MAX_BODY} bytes")
        if not message.get("more_body", False):
            break
        chunks.append(chunk)
    return parse_json(b"".join([*chunks, chunk]) if chunks else chunk)  # one message: no copy


class SignEndpoint:
    """POST /v1/sign as a raw ASGI endpoint: the route internal services call on their hot paths, so it skips
    Starlette's middleware, routing and Request/Response objects (as the public JWKS route does). Same
    checks in the same order as the Starlette routes (method, then client and rate limit, then body), same
    statuses, bodies and headers; the sign logic itself is InternalApi.sign."""

    def __init__(self, api: InternalApi) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                       rid: bytes) -> int:
        """Answer one request (`headers`: the first of each name); the status sent."""
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("method not allowed here")
            client = self.api.authorize(scope, _text(headers.get(b"authorization")))
            body = await read_json(receive, _text(headers.get(b"content-type")), _text(headers.get(b"content-length")))
            answer = await self.api.sign(client, body)
        except RequestError as exc:
            head = [*error_headers(exc), (b"x-request-id", rid)]
            if isinstance(exc, MethodNotAllowed):
                head.insert(-1, _ALLOW_POST)
            await _send(send, exc.status, head, error_body(exc))
            return exc.status
        except ClientDisconnect:  # gone mid-body, or cut by the listener's body timeout (which answered 408)
            return 499
        except Exception as exc:
            LOG.error("unexpected error", extra={"path": scope["path"], "error_type": type(exc).__name__})
            await _send(send, 500, [_JSON, (b"x-request-id", rid)], _INTERNAL_ERROR)
            return 500
        await _send(send, 200, [_JSON, (b"x-request-id", rid)], answer)
        return 200


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def error_headers(exc: RequestError) -> Headers:
    """The headers of a RequestError's JSON answer but its length (those error_response sends)."""
    return [*((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers().items()), _NO_STORE,
            _JSON]


async def _send(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def _short(value: object) -> object:
    """Bound what a caller-chosen claim can add to a log line."""
    return value[:128] if isinstance(value, str) else None if value is None else type(value).__name__


def error_response(exc: RequestError) -> Response:
    """The JSON error response of a RequestError."""
    headers = exc.headers()
    return Response(error_body(exc), status_code=exc.status, media_type="application/json",
                    headers={**headers, "Cache-Control": "no-store"})


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)  # type narrowing: only RequestError is routed here  # nosec B101
    return error_response(exc)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # type narrowing: only HTTPException is routed here  # nosec B101
    mapped: RequestError
    if exc.status_code == 404:
        mapped = NotFound("no such resource")
    elif exc.status_code == 405:
        mapped = MethodNotAllowed("method not allowed here")
        response = error_response(mapped)
        response.headers["Allow"] = (exc.headers or {}).get("Allow", "")
        return response
    else:
        mapped = InvalidRequest(str(exc.detail))
        mapped.status = exc.status_code
    return error_response(mapped)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    LOG.error("unexpected error", extra={"path": request.url.path, "error_type": type(exc).__name__})
    return Response(b'{"error":"internal_error","error_description":"internal error"}', status_code=500,
                    media_type="application/json")


class _AccessLog:
    """ASGI middleware: request id in and out, JSON access log line, request counter by route; the raw
    endpoints (POST /v1/sign) are dispatched here, ahead of Starlette."""

    def __init__(self, app: Any, metrics: Metrics, enabled: bool, sign: SignEndpoint) -> None:
        self.app, self.enabled, self.sign = app, enabled, sign
        self._requests = metrics.http_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # the first of repeated headers counts, as with Starlette's request.headers.get()
        headers = dict(reversed(scope["headers"]))
        rid = request_id(headers.get(b"x-request-id", b"").decode("latin-1") or None)
        scope.setdefault("state", {})["request_id"] = rid
        if scope["path"] == "/v1/sign":
            status = await self.sign(scope, receive, send, headers, rid.encode())
            self._done(scope, "sign", status, rid, started)
            return
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # noqa: S110 - Starlette already answered 500 and logged the type  # nosec B110
            pass
        finally:
            self._done(scope, _route_label(scope), status, rid, started)

    def _done(self, scope: Scope, route: str, status: int, rid: str, started: float) -> None:
        self._requests.inc(("internal", route, str(status)))
        if self.enabled:
            event(LOG, "access", {
                "listener": "internal", "method": scope["method"], "route": route, "status": status,
                "request_id": rid, "client": scope["state"].get("client"),
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            })


def _route_label(scope: Scope) -> str:
    """The handler's name (bounded), never the raw path (a caller could make labels unbounded)."""
    return str(getattr(scope.get("endpoint"), "__name__", "unmatched"))


def build_internal_app(settings: Settings, keyring: Keyring, metrics: Metrics,
                       extra_routes: Callable[[InternalApi], list[Route]] | None = None) -> tuple[Any, InternalApi]:
    """The internal ASGI app and its handler object; `extra_routes` adds routes built on the same API
    object (authentication, rate limits, body parsing). POST /v1/sign is raw ASGI (SignEndpoint), the rest
    Starlette routes."""
    api = InternalApi(settings, keyring, metrics)
    routes = [
        Route("/v1/keys", api.list_keys, methods=["GET"]),
        Route("/v1/keysets/{name}/rotate", api.rotate, methods=["POST"]),
        Route("/v1/keys/{kid}/revoke", api.revoke, methods=["POST"]),
        Route("/metrics", api.metrics_endpoint, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(settings), methods=["GET"]),
        *(extra_routes(api) if extra_routes is not None else []),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            RequestError: _on_request_error,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
    )
    return _AccessLog(app, metrics, settings.access_log, SignEndpoint(api)), api
