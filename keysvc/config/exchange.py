"""The `token_exchange` section: the RFC 8693 exchange with the partner (Zapier) and its embed gateway.

Read by the shared reader like every other section, so each refusal is a ConfigError naming the field.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from keysvc.config.reader import ReadOptions, Section
from keysvc.config.secrets import Secret, SecretFile, read_secret
from keysvc.config.store_url import DEFAULT_FALLBACK_DIVISOR, StoreSettings
from keysvc.config.store_url import DEFAULT_TIMEOUT as DEFAULT_STORE_TIMEOUT
from keysvc.errors import ConfigError

# Zapier verifies partner JWTs with these only (no PS*, no EdDSA).
ZAPIER_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
# Zapier refuses partner JWTs whose exp is more than about five minutes after iat.
MAX_JWT_TTL = 300
MAX_RUN_WAIT = 600.0  # the longest `run_wait_max`: a caller's request stays open that long at most
MAX_CACHE_MARGIN = 3600  # stop using a cached access token at most this long before it expires
MAX_API_PER_MINUTE = 1_000_000.0  # the Partner API budget: far above any real limit, still a number
REGISTERED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

ClientAuth = Literal["client_secret_post", "client_secret_basic"]
ConnectFrom = Literal["access_token", "jwt"]
CLIENT_AUTH_METHODS: tuple[ClientAuth, ...] = ("client_secret_post", "client_secret_basic")
CONNECT_FROM: tuple[ConnectFrom, ...] = ("access_token", "jwt")

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


@dataclass(frozen=True)
class ApiRateLimit:
    """This replica's budget towards the Partner API: `per_minute` on average, bursts of up to `burst`."""

    per_minute: float = 60.0
    burst: int = 10


@dataclass(frozen=True)
class TriggerDeliverySettings:
    """Push delivery of trigger-inbox messages to the partner's own service (Standard Webhooks)."""

    url: str  # the partner's service; plain http only to loopback
    secret: Secret | SecretFile  # "whsec_<base64>": signs every delivery
    public_url: str  # where Zapier reaches keysvc's public listener (the notification URL's base)
    lease: float = 300.0  # how long one delivery attempt may hold a message
    sweep_interval: float = 300.0  # lease every known inbox at least this often
# Zapier's Connect URL takes an optional `theme` query parameter naming the partner's Connect UI branding
# (White Label docs, "Connection flow"): a theme name Zapier set up for the partner, not a colour scheme.
CONNECT_THEME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class StoreConfig:
    """`token_exchange.store`: where the gateway store is (`url`: sqlite:///... for one replica, or
    postgresql://user@host:port/db), its password (PostgreSQL; from `password_file` or `password_env`, never
    the URL), the deadline of every store call, and the divisor of the local fallback budget."""

    url: str
    password: Secret | SecretFile | None = None
    timeout: float = DEFAULT_STORE_TIMEOUT
    fallback_divisor: int = DEFAULT_FALLBACK_DIVISOR

    @property
    def engine(self) -> str:
        """"sqlite" or "postgresql" (the URL was checked when the configuration was read)."""
        return "sqlite" if self.url.lower().startswith("sqlite:") else "postgresql"


