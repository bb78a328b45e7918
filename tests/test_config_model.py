"""The configuration model's newer rules: duplicate YAML keys, did-you-mean, API-key digest lists, listen
timeouts, log.public, the Zapier gateway settings, offline reading, and a client secret re-read when its
file changes (against the fake partner)."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysvc.client import TokenExchanger
from keysvc.config import (
    DURATION_PATTERN,
    ApiRateLimit,
    ListenTimeouts,
    ReadOptions,
    SecretFile,
    parse_settings,
    parse_token_exchange,
    parse_yaml,
)
from keysvc.errors import ConfigError
from tests.exchange_support import World, running_world
from tests.helpers import ROOT, base_config, sha256_hex

KEYSETS = {"zapier": "ES256"}
EXCHANGE = {"client_id": "cid", "client_secret_env": "ZAPIER_SECRET"}
ENV = {"ZAPIER_SECRET": "from-env"}


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Any]:
    """A valid config dict (file backend in a tmp dir)."""
    return base_config(tmp_path / "keys")


def refusal(raw: dict[str, Any], options: ReadOptions | None = None) -> ConfigError:
    """The ConfigError parse_settings raises for `raw`."""
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, options)
    return info.value


# --- the YAML document ------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_keyset_defined_twice_is_refused_with_its_line(raw: dict[str, Any]) -> None:
    """PyYAML would keep the second definition silently; keysvc refuses the file and names both lines."""
    text = yaml.safe_dump(raw, sort_keys=False)
    zapier = yaml.safe_dump({"zapier": raw["keysets"]["zapier"]}, sort_keys=False)
    indented = "".join("  " + line + "\n" for line in zapier.splitlines())
    doubled = text.replace("keysets:\n", "keysets:\n" + indented, 1)
    lines = doubled.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line == "  zapier:")
    second = next(i for i, line in enumerate(lines, 1) if line == "  zapier:" and i != first)

    with pytest.raises(ConfigError) as info:
        parse_yaml(doubled)

    assert info.value.field == "config"
    assert f"'zapier' is defined twice in one mapping (first at line {first})" == info.value.message
    assert second == info.value.problems[0].line


@pytest.mark.unit
def test_a_scalar_key_given_twice_is_refused() -> None:
    """The rule holds in every mapping, not only named sections."""
    with pytest.raises(ConfigError, match="line 3: config: 'public' is defined twice"):
        parse_yaml("listen:\n  public: 0.0.0.0:1\n  public: 0.0.0.0:2\n")


@pytest.mark.unit
def test_unknown_key_suggests_the_close_match(raw: dict[str, Any]) -> None:
    """A misspelt key is refused with the known key it is closest to."""
    raw["keysets"]["zapier"]["rotaton_period"] = "30d"

    error = refusal(raw)

    assert (error.field, error.message) == (
        "keysets.zapier.rotaton_period",
        "unknown setting 'rotaton_period' (did you mean 'rotation_period'?)",
    )


@pytest.mark.unit
def test_unknown_key_far_from_any_gets_no_suggestion(raw: dict[str, Any]) -> None:
    """No suggestion when nothing is close."""
    raw["colour"] = "blue"

    assert refusal(raw).message == "unknown setting 'colour'"


@pytest.mark.unit
def test_duration_pattern_is_the_documented_one() -> None:
    """The one constant the helm chart's schema copies."""
    assert DURATION_PATTERN == r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"


# --- clients ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_api_key_digests_accept_one_or_a_list(raw: dict[str, Any]) -> None:
    """One digest becomes a tuple of one; a list (old and new key) keeps its order."""
    old, new = sha256_hex("old"), sha256_hex("new")
    raw["clients"]["signer"]["api_key_sha256"] = [old, new]

    clients = parse_settings(raw).clients

    assert (old, new) == clients["signer"].api_key_digests
    assert (raw["clients"]["admin"]["api_key_sha256"],) == clients["admin"].api_key_digests


@pytest.mark.parametrize(
    ("value", "words"),
    [([], "at least one"), (["ab" * 32, "ab" * 32], "twice"), (["ab" * 32, "zz"], "64 lowercase hex"), (5, "hex")],
)
@pytest.mark.unit
def test_bad_api_key_digest_lists_are_refused(raw: dict[str, Any], value: object, words: str) -> None:
    """An empty list, a repeated digest or a non-digest in the list names the field."""
    raw["clients"]["signer"]["api_key_sha256"] = value

    error = refusal(raw)

    assert (error.field, words in error.message) == ("clients.signer.api_key_sha256", True)


