"""keysvc.config: every refusal names its field; a valid config becomes the right Settings; secrets hide."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from keysvc.config import parse_duration, parse_settings, parse_yaml
from keysvc.config.backends import FileSettings
from keysvc.errors import ConfigError
from tests.helpers import base_config, run_cli, sha256_hex, write_config

Edit = Callable[[dict[str, Any]], None]
DAY = 86400.0

KMS_BACKEND = {"type": "kms", "region": "eu-west-1", "alias_prefix": "alias/keysvc/test"}


@pytest.fixture
def raw(tmp_path: Path) -> dict[str, Any]:
    """A valid config dict (file backend in a tmp dir, one ES256 keyset `zapier`, three clients)."""
    return base_config(tmp_path / "keys")


def _set(path: str, value: object) -> Edit:
    """An edit that sets a dotted path (creating mappings on the way)."""

    def edit(cfg: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return edit


def _delete(path: str) -> Edit:
    """An edit that removes a dotted path."""

    def edit(cfg: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def _all(*edits: Edit) -> Edit:
    def edit(cfg: dict[str, Any]) -> None:
        for e in edits:
            e(cfg)

    return edit


def _second_default_keyset(cfg: dict[str, Any]) -> None:
    cfg["keysets"]["other"] = {**cfg["keysets"]["zapier"], "issuer": "https://other.example", "default": True}


def _duplicate_hash(cfg: dict[str, Any]) -> None:
    cfg["clients"]["admin"]["api_key_sha256"] = cfg["clients"]["signer"]["api_key_sha256"]


def _refuse(raw: dict[str, Any], edit: Edit) -> ConfigError:
    cfg = copy.deepcopy(raw)
    edit(cfg)
    with pytest.raises(ConfigError) as info:
        parse_settings(cfg)
    return info.value


SIGNER_HASH = "clients.signer.api_key_sha256"

# (id, edit, field named by the error)
REFUSALS: list[tuple[str, Edit, str]] = [
    ("unknown top-level key", _set("colour", "blue"), "colour"),
    ("unknown key in backend", _set("backend.pth", "/x"), "backend.pth"),
    ("unknown key in a keyset", _set("keysets.zapier.rotation", "30d"), "keysets.zapier.rotation"),
    ("unknown key in a client", _set("clients.signer.audience", "x"), "clients.signer.audience"),
    ("unknown key in jwks", _set("jwks.max_ages", "5m"), "jwks.max_ages"),
    ("bad duration unit", _set("keysets.zapier.max_token_ttl", "5 minutes"), "keysets.zapier.max_token_ttl"),
    ("negative duration", _set("clock_skew", -1), "clock_skew"),
    ("boolean as duration", _set("jwks.max_age", True), "jwks.max_age"),
    ("unknown alg", _set("keysets.zapier.alg", "HS256"), "keysets.zapier.alg"),
    ("EdDSA on kms", _all(_set("backend", dict(KMS_BACKEND)), _set("keysets.zapier.alg", "EdDSA")),
     "keysets.zapier.alg"),
    ("missing issuer", _delete("keysets.zapier.issuer"), "keysets.zapier.issuer"),
    ("empty issuer", _set("keysets.zapier.issuer", " "), "keysets.zapier.issuer"),
    ("empty audiences", _set("clients.signer.audiences", []), "clients.signer.audiences"),
    ("missing audiences", _delete("clients.signer.audiences"), "clients.signer.audiences"),
    ("empty keysets of a client", _set("clients.signer.keysets", []), "clients.signer.keysets"),
    ("unknown keyset in a client", _set("clients.signer.keysets", ["zapier", "x"]), "clients.signer.keysets"),
    ("admin of a keyset not in keysets", _set("clients.admin.admin", ["zapier", "x"]), "clients.admin.admin"),
    ("admin an empty list", _set("clients.admin.admin", []), "clients.admin.admin"),
    ("admin a string", _set("clients.admin.admin", "zapier"), "clients.admin.admin"),
    ("duplicate api key hash", _duplicate_hash, "clients.admin.api_key_sha256"),
    ("api key hash not hex", _set(SIGNER_HASH, "z" * 64), SIGNER_HASH),
    ("api key hash too short", _set(SIGNER_HASH, "ab" * 16), SIGNER_HASH),
    ("api key hash uppercase", _set(SIGNER_HASH, "AB" * 32), SIGNER_HASH),
    ("two default keysets", _second_default_keyset, "keysets.other.default"),
    ("listen address without port", _set("listen.public", "0.0.0.0"), "listen.public"),
    ("listen port out of range", _set("listen.internal", "127.0.0.1:70000"), "listen.internal"),
    ("listen port not a number", _set("listen.internal", "127.0.0.1:http"), "listen.internal"),
    ("no keysets", _set("keysets", {}), "keysets"),
    ("unknown backend type", _set("backend.type", "vault"), "backend.type"),
    ("bad keyset name", _set("keysets", {"Zapier!": {"issuer": "x", "alg": "ES256"}}), "keysets.Zapier!"),
    ("kms deletion window too short", _set("backend", {**KMS_BACKEND, "deletion_window": "6d"}),
     "backend.deletion_window"),
    ("kms deletion window too long", _set("backend", {**KMS_BACKEND, "deletion_window": "31d"}),
     "backend.deletion_window"),
    ("kms deletion window not whole days", _set("backend", {**KMS_BACKEND, "deletion_window": "7.5d"}),
     "backend.deletion_window"),
    ("kms alias prefix without alias/", _set("backend", {**KMS_BACKEND, "alias_prefix": "keysvc/prod"}),
     "backend.alias_prefix"),
    ("kms alias prefix reserved by AWS", _set("backend", {**KMS_BACKEND, "alias_prefix": "alias/aws/keysvc"}),
     "backend.alias_prefix"),
    ("kms alias prefix bad characters", _set("backend", {**KMS_BACKEND, "alias_prefix": "alias/key svc"}),
     "backend.alias_prefix"),
    ("passphrase_env unset", _set("backend.passphrase_env", "KEYSVC_TEST_SURELY_UNSET_VAR"),
     "backend.passphrase_env"),
    ("passphrase_file unreadable", _set("backend.passphrase_file", "/nonexistent/keysvc/passphrase"),
     "backend.passphrase_file"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("edit", "field"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refusal_names_the_field(raw: dict[str, Any], edit: Edit, field: str) -> None:
    """Each class of invalid configuration is refused with a ConfigError whose `field` is the dotted path
    of the offending setting, and whose message starts with that path."""
    error = _refuse(raw, edit)
    assert field == error.field
    assert str(error).startswith(f"{field}: ")


@pytest.mark.unit
def test_unknown_keys_outside_the_schema_are_refused_even_when_valid_otherwise(raw: dict[str, Any]) -> None:
    """A typo of a known key (`publish_ahed`) is an error, not silently ignored with its default."""
    error = _refuse(raw, _set("keysets.zapier.publish_ahed", "3d"))
    assert error.field == "keysets.zapier.publish_ahed"
    assert "unknown" in error.message


@pytest.mark.unit
def test_passphrase_file_empty_is_refused(raw: dict[str, Any], tmp_path: Path) -> None:
    """An empty (or white-space only) passphrase file would mean 'no encryption': refused, naming it."""
    empty = tmp_path / "passphrase"
    empty.write_text("  \n")
    error = _refuse(raw, _set("backend.passphrase_file", str(empty)))
    assert error.field == "backend.passphrase_file"
    assert "empty" in error.message


@pytest.mark.unit
def test_passphrase_file_and_env_together_are_refused(raw: dict[str, Any], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Giving both passphrase_file and passphrase_env is ambiguous: refused, naming passphrase_file."""
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    monkeypatch.setenv("KEYSVC_TEST_PASSPHRASE", "battery staple")
    error = _refuse(raw, _all(_set("backend.passphrase_file", str(secret)),
                              _set("backend.passphrase_env", "KEYSVC_TEST_PASSPHRASE")))
    assert error.field == "backend.passphrase_file"
    assert "passphrase_env" in error.message


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("listen: [unclosed\n", "config"),
        ("keysets: {a: 1\n", "config"),
        ("- a\n- b\n", "config"),
        ("just a string\n", "config"),
        ("[" * 100000, "config"),
    ],
    ids=["invalid YAML", "unterminated flow mapping", "top level is a list", "top level is a string",
         "deeply nested YAML"],
)
def test_yaml_that_is_not_a_mapping_is_refused(text: str, field: str) -> None:
    """Invalid YAML and a top level that is not a mapping are ConfigErrors named `config` (never a
    YAMLError, TypeError or RecursionError escaping)."""
    with pytest.raises(ConfigError) as info:
        parse_yaml(text)
    assert field == info.value.field


