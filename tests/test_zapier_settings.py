"""The embed gateway's configuration: the `token_exchange` keys it adds (api_url, redirect_uris,
api_rate_limit, run_wait_max, the scope default) and the per-client `zapier` flag."""

from __future__ import annotations

from typing import Any

import pytest

from keysvc.config import ReadOptions, parse_settings
from keysvc.config.exchange import ApiRateLimit, TokenExchangeSettings, parse_token_exchange
from keysvc.errors import ConfigError
from tests.helpers import base_config

pytestmark = pytest.mark.unit

BASE = {"client_id": "cid", "client_secret_env": "SECRET"}


def parse(**raw: Any) -> TokenExchangeSettings:
    return parse_token_exchange({**BASE, **raw}, {"zapier": "ES256"}, environ={"SECRET": "s"})


def test_gateway_defaults() -> None:
    """Without the new keys: Zapier's API, no redirect allowed, 60/min burst 10, 60 s wait, zap scopes."""
    s = parse()
    assert (s.api_url, s.redirect_uris, s.api_rate_limit, s.run_wait_max) == (
        "https://api.zapier.com", (), ApiRateLimit(60.0, 10), 60.0,
    )
    assert s.scope == "external connection:read connection:write zap zap:write action:run"


def test_gateway_keys_are_read() -> None:
    """Each key is read into its typed value; durations accept the usual forms."""
    s = parse(api_url="http://127.0.0.1:9000", redirect_uris=["https://app.example/cb"],
              api_rate_limit={"per_minute": 20, "burst": 3}, run_wait_max="2m")
    assert (s.api_url, s.redirect_uris, s.api_rate_limit, s.run_wait_max) == (
        "http://127.0.0.1:9000", ("https://app.example/cb",), ApiRateLimit(20.0, 3), 120.0,
    )


@pytest.mark.parametrize(("raw", "field"), [
    ({"api_url": "http://api.zapier.com"}, "token_exchange.api_url"),
    ({"api_url": "ftp://127.0.0.1"}, "token_exchange.api_url"),
    ({"redirect_uris": "https://app.example/cb"}, "token_exchange.redirect_uris"),
    ({"redirect_uris": ["/relative"]}, "token_exchange.redirect_uris"),
    ({"redirect_uris": ["https://app.example/cb#frag"]}, "token_exchange.redirect_uris"),
    ({"api_rate_limit": {"per_minute": 0}}, "token_exchange.api_rate_limit.per_minute"),
    ({"api_rate_limit": {"burst": 0}}, "token_exchange.api_rate_limit.burst"),
    ({"api_rate_limit": {"per_second": 1}}, "token_exchange.api_rate_limit.per_second"),
    ({"run_wait_max": "soon"}, "token_exchange.run_wait_max"),
])
def test_bad_gateway_keys_name_their_field(raw: dict[str, Any], field: str) -> None:
    """A wrong value is a ConfigError naming the dotted field (what check-config prints)."""
    with pytest.raises(ConfigError) as info:
        parse(**raw)
    assert info.value.field == field


def test_client_zapier_flag(tmp_path: Any) -> None:
    """`zapier: true` on a client is read (it needs a token_exchange section); clients without it may not use
    the gateway."""
    config = base_config(tmp_path / "keys")
    config["clients"]["signer"]["zapier"] = True
    with pytest.raises(ConfigError, match="token_exchange"):
        parse_settings(config)
    config["token_exchange"] = {"client_id": "keysvc", "client_secret_env": "ZAPIER_TEST_SECRET", "keyset": "zapier"}
    settings = parse_settings(config, ReadOptions(environ={"ZAPIER_TEST_SECRET": "s3cret"}))
    assert settings.clients["signer"].zapier is True and settings.clients["admin"].zapier is False


@pytest.mark.parametrize(("value", "field"), [
    (["apps"], "clients.signer.zapier"), ("yes", "clients.signer.zapier"), (1, "clients.signer.zapier"),
    ({"app": ["Slack"]}, "clients.signer.zapier.app"), ({"apps": "Slack"}, "clients.signer.zapier.apps"),
    ({"apps": ["not a key"]}, "clients.signer.zapier.apps"), ({"actions": [""]}, "clients.signer.zapier.actions"),
    ({"triggers": ["new/row"]}, "clients.signer.zapier.triggers"),
])
def test_client_zapier_grant_refuses_bad_shapes(tmp_path: Any, value: Any, field: str) -> None:
    """`zapier` is true, false or {apps, actions, triggers} lists of keys (apps also by UUID): anything else
    is a field error naming the exact key."""
    config = base_config(tmp_path / "keys")
    config["token_exchange"] = {"client_id": "keysvc", "client_secret_env": "ZAPIER_TEST_SECRET", "keyset": "zapier"}
    config["clients"]["signer"]["zapier"] = value
    with pytest.raises(ConfigError) as info:
        parse_settings(config, ReadOptions(environ={"ZAPIER_TEST_SECRET": "s3cret"}))
    assert field in str(info.value)


def test_client_zapier_grant_allows_only_what_it_names(tmp_path: Any) -> None:
    """`zapier: {apps: [UUID, key], actions: [send]}` allows those apps (UUID in any case, key exactly) and
    that action, no trigger (the list is omitted); `zapier: true` allows everything."""
    app = "6F1C6C0E-2D6E-4B8E-9B8A-3F0A1F7B2C11"
    config = base_config(tmp_path / "keys")
    config["token_exchange"] = {"client_id": "keysvc", "client_secret_env": "ZAPIER_TEST_SECRET", "keyset": "zapier"}
    config["clients"]["signer"]["zapier"] = {"apps": [app, "SlackCLIAPI"], "actions": ["send"]}
    config["clients"]["admin"]["zapier"] = True
    settings = parse_settings(config, ReadOptions(environ={"ZAPIER_TEST_SECRET": "s3cret"}))
    grant = settings.clients["signer"].zapier_grant
    assert settings.clients["signer"].zapier is True and grant is not None
    assert grant.allows_app(app.lower()) and grant.allows_app("other-uuid", "SlackCLIAPI")
    assert not grant.allows_app("slackcliapi") and not grant.allows_app("GmailCLIAPI")
    assert grant.allows_action("send") and not grant.allows_action("delete")
    assert not grant.allows_trigger("new_message")
    everything = settings.clients["admin"].zapier_grant
    assert everything is not None and everything.allows_trigger("anything") and everything.allows_app("x")
