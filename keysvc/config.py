"""YAML -> frozen, validated Settings. Every refusal is a ConfigError naming the field (dotted path).

Read once at start-up; nothing here touches the network. Secrets (passphrase, client secret) are read
from files or environment variables and wrapped in `Secret`, whose repr hides the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from keysvc.algorithms import ALGORITHMS
from keysvc.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Secret:
    """A secret value whose repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Address:
    """A listener's host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenTimeouts:
    """How long a client may take, per connection of either listener (seconds): to send a request head
    (from the connection's start or the head's first byte), to send a body once the head is in, and to
    send nothing between requests (keep-alive)."""

    head: float = 10.0
    body: float = 30.0
    keepalive: float = 5.0


@dataclass(frozen=True)
class BackendSettings:
    """Where keys live. Fields not used by the chosen `type` keep their defaults."""

    type: str
    refresh_interval: float
    path: Path | None = None
    passphrase: Secret | None = None
    region: str | None = None
    endpoint_url: str | None = None
    alias_prefix: str | None = None
    deletion_window_days: int = 30


@dataclass(frozen=True)
class JwksSettings:
    """Cache headers of the JWKS, and the longest cache any verifier keeps whatever the headers say."""

    max_age: float
    stale_while_revalidate: float
    stale_if_error: float
    verifier_cache: float

    def cache_control(self) -> str:
        """The Cache-Control header value served with every JWKS."""
        return (
            f"public, max-age={int(self.max_age)}, stale-while-revalidate={int(self.stale_while_revalidate)}, "
            f"stale-if-error={int(self.stale_if_error)}"
        )


@dataclass(frozen=True)
class KeysetSettings:
    """One JWKS: algorithm, issuer and the timings of its key lifecycle (seconds)."""

    name: str
    issuer: str
    alg: str
    rotation_period: float
    publish_ahead: float
    retain_after: float
    max_token_ttl: float
    default: bool = False


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class ClientSettings:
    """An internal caller, identified by the SHA-256 of its API key."""

    name: str
    api_key_sha256: str = field(repr=False)
    keysets: tuple[str, ...]
    audiences: tuple[str, ...]
    max_ttl: float
    admin: bool = False
    token_exchange: bool = False
    exchange_scopes: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    cert_subjects: tuple[str, ...] = ()  # client-certificate CN or SAN values that identify this client


@dataclass(frozen=True)
class TlsSettings:
    """TLS on the internal listener; with `client_ca_file`, client certificates verified against it (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    require_client_cert: bool = False


@dataclass(frozen=True)
class CanarySettings:
    """Sign a token and verify it against the JWKS as the partner reaches it."""

    jwks_url: str
    interval: float
    timeout: float


@dataclass(frozen=True)
class MirrorSettings:
    """Copy each JWKS to an S3 object so a CDN can serve it even when every replica is down."""

    bucket: str
    key_prefix: str
    region: str | None
    endpoint_url: str | None


@dataclass(frozen=True)
class Settings:
    """The whole, validated configuration."""

    listen_public: Address
    listen_internal: Address
    backend: BackendSettings
    clock_skew: float
    jwks: JwksSettings
    keysets: Mapping[str, KeysetSettings]
    clients: Mapping[str, ClientSettings]
    token_exchange: Any = None  # keysvc.exchange.settings.TokenExchangeSettings, when configured
    canary: CanarySettings | None = None
    mirror: MirrorSettings | None = None
    access_log: bool = True
    tls: TlsSettings | None = None
    listen_timeouts: ListenTimeouts = ListenTimeouts()

    @property
    def default_keyset(self) -> str | None:
        """The keyset also served at /.well-known/jwks.json."""
        return next((k.name for k in self.keysets.values() if k.default), None)


# --------------------------------------------------------------------------------------------- parsing


def parse_duration(value: object, name: str) -> float:
    """`90s`, `15m`, `12h`, `30d`, `500ms` or integer seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ConfigError(name, "expected a duration such as 90s, 15m, 12h, 30d")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ConfigError(name, f"expected a duration such as 90s, 15m, 12h, 30d, got {value!r}")
    if seconds < 0 or seconds != seconds or seconds > 10 * 365 * 86400:
        raise ConfigError(name, "duration out of range (0 to 10 years)")
    return seconds


class _Section:
    """Reads one mapping of the YAML, naming each field by its dotted path, and refuses unknown keys."""

    def __init__(self, raw: object, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path or "config", "expected a mapping")
        self.raw: Mapping[Any, Any] = raw
        self.path = path
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = None, *, required: bool = False) -> Any:
        self.seen.add(key)
        if key not in self.raw or self.raw[key] is None:
            if required:
                raise ConfigError(self.name(key), "is required")
            return default
        return self.raw[key]

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> Any:
        value = self.get(key, default, required=required)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(self.name(key), "expected a non-empty string")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.name(key), "expected true or false")
        return value

    def duration(self, key: str, default: object = None, *, required: bool = False) -> float:
        return parse_duration(self.get(key, default, required=required), self.name(key))

    def str_list(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.get(key, None, required=required)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.name(key), "expected a list of non-empty strings")
        return tuple(value)

    def section(self, key: str) -> _Section:
        return _Section(self.get(key), self.name(key))

    def done(self) -> None:
        unknown = sorted(str(k) for k in self.raw if k not in self.seen)
        if unknown:
            raise ConfigError(self.name(unknown[0]), "unknown setting")


def _address(value: str, name: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"expected HOST:PORT, got {value!r}")
    return Address(host.strip("[]"), int(port))


def _read_secret_file(path: str, name: str) -> Secret:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, f"cannot read secret file {path}: {type(exc).__name__}") from None
    if not text:
        raise ConfigError(name, f"secret file {path} is empty")
    return Secret(text)


def _secret(sec: _Section, file_key: str, env_key: str, *, required: bool) -> Secret | None:
    """A secret given as a file path or an environment variable name (exactly one of them)."""
    file_path, env_name = sec.text(file_key), sec.text(env_key)
    if file_path and env_name:
        raise ConfigError(sec.name(file_key), f"give either {file_key} or {env_key}, not both")
    if file_path:
        return _read_secret_file(file_path, sec.name(file_key))
    if env_name:
        value = os.environ.get(env_name, "")
        if not value:
            raise ConfigError(sec.name(env_key), f"environment variable {env_name} is unset or empty")
        return Secret(value)
    if required:
        raise ConfigError(sec.name(file_key), f"is required (or {env_key})")
    return None


def _backend(sec: _Section) -> BackendSettings:
    kind = sec.text("type", required=True)
    refresh = sec.duration("refresh_interval", "30s")
    if refresh <= 0:
        raise ConfigError(sec.name("refresh_interval"), "must be greater than 0")
    if kind == "file":
        path = sec.text("path", required=True)
        passphrase = _secret(sec, "passphrase_file", "passphrase_env", required=False)
        sec.done()
        return BackendSettings("file", refresh, path=Path(path), passphrase=passphrase)
    if kind == "kms":
        region = sec.text("region", required=True)
        prefix = sec.text("alias_prefix", required=True)
        if not re.fullmatch(r"alias/[A-Za-z0-9/_-]+", prefix) or prefix.startswith("alias/aws"):
            raise ConfigError(sec.name("alias_prefix"), "expected alias/NAME[/NAME...] (not alias/aws...)")
        window = sec.duration("deletion_window", "30d")
        if window % 86400 or not 7 * 86400 <= window <= 30 * 86400:
            raise ConfigError(sec.name("deletion_window"), "must be a whole number of days from 7d to 30d")
        settings = BackendSettings(
            "kms",
            refresh,
            region=region,
            endpoint_url=sec.text("endpoint_url"),
            alias_prefix=prefix.rstrip("/"),
            deletion_window_days=int(window // 86400),
        )
        sec.done()
        return settings
    raise ConfigError(sec.name("type"), f"unknown backend {kind!r} (expected file or kms)")


def _keyset(name: str, sec: _Section, backend: str) -> KeysetSettings:
    if not _NAME.match(name):
        raise ConfigError(sec.path, "keyset names are lowercase letters, digits, '-' and '_'")
    alg = sec.text("alg", required=True)
    if alg not in ALGORITHMS:
        raise ConfigError(sec.name("alg"), f"unknown algorithm {alg!r} (expected one of {', '.join(ALGORITHMS)})")
    if alg == "EdDSA" and backend == "kms":
        raise ConfigError(sec.name("alg"), "EdDSA is not available in AWS KMS; use ES256 or RS256")
    issuer = sec.text("issuer", required=True)
    keyset = KeysetSettings(
        name=name,
        issuer=issuer,
        alg=alg,
        rotation_period=sec.duration("rotation_period", "30d"),
        publish_ahead=sec.duration("publish_ahead", "2d"),
        retain_after=sec.duration("retain_after", "1d"),
        max_token_ttl=sec.duration("max_token_ttl", "5m"),
        default=sec.flag("default"),
    )
    sec.done()
    return keyset


def _rate_limit(sec: _Section) -> RateLimit | None:
    if not sec.raw:
        sec.seen.update(sec.raw)
        return None
    rate, burst = sec.get("rate", required=True), sec.get("burst", required=True)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise ConfigError(sec.name("rate"), "expected requests per second, a number > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(sec.name("burst"), "expected a whole number >= 1")
    sec.done()
    return RateLimit(float(rate), burst)


def _client(name: str, sec: _Section, keysets: Mapping[str, KeysetSettings]) -> ClientSettings:
    digest = sec.text("api_key_sha256", required=True)
    if not _HEX64.match(digest):
        raise ConfigError(sec.name("api_key_sha256"), "expected 64 lowercase hex digits (SHA-256 of the API key)")
    allowed = sec.str_list("keysets", required=True)
    if not allowed:
        raise ConfigError(sec.name("keysets"), "must list at least one keyset")
    for keyset in allowed:
        if keyset not in keysets:
            raise ConfigError(sec.name("keysets"), f"unknown keyset {keyset!r}")
    audiences = sec.str_list("audiences", required=True)
    if not audiences:
        raise ConfigError(sec.name("audiences"), "must list at least one audience (an empty list allows nothing)")
    max_ttl = sec.duration("max_ttl", "5m")
    if max_ttl < 1:
        raise ConfigError(sec.name("max_ttl"), "must be at least 1s")
    cert_subjects = sec.str_list("cert_subjects")
    raw_scopes = sec.get("exchange_scopes")
    scopes = sec.str_list("exchange_scopes") if raw_scopes is not None else None
    client = ClientSettings(
        name=name,
        api_key_sha256=digest,
        keysets=allowed,
        audiences=audiences,
        max_ttl=max_ttl,
        admin=sec.flag("admin"),
        token_exchange=sec.flag("token_exchange"),
        exchange_scopes=scopes,
        rate_limit=_rate_limit(sec.section("rate_limit")),
        cert_subjects=cert_subjects,
    )
    sec.done()
    return client


def _tls(sec: _Section) -> TlsSettings | None:
    """`listen.tls`: cert_file, key_file (PEM), optional client_ca_file and require_client_cert."""
    if not sec.raw:
        sec.seen.update(sec.raw)
        return None
    names = ("cert_file", "key_file", "client_ca_file")
    files = {key: sec.text(key, required=key != "client_ca_file") for key in names}
    for key, value in files.items():
        if value is not None and not Path(value).is_file():
            raise ConfigError(sec.name(key), f"no such file: {value}")
    required = sec.flag("require_client_cert")
    if required and files["client_ca_file"] is None:
        raise ConfigError(sec.name("require_client_cert"), "needs client_ca_file (the CA of client certificates)")
    sec.done()
    ca = files["client_ca_file"]
    return TlsSettings(Path(files["cert_file"]), Path(files["key_file"]), Path(ca) if ca else None, required)


def _named(sec: _Section, parse: Callable[[str, _Section], Any]) -> dict[str, Any]:
    sec.seen.update(str(k) for k in sec.raw)
    out: dict[str, Any] = {}
    for name in sec.raw:
        if not isinstance(name, str):
            raise ConfigError(sec.path, f"names must be strings, got {name!r}")
        out[name] = parse(name, _Section(sec.raw[name], sec.name(name)))
    return out


def check_invariants(settings: Settings) -> None:
    """The timing invariants of the key lifecycle (design §1). Raises ConfigError naming the bound."""
    j, i, s = settings.jwks, settings.backend.refresh_interval, settings.clock_skew
    for ks in settings.keysets.values():
        p = f"keysets.{ks.name}"
        need_a = max(j.max_age + j.stale_while_revalidate, j.verifier_cache) + i + s
        if ks.publish_ahead < need_a:
            raise ConfigError(
                f"{p}.publish_ahead",
                f"{ks.publish_ahead:g}s is too short: must be >= max(jwks.max_age + jwks.stale_while_revalidate, "
                f"jwks.verifier_cache) + backend.refresh_interval + clock_skew = {need_a:g}s, so that every "
                "verifier has the key cached before it signs",
            )
        need_r = ks.max_token_ttl + i + s
        if ks.retain_after < need_r:
            raise ConfigError(
                f"{p}.retain_after",
                f"{ks.retain_after:g}s is too short: must be >= max_token_ttl + backend.refresh_interval + "
                f"clock_skew = {need_r:g}s, so that every token stays verifiable until it expires",
            )
        if ks.rotation_period <= ks.publish_ahead:
            raise ConfigError(
                f"{p}.rotation_period",
                f"{ks.rotation_period:g}s must be greater than publish_ahead ({ks.publish_ahead:g}s)",
            )
        if ks.max_token_ttl > ks.rotation_period:
            raise ConfigError(
                f"{p}.max_token_ttl",
                f"{ks.max_token_ttl:g}s must not exceed rotation_period ({ks.rotation_period:g}s)",
            )
        if ks.max_token_ttl < 1:  # tokens carry whole seconds: below 1s every token would expire on issue
            raise ConfigError(f"{p}.max_token_ttl", "must be at least 1s")


def parse_settings(raw: object) -> Settings:
    """Validate a parsed YAML document into Settings (raises ConfigError naming the field)."""
    top = _Section(raw, "")
    listen = top.section("listen")
    public = _address(listen.text("public", "0.0.0.0:8080"), "listen.public")
    internal = _address(listen.text("internal", "127.0.0.1:8081"), "listen.internal")
    tls = _tls(listen.section("tls"))
    listen_timeouts = ListenTimeouts(
        head=listen.duration("head_timeout", "10s"),
        body=listen.duration("body_timeout", "30s"),
        keepalive=listen.duration("keepalive_timeout", "5s"),
    )
    for key, seconds in (("head_timeout", listen_timeouts.head), ("body_timeout", listen_timeouts.body),
                         ("keepalive_timeout", listen_timeouts.keepalive)):
        if seconds <= 0:  # 0 would close every connection at once, not disable the timeout
            raise ConfigError(f"listen.{key}", "must be more than 0s")
    listen.done()
    if (public.host, public.port) == (internal.host, internal.port) and public.port != 0:
        raise ConfigError("listen.internal", "must differ from listen.public")
    backend = _backend(top.section("backend"))
    jsec = top.section("jwks")
    jwks = JwksSettings(
        max_age=jsec.duration("max_age", "5m"),
        stale_while_revalidate=jsec.duration("stale_while_revalidate", "1m"),
        stale_if_error=jsec.duration("stale_if_error", "1d"),
        verifier_cache=jsec.duration("verifier_cache", "10m"),
    )
    jsec.done()
    keysets = _named(top.section("keysets"), lambda n, s: _keyset(n, s, backend.type))
    if not keysets:
        raise ConfigError("keysets", "at least one keyset is required")
    defaults = [k.name for k in keysets.values() if k.default]
    if len(defaults) > 1:
        raise ConfigError(f"keysets.{defaults[1]}.default", "only one keyset may be the default")
    clients = _named(top.section("clients"), lambda n, s: _client(n, s, keysets))
    hashes: dict[str, str] = {}
    for client in clients.values():
        if client.api_key_sha256 in hashes:
            raise ConfigError(
                f"clients.{client.name}.api_key_sha256", f"same API key as {hashes[client.api_key_sha256]}"
            )
        hashes[client.api_key_sha256] = client.name
    subjects: dict[str, str] = {}
    for client in clients.values():
        if client.cert_subjects and (tls is None or tls.client_ca_file is None):
            raise ConfigError(f"clients.{client.name}.cert_subjects", "needs listen.tls.client_ca_file")
        for subject in client.cert_subjects:
            if subject in subjects:
                raise ConfigError(f"clients.{client.name}.cert_subjects", f"{subject!r} also names {subjects[subject]}")
            subjects[subject] = client.name
    exchange = None
    if top.get("token_exchange") is not None:
        from keysvc.exchange.settings import parse_token_exchange  # optional module, loaded when used

        exchange = parse_token_exchange(top.get("token_exchange"), {k: v.alg for k, v in keysets.items()})
        if exchange.jwt_ttl > keysets[exchange.keyset].max_token_ttl:
            raise ConfigError(
                "token_exchange.jwt_ttl",
                f"{exchange.jwt_ttl:g}s exceeds keysets.{exchange.keyset}.max_token_ttl "
                f"({keysets[exchange.keyset].max_token_ttl:g}s)",
            )
    canary = None
    if top.get("canary") is not None:
        csec = top.section("canary")
        canary = CanarySettings(
            jwks_url=csec.text("jwks_url", required=True),
            interval=csec.duration("interval", "1m"),
            timeout=csec.duration("timeout", "5s"),
        )
        csec.done()
    mirror = None
    if top.get("mirror") is not None:
        msec = top.section("mirror")
        mirror = MirrorSettings(
            bucket=msec.text("bucket", required=True),
            key_prefix=msec.text("key_prefix", "") or "",
            region=msec.text("region", backend.region),
            endpoint_url=msec.text("endpoint_url", backend.endpoint_url),
        )
        msec.done()
    lsec = top.section("log")
    access_log = lsec.flag("access", True)
    lsec.done()
    settings = Settings(
        listen_public=public,
        listen_internal=internal,
        backend=backend,
        clock_skew=top.duration("clock_skew", "60s"),
        jwks=jwks,
        keysets=keysets,
        clients=clients,
        token_exchange=exchange,
        canary=canary,
        mirror=mirror,
        access_log=access_log,
        tls=tls,
        listen_timeouts=listen_timeouts,
    )
    top.done()
    check_invariants(settings)
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a YAML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("config", f"cannot read {path}: {type(exc).__name__}: {reason}") from None
    return parse_yaml(text)


def parse_yaml(text: str) -> Settings:
    """Parse YAML text into Settings."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("config", f"invalid YAML{where}") from None
    except RecursionError:
        raise ConfigError("config", "YAML nested too deeply") from None
    return parse_settings(raw)
