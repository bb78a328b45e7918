"""`token_exchange` configuration: defaults, and every refusal naming its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from keysvc.config.exchange import TokenExchangeSettings, parse_token_exchange
from keysvc.errors import ConfigError

pytestmark = pytest.mark.unit

KEYSETS = {"zapier": "ES256", "rsa": "RS384", "pss": "PS256", "ed": "EdDSA"}
ENV = {"ZAPIER_SECRET": "from-env"}


def parse(raw: dict[str, Any]) -> TokenExchangeSettings:
    return parse_token_exchange(raw, KEYSETS, environ=ENV)


def test_defaults_are_the_documented_ones() -> None:
    """With only a client id and a secret, every other value is the documented default (docs/zapier.md)."""
    settings = parse({"client_id": "cid", "client_secret_env": "ZAPIER_SECRET"})

    assert settings == TokenExchangeSettings(client_id="cid", client_secret=settings.client_secret)
    assert settings.client_secret.reveal() == "from-env"
    assert (settings.token_url, settings.audience, settings.tenant_claim, settings.jwt_ttl) == (
        "https://zapier.com/oauth/token",
        "connect.zapier.com",
        "org_id",
        300,
    )


def test_secret_file_is_read_and_hidden(tmp_path: Path) -> None:
    """The secret comes from a file (trailing newline stripped) and neither repr nor str shows it."""
    (tmp_path / "s").write_text("file-secret-value\n")

    settings = parse({"client_id": "cid", "client_secret_file": str(tmp_path / "s")})

    assert settings.client_secret.reveal() == "file-secret-value"
    assert "file-secret-value" not in repr(settings) + str(settings.client_secret)


def test_every_field_can_be_set(tmp_path: Path) -> None:
    """Every documented key is accepted and read, durations in any of the forms keysvc takes."""
    raw = {
        "keyset": "rsa",
        "token_url": "http://127.0.0.1:8000/token",
        "client_id": "cid",
        "client_secret_env": "ZAPIER_SECRET",
        "client_auth": "client_secret_basic",
        "audience": "aud.example",
        "tenant_claim": "account_id",
        "jwt_ttl": "2m",
        "subject_token_type": "urn:x:jwt",
        "access_token_type": "urn:x:at",
        "connect_token_type": "urn:x:ct",
        "connect_from": "jwt",
        "scope": "a b",
        "connect_url": "https://connect.example/apps/{app}/start",
        "connect_timeout": "500ms",
        "read_timeout": 7,
        "total_timeout": "1m",
        "max_attempts": 2,
        "cache_margin": "90s",
    }

    s = parse(raw)

    assert (s.keyset, s.client_auth, s.connect_from, s.jwt_ttl, s.cache_margin) == (
        "rsa",
        "client_secret_basic",
        "jwt",
        120,
        90,
    )
    assert (s.connect_timeout, s.read_timeout, s.total_timeout, s.max_attempts) == (0.5, 7.0, 60.0, 2)


BASE = {"client_id": "cid", "client_secret_env": "ZAPIER_SECRET"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"colour": "blue"}, "token_exchange.colour", "unknown setting"),
        ({"client_id": "  "}, "token_exchange.client_id", "non-empty string"),
        ({"keyset": "nope"}, "token_exchange.keyset", "no keyset named 'nope'"),
        ({"keyset": "pss"}, "token_exchange.keyset", "PS256"),
        ({"keyset": "ed"}, "token_exchange.keyset", "Zapier accepts only"),
        ({"jwt_ttl": "10m"}, "token_exchange.jwt_ttl", "longer than 300s"),
        ({"jwt_ttl": "soon"}, "token_exchange.jwt_ttl", "duration"),
        ({"jwt_ttl": 0}, "token_exchange.jwt_ttl", "greater than 0"),
        ({"read_timeout": "-1s"}, "token_exchange.read_timeout", "duration"),
        ({"max_attempts": 0}, "token_exchange.max_attempts", "1 to 10"),
        ({"max_attempts": True}, "token_exchange.max_attempts", "1 to 10"),
        ({"client_auth": "private_key_jwt"}, "token_exchange.client_auth", "client_secret_post"),
        ({"connect_from": "session"}, "token_exchange.connect_from", "access_token, jwt"),
        ({"token_url": "http://zapier.com/oauth/token"}, "token_exchange.token_url", "https"),
        ({"token_url": "zapier.com/oauth/token"}, "token_exchange.token_url", "https"),
        ({"connect_url": "https://connect.zapier.com/to/"}, "token_exchange.connect_url", "{app}"),
        ({"connect_url": "https://c.example/{app}/{x}"}, "token_exchange.connect_url", "{app}"),
        ({"tenant_claim": "sub"}, "token_exchange.tenant_claim", "registered"),
        ({"scope": 'external "quoted"'}, "token_exchange.scope", "scope token"),
        ({"client_secret_env": "MISSING"}, "token_exchange.client_secret_env", "unset or empty"),
    ],
)
def test_refusals(change: dict[str, Any], field: str, words: str) -> None:
    """Each bad value is a ConfigError naming the field and saying what is wrong."""
    with pytest.raises(ConfigError) as info:
        parse(BASE | change)

    assert (info.value.field, words in info.value.message) == (field, True), info.value.message


def test_missing_client_id() -> None:
    """client_id is required."""
    with pytest.raises(ConfigError) as info:
        parse({"client_secret_env": "ZAPIER_SECRET"})

    assert info.value.field == "token_exchange.client_id"


@pytest.mark.parametrize("secrets", [{}, {"client_secret_env": "ZAPIER_SECRET", "client_secret_file": "/x"}])
def test_exactly_one_secret_source(secrets: dict[str, str]) -> None:
    """Neither or both of client_secret_file / client_secret_env is refused."""
    with pytest.raises(ConfigError) as info:
        parse({"client_id": "cid", **secrets})

    assert "exactly one" in info.value.message


@pytest.mark.parametrize("content", [None, b"", b"\n", b"\xff\xfe"])
def test_unreadable_secret_file(tmp_path: Path, content: bytes | None) -> None:
    """A missing, empty or non-UTF-8 secret file is refused without quoting its content."""
    path = tmp_path / "secret"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(ConfigError) as info:
        parse({"client_id": "cid", "client_secret_file": str(path)})

    assert info.value.field == "token_exchange.client_secret_file"
    assert str(path) in info.value.message


def test_not_a_mapping() -> None:
    """token_exchange must be a mapping."""
    with pytest.raises(ConfigError) as info:
        parse_token_exchange(["client_id"], KEYSETS)  # type: ignore[arg-type]

    assert info.value.field == "token_exchange"