@pytest.mark.unit
def test_a_digest_in_two_clients_lists_is_refused(raw: dict[str, Any]) -> None:
    """The duplicate check looks at every digest of every client."""
    shared = sha256_hex("shared")
    raw["clients"]["signer"]["api_key_sha256"] = [sha256_hex("a"), shared]
    raw["clients"]["admin"]["api_key_sha256"] = [shared]

    error = refusal(raw)

    assert (error.field, error.message) == ("clients.admin.api_key_sha256", "same API key as signer")


@pytest.mark.unit
def test_zapier_client_needs_a_token_exchange_section(raw: dict[str, Any]) -> None:
    """`zapier: true` without `token_exchange` is refused, naming the client's field."""
    raw["clients"]["signer"]["zapier"] = True

    assert refusal(raw).field == "clients.signer.zapier"


@pytest.mark.unit
def test_zapier_client_with_token_exchange(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """With a token_exchange section the flag is read; other clients default to False."""
    monkeypatch.setenv("ZAPIER_SECRET", "x")
    raw["clients"]["signer"]["zapier"] = True
    raw["token_exchange"] = dict(EXCHANGE)

    clients = parse_settings(raw).clients

    assert (clients["signer"].zapier, clients["admin"].zapier) == (True, False)


# --- listen and log ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_listen_timeouts_and_log_public(raw: dict[str, Any]) -> None:
    """Defaults 10s / 30s / 5s and `errors`; each can be set."""
    defaults = parse_settings(copy.deepcopy(raw))
    raw["listen"] |= {"head_timeout": "2s", "body_timeout": "1m", "keepalive_timeout": "1500ms"}
    raw["log"] = {"public": "all"}

    settings = parse_settings(raw)

    assert (ListenTimeouts(10.0, 30.0, 5.0), "errors") == (defaults.listen_timeouts, defaults.log_public)
    assert (ListenTimeouts(2.0, 60.0, 1.5), "all") == (settings.listen_timeouts, settings.log_public)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("listen", "head_timeout", 0), ("listen", "body_timeout", "0s"), ("listen", "keepalive_timeout", "x"),
     ("log", "public", "none")],
)
@pytest.mark.unit
def test_bad_listen_timeouts_and_log_public(raw: dict[str, Any], section: str, key: str, value: object) -> None:
    """A timeout must be a duration > 0; log.public is errors or all."""
    raw.setdefault(section, {})[key] = value

    assert f"{section}.{key}" == refusal(raw).field


# --- token_exchange: the Zapier embed gateway --------------------------------------------------------


@pytest.mark.unit
def test_gateway_defaults() -> None:
    """api_url, the wider scope, no redirect URIs, 60/min burst 10, 60s run wait."""
    s = parse_token_exchange(EXCHANGE, KEYSETS, environ=ENV)

    assert (
        s.api_url,
        s.scope,
    ) == ("https://api.zapier.com", "external connection:read connection:write zap zap:write action:run")
    assert ((), ApiRateLimit(60.0, 10), 60.0) == (s.redirect_uris, s.api_rate_limit, s.run_wait_max)


@pytest.mark.unit
def test_gateway_settings_are_read() -> None:
    """Every gateway key is read in its documented form."""
    s = parse_token_exchange(
        EXCHANGE
        | {
            "api_url": "http://127.0.0.1:9000",
            "redirect_uris": ["https://app.example/cb", "http://localhost:3000/cb?x=1"],
            "api_rate_limit": {"per_minute": 30, "burst": 5},
            "run_wait_max": "2m",
        },
        KEYSETS,
        environ=ENV,
    )

    assert (
        s.api_url,
        s.redirect_uris,
    ) == ("http://127.0.0.1:9000", ("https://app.example/cb", "http://localhost:3000/cb?x=1"))
    assert (ApiRateLimit(30.0, 5), 120.0) == (s.api_rate_limit, s.run_wait_max)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"api_url": "http://api.zapier.com"}, "token_exchange.api_url"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "token_exchange.redirect_uris"),
        ({"redirect_uris": ["/relative/cb"]}, "token_exchange.redirect_uris"),
        ({"redirect_uris": ["http://app.example/cb"]}, "token_exchange.redirect_uris"),
        ({"redirect_uris": "https://app.example/cb"}, "token_exchange.redirect_uris"),
        ({"api_rate_limit": {"per_minute": 0}}, "token_exchange.api_rate_limit.per_minute"),
        ({"api_rate_limit": {"burst": 0}}, "token_exchange.api_rate_limit.burst"),
        ({"api_rate_limit": {"brust": 3}}, "token_exchange.api_rate_limit.brust"),
        ({"run_wait_max": 0}, "token_exchange.run_wait_max"),
        ({"run_wait_max": "11m"}, "token_exchange.run_wait_max"),
    ],
)
@pytest.mark.unit
def test_gateway_refusals(change: dict[str, Any], field: str) -> None:
    """Each bad gateway value names its field."""
    with pytest.raises(ConfigError) as info:
        parse_token_exchange(EXCHANGE | change, KEYSETS, environ=ENV)

    assert field == info.value.field


