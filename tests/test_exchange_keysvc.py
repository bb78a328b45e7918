"""The exchange against a real `keysvc serve`: the partner server fetches keysvc's public JWKS URL and
verifies JWTs that keysvc signed, whether through `/v1/sign` (RemoteSigner, in another service) or in
process behind `POST /v1/token-exchange`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keysvc.cli import cmd_exchange
from keysvc.client import RemoteSigner, SignedToken, TokenExchanger
from keysvc.config import Secret
from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import Forbidden, RequestError, UpstreamError
from tests.exchange_support import serve
from tests.helpers import (
    KeysvcProcess,
    api_key,
    base_config,
    remember_secret,
    run_cli,
    sha256_hex,
    write_config,
)
from tests.partner_server import ACCESS_TOKEN, CONNECT_TOKEN, PartnerServer, PartnerState

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"  # base_config's issuer of keyset "zapier"


@dataclass
class Stack:
    keysvc: KeysvcProcess
    partner: PartnerState
    token_url: str

    def post(self, body: Any, client: str = "exchanger") -> httpx.Response:
        """POST /v1/token-exchange as a configured client."""
        return httpx.post(
            f"{self.keysvc.internal}/v1/token-exchange",
            json=body,
            headers={"Authorization": f"Bearer {api_key(client)}"},
            timeout=15,
        )


@pytest.fixture(scope="module")
def stack_once(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("exchange-keysvc")
    state = PartnerState(jwks_url="http://127.0.0.1:9/unset", issuer=ISSUER)
    remember_secret(state.client_secret)
    partner = PartnerServer(state)
    with serve(partner.app()) as partner_url:
        secret_file = tmp / "zapier-client-secret"
        secret_file.write_text(state.client_secret + "\n")
        config = base_config(tmp / "keys")
        config["clients"]["exchanger"] = {
            "api_key_sha256": sha256_hex(api_key("exchanger")),
            "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"],
            "max_ttl": "5m",
            "token_exchange": True,
            "exchange_scopes": ["external", "connection:read", "connection:write", "action:run"],
        }
        config["clients"]["narrow"] = {
            "api_key_sha256": sha256_hex(api_key("narrow")),
            "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"],
            "max_ttl": "5m",
            "token_exchange": True,
            "exchange_scopes": ["connection:read"],
        }
        config["clients"]["limited"] = {
            "api_key_sha256": sha256_hex(api_key("limited")),
            "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"],
            "max_ttl": "5m",
            "token_exchange": True,
            "rate_limit": {"rate": 0.01, "burst": 1},
        }
        config["token_exchange"] = {
            "keyset": "zapier",
            "token_url": f"{partner_url}/oauth/token",
            "client_id": state.client_id,
            "client_secret_file": str(secret_file),
            "total_timeout": "3s",
            "max_attempts": 2,
        }
        with KeysvcProcess(write_config(tmp / "keysvc.yaml", config), name="exchange") as keysvc:
            partner.trust(f"{keysvc.public}/.well-known/jwks.json", ISSUER)
            yield Stack(keysvc, state, f"{partner_url}/oauth/token")


@pytest.fixture
def stack(stack_once: Stack) -> Stack:
    stack_once.partner.reset()
    return stack_once


def test_remote_signer_through_keysvc_sign(stack: Stack) -> None:
    """A service holding only an API key signs via keysvc's /v1/sign (RemoteSigner); the partner verifies
    the JWT against keysvc's public JWKS URL and issues access and connect tokens."""
    settings = TokenExchangeSettings(
        client_id=stack.partner.client_id,
        client_secret=Secret(stack.partner.client_secret),
        token_url=stack.token_url,
    )

    async def go() -> tuple[str, str]:
        signer = RemoteSigner(stack.keysvc.internal, api_key("signer"))
        async with signer, TokenExchanger(settings, signer) as exchanger:
            access = await exchanger.access_token("u-1", "t-9")
            connect = await exchanger.connect_token("u-1", "t-9", "SlackAPI")
            return access.access_token, connect.access_token

    access, connect = asyncio.run(go())

    assert (access[:3], connect[:3]) == ("at-", "ct-")
    assert (stack.partner.calls_for(ACCESS_TOKEN), stack.partner.calls_for(CONNECT_TOKEN)) == (1, 1)