# ruff's S105 reads "token" in a field name as a password; these are URLs and URNs, no secrets.
@dataclass(frozen=True)
class TokenExchangeSettings:
    """Everything the exchange and the embed gateway need; the defaults are Zapier's."""

    client_id: str
    client_secret: Secret | SecretFile  # reveal() is the current value (a file is re-read when it changes)
    keyset: str = "zapier"
    token_url: str = "https://zapier.com/oauth/token"  # noqa: S105
    client_auth: ClientAuth = "client_secret_post"
    audience: str = "connect.zapier.com"
    tenant_claim: str = "org_id"
    jwt_ttl: int = 300
    subject_token_type: str = "urn:ietf:params:oauth:token-type:external-jwt"  # noqa: S105
    access_token_type: str = "urn:ietf:params:oauth:token-type:access-token"  # noqa: S105
    connect_token_type: str = "urn:ietf:params:oauth:token-type:connect-token"  # noqa: S105
    connect_from: ConnectFrom = "access_token"
    scope: str = "external connection:read connection:write zap zap:write action:run"
    connect_url: str = "https://connect.zapier.com/to/{app}"
    connect_timeout: float = 5.0  # TCP + TLS handshake of one attempt
    read_timeout: float = 10.0  # waiting for the partner's answer in one attempt
    total_timeout: float = 30.0  # all attempts and back-off sleeps together
    max_attempts: int = 4
    cache_margin: int = 60  # stop serving a cached access token this long before it expires
    api_url: str = "https://api.zapier.com"  # the Partner API
    redirect_uris: tuple[str, ...] = ()  # exact-match allow-list of Connect redirects
    api_rate_limit: ApiRateLimit = ApiRateLimit()
    run_wait_max: float = 60.0  # the longest a caller may ask keysvc to wait for an action run
    trigger_inbox_url: str = "https://api.zapier.com/trigger-inbox/v1"  # Zapier's Trigger Inbox API
    lease_wait_max: float = 30.0  # the longest a caller may ask keysvc to wait for inbox messages
    trigger_delivery: TriggerDeliverySettings | None = None  # push delivery (needs the gateway store)
    store: StoreConfig | None = None  # the gateway store shared by replicas (None: per-replica budget)
    connect_theme: str | None = None  # the Connect UI's theme when a call names none (CONNECT_THEME)

    @property
    def scopes(self) -> frozenset[str]:
        """The configured scope as a set of scope tokens."""
        return frozenset(self.scope.split())


_DEFAULTS = TokenExchangeSettings(client_id="-", client_secret=Secret(""))


def parse_token_exchange(
    raw: object,
    keyset_algs: Mapping[str, str],
    *,
    environ: Mapping[str, str] | None = None,
    options: ReadOptions | None = None,
) -> TokenExchangeSettings:
    """Validate the `token_exchange` mapping against the configured keysets (name -> alg).

    `environ` (default `os.environ`) is where `client_secret_env` is looked up; tests pass their own.
    """
    if options is None:
        options = ReadOptions() if environ is None else ReadOptions(environ=environ)
    if not isinstance(raw, Mapping):
        raise ConfigError("token_exchange", "expected a mapping")
    return read_token_exchange(Section(raw, "token_exchange", options), keyset_algs)


def read_token_exchange(
    sec: Section, keyset_algs: Mapping[str, str], unchecked: Collection[str] = ()
) -> TokenExchangeSettings:
    """The `token_exchange` section, read through the shared reader (every field, each error recorded).
    `unchecked`: keysets that exist but were refused, so their algorithm is unknown (no second error)."""
    d = _DEFAULTS
    v = sec.read(
        client_id=lambda: sec.text("client_id", required=True),
        client_secret=lambda: read_secret(sec, "client_secret", required=True),
        keyset=lambda: sec.text("keyset", d.keyset),
        token_url=lambda: _url(sec, "token_url", d.token_url),
        client_auth=lambda: sec.choice("client_auth", CLIENT_AUTH_METHODS),
        audience=lambda: sec.text("audience", d.audience),
        tenant_claim=lambda: _tenant_claim(sec, d.tenant_claim),
        jwt_ttl=lambda: _jwt_ttl(sec, d.jwt_ttl),
        subject_token_type=lambda: sec.text("subject_token_type", d.subject_token_type),
        access_token_type=lambda: sec.text("access_token_type", d.access_token_type),
        connect_token_type=lambda: sec.text("connect_token_type", d.connect_token_type),
        connect_from=lambda: sec.choice("connect_from", CONNECT_FROM),
        scope=lambda: _scope(sec, d.scope),
        connect_url=lambda: _connect_url(sec, d.connect_url),
        connect_timeout=lambda: sec.positive_duration("connect_timeout", d.connect_timeout),
        read_timeout=lambda: sec.positive_duration("read_timeout", d.read_timeout),
        total_timeout=lambda: sec.positive_duration("total_timeout", d.total_timeout),
        max_attempts=lambda: sec.integer("max_attempts", d.max_attempts, 1, 10),
        cache_margin=lambda: _cache_margin(sec, d.cache_margin),
        api_url=lambda: _url(sec, "api_url", d.api_url),
        redirect_uris=lambda: _redirect_uris(sec),
        api_rate_limit=lambda: _api_rate_limit(sec.section("api_rate_limit")),
        run_wait_max=lambda: _run_wait_max(sec, d.run_wait_max),
        trigger_inbox_url=lambda: _url(sec, "trigger_inbox_url", d.trigger_inbox_url),
        lease_wait_max=lambda: _wait_max(sec, "lease_wait_max", d.lease_wait_max),
        trigger_delivery=lambda: _trigger_delivery(sec.section("trigger_delivery"))
        if sec.present("trigger_delivery") else None,
        store=lambda: _store(sec.section("store")) if sec.present("store") else sec.get("store"),
        connect_theme=lambda: _connect_theme(sec),
    )
    settings = TokenExchangeSettings(**v)
    if settings.trigger_delivery is not None and settings.store is None:
        raise ConfigError(sec.name("trigger_delivery"), "needs the gateway store (token_exchange.store): push "
                          "delivery records there the inboxes it serves")
    if settings.keyset not in unchecked:
        _check_keyset(sec, settings.keyset, keyset_algs)
    return settings


