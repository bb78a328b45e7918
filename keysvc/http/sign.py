"""POST /v1/sign as a raw ASGI endpoint: the route internal services call on their hot paths, so it skips
Starlette's routing and Request/Response objects (as the public JWKS route does). Same checks in the same
order as the Starlette routes (method, then client and rate limit, then body), and the same error answers
(keysvc.http.error_answers)."""

from __future__ import annotations

import time
from json.encoder import encode_basestring
from typing import Any

from starlette.types import Receive, Scope, Send

from keysvc.config import ClientSettings, Settings
from keysvc.errors import MethodNotAllowed, RequestError
from keysvc.http.common import Headers, read_json
from keysvc.http.context import InternalApi
from keysvc.http.error_answers import error_answer, log_unexpected, send_error
from keysvc.keyring import Keyring
from keysvc.metrics import Metrics
from keysvc.tokens import check_sign_request

_json_string = encode_basestring  # a str as a JSON string, as json.dumps(ensure_ascii=False) writes it
_JSON = (b"content-type", b"application/json")


class SignEndpoint:
    """POST /v1/sign: authenticate, read the body, check, sign, count, audit."""

    def __init__(self, api: InternalApi, settings: Settings, keyring: Keyring, metrics: Metrics) -> None:
        self.api = api
        self.keysets = settings.keysets
        self.keyring = keyring
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send, headers: dict[bytes, bytes],
                       tail: Headers) -> int:
        """Answer one request (a keysvc.http.access_log.RawEndpoint); the status sent."""
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed("method not allowed here", allow="POST")
            client = self.api.authorize(scope, _text(headers.get(b"authorization")))
            body = await read_json(receive, _text(headers.get(b"content-type")), _text(headers.get(b"content-length")))
            answer = await self.sign(client, body)
        except Exception as exc:
            if not isinstance(exc, RequestError):
                log_unexpected(exc, "internal", scope["state"].get("request_id"))
            error = error_answer(exc)
            await send_error(send, error, tail=tail)
            return error.status
        await send({"type": "http.response.start", "status": 200,
                    "headers": [_JSON, (b"content-length", str(len(answer)).encode()), *tail]})
        await send({"type": "http.response.body", "body": answer})
        return 200

    async def sign(self, client: ClientSettings, body: Any) -> bytes:
        """The request past authentication and body parsing: check, sign, count, audit; the JSON answer."""
        started = time.perf_counter()
        try:
            checked = check_sign_request(body, client, self.keysets)
        except RequestError as exc:
            keyset = body.get("keyset") if isinstance(body, dict) else None
            label = keyset if isinstance(keyset, str) and keyset in self.keysets else "-"
            self.metrics.sign_refused(client.name, label, exc.code)
            raise
        try:
            token = await self.keyring.sign(checked.keyset, checked.claims, checked.ttl, audit={
                "client": client.name, "keyset": checked.keyset, "sub": _short(checked.claims.get("sub")),
                "aud": checked.claims.get("aud"),
            })
        except RequestError as exc:
            self.metrics.sign_refused(client.name, checked.keyset, exc.code)
            raise
        self.metrics.signed(client.name, checked.keyset, token.kid, time.perf_counter() - started)
        # What json.dumps(answer, ensure_ascii=False, separators=(",", ":")) writes, without its generic
        # machinery; a compact JWS is base64url and dots only, so it needs no escaping.
        kid, alg = _json_string(token.kid), _json_string(token.alg)
        return f'{{"token":"{token.token}","kid":{kid},"alg":{alg},"expires_at":{token.expires_at:d}}}'.encode()


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _short(value: object) -> object:
    """Bound what a caller-chosen claim can add to a log line."""
    return value[:128] if isinstance(value, str) else None if value is None else type(value).__name__