def test_endpoint_access_token(stack: Stack) -> None:
    """POST /v1/token-exchange signs in process and answers the documented body, uncacheable; the partner
    JWT it signed is audited (token.sign with kid and jti)."""
    response = stack.post({"user_id": "u-1", "tenant_id": "t-9", "token": "access"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "issued_token_type", "expires_in"}
    assert (body["issued_token_type"], body["expires_in"]) == (ACCESS_TOKEN, 3600)
    assert response.headers["cache-control"] == "no-store"
    # the partner JWT behind it has its own token.sign audit line, written before the exchange's answer
    signed = [ln for ln in stack.keysvc.lines() if ln.get("event") == "token.sign" and ln.get("sub") == "u-1"]
    assert signed and signed[-1]["client"] == "token_exchange" and signed[-1]["aud"] == "connect.zapier.com"
    assert signed[-1]["kid"] and len(signed[-1]["jti"]) == 24 and signed[-1]["audit"] is True


def test_endpoint_connect_token(stack: Stack) -> None:
    """A connect token comes with its Connect URL; the partner saw resource = the app's Connect URL."""
    response = stack.post({"user_id": "u-2", "tenant_id": "t-9", "token": "connect", "app": "SlackAPI"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["connect_url"] == f"https://connect.zapier.com/to/SlackAPI?token={body['access_token']}"
    assert stack.partner.calls[-1]["resource"] == "https://connect.zapier.com/to/SlackAPI"


def test_endpoint_single_flight_across_http_requests(stack: Stack) -> None:
    """50 concurrent HTTP requests for one user make one partner call: the process shares one cache."""
    stack.partner.delay = 0.3

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=15) as client:
            headers = {"Authorization": f"Bearer {api_key('exchanger')}"}
            body = {"user_id": "u-50", "tenant_id": "t-9", "token": "access"}
            url = f"{stack.keysvc.internal}/v1/token-exchange"
            return await asyncio.gather(*(client.post(url, json=body, headers=headers) for _ in range(50)))

    responses = asyncio.run(go())

    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["access_token"] for r in responses}) == 1
    assert len(stack.partner.calls) == 1


@pytest.mark.parametrize(
    ("client", "body", "status", "code"),
    [
        ("signer", {"user_id": "u", "tenant_id": "t", "token": "access"}, 403, "forbidden"),
        ("nobody", {"user_id": "u", "tenant_id": "t", "token": "access"}, 401, "invalid_client"),
        ("exchanger", {"user_id": "u", "tenant_id": "t", "token": "refresh"}, 400, "invalid_request"),
        ("exchanger", {"user_id": "u", "tenant_id": "t", "token": "connect"}, 400, "invalid_request"),
        (
            "narrow",
            {"user_id": "u", "tenant_id": "t", "token": "access", "scope": "action:run"},
            403,
            "forbidden",
        ),
    ],
)
def test_endpoint_refusals(stack: Stack, client: str, body: Any, status: int, code: str) -> None:
    """Clients without the flag, unknown keys, bad bodies and scopes beyond the client's are refused
    before any partner call."""
    response = stack.post(body, client=client)

    assert (response.status_code, response.json()["error"]) == (status, code)
    assert stack.partner.calls == []


def test_endpoint_applies_the_client_rate_limit(stack: Stack) -> None:
    """A client's rate_limit holds on /v1/token-exchange too: past its burst, 429 with Retry-After."""
    body = {"user_id": "u-6", "tenant_id": "t-9", "token": "access"}
    first, second = stack.post(body, client="limited"), stack.post(body, client="limited")

    assert (first.status_code, second.status_code, second.json()["error"]) == (200, 429, "rate_limited")
    assert int(second.headers["retry-after"]) >= 1


def test_endpoint_narrow_client_gets_its_own_scope(stack: Stack) -> None:
    """A client limited to connection:read, asking for no scope, gets exactly that scope requested."""
    response = stack.post({"user_id": "u-3", "tenant_id": "t-9", "token": "access"}, client="narrow")

    assert response.status_code == 200, response.text
    assert stack.partner.calls[-1]["scope"] == "connection:read"