def _jwt_ttl(sec: Section, default: int) -> int:
    jwt_ttl = math.ceil(sec.positive_duration("jwt_ttl", default))
    if jwt_ttl > MAX_JWT_TTL:
        raise ConfigError(sec.name("jwt_ttl"), f"Zapier rejects partner JWTs living longer than {MAX_JWT_TTL}s")
    return jwt_ttl


def _run_wait_max(sec: Section, default: float) -> float:
    run_wait_max = sec.positive_duration("run_wait_max", default)
    if run_wait_max > MAX_RUN_WAIT:
        raise ConfigError(sec.name("run_wait_max"), f"must be at most {MAX_RUN_WAIT:g}s (10m)")
    return run_wait_max


def _wait_max(sec: Section, key: str, default: float) -> float:
    wait_max = sec.positive_duration(key, default)
    if wait_max > MAX_RUN_WAIT:
        raise ConfigError(sec.name(key), f"must be at most {MAX_RUN_WAIT:g}s (10m)")
    return wait_max


def _trigger_delivery(sec: Section) -> TriggerDeliverySettings:
    v = sec.read(
        url=lambda: _url(sec, "url", sec.required_text("url")),
        secret=lambda: _webhook_secret(sec),
        public_url=lambda: _url(sec, "public_url", sec.required_text("public_url")).rstrip("/"),
        lease=lambda: _lease(sec),
        sweep_interval=lambda: sec.positive_duration("sweep_interval", 300.0),
    )
    return TriggerDeliverySettings(**v)