# --------------------------------------------------------------------------------------- invariants
# Defaults of base_config: M=5m W=1m C=10m I=30s S=60s; keyset P=30d A=2d R=1d T=5m.
# Bound on publish_ahead: max(M + W, C) + I + S = max(360, 600) + 30 + 60 = 690 s.
# Bound on retain_after: T + I + S = 300 + 30 + 60 = 390 s.


@pytest.mark.unit
def test_publish_ahead_too_short_names_the_parameter_and_the_bound(raw: dict[str, Any]) -> None:
    """publish_ahead below max(M+W, C)+I+S is refused; the message names publish_ahead and the bound."""
    error = _refuse(raw, _set("keysets.zapier.publish_ahead", "689s"))
    assert error.field == "keysets.zapier.publish_ahead"
    assert "publish_ahead" in str(error)
    assert "= 690s" in error.message


@pytest.mark.unit
def test_publish_ahead_bound_follows_the_larger_of_max_age_and_verifier_cache(raw: dict[str, Any]) -> None:
    """When max_age + stale_while_revalidate exceeds verifier_cache, the bound uses them instead:
    max(20m + 5m, 10m) + 30s + 60s = 1590 s."""
    error = _refuse(raw, _all(_set("jwks.max_age", "20m"), _set("jwks.stale_while_revalidate", "5m"),
                              _set("keysets.zapier.publish_ahead", "1589s")))
    assert error.field == "keysets.zapier.publish_ahead"
    assert "= 1590s" in error.message