# --- offline ----------------------------------------------------------------------------------------


@pytest.mark.unit
def test_offline_accepts_configured_but_absent_secrets_and_tls(raw: dict[str, Any]) -> None:
    """Offline, secret files, secret env vars and TLS files need only be named; online they must be read."""
    raw["backend"]["passphrase_file"] = "/run/secrets/keysvc-passphrase"
    raw["listen"]["tls"] = {"cert_file": "/run/tls/tls.crt", "key_file": "/run/tls/tls.key"}
    raw["token_exchange"] = {"client_id": "cid", "client_secret_env": "KEYSVC_TEST_SURELY_UNSET_VAR"}

    settings = parse_settings(copy.deepcopy(raw), ReadOptions(offline=True, environ={}))

    assert settings.tls is not None and settings.token_exchange is not None
    assert refusal(raw).field == "listen.tls.cert_file"  # online: the first unreadable file


@pytest.mark.unit
def test_offline_still_refuses_a_secret_not_configured(raw: dict[str, Any]) -> None:
    """Offline checks that the secret is configured: no client_secret_* at all is still refused."""
    raw["token_exchange"] = {"client_id": "cid"}

    assert refusal(raw, ReadOptions(offline=True)).field == "token_exchange.client_secret_file"


# --- a client secret that changes on disk ----------------------------------------------------------


@pytest.mark.unit
def test_secret_file_is_reread_when_it_changes_and_keeps_the_last_good_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replaced file is read again; an emptied or removed one keeps the last good value and warns once."""
    path = tmp_path / "secret"
    path.write_text("first\n")
    secret = SecretFile(path, "token_exchange.client_secret_file")
    assert secret.reveal() == "first"

    replacement = tmp_path / "secret.new"
    replacement.write_text("second\n")
    os.replace(replacement, path)  # how a Kubernetes Secret volume swaps its files
    assert secret.reveal() == "second"

    path.write_text("")
    path.unlink()
    with caplog.at_level("WARNING", logger="keysvc"):
        assert (secret.reveal(), secret.reveal()) == ("second", "second")
    warnings = [r for r in caplog.records if r.getMessage() == "secret file unusable: keeping its last good value"]
    assert len(warnings) == 1
    assert "second" not in caplog.text and "first" not in caplog.text

    path.write_text("third")
    assert secret.reveal() == "third"


@pytest.mark.unit
def test_secret_file_never_readable_is_a_config_error(tmp_path: Path) -> None:
    """Without a last good value there is nothing to fall back to."""
    with pytest.raises(ConfigError) as info:
        SecretFile(tmp_path / "absent", "f").reveal()
    assert info.value.field == "f"


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    """The fake partner (and a JWKS it trusts) on 127.0.0.1."""
    with running_world(("ES256",)) as w:
        yield w


@pytest.mark.system
def test_exchange_uses_the_rotated_client_secret_without_a_restart(world: World, tmp_path: Path) -> None:
    """The partner rotates the client secret and the Secret file is updated: the next exchange of the
    same TokenExchanger authenticates with the new secret."""
    path = tmp_path / "client-secret"
    path.write_text(world.partner.client_secret)
    raw = {"client_id": world.partner.client_id, "client_secret_file": str(path), "token_url": world.token_url,
           "scope": "external"}
    settings = parse_token_exchange(raw, KEYSETS)
    old = world.partner.client_secret

    async def exchange_twice() -> tuple[str, str]:
        async with TokenExchanger(settings, world.signers["ES256"]) as exchanger:
            first = await exchanger.access_token("u-1", "t-1")
            world.partner.client_secret = "rotated-" + old
            replacement = tmp_path / "client-secret.new"
            replacement.write_text(world.partner.client_secret)
            os.replace(replacement, path)
            second = await exchanger.access_token("u-2", "t-1")
            return first.access_token, second.access_token

    try:
        first, second = asyncio.run(exchange_twice())
    finally:
        world.partner.client_secret = old

    assert first.startswith("at-") and second.startswith("at-")
    assert len(world.partner.calls) == 2


# --- import weight ----------------------------------------------------------------------------------


@pytest.mark.system
def test_importing_the_configuration_does_not_import_boto3() -> None:
    """Reading any configuration (KMS included) needs no AWS SDK."""
    code = (
        "import sys; from keysvc.config import parse_settings; import keysvc.backends.registry; "
        "print('boto3' in sys.modules, 'keysvc.backends.kms' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False"