def _webhook_secret(sec: Section) -> Secret | SecretFile:
    """Standard Webhooks' form, `whsec_` + standard base64 of 24 to 64 bytes (the text is never echoed)."""
    secret = read_secret(sec, "secret", required=True)
    assert secret is not None  # nosec B101 - required=True never answers None
    if not sec.options.offline:
        text = secret.reveal()
        try:
            key = base64.b64decode(text.removeprefix("whsec_").strip(), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
            raise ConfigError(sec.name("secret"), "must be whsec_ followed by the base64 of 24 to 64 random bytes")
    return secret


def _lease(sec: Section) -> float:
    lease = sec.positive_duration("lease", 300.0)
    if not 1 <= lease <= 3600 or lease != int(lease):
        raise ConfigError(sec.name("lease"), "must be whole seconds from 1s to 1h (Zapier leases by the second)")
    return lease


def _cache_margin(sec: Section, default: int) -> int:
    margin = math.ceil(sec.duration("cache_margin", default))
    if margin > MAX_CACHE_MARGIN:
        raise ConfigError(sec.name("cache_margin"), f"must be at most {MAX_CACHE_MARGIN}s (1h)")
    return margin


def _tenant_claim(sec: Section, default: str) -> str:
    claim: str = sec.text("tenant_claim", default)
    if claim in REGISTERED_CLAIMS:
        raise ConfigError(sec.name("tenant_claim"), f"{claim!r} is a registered JWT claim")
    return claim


def _https_or_loopback(url: str) -> bool:
    parts = urlsplit(url)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    return bool(parts.hostname) and (parts.scheme == "https" or loopback)


def _url(sec: Section, key: str, default: str) -> str:
    url: str = sec.text(key, default)
    _check_url(sec, key, url)
    return url


def _check_url(sec: Section, key: str, url: str) -> None:
    if not _https_or_loopback(url):
        raise ConfigError(sec.name(key), f"must be an https URL (plain http only to loopback), got {url!r}")


def _connect_url(sec: Section, default: str) -> str:
    template: str = sec.text("connect_url", default)
    rest = template.replace("{app}", "", 1)
    if "{app}" not in template or "{" in rest or "}" in rest:
        raise ConfigError(sec.name("connect_url"), "must contain the placeholder {app} exactly once, no other braces")
    _check_url(sec, "connect_url", template.replace("{app}", "app"))
    return template


def _scope(sec: Section, default: str) -> str:
    scope: str = sec.text("scope", default)
    for token in scope.split():
        if not SCOPE_TOKEN.fullmatch(token):
            raise ConfigError(sec.name("scope"), f"{token!r} is not a valid scope token (RFC 6749 §3.3)")
    return scope


def _redirect_uris(sec: Section) -> tuple[str, ...]:
    uris = sec.str_list("redirect_uris")
    for uri in uris:
        if not _https_or_loopback(uri) or "#" in uri:
            raise ConfigError(
                sec.name("redirect_uris"),
                f"{uri!r}: each must be an absolute https URL (plain http only to loopback) without a fragment",
            )
    if len(set(uris)) != len(uris):
        raise ConfigError(sec.name("redirect_uris"), "lists a URI twice")
    return uris


def _api_rate_limit(sec: Section) -> ApiRateLimit:
    d = ApiRateLimit()
    return ApiRateLimit(**sec.read(
        per_minute=lambda: sec.number("per_minute", d.per_minute, MAX_API_PER_MINUTE),
        burst=lambda: sec.integer("burst", d.burst, 1, 10_000),
    ))


def _store(sec: Section) -> StoreConfig:
    """`token_exchange.store`: the URL parsed as the store parses it (keysvc.config.store_url), the
    password read now (check-config refuses what serve refuses), the deadline and the fallback divisor."""
    v = sec.read(
        url=lambda: sec.required_text("url"),
        password=lambda: read_secret(sec, "password", required=False),
        timeout=lambda: _store_timeout(sec),
        fallback_divisor=lambda: sec.integer("fallback_divisor", DEFAULT_FALLBACK_DIVISOR, 1, 100),
    )
    config = StoreConfig(**v)
    try:
        StoreSettings.from_url(config.url, timeout=config.timeout)
    except ValueError as exc:
        raise ConfigError(sec.name("url"), str(exc)) from None
    if config.engine == "sqlite" and config.password is not None:
        raise ConfigError(sec.name("password_file"), "a SQLite store takes no password")
    return config


def _store_timeout(sec: Section) -> float:
    timeout = sec.positive_duration("timeout", DEFAULT_STORE_TIMEOUT)
    if timeout > 60:
        raise ConfigError(sec.name("timeout"), "must be at most 60s (every gateway call may wait that long)")
    return timeout


def _connect_theme(sec: Section) -> str | None:
    theme: str | None = sec.text("connect_theme")
    if theme is not None and not CONNECT_THEME.fullmatch(theme):
        raise ConfigError(sec.name("connect_theme"), "must be a theme name Zapier set up for you (letters, digits, "
                                                     "_ . -, at most 64)")
    return theme


def _check_keyset(sec: Section, keyset: str, keyset_algs: Mapping[str, str]) -> None:
    if keyset not in keyset_algs:
        known = ", ".join(sorted(keyset_algs)) or "none"
        raise ConfigError(sec.name("keyset"), f"no keyset named {keyset!r} (configured: {known})")
    alg = keyset_algs[keyset]
    if alg not in ZAPIER_ALGS:
        accepted = ", ".join(sorted(ZAPIER_ALGS))
        raise ConfigError(sec.name("keyset"), f"keyset {keyset!r} signs with {alg}; Zapier accepts only {accepted}")