@pytest.mark.unit
def test_publish_ahead_exactly_at_the_bound_is_accepted(raw: dict[str, Any]) -> None:
    """The invariant is >=, so publish_ahead equal to the bound is valid (and rotation_period > it)."""
    cfg = copy.deepcopy(raw)
    cfg["keysets"]["zapier"]["publish_ahead"] = "690s"
    assert parse_settings(cfg).keysets["zapier"].publish_ahead == 690.0


@pytest.mark.unit
def test_retain_after_too_short_names_the_parameter_and_the_bound(raw: dict[str, Any]) -> None:
    """retain_after below max_token_ttl + refresh_interval + clock_skew is refused with the bound."""
    error = _refuse(raw, _set("keysets.zapier.retain_after", "389s"))
    assert error.field == "keysets.zapier.retain_after"
    assert "= 390s" in error.message


@pytest.mark.unit
def test_rotation_period_not_longer_than_publish_ahead_is_refused(raw: dict[str, Any]) -> None:
    """rotation_period <= publish_ahead would keep no key pending long enough: refused (equal too)."""
    error = _refuse(raw, _set("keysets.zapier.rotation_period", "2d"))
    assert error.field == "keysets.zapier.rotation_period"
    assert "publish_ahead" in error.message


@pytest.mark.unit
@pytest.mark.parametrize("ttl", ["500ms", 0])
def test_max_token_ttl_under_one_second_is_refused(raw: dict[str, Any], ttl: object) -> None:
    """Tokens carry whole seconds: a max_token_ttl under 1s would cap every ttl to 0 (expired on issue)."""
    error = _refuse(raw, _set("keysets.zapier.max_token_ttl", ttl))
    assert error.field == "keysets.zapier.max_token_ttl"


@pytest.mark.unit
def test_max_token_ttl_longer_than_rotation_period_is_refused(raw: dict[str, Any]) -> None:
    """max_token_ttl > rotation_period is refused, naming max_token_ttl (retain_after is made long
    enough so that this is the only broken invariant)."""
    error = _refuse(raw, _all(_set("keysets.zapier.rotation_period", "3d"),
                              _set("keysets.zapier.max_token_ttl", "4d"),
                              _set("keysets.zapier.retain_after", "5d")))
    assert error.field == "keysets.zapier.max_token_ttl"
    assert "rotation_period" in error.message


# ---------------------------------------------------------------------------------------- valid input


@pytest.mark.unit
@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90.0), ("15m", 900.0), ("12h", 43200.0), ("30d", 2592000.0), ("500ms", 0.5), (45, 45.0),
     (0, 0.0), ("1.5h", 5400.0), (2.5, 2.5), ("1h30m", 5400.0), ("1500ms", 1.5), ("2.5d", 216000.0),
     ("1d12h", 129600.0), ("1m30s500ms", 90.5), ("0s", 0.0)],
)
def test_durations_parse(value: object, seconds: float) -> None:
    """Durations are one or more `N` + ms/s/m/h/d (summed), or plain numbers of seconds."""
    assert seconds == parse_duration(value, "x")


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    ["", "5", "5 min", "5M", "-5s", "1w", "s", None, True, [5], "nan", "4000d", " 2m ", "1h 30m", "1h30", ".5s",
     "1.s", "5s5", -1, float("nan"), float("inf"), "h1"],
)
def test_bad_durations_are_refused_with_the_name(value: object) -> None:
    """Anything else (no unit, unknown unit, negative, bool, None, over 10 years) is a ConfigError naming
    the field it was given for."""
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "keysets.k.rotation_period")
    assert info.value.field == "keysets.k.rotation_period"


