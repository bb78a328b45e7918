"""The `token_exchange` section: read once into a frozen, validated `TokenExchangeSettings` (design §6).

Every failure is a `ConfigError` naming the dotted field, so `keysvc check-config` can point at it.
Durations and `Secret` are keysvc.config's, so this section reads like every other one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from keysvc.config import Secret, parse_duration
from keysvc.errors import ConfigError

# Zapier verifies partner JWTs with these only (no PS*, no EdDSA).
ZAPIER_ALGS = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
# Zapier refuses partner JWTs whose exp is more than about five minutes after iat.
MAX_JWT_TTL = 300
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
    """This replica's budget towards the partner's API (a token bucket)."""

    per_minute: float = 60.0
    burst: int = 10


# ruff's S105 reads "token" in a field name as a password; these are URLs and URNs, no secrets.
@dataclass(frozen=True)
class TokenExchangeSettings:
    """Everything the exchange needs; defaults are design §6's (Zapier)."""

    client_id: str
    client_secret: Secret
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
    api_url: str = "https://api.zapier.com"  # the Partner API of the embed gateway (keysvc.zapier)
    redirect_uris: tuple[str, ...] = ()  # exact-match allow-list for the Connect redirect
    api_rate_limit: ApiRateLimit = field(default_factory=ApiRateLimit)
    run_wait_max: float = 60.0  # the longest a caller may ask keysvc to wait for an action run
    connect_timeout: float = 5.0  # TCP + TLS handshake of one attempt
    read_timeout: float = 10.0  # waiting for the partner's answer in one attempt
    total_timeout: float = 30.0  # all attempts and back-off sleeps together
    max_attempts: int = 4
    cache_margin: int = 60  # stop serving a cached access token this long before it expires

    @property
    def scopes(self) -> frozenset[str]:
        """The configured scope as a set of scope tokens."""
        return frozenset(self.scope.split())


_STRINGS = (
    "keyset", "token_url", "client_id", "audience", "tenant_claim", "subject_token_type",
    "access_token_type", "connect_token_type", "scope", "connect_url", "api_url",
)  # fmt: skip
_TIMEOUTS = ("connect_timeout", "read_timeout", "total_timeout")
_KNOWN = frozenset(
    (*_STRINGS, *_TIMEOUTS, "client_secret_file", "client_secret_env", "client_auth", "connect_from",
     "jwt_ttl", "max_attempts", "cache_margin", "redirect_uris", "api_rate_limit", "run_wait_max")
)  # fmt: skip


