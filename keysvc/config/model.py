"""The frozen, validated configuration: what `keysvc.config.parse` builds and the rest of keysvc reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from keysvc.config.exchange import TokenExchangeSettings

LOG_PUBLIC = ("errors", "all")


# Client-certificate identities, typed (`cn:` counts only for a certificate without SANs: keysvc.tls).
SUBJECT_TYPES = ("uri", "dns", "email", "cn")


def typed_subject(kind: str, value: str) -> str:
    """The canonical text of one identity, `kind:value` (DNS names lower-cased)."""
    return f"{kind}:{value.lower() if kind == 'dns' else value}"


@dataclass(frozen=True)
class Address:
    """A listener's host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenTimeouts:
    """Per-connection timeouts of both listeners (seconds): the request head, the body, an idle keep-alive."""

    head: float = 10.0
    body: float = 30.0
    keepalive: float = 5.0


@dataclass(frozen=True)
class BackendSettings:
    """Where keys live. Each backend type has its own subclass (keysvc.config.backends), which
    keysvc.backends.registry opens; `type` is the YAML `backend.type` that chose it."""

    type: ClassVar[str]
    refresh_interval: float


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
    jwks_uri: str | None = None  # the JWKS URL OpenID discovery names (else public_url + its JWKS path)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""

    rate: float
    burst: int


@dataclass(frozen=True)
class ClientSettings:
    """An internal caller, identified by the SHA-256 of its API key. Several digests (old and new key)
    let a key rotate without a flag day: each one authenticates the client."""

    name: str
    api_key_digests: tuple[str, ...] = field(repr=False)
    keysets: tuple[str, ...]
    audiences: tuple[str, ...]
    max_ttl: float
    admin_keysets: tuple[str, ...] = ()  # the keysets whose keys it may list, rotate and revoke
    token_exchange: bool = False
    exchange_scopes: tuple[str, ...] | None = None
    rate_limit: RateLimit | None = None
    cert_subjects: tuple[str, ...] = ()  # typed certificate identities (keysvc.tls): "uri:...", "dns:...", ...
    zapier: bool = False  # may call /v1/zapier/* (what for: zapier_grant)
    zapier_grant: ZapierGrant | None = None  # None: nothing; set whenever `zapier` is


@dataclass(frozen=True)
class ZapierGrant:
    """What a client may reach through /v1/zapier/* (`clients.<name>.zapier`): `true` is everything
    (`everything`), a mapping `{apps: [...], actions: [...], triggers: [...]}` only those: apps by Zapier
    UUID (lower case) or key, actions and triggers by key; an omitted list allows none of its kind.
    Pure: the routes ask before any call to Zapier and answer 403 `forbidden` when it says no."""

    everything: bool = False
    apps: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    triggers: frozenset[str] = frozenset()

    def allows_app(self, *names: str | None) -> bool:
        """Whether any of `names` (the app's UUID, its key or slug) is allowed."""
        return self.everything or any(n is not None and (n in self.apps or n.lower() in self.apps) for n in names)

    def allows_action(self, key: str) -> bool:
        """Whether the action with this key may be described, given inputs, and run."""
        return self.everything or key in self.actions

    def allows_trigger(self, key: str) -> bool:
        """Whether the trigger with this key may be used (its inbox routes)."""
        return self.everything or key in self.triggers

    @property
    def any_action(self) -> bool:
        """Whether some action is allowed (reading a run's status needs that)."""
        return self.everything or bool(self.actions)


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
    token_exchange: TokenExchangeSettings | None = None
    canary: CanarySettings | None = None
    mirror: MirrorSettings | None = None
    access_log: bool = True
    tls: TlsSettings | None = None
    listen_timeouts: ListenTimeouts = ListenTimeouts()
    log_public: str = "errors"  # errors | all: whether the public listener's successful hits are logged
    public_url: str | None = None  # the public listener as reached from outside (OpenID discovery's jwks_uri)

    @property
    def default_keyset(self) -> str | None:
        """The keyset also served at /.well-known/jwks.json."""
        return next((k.name for k in self.keysets.values() if k.default), None)