@pytest.mark.unit
def test_full_config_round_trips_to_settings(tmp_path: Path) -> None:
    """Every section of a full valid config lands in Settings with the right values and types."""
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse battery staple\n")
    text = f"""
listen:
  public: "0.0.0.0:8080"
  internal: "127.0.0.1:8081"
backend:
  type: file
  path: {tmp_path / "keys"}
  passphrase_file: {secret}
  refresh_interval: 30s
clock_skew: 60s
jwks:
  max_age: 5m
  stale_while_revalidate: 1m
  stale_if_error: 1d
  verifier_cache: 10m
keysets:
  zapier:
    default: true
    issuer: "https://partner.example.com"
    alg: RS256
    rotation_period: 30d
    publish_ahead: 2d
    retain_after: 1d
    max_token_ttl: 5m
  internal:
    issuer: "https://internal.example.com"
    alg: EdDSA
clients:
  billing-api:
    api_key_sha256: "{sha256_hex('billing')}"
    keysets: [zapier]
    audiences: ["connect.zapier.com"]
    max_ttl: 2m
    admin: false
    rate_limit: {{rate: 5, burst: 10}}
  ops:
    api_key_sha256: "{sha256_hex('ops')}"
    keysets: [zapier, internal]
    audiences: ["a", "b"]
    admin: true
"""
    settings = parse_yaml(text)
    assert (settings.listen_public.host, settings.listen_public.port) == ("0.0.0.0", 8080)
    assert str(settings.listen_internal) == "127.0.0.1:8081"
    backend = settings.backend
    assert (backend.type, backend.path, backend.refresh_interval) == ("file", tmp_path / "keys", 30.0)
    assert isinstance(backend, FileSettings) and backend.passphrase is not None
    assert backend.passphrase.reveal() == "correct horse battery staple"
    assert settings.clock_skew == 60.0
    jwks = settings.jwks
    expected_jwks = (300.0, 60.0, 86400.0, 600.0)
    assert expected_jwks == (jwks.max_age, jwks.stale_while_revalidate, jwks.stale_if_error,
                             jwks.verifier_cache)
    expected_header = "public, max-age=300, stale-while-revalidate=60, stale-if-error=86400"
    assert expected_header == jwks.cache_control()
    zapier = settings.keysets["zapier"]
    expected_zapier = ("zapier", "https://partner.example.com", "RS256", 30 * DAY, 2 * DAY, DAY, 300.0,
                       True)
    assert expected_zapier == (zapier.name, zapier.issuer, zapier.alg, zapier.rotation_period,
                               zapier.publish_ahead, zapier.retain_after, zapier.max_token_ttl,
                               zapier.default)
    internal = settings.keysets["internal"]  # timings left to their defaults
    expected_internal = ("EdDSA", 30 * DAY, 2 * DAY, DAY, 300.0, False)
    assert expected_internal == (internal.alg, internal.rotation_period, internal.publish_ahead,
                                 internal.retain_after, internal.max_token_ttl, internal.default)
    assert settings.default_keyset == "zapier"
    billing = settings.clients["billing-api"]
    expected_billing = (sha256_hex("billing"), ("zapier",), ("connect.zapier.com",), 120.0, ())
    assert expected_billing == (billing.api_key_digests[0], billing.keysets, billing.audiences, billing.max_ttl,
                                billing.admin_keysets)
    assert billing.rate_limit is not None
    assert (billing.rate_limit.rate, billing.rate_limit.burst) == (5.0, 10)
    ops = settings.clients["ops"]
    expected_ops = (("zapier", "internal"), ("a", "b"), 300.0, ("zapier", "internal"), None)  # admin: true
    assert expected_ops == (ops.keysets, ops.audiences, ops.max_ttl, ops.admin_keysets, ops.rate_limit)