def parse_token_exchange(
    raw: Mapping[str, Any],
    keyset_algs: Mapping[str, str],
    *,
    environ: Mapping[str, str] | None = None,
) -> TokenExchangeSettings:
    """Validate the `token_exchange` mapping against the configured keysets (name -> alg).

    `environ` defaults to `os.environ`; tests pass their own mapping.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("token_exchange", "must be a mapping")
    for key in raw:
        if key not in _KNOWN:
            raise ConfigError(_f(str(key)), f"unknown key (known: {', '.join(sorted(_KNOWN))})")
    values: dict[str, Any] = {name: _string(raw, name) for name in _STRINGS if name in raw}
    if "client_id" not in values:
        raise ConfigError(_f("client_id"), "required: the client id the partner issued to you")
    values["client_secret"] = _secret(raw, os.environ if environ is None else environ)
    values["client_auth"] = _choice(raw, "client_auth", CLIENT_AUTH_METHODS)
    values["connect_from"] = _choice(raw, "connect_from", CONNECT_FROM)
    settings = TokenExchangeSettings(**values, **_numbers(raw), **_gateway(raw))
    _check_keyset(settings.keyset, keyset_algs)
    _check_url(settings.token_url, "token_url")
    _check_url(settings.api_url, "api_url")
    _check_connect_url(settings.connect_url)
    _check_claims(settings)
    _check_scope(settings.scope)
    return settings


def _f(name: str) -> str:
    return f"token_exchange.{name}"


def _seconds(raw: Mapping[str, Any], name: str) -> float:
    return parse_duration(raw[name], _f(name))


def _string(raw: Mapping[str, Any], name: str) -> str:
    value = raw[name]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(_f(name), "must be a non-empty string")
    return value.strip()


def _choice(raw: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = raw.get(name, allowed[0])
    if value not in allowed:
        raise ConfigError(_f(name), f"must be one of {', '.join(allowed)}, got {value!r}")
    return cast(str, value)


def _numbers(raw: Mapping[str, Any]) -> dict[str, Any]:
    numbers: dict[str, Any] = {name: _seconds(raw, name) for name in _TIMEOUTS if name in raw}
    for name in ("jwt_ttl", "cache_margin"):
        if name in raw:
            numbers[name] = math.ceil(_seconds(raw, name))
    for name in ("jwt_ttl", *_TIMEOUTS):
        if numbers.get(name) == 0:
            raise ConfigError(_f(name), "must be greater than zero")
    if numbers.get("jwt_ttl", 0) > MAX_JWT_TTL:
        raise ConfigError(_f("jwt_ttl"), f"Zapier rejects partner JWTs living longer than {MAX_JWT_TTL}s")
    if "max_attempts" in raw:
        attempts = raw["max_attempts"]
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 10:
            raise ConfigError(_f("max_attempts"), f"must be an integer from 1 to 10, got {attempts!r}")
        numbers["max_attempts"] = attempts
    return numbers


def _gateway(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The embed gateway's keys: redirect_uris, api_rate_limit, run_wait_max."""
    values: dict[str, Any] = {}
    if "redirect_uris" in raw:
        uris = raw["redirect_uris"]
        if not isinstance(uris, list) or not all(isinstance(u, str) and u for u in uris):
            raise ConfigError(_f("redirect_uris"), "must be a list of absolute URLs")
        for uri in uris:
            parts = urlsplit(uri)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
                raise ConfigError(_f("redirect_uris"), f"{uri!r} is not an absolute http(s) URL without fragment")
        values["redirect_uris"] = tuple(uris)
    if "api_rate_limit" in raw:
        limit = raw["api_rate_limit"]
        if not isinstance(limit, Mapping) or set(limit) - {"per_minute", "burst"}:
            raise ConfigError(_f("api_rate_limit"), "must be a mapping of per_minute and burst")
        per_minute, burst = limit.get("per_minute", 60.0), limit.get("burst", 10)
        if isinstance(per_minute, bool) or not isinstance(per_minute, int | float) or per_minute <= 0:
            raise ConfigError(_f("api_rate_limit.per_minute"), "must be a number > 0")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(_f("api_rate_limit.burst"), "must be a whole number >= 1")
        values["api_rate_limit"] = ApiRateLimit(float(per_minute), burst)
    if "run_wait_max" in raw:
        values["run_wait_max"] = _seconds(raw, "run_wait_max")
    return values


def _secret(raw: Mapping[str, Any], environ: Mapping[str, str]) -> Secret:
    has_file, has_env = "client_secret_file" in raw, "client_secret_env" in raw
    if has_file == has_env:
        raise ConfigError(_f("client_secret_file"), "set exactly one of client_secret_file, client_secret_env")
    if has_file:
        path = _string(raw, "client_secret_file")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(_f("client_secret_file"), f"cannot read {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(_f("client_secret_file"), f"{path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(_f("client_secret_file"), f"{path} is empty")
        return Secret(value)
    name = _string(raw, "client_secret_env")
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(_f("client_secret_env"), f"environment variable {name} is unset or empty")
    return Secret(value)


def _check_keyset(keyset: str, keyset_algs: Mapping[str, str]) -> None:
    if keyset not in keyset_algs:
        known = ", ".join(sorted(keyset_algs)) or "none"
        raise ConfigError(_f("keyset"), f"no keyset named {keyset!r} (configured: {known})")
    alg = keyset_algs[keyset]
    if alg not in ZAPIER_ALGS:
        accepted = ", ".join(sorted(ZAPIER_ALGS))
        raise ConfigError(_f("keyset"), f"keyset {keyset!r} signs with {alg}; Zapier accepts only {accepted}")


def _check_url(url: str, name: str) -> None:
    parts = urlsplit(url)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS
    if not (parts.scheme == "https" or loopback) or not parts.hostname:
        raise ConfigError(_f(name), f"must be an https URL (plain http only to loopback), got {url!r}")


def _check_connect_url(template: str) -> None:
    rest = template.replace("{app}", "", 1)
    if "{app}" not in template or "{" in rest or "}" in rest:
        raise ConfigError(_f("connect_url"), "must contain the placeholder {app} exactly once, no other braces")
    _check_url(template.replace("{app}", "app"), "connect_url")


def _check_claims(settings: TokenExchangeSettings) -> None:
    if settings.tenant_claim in REGISTERED_CLAIMS:
        raise ConfigError(_f("tenant_claim"), f"{settings.tenant_claim!r} is a registered JWT claim")


def _check_scope(scope: str) -> None:
    for token in scope.split():
        if not SCOPE_TOKEN.fullmatch(token):
            raise ConfigError(_f("scope"), f"{token!r} is not a valid scope token (RFC 6749 §3.3)")
