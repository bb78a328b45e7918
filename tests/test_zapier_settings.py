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


def test_store_is_read_with_its_defaults(tmp_path: Any) -> None:
    """`store`: the URL, the password read now from a file (hidden), timeout 2 s and divisor 3 by default."""
    assert parse().store is None and parse().connect_theme is None
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    s = parse(store={"url": "postgresql://keysvc@db:5432/keysvc", "password_file": str(password)},
              connect_theme="acme")
    assert s.store is not None and s.store.engine == "postgresql" and s.connect_theme == "acme"
    assert (s.store.timeout, s.store.fallback_divisor) == (2.0, 3)
    assert s.store.password is not None and s.store.password.reveal() == "s3cret"
    assert "s3cret" not in repr(s)
    lite = parse(store={"url": "sqlite:///gw.db", "timeout": "500ms", "fallback_divisor": 1}).store
    assert lite is not None and (lite.engine, lite.timeout, lite.fallback_divisor) == ("sqlite", 0.5, 1)


@pytest.mark.parametrize(("store", "field"), [
    ({"url": "mysql://db/keysvc"}, "token_exchange.store.url"),
    ({"url": "postgresql://keysvc:pw@db/keysvc"}, "token_exchange.store.url"),
    ({"url": "postgresql://db/keysvc"}, "token_exchange.store.url"),
    ({"url": "sqlite://"}, "token_exchange.store.url"),
    ({}, "token_exchange.store.url"),
    ({"url": "postgresql://k@db/k", "password_env": "NOT_SET"}, "token_exchange.store.password_env"),
    ({"url": "sqlite:///gw.db", "password_env": "SECRET"}, "token_exchange.store.password_file"),
    ({"url": "sqlite:///gw.db", "timeout": 0}, "token_exchange.store.timeout"),
    ({"url": "sqlite:///gw.db", "timeout": "2m"}, "token_exchange.store.timeout"),
    ({"url": "sqlite:///gw.db", "fallback_divisor": 0}, "token_exchange.store.fallback_divisor"),
    ({"url": "sqlite:///gw.db", "pasword_file": "/x"}, "token_exchange.store.pasword_file"),
])
def test_bad_store_keys_name_their_field(store: dict[str, Any], field: str) -> None:
    """Each store problem is a ConfigError naming its field (check-config and serve read it the same way);
    a password never sits in the URL and is never echoed."""
    with pytest.raises(ConfigError) as info:
        parse(store=store)
    assert info.value.field == field
    assert "pw@" not in str(info.value)


def test_bad_connect_theme_names_its_field() -> None:
    """`connect_theme` is a theme name (letters, digits, _ . -), nothing that could break the URL."""
    with pytest.raises(ConfigError) as info:
        parse(connect_theme="dark&x=1")
    assert info.value.field == "token_exchange.connect_theme"


def test_dev_mode_keeps_the_gateway_store_in_sqlite_under_its_directory(tmp_path: Any) -> None:
    """`keysvc serve --dev` with a token_exchange section: the store is SQLite under the dev directory (one
    replica), unless the section names its own."""
    from keysvc.cli import dev_settings, dev_store

    exchange = {"client_id": "cid", "client_secret_env": "PATH", "keyset": "dev"}
    settings, _ = dev_settings(tmp_path, token_exchange=exchange)
    assert settings.token_exchange is not None and settings.token_exchange.store is not None
    assert settings.token_exchange.store.url == f"sqlite:///{tmp_path / 'gateway.db'}"
    own = {"url": "postgresql://k@db/k"}
    assert dev_store({**exchange, "store": own}, tmp_path)["store"] == own