@pytest.mark.unit
def test_admin_is_scoped_to_the_clients_keysets(raw: dict[str, Any]) -> None:
    """`admin: true` makes a client admin of the keysets in its `keysets`, no others; `admin: [k]` of
    those listed (each must be one of its keysets); `admin: false` (or none) of nothing."""
    cfg = copy.deepcopy(raw)
    cfg["keysets"]["second"] = {**cfg["keysets"]["zapier"], "issuer": "https://second.example", "default": False}
    cfg["clients"]["admin"]["keysets"] = ["zapier"]
    cfg["clients"]["signer"].update(keysets=["zapier", "second"], admin=["second"])
    clients = parse_settings(cfg).clients
    expected = {"admin": ("zapier",), "signer": ("second",), "other": ()}
    assert expected == {name: c.admin_keysets for name, c in clients.items()}


@pytest.mark.unit
def test_passphrase_from_env(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """passphrase_env reads the passphrase from the named environment variable."""
    monkeypatch.setenv("KEYSVC_TEST_PASSPHRASE", "from the environment")
    cfg = copy.deepcopy(raw)
    cfg["backend"]["passphrase_env"] = "KEYSVC_TEST_PASSPHRASE"
    assert parse_settings(cfg).backend.passphrase.reveal() == "from the environment"  # type: ignore[union-attr]


@pytest.mark.unit
def test_kms_backend_settings(raw: dict[str, Any]) -> None:
    """A kms backend parses region, alias prefix (trailing / dropped) and the deletion window in days."""
    cfg = copy.deepcopy(raw)
    cfg["backend"] = {**KMS_BACKEND, "alias_prefix": "alias/keysvc/prod/", "deletion_window": "7d",
                      "endpoint_url": "http://127.0.0.1:5000"}
    backend = parse_settings(cfg).backend
    expected = ("kms", "eu-west-1", "alias/keysvc/prod", 7, "http://127.0.0.1:5000")
    assert expected == (backend.type, backend.region, backend.alias_prefix, backend.deletion_window_days,
                        backend.endpoint_url)


@pytest.mark.unit
def test_repr_of_settings_hides_every_secret(raw: dict[str, Any], tmp_path: Path) -> None:
    """Neither the passphrase nor any client's API-key hash appears in repr/str of Settings (they end up
    in logs and tracebacks); the Secret itself still reveals its value where it is used."""
    passphrase = "correct horse battery staple 7f3a"
    secret = tmp_path / "passphrase"
    secret.write_text(passphrase)
    cfg = copy.deepcopy(raw)
    cfg["backend"]["passphrase_file"] = str(secret)
    settings = parse_settings(cfg)
    text = repr(settings) + str(settings) + repr(settings.backend) + repr(dict(settings.clients))
    assert passphrase not in text
    for client in settings.clients.values():
        assert all(digest not in text for digest in client.api_key_digests)
    assert f"SecretFile({str(secret)!r})" in text
    assert passphrase == settings.backend.passphrase.reveal()  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------- black box


@pytest.mark.system
def test_check_config_cli_refuses_a_bad_config_with_status_78(raw: dict[str, Any], tmp_path: Path) -> None:
    """`keysvc check-config` exits 78 (EX_CONFIG) and names the field on stderr for an invalid config."""
    raw["keysets"]["zapier"]["alg"] = "HS256"
    path = write_config(tmp_path / "bad.yaml", raw)
    result = run_cli("check-config", config=path)
    assert result.returncode == 78
    assert "keysets.zapier.alg" in result.stderr


@pytest.mark.system
def test_check_config_cli_refuses_broken_invariant_with_status_78(raw: dict[str, Any], tmp_path: Path) -> None:
    """A timing that breaks an invariant also exits 78 with the parameter and the bound on stderr."""
    raw["keysets"]["zapier"]["publish_ahead"] = "60s"
    path = write_config(tmp_path / "bad.yaml", raw)
    result = run_cli("check-config", config=path)
    assert result.returncode == 78
    assert "keysets.zapier.publish_ahead" in result.stderr
    assert "690s" in result.stderr


@pytest.mark.system
def test_check_config_cli_refuses_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    """Unparseable YAML and a missing file exit 78 too, never with a traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    for path in (bad, tmp_path / "missing.yaml"):
        result = run_cli("check-config", config=path)
        assert result.returncode == 78
        assert "config" in result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.system
def test_check_config_cli_accepts_a_good_config(raw: dict[str, Any], tmp_path: Path) -> None:
    """A valid config exits 0 and says ok on stdout; nothing on stderr names an error."""
    path = write_config(tmp_path / "good.yaml", raw)
    result = run_cli("check-config", config=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")
    assert yaml.safe_load(path.read_text()) == raw
