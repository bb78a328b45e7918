"""The HTTP edge of a real `keysvc serve`: WebSocket upgrade requests on both ports, the public access
log default (`log.public`), JWKS 404s in metrics, unknown paths (never a redirect)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from keysvc.config import parse_settings
from keysvc.errors import ConfigError
from tests.helpers import KeysvcProcess, api_key, base_config, wait_for, write_config

pytestmark = pytest.mark.system

Start = Callable[..., KeysvcProcess]

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeysvcProcess]:
    """One server with the configuration as shipped (access log on, `log.public` left at its default)."""
    tmp = tmp_path_factory.mktemp("edge")
    proc = KeysvcProcess(write_config(tmp / "edge.yaml", base_config(tmp / "keys")), name="edge")
    proc.start()
    wait_for(lambda: proc.jwks().status_code == 200, 15, "the JWKS to be served")
    yield proc
    proc.stop()


def upgrade(base_url: str, path: str, extra: str = "") -> int:
    """Send a WebSocket upgrade request over a raw socket; the status of the answer's first line."""
    url = urlsplit(base_url)
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10) as sock:
        sock.sendall(UPGRADE.format(path=path, extra=extra).encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def errors_logged(proc: KeysvcProcess) -> list[dict[str, Any]]:
    return [line for line in proc.lines() if line.get("level") in ("error", "critical")]


def test_websocket_upgrades_are_refused_cleanly_on_both_ports(server: KeysvcProcess) -> None:
    """A WebSocket upgrade request to either port, on a route or not, is refused (403 for a refused
    handshake, or the route's own HTTP answer or 404 when the server does not upgrade at all): never 101,
    never a 5xx, no error log line; both ports keep serving."""
    auth = f"Authorization: Bearer {api_key('signer')}\r\n"
    asked = {
        "public jwks": upgrade(server.public, "/.well-known/jwks.json"),
        "public unknown": upgrade(server.public, "/ws"),
        "internal sign": upgrade(server.internal, "/v1/sign", auth),
        "internal admin": upgrade(server.internal, "/v1/keys", auth),
        "internal unknown": upgrade(server.internal, "/ws"),
    }
    allowed = {"public jwks": {403, 200}, "public unknown": {403, 404}, "internal sign": {403, 405},
               "internal admin": {403}, "internal unknown": {403, 404}}
    assert {name: status in allowed[name] for name, status in asked.items()} == dict.fromkeys(asked, True), asked
    assert server.jwks().status_code == 200
    assert server.sign().status_code == 200
    assert errors_logged(server) == []


def test_public_successes_are_counted_not_logged_and_errors_are_logged(server: KeysvcProcess) -> None:
    """As shipped, a JWKS 200 and a health check on the public port write no access line (they are in
    metrics), a public 404 does; every internal request, successes included, is logged."""
    rid = "edge-ok-1"
    assert httpx.get(server.public + "/.well-known/jwks.json", headers={"X-Request-ID": rid}).status_code == 200
    assert httpx.get(server.public + "/healthz", headers={"X-Request-ID": "edge-ok-2"}).status_code == 200
    assert httpx.get(server.public + "/nope", headers={"X-Request-ID": "edge-404"}).status_code == 404
    assert httpx.get(server.internal + "/healthz", headers={"X-Request-ID": "edge-internal"}).status_code == 200

    def access(request_id: str) -> list[dict[str, Any]]:
        return [line for line in server.lines()
                if line.get("event") == "access" and line.get("request_id") == request_id]

    wait_for(lambda: bool(access("edge-404")) and bool(access("edge-internal")), 10, "the access lines")
    assert [(line["listener"], line["status"], line["path"]) for line in access("edge-404")] == [
        ("public", 404, "(unknown)")]
    assert access(rid) == [] and access("edge-ok-2") == []
    assert [line["listener"] for line in access("edge-internal")] == ["internal"]
    metrics = httpx.get(server.internal + "/metrics").text
    assert 'keysvc_http_requests_total{listener="public",route="healthz",status="200"}' in metrics


def test_jwks_404_counts_under_a_fixed_label(server: KeysvcProcess) -> None:
    """A GET of an unknown keyset's JWKS is counted as keyset="-" status="404"; the caller's keyset name
    never becomes a label."""

    def count() -> float:
        for line in httpx.get(server.internal + "/metrics").text.splitlines():
            if line.startswith('keysvc_jwks_requests_total{keyset="-",status="404"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    for name in ("made-up-1", "made-up-2"):
        assert httpx.get(f"{server.public}/keysets/{name}/jwks.json").status_code == 404
    assert count() - before == 2
    assert "made-up" not in httpx.get(server.internal + "/metrics").text


def test_log_public_all_logs_every_public_request(keysvc: Start, tmp_path: Path) -> None:
    """`log: {public: all}` writes an access line for each public success too."""
    config = base_config(tmp_path / "keys")
    config["log"] = {"public": "all"}
    proc = keysvc(config, name="public-all")
    wait_for(lambda: proc.jwks().status_code == 200, 15, "the JWKS to be served")
    httpx.get(proc.public + "/.well-known/jwks.json", headers={"X-Request-ID": "all-ok"})
    wait_for(lambda: any(line.get("request_id") == "all-ok" for line in proc.lines()), 10, "the 200's access line")
    line = next(line for line in proc.lines() if line.get("request_id") == "all-ok")
    assert (line["event"], line["listener"], line["status"]) == ("access", "public", 200)


def test_log_public_accepts_errors_or_all_only(tmp_path: Path) -> None:
    """log.public defaults to errors, accepts all, and anything else is a ConfigError naming the key."""
    config = base_config(tmp_path / "keys")
    assert parse_settings(config).log_public == "errors"
    assert parse_settings({**config, "log": {"public": "all"}}).log_public == "all"
    with pytest.raises(ConfigError) as refused:
        parse_settings({**config, "log": {"public": "none"}})
    assert refused.value.field == "log.public"


HOSTILE = {"Host": "evil.example"}
# trailing-slash variants of real routes, and paths that are no route at all
INTERNAL_UNKNOWN = [("GET", "/v1/keys/"), ("POST", "/v1/sign/"), ("POST", "/v1/keysets/zapier/rotate/"),
                    ("GET", "/metrics/"), ("GET", "/healthz/"), ("GET", "/openapi.json/"), ("GET", "/nope/"),
                    ("POST", "/v1/token-exchange/")]
PUBLIC_UNKNOWN = [("GET", "/.well-known/jwks.json/"), ("GET", "/keysets/zapier/jwks.json/"), ("GET", "/healthz/"),
                  ("HEAD", "/readyz/"), ("GET", "/nope/"), ("POST", "/keysets/")]


def refusals(base: str, requests: list[tuple[str, str]]) -> dict[str, tuple[int, str | None, object]]:
    """Each request sent with a hostile Host header and no credentials: status, Location, error code."""
    answers = {}
    for method, path in requests:
        r = httpx.request(method, base + path, headers=HOSTILE, follow_redirects=False, timeout=10)
        code = r.json().get("error") if method != "HEAD" else "not_found" if r.status_code == 404 else None
        answers[f"{method} {path}"] = (r.status_code, r.headers.get("location"), code)
    return answers


def test_unknown_paths_are_json_404s_never_redirects_on_both_listeners(server: KeysvcProcess) -> None:
    """A trailing-slash variant of a real route (`/v1/keys/`, `/v1/sign/`, `/.well-known/jwks.json/`) or
    an unknown path, sent with `Host: evil.example` and no credentials, is a JSON 404 `not_found` on both
    listeners: never a 307 to the caller's host (an open redirect before authentication)."""
    expected = (404, None, "not_found")
    internal = refusals(server.internal, INTERNAL_UNKNOWN)
    public = refusals(server.public, PUBLIC_UNKNOWN)
    assert internal == dict.fromkeys(internal, expected)
    assert public == dict.fromkeys(public, expected)


def test_gateway_paths_with_a_trailing_slash_are_json_404s(keysvc: Start, tmp_path: Path) -> None:
    """With the embed gateway on (its routes added by the partner side), `POST /v1/zapier/action-runs/` and
    other trailing-slash variants from a hostile Host are JSON 404s, never a redirect (nothing reaches the
    partner: its URLs point at a closed port)."""
    config = base_config(tmp_path / "keys")
    config["clients"]["signer"]["zapier"] = True
    closed = "http://127.0.0.1:9"
    config["token_exchange"] = {"keyset": "zapier", "client_id": "cid", "client_secret_env": "HOME",
                                "token_url": f"{closed}/oauth/token", "api_url": closed}
    proc = keysvc(config, name="gateway-slashes")
    requests = [("POST", "/v1/zapier/action-runs/"), ("GET", "/v1/zapier/apps/"), ("GET", "/v1/zapier/connections/"),
                ("GET", "/v1/zapier/")]
    answers = refusals(proc.internal, requests)
    assert answers == dict.fromkeys(answers, (404, None, "not_found"))
