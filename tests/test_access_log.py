"""keysvc.http.access_log: the request id reaches every line written while a request is answered, and a
client that goes away mid-body is its own doing (499), not a server error.

The internal app is driven in-process as an ASGI callable over a real keyring on a real key directory
(file backend in a tmp dir), so the lines come from the code that writes them in production: the keyring,
its I/O threads, the signing batch and the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from keysvc.backends.file import FileBackend
from keysvc.clock import FixedClock
from keysvc.config import parse_settings
from keysvc.errors import Unavailable
from keysvc.feature import Feature
from keysvc.http.context import RouteContext
from keysvc.http.internal import build_internal_app
from keysvc.keyring import Keyring
from keysvc.logs import LOG
from keysvc.metrics import Metrics
from tests.conftest import LogStream
from tests.helpers import api_key, base_config

pytestmark = pytest.mark.unit

SIGN_BODY = json.dumps({"claims": {"sub": "u-1", "aud": "connect.zapier.com"}}).encode()
JSON = ("content-type", "application/json")


def auth(client: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {api_key(client)}")


async def call(app: Any, method: str, path: str, headers: Sequence[tuple[str, str]] = (),
               chunks: Sequence[bytes] = (b"",), *, disconnect: bool = False) -> int | None:
    """One request through an ASGI app: the body in `chunks`; with `disconnect`, the client goes away
    after them instead of finishing the body. The status sent, if any."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8081),
    }
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": disconnect or i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0] if statuses else None


def below_http(keyring: Keyring) -> Any:
    """A feature route whose work logs from below the HTTP layer: a line from an I/O thread (through
    a key operation's audit line), and the keyring's error line for a token that would outlive its key."""

    def routes(ctx: RouteContext) -> list[BaseRoute]:
        async def deep(request: Request) -> Response:
            ctx.client(request)
            await keyring.rotate("zapier", "test", force=True)  # audited from the keyring's I/O thread
            with contextlib.suppress(Unavailable):
                await keyring.sign("zapier", {"aud": "connect.zapier.com"}, 10_000)
            return JSONResponse({})

        return [Route("/v1/deep", deep, methods=["POST"])]

    return routes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Any, Keyring, Metrics]]:
    """The internal app over a real keyring (one ES256 keyset, keys created), its metrics."""
    settings = parse_settings(base_config(tmp_path / "keys"))
    keyring = Keyring(settings, FileBackend(tmp_path / "keys"), FixedClock(1_800_000_000.0))
    asyncio.run(keyring.refresh_all())
    metrics = Metrics()
    try:
        feature = Feature("deep", routes=below_http(keyring))
        yield build_internal_app(settings, keyring, metrics, [feature]), keyring, metrics
    finally:
        keyring.close()


def lines(out: LogStream) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_lines_from_below_the_http_layer_carry_the_request_id(served: tuple[Any, Keyring, Metrics],
                                                              log_stream: LogStream) -> None:
    """A line logged in an I/O thread and an error line from the keyring, both written while a request
    is answered, carry that request's id; a line written after the request carries none."""
    app, _, _ = served
    status = asyncio.run(call(app, "POST", "/v1/deep", [auth("signer"), ("x-request-id", "req-deep")]))
    assert status == 200
    LOG.info("after the request")
    by_event = {line["event"]: line for line in lines(log_stream)}
    assert by_event["key.rotate"]["request_id"] == "req-deep"
    assert by_event["token refused: exp beyond the keyset's retention guarantee"]["request_id"] == "req-deep"
    assert by_event["access"]["request_id"] == "req-deep"
    assert "request_id" not in by_event["after the request"]


def test_each_token_of_one_signing_batch_is_audited_with_its_own_request_id(
        served: tuple[Any, Keyring, Metrics], log_stream: LogStream) -> None:
    """Three /v1/sign requests in one event-loop turn: the first is signed at once, the other two in one
    batch, which runs outside their contexts; each token.sign line still carries the id of the request
    that asked for it."""
    app, _, _ = served
    rids = ["req-a", "req-b", "req-c"]

    async def together() -> list[int | None]:
        return list(await asyncio.gather(*(
            call(app, "POST", "/v1/sign", [auth("signer"), JSON, ("x-request-id", rid)], [SIGN_BODY])
            for rid in rids)))

    assert asyncio.run(together()) == [200, 200, 200]
    audit_writes = [w for w in log_stream.writes if "token.sign" in w]
    assert [w.count("token.sign") for w in audit_writes] == [1, 2]  # the first at once, then one batch
    assert [line["request_id"] for line in lines(log_stream) if line["event"] == "token.sign"] == rids


@pytest.mark.parametrize(("client", "path"), [("signer", "/v1/sign"), ("admin", "/v1/keysets/zapier/rotate")],
                         ids=["fast route", "starlette route"])
def test_a_client_gone_mid_body_is_a_499_not_an_error(served: tuple[Any, Keyring, Metrics], log_stream: LogStream,
                                                      client: str, path: str) -> None:
    """A client that disconnects before its declared body is complete: no error line, an access line
    with status 499 (nginx's "client closed request"), counted as 499 and never as 500; nothing changes."""
    app, keyring, metrics = served
    before = [r.kid for r in keyring.view("zapier").records]  # type: ignore[union-attr]
    headers = [auth(client), JSON, ("content-length", "100"), ("x-request-id", "req-gone")]
    asyncio.run(call(app, "POST", path, headers, [b'{"claims": {'], disconnect=True))
    got = lines(log_stream)
    assert [line for line in got if line["level"] == "error"] == []
    access = [(line["status"], line["request_id"]) for line in got if line["event"] == "access"]
    assert access == [(499, "req-gone")]
    statuses = {status for (_, _, status) in metrics.http_requests.values}
    assert statuses == {"499"}
    assert before == [r.kid for r in keyring.view("zapier").records]  # type: ignore[union-attr]
