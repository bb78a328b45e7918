"""YAML document -> Settings: every check happens here, so `keysvc check-config` and `keysvc serve` refuse
exactly the same files, and nothing downstream (backends, the S3 mirror, TLS) validates again."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path

from keysvc.algorithms import ALGORITHMS
from keysvc.config.document import load_document
from keysvc.config.exchange import TokenExchangeSettings, read_token_exchange
from keysvc.config.model import (
    LOG_PUBLIC,
    SUBJECT_TYPES,
    Address,
    BackendSettings,
    CanarySettings,
    ClientSettings,
    JwksSettings,
    KeysetSettings,
    ListenTimeouts,
    MirrorSettings,
    RateLimit,
    Settings,
    TlsSettings,
    typed_subject,
)
from keysvc.config.reader import ReadOptions, Section
from keysvc.config.urls import public_base_url, published_url
from keysvc.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _address(value: str, name: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"expected HOST:PORT, got {value!r}")
    return Address(host.strip("[]"), int(port))


def _backend(sec: Section) -> BackendSettings:
    # imported here, not at the top: each backend's settings module builds on keysvc.config
    from keysvc.backends.registry import REGISTRY

    kind = sec.required_text("type")
    if kind not in REGISTRY:
        raise ConfigError(sec.name("type"), f"unknown backend {kind!r} (expected {' or '.join(REGISTRY)})")
    settings = REGISTRY[kind](sec, sec.positive_duration("refresh_interval", "30s"))
    sec.done()
    return settings


def _keyset(name: str, sec: Section, backend: str) -> KeysetSettings:
    if not _NAME.match(name):
        raise ConfigError(sec.path, "keyset names are lowercase letters, digits, '-' and '_'")
    alg = sec.required_text("alg")
    if alg not in ALGORITHMS:
        raise ConfigError(sec.name("alg"), f"unknown algorithm {alg!r} (expected one of {', '.join(ALGORITHMS)})")
    if alg == "EdDSA" and backend == "kms":
        raise ConfigError(sec.name("alg"), "EdDSA is not available in AWS KMS; use ES256 or RS256")
    keyset = KeysetSettings(
        name=name,
        issuer=sec.required_text("issuer"),
        alg=alg,
        rotation_period=sec.duration("rotation_period", "30d"),
        publish_ahead=sec.duration("publish_ahead", "2d"),
        retain_after=sec.duration("retain_after", "1d"),
        max_token_ttl=sec.duration("max_token_ttl", "5m"),
        default=sec.flag("default"),
        jwks_uri=published_url(sec, "jwks_uri"),
    )
    sec.done()
    return keyset


def _rate_limit(sec: Section) -> RateLimit | None:
    if not sec.raw:
        return None
    rate, burst = sec.get("rate", required=True), sec.get("burst", required=True)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        raise ConfigError(sec.name("rate"), "expected requests per second, a number > 0")
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(sec.name("burst"), "expected a whole number >= 1")
    sec.done()
    return RateLimit(float(rate), burst)


def _digests(sec: Section) -> tuple[str, ...]:
    """`api_key_sha256`: one hex digest, or a list of them (the old and the new key during a rotation)."""
    value = sec.get("api_key_sha256", required=True)
    digests = tuple(value) if isinstance(value, list) else (value,)
    if not digests:
        raise ConfigError(sec.name("api_key_sha256"), "must list at least one digest")
    for digest in digests:
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise ConfigError(
                sec.name("api_key_sha256"), "expected 64 lowercase hex digits (SHA-256 of the API key), or a list"
            )
    if len(set(digests)) != len(digests):
        raise ConfigError(sec.name("api_key_sha256"), "lists the same digest twice")
    return digests


def _admin_keysets(sec: Section, keysets: tuple[str, ...]) -> tuple[str, ...]:
    """`admin`: false (none), true (every keyset in the client's `keysets`), or a list of some of them."""
    value = sec.get("admin", False)
    if isinstance(value, bool):
        return keysets if value else ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(sec.name("admin"), "expected true, false or a non-empty list of keysets")
    for keyset in value:
        if keyset not in keysets:
            raise ConfigError(sec.name("admin"), f"{keyset!r} is not in this client's keysets")
    return tuple(dict.fromkeys(value))


def _typed(entry: str, types: tuple[str, ...]) -> str:
    """What an untyped `cert_subjects` entry should have been written as."""
    kind, sep, value = entry.partition(":")
    if sep and kind.lower() in types:
        return f"{kind.lower()}:{value}"
    if "://" in entry:
        return f"uri:{entry}"
    if "@" in entry:
        return f"email:{entry}"
    return f"dns:{entry}" if "." in entry else f"cn:{entry}"


def _cert_subjects(sec: Section) -> tuple[str, ...]:
    """`cert_subjects`: typed identities, `uri:`, `dns:`, `email:` (subjectAltNames) or `cn:` (the subject
    CN, which counts only for a certificate without SANs)."""
    subjects = []
    for entry in sec.str_list("cert_subjects"):
        kind, sep, value = entry.partition(":")
        if sep and kind in SUBJECT_TYPES and not value:
            raise ConfigError(sec.name("cert_subjects"), f"{entry!r} names nothing after {kind}:")
        if not sep or kind not in SUBJECT_TYPES:
            raise ConfigError(
                sec.name("cert_subjects"),
                f"{entry!r} has no type: write {_typed(entry, SUBJECT_TYPES)} (the prefix is one of "
                f"{', '.join(t + ':' for t in SUBJECT_TYPES)}; cn: counts only for a certificate without SANs)",
            )
        subjects.append(typed_subject(kind, value))
    return tuple(dict.fromkeys(subjects))


def _client(name: str, sec: Section, keysets: Mapping[str, KeysetSettings]) -> ClientSettings:
    digests = _digests(sec)
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
    client = ClientSettings(
        name=name,
        api_key_digests=digests,
        keysets=allowed,
        audiences=audiences,
        max_ttl=max_ttl,
        admin_keysets=_admin_keysets(sec, allowed),
        token_exchange=sec.flag("token_exchange"),
        exchange_scopes=sec.str_list("exchange_scopes") if sec.present("exchange_scopes") else None,
        rate_limit=_rate_limit(sec.section("rate_limit")),
        cert_subjects=_cert_subjects(sec),
        zapier=sec.flag("zapier"),
    )
    sec.done()
    return client


def _tls(sec: Section) -> TlsSettings | None:
    """`listen.tls`: cert_file, key_file (PEM), optional client_ca_file and require_client_cert."""
    if not sec.raw:
        return None
    names = ("cert_file", "key_file", "client_ca_file")
    files = {key: sec.text(key, required=key != "client_ca_file") for key in names}
    for key, value in files.items():
        if value is not None and not sec.options.offline and not Path(value).is_file():
            raise ConfigError(sec.name(key), f"no such file: {value}")
    required = sec.flag("require_client_cert")
    if required and files["client_ca_file"] is None:
        raise ConfigError(sec.name("require_client_cert"), "needs client_ca_file (the CA of client certificates)")
    sec.done()
    if not sec.options.offline:
        _check_tls_files(sec, files["cert_file"], files["key_file"], files["client_ca_file"])
    ca = files["client_ca_file"]
    return TlsSettings(Path(files["cert_file"]), Path(files["key_file"]), Path(ca) if ca else None, required)


def _check_tls_files(sec: Section, cert: str, key: str, ca: str | None) -> None:
    """Load the certificate, its key and the client CA as the listener will, so a file that exists but
    does not hold what it should is refused now, not when the server starts."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(sec.name("key_file"), f"cannot load {cert} with {key}: {type(exc).__name__}") from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(sec.name("client_ca_file"), f"cannot load {ca}: {type(exc).__name__}") from None


def _listen_timeouts(sec: Section) -> ListenTimeouts:
    d = ListenTimeouts()
    return ListenTimeouts(
        head=sec.positive_duration("head_timeout", d.head),
        body=sec.positive_duration("body_timeout", d.body),
        keepalive=sec.positive_duration("keepalive_timeout", d.keepalive),
    )


def _canary(sec: Section) -> CanarySettings:
    canary = CanarySettings(
        jwks_url=sec.required_text("jwks_url"),
        interval=sec.duration("interval", "1m"),
        timeout=sec.duration("timeout", "5s"),
    )
    sec.done()
    return canary


def _mirror(sec: Section, backend: BackendSettings) -> MirrorSettings:
    bucket = sec.required_text("bucket")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(sec.name("bucket"), f"not an S3 bucket name: {bucket!r}")
    prefix = sec.get("key_prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError(sec.name("key_prefix"), "expected a string")
    if prefix.startswith("/"):
        raise ConfigError(sec.name("key_prefix"), "must not start with / (S3 keys are relative)")
    from keysvc.backends.kms_settings import KmsSettings  # see _backend

    kms = backend if isinstance(backend, KmsSettings) else None
    mirror = MirrorSettings(
        bucket=bucket,
        key_prefix=prefix,
        region=sec.text("region", kms.region if kms else None),
        endpoint_url=sec.text("endpoint_url", kms.endpoint_url if kms else None),
    )
    sec.done()
    return mirror


def _token_exchange(sec: Section, keysets: Mapping[str, KeysetSettings]) -> TokenExchangeSettings:
    exchange = read_token_exchange(sec, {k: v.alg for k, v in keysets.items()})
    if exchange.jwt_ttl > keysets[exchange.keyset].max_token_ttl:
        raise ConfigError(
            sec.name("jwt_ttl"),
            f"{exchange.jwt_ttl:g}s exceeds keysets.{exchange.keyset}.max_token_ttl "
            f"({keysets[exchange.keyset].max_token_ttl:g}s)",
        )
    return exchange


def _check_clients(clients: Mapping[str, ClientSettings], tls: TlsSettings | None, exchange: bool) -> None:
    """Across clients: no API key digest or certificate subject names two clients."""
    owners: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for client in clients.values():
        for digest in client.api_key_digests:
            if digest in owners:
                raise ConfigError(f"clients.{client.name}.api_key_sha256", f"same API key as {owners[digest]}")
            owners[digest] = client.name
        if client.cert_subjects and (tls is None or tls.client_ca_file is None):
            raise ConfigError(f"clients.{client.name}.cert_subjects", "needs listen.tls.client_ca_file")
        for subject in client.cert_subjects:
            if subject in subjects:
                raise ConfigError(f"clients.{client.name}.cert_subjects", f"{subject!r} also names {subjects[subject]}")
            subjects[subject] = client.name
        if client.zapier and not exchange:
            raise ConfigError(f"clients.{client.name}.zapier", "needs a token_exchange section")


def check_invariants(settings: Settings) -> None:
    """The timing invariants of the key lifecycle. Raises ConfigError naming the bound."""
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


def parse_settings(raw: object, options: ReadOptions | None = None) -> Settings:
    """Validate a parsed YAML document into Settings (raises ConfigError naming the field)."""
    top = Section(raw, "", options)
    listen = top.section("listen")
    public = _address(listen.text("public", "0.0.0.0:8080"), "listen.public")
    internal = _address(listen.text("internal", "127.0.0.1:8081"), "listen.internal")
    tls = _tls(listen.section("tls"))
    timeouts = _listen_timeouts(listen)
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
    keysets = {name: _keyset(name, sec, backend.type) for name, sec in top.section("keysets").named()}
    if not keysets:
        raise ConfigError("keysets", "at least one keyset is required")
    defaults = [k.name for k in keysets.values() if k.default]
    if len(defaults) > 1:
        raise ConfigError(f"keysets.{defaults[1]}.default", "only one keyset may be the default")
    clients = {name: _client(name, sec, keysets) for name, sec in top.section("clients").named()}
    exchange = _token_exchange(top.section("token_exchange"), keysets) if top.present("token_exchange") else None
    _check_clients(clients, tls, exchange is not None)
    canary = _canary(top.section("canary")) if top.present("canary") else None
    mirror = _mirror(top.section("mirror"), backend) if top.present("mirror") else None
    lsec = top.section("log")
    access_log = lsec.flag("access", True)
    log_public = lsec.choice("public", LOG_PUBLIC)
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
        listen_timeouts=timeouts,
        log_public=log_public,
        public_url=public_base_url(top, "public_url"),
    )
    top.done()
    check_invariants(settings)
    return settings


def parse_yaml(text: str, options: ReadOptions | None = None) -> Settings:
    """Parse YAML text into Settings."""
    return parse_settings(load_document(text), options)


def load_settings(path: str | Path, options: ReadOptions | None = None) -> Settings:
    """Read and validate a YAML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("config", f"cannot read {path}: {type(exc).__name__}: {reason}") from None
    return parse_yaml(text, options)