def test_endpoint_maps_partner_failures(stack: Stack) -> None:
    """Partner invalid_client -> 502 upstream_error; partner 503 for good -> 503 with Retry-After;
    never a 500."""
    stack.partner.mode = "invalid_client"
    bad_credentials = stack.post({"user_id": "u-4", "tenant_id": "t-9", "token": "access"})
    stack.partner.mode, stack.partner.retry_after = "unavailable", "30"
    busy = stack.post({"user_id": "u-4", "tenant_id": "t-9", "token": "access"})

    assert (bad_credentials.status_code, bad_credentials.json()["error"]) == (502, "upstream_error")
    assert (busy.status_code, busy.json()["error"], busy.headers["retry-after"]) == (503, "unavailable", "30")


def test_metrics_and_logs(stack: Stack) -> None:
    """Upstream calls and cache lookups reach /metrics; no log line holds the client secret or a token."""
    first = stack.post({"user_id": "u-5", "tenant_id": "t-9", "token": "access"}).json()
    stack.post({"user_id": "u-5", "tenant_id": "t-9", "token": "access"})

    metrics = httpx.get(f"{stack.keysvc.internal}/metrics", timeout=10).text
    log = stack.keysvc.log_text()

    assert 'keysvc_token_exchange_upstream_total{outcome="ok"}' in metrics
    assert 'keysvc_token_exchange_cache_total{result="hit"}' in metrics
    assert stack.partner.client_secret not in log
    assert first["access_token"] not in log
    assert '"token.exchange"' in log


def test_check_config_refuses_eddsa_keyset(tmp_path: Path) -> None:
    """A token_exchange keyset whose alg Zapier does not accept is refused at config time, naming it."""
    config = base_config(tmp_path / "keys", algs={"zapier": "EdDSA"})
    (tmp_path / "secret").write_text("x")
    config["token_exchange"] = {"client_id": "c", "client_secret_file": str(tmp_path / "secret")}
    result = run_cli("check-config", config=write_config(tmp_path / "c.yaml", config))

    assert result.returncode != 0
    assert "token_exchange.keyset" in result.stdout + result.stderr
    assert "EdDSA" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("key", "expected"),
    [("ks_test_not_a_configured_key", UpstreamError), (api_key("other"), Forbidden)],
)
def test_remote_signer_refused_by_keysvc(stack: Stack, key: str, expected: type[RequestError]) -> None:
    """An unknown API key is this service's misconfiguration (502); a client not allowed the partner's
    audience gets keysvc's 403 as Forbidden."""

    async def go() -> SignedToken:
        async with RemoteSigner(stack.keysvc.internal, key) as signer:
            return await signer.sign({"sub": "u-1", "aud": "connect.zapier.com"}, 300, "zapier")

    with pytest.raises(RequestError) as info:
        asyncio.run(go())

    assert type(info.value) is expected


def test_exchange_command_signs_with_the_backend_key(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    """`keysvc exchange` signs in its own process with the backend's active key (the one keysvc serves in
    its JWKS) and prints the partner's answer as JSON."""
    args = argparse.Namespace(user="u-7", tenant="t-9", connect="SlackAPI", scope=None,
                              config=str(stack.keysvc.config_path), dev=False)

    status = cmd_exchange(args)

    body = json.loads(capsys.readouterr().out)
    assert (status, body["access_token"][:3]) == (0, "ct-")
    assert body["connect_url"].startswith("https://connect.zapier.com/to/SlackAPI?token=")


def test_exchange_cli_black_box(stack: Stack, tmp_path: Path) -> None:
    """`python -m keysvc exchange --config F --user U --tenant T` as an operator runs it: exit 0 and the
    partner's access token as JSON on stdout; the partner verified our JWT against keysvc's JWKS URL. Without
    a token_exchange section the command is refused as a configuration error (exit 2) naming the field."""
    run = run_cli("exchange", "--user", "u-8", "--tenant", "t-9", config=stack.keysvc.config_path)
    assert run.returncode == 0, run.stderr
    body = json.loads(run.stdout)
    assert body["access_token"] and body["expires_in"] > 0
    assert stack.partner.calls_for("urn:ietf:params:oauth:token-type:access-token") == 1
    bare = write_config(tmp_path / "bare.yaml", base_config(tmp_path / "keys"))
    refused = run_cli("exchange", "--user", "u-8", "--tenant", "t-9", config=bare)
    assert refused.returncode == 78 and "token_exchange" in refused.stderr
