"""YAML document -> Settings: every check happens here, so `keysvc check-config` and `keysvc serve` refuse
exactly the same files, and nothing downstream (backends, the S3 mirror, TLS) validates again."""

from __future__ import annotations

import re
import ssl
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

from keysvc.algorithms import ALGORITHMS
from keysvc.config.backends import BACKEND_TYPES, KmsSettings
from keysvc.config.document import Document, read_document
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
    ZapierGrant,
    typed_subject,
)
from keysvc.config.reader import Collector, ReadOptions, Section
from keysvc.config.urls import public_base_url, published_url
from keysvc.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_PORT = re.compile(r"[0-9]{1,5}")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _address(value: str, name: str) -> Address:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port) or not 0 <= int(port) <= 65535:
        raise ConfigError(name, f"expected HOST:PORT (a port from 0 to 65535), got {value[:80]!r}")
    return Address(host.strip("[]"), int(port))


def _backend_type(sec: Section) -> str:
    kind = sec.required_text("type")
    if kind not in BACKEND_TYPES:
        raise ConfigError(sec.name("type"), f"unknown backend {kind!r} (expected {' or '.join(BACKEND_TYPES)})")
    return kind


def _backend(sec: Section) -> BackendSettings:
    kind = sec.attempt(_backend_type, sec)
    if kind is None:
        sec.skip_rest()
    refresh = sec.attempt(sec.positive_duration, "refresh_interval", "30s")
    assert kind is not None  # nosec B101 - skip_rest() raised
    return BACKEND_TYPES[kind](sec, refresh if refresh is not None else 30.0)  # its read() ends with done()


def _alg(sec: Section, backend: str | None) -> str:
    alg = sec.required_text("alg")
    if alg not in ALGORITHMS:
        raise ConfigError(sec.name("alg"), f"unknown algorithm {alg!r} (expected one of {', '.join(ALGORITHMS)})")
    if alg == "EdDSA" and backend == "kms":
        raise ConfigError(sec.name("alg"), "EdDSA is not available in AWS KMS; use ES256 or RS256")
    return alg


def _keyset(name: str, sec: Section, backend: str | None) -> KeysetSettings:
    if not _NAME.match(name):
        sec.error("", "keyset names are lowercase letters, digits, '-' and '_'")
    return KeysetSettings(name=name, **sec.read(
        issuer=lambda: sec.required_text("issuer"),
        alg=lambda: _alg(sec, backend),
        rotation_period=lambda: sec.duration("rotation_period", "30d"),
        publish_ahead=lambda: sec.duration("publish_ahead", "2d"),
        retain_after=lambda: sec.duration("retain_after", "1d"),
        max_token_ttl=lambda: sec.duration("max_token_ttl", "5m"),
        default=lambda: sec.flag("default"),
        jwks_uri=lambda: published_url(sec, "jwks_uri"),
    ))


MAX_RATE = 1_000_000.0  # requests per second of one client's token bucket
MAX_BURST = 1_000_000


def _rate_limit(sec: Section) -> RateLimit | None:
    if not sec.raw:
        return None
    v = sec.read(rate=lambda: _rate(sec), burst=lambda: _burst(sec))
    return RateLimit(float(v["rate"]), v["burst"])


def _rate(sec: Section) -> float:
    rate = sec.get("rate", required=True)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE:
        raise ConfigError(sec.name("rate"), f"expected requests per second, a number > 0 and <= {MAX_RATE:g}")
    return float(rate)


def _burst(sec: Section) -> int:
    burst = sec.get("burst", required=True)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_BURST:
        raise ConfigError(sec.name("burst"), f"expected a whole number from 1 to {MAX_BURST}")
    return burst


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


def _client_keysets(sec: Section, keysets: Collection[str] | None) -> tuple[str, ...]:
    allowed = sec.str_list("keysets", required=True)
    if not allowed:
        raise ConfigError(sec.name("keysets"), "must list at least one keyset")
    for keyset in allowed:
        if keysets is not None and keyset not in keysets:
            raise ConfigError(sec.name("keysets"), f"unknown keyset {keyset!r}")
    return allowed


def _audiences(sec: Section) -> tuple[str, ...]:
    audiences = sec.str_list("audiences", required=True)
    if not audiences:
        raise ConfigError(sec.name("audiences"), "must list at least one audience (an empty list allows nothing)")
    return audiences


def _max_ttl(sec: Section) -> float:
    max_ttl = sec.duration("max_ttl", "5m")
    if max_ttl < 1:
        raise ConfigError(sec.name("max_ttl"), "must be at least 1s")
    return max_ttl


def _client(name: str, sec: Section, keysets: Collection[str] | None) -> ClientSettings:
    """One client; `keysets` names every keyset the document declares, parsed or refused (None: unknown)."""
    allowed = sec.attempt(_client_keysets, sec, keysets)
    v = sec.read(
        api_key_digests=lambda: _digests(sec),
        audiences=lambda: _audiences(sec),
        max_ttl=lambda: _max_ttl(sec),
        admin_keysets=lambda: _admin_keysets(sec, allowed) if allowed is not None else sec.get("admin"),
        token_exchange=lambda: sec.flag("token_exchange"),
        exchange_scopes=lambda: sec.str_list("exchange_scopes") if sec.present("exchange_scopes") else None,
        rate_limit=lambda: _rate_limit(sec.section("rate_limit")),
        cert_subjects=lambda: _cert_subjects(sec),
        zapier_grant=lambda: _zapier_grant(sec),
    )
    assert allowed is not None  # nosec B101 - read() refuses the section when it failed
    return ClientSettings(name=name, keysets=allowed, zapier=v["zapier_grant"] is not None, **v)


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ZAPIER_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}")  # an app, action or trigger key


def _zapier_grant(sec: Section) -> ZapierGrant | None:
    """`zapier`: true (everything), false or absent (nothing: None), or {apps, actions, triggers} (only those)."""
    value = sec.get("zapier")
    if value is None or value is False:
        return None
    if value is True:
        return ZapierGrant(everything=True)
    if not isinstance(value, dict):
        raise ConfigError(sec.name("zapier"), "expected true, false, or a mapping of apps, actions and triggers")
    grant = sec.section("zapier")

    def keys(kind: str) -> frozenset[str]:
        names = grant.str_list(kind)
        bad = [n for n in names if not (_ZAPIER_KEY.fullmatch(n) or (kind == "apps" and _UUID.fullmatch(n)))]
        if bad:
            what = {"apps": "a Zapier app UUID or app key", "actions": "an action key"}.get(kind, "a trigger key")
            raise ConfigError(grant.name(kind), f"each entry must be {what}, got {bad[0][:64]!r}")
        return frozenset(n.lower() if _UUID.fullmatch(n) else n for n in names)

    lists = grant.read(apps=lambda: keys("apps"), actions=lambda: keys("actions"), triggers=lambda: keys("triggers"))
    return ZapierGrant(False, lists["apps"], lists["actions"], lists["triggers"])


def _tls(sec: Section) -> TlsSettings | None:
    """`listen.tls`: cert_file, key_file (PEM), optional client_ca_file and require_client_cert."""
    if not sec.raw:
        return None
    names = ("cert_file", "key_file", "client_ca_file")
    files = {key: sec.attempt(_tls_file, sec, key) for key in names}
    required = sec.attempt(sec.flag, "require_client_cert")
    if required and not sec.present("client_ca_file"):
        sec.error("require_client_cert", "needs client_ca_file (the CA of client certificates)")
    sec.done()
    cert, key, ca = files["cert_file"], files["key_file"], files["client_ca_file"]
    assert cert is not None and key is not None  # nosec B101 - done() refuses the section when either failed
    if not sec.options.offline:
        _check_tls_files(sec, cert, key, ca)
    return TlsSettings(Path(cert), Path(key), Path(ca) if ca else None, bool(required))


def _tls_file(sec: Section, key: str) -> str | None:
    value: str | None = sec.text(key, required=key != "client_ca_file")
    if value is not None and not sec.options.offline and not Path(value).is_file():
        raise ConfigError(sec.name(key), f"no such file: {value}")
    return value


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


MAX_LISTEN_TIMEOUT = 3600.0  # seconds: a listener waits at most an hour for a head, a body or a keep-alive


def _timeout(sec: Section, key: str, default: float) -> float:
    seconds = sec.positive_duration(key, default)
    if seconds > MAX_LISTEN_TIMEOUT:
        raise ConfigError(sec.name(key), f"must be at most {MAX_LISTEN_TIMEOUT:g}s (1h)")
    return seconds


def _listen_timeouts(sec: Section) -> ListenTimeouts | None:
    d = ListenTimeouts()
    head = sec.attempt(_timeout, sec, "head_timeout", d.head)
    body = sec.attempt(_timeout, sec, "body_timeout", d.body)
    keepalive = sec.attempt(_timeout, sec, "keepalive_timeout", d.keepalive)
    if head is None or body is None or keepalive is None:
        return None
    return ListenTimeouts(head=head, body=body, keepalive=keepalive)


def _canary(sec: Section) -> CanarySettings:
    return CanarySettings(**sec.read(
        jwks_url=lambda: sec.required_text("jwks_url"),
        interval=lambda: sec.duration("interval", "1m"),
        timeout=lambda: sec.duration("timeout", "5s"),
    ))


def _bucket(sec: Section) -> str:
    bucket = sec.required_text("bucket")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(sec.name("bucket"), f"not an S3 bucket name: {bucket[:70]!r}")
    return bucket


def _key_prefix(sec: Section) -> str:
    prefix = sec.get("key_prefix", "")
    if not isinstance(prefix, str):
        raise ConfigError(sec.name("key_prefix"), "expected a string")
    if prefix.startswith("/"):
        raise ConfigError(sec.name("key_prefix"), "must not start with / (S3 keys are relative)")
    return prefix


def _mirror(sec: Section, backend: BackendSettings | None) -> MirrorSettings:
    kms = backend if isinstance(backend, KmsSettings) else None
    return MirrorSettings(**sec.read(
        bucket=lambda: _bucket(sec),
        key_prefix=lambda: _key_prefix(sec),
        region=lambda: sec.text("region", kms.region if kms else None),
        endpoint_url=lambda: sec.text("endpoint_url", kms.endpoint_url if kms else None),
    ))


def _token_exchange(
    sec: Section, keysets: Mapping[str, KeysetSettings], refused: Collection[str]
) -> TokenExchangeSettings:
    exchange = read_token_exchange(sec, {k: v.alg for k, v in keysets.items()}, refused)
    keyset = keysets.get(exchange.keyset)
    if keyset is not None and exchange.jwt_ttl > keyset.max_token_ttl:
        raise ConfigError(
            sec.name("jwt_ttl"),
            f"{exchange.jwt_ttl:g}s exceeds keysets.{exchange.keyset}.max_token_ttl ({keyset.max_token_ttl:g}s)",
        )
    return exchange


def _check_clients(
    clients: Mapping[str, ClientSettings], tls: TlsSettings | None, exchange: bool
) -> Iterator[ConfigError]:
    """Across clients: no API key digest or certificate subject names two clients."""
    owners: dict[str, str] = {}
    subjects: dict[str, str] = {}
    for client in clients.values():
        for digest in client.api_key_digests:
            if digest in owners:
                yield ConfigError(f"clients.{client.name}.api_key_sha256", f"same API key as {owners[digest]}")
            owners.setdefault(digest, client.name)
        if client.cert_subjects and (tls is None or tls.client_ca_file is None):
            yield ConfigError(f"clients.{client.name}.cert_subjects", "needs listen.tls.client_ca_file")
        for subject in client.cert_subjects:
            if subject in subjects:
                yield ConfigError(f"clients.{client.name}.cert_subjects", f"{subject!r} also names {subjects[subject]}")
            subjects.setdefault(subject, client.name)
        if client.zapier and not exchange:
            yield ConfigError(f"clients.{client.name}.zapier", "needs a token_exchange section")


def timing_errors(ks: KeysetSettings, jwks: JwksSettings, refresh_interval: float, clock_skew: float
                  ) -> Iterator[ConfigError]:
    """The timing invariants of one keyset's key lifecycle, each broken one a ConfigError naming the bound."""
    j, i, s, p = jwks, refresh_interval, clock_skew, f"keysets.{ks.name}"
    need_a = max(j.max_age + j.stale_while_revalidate, j.verifier_cache) + i + s
    if ks.publish_ahead < need_a:
        yield ConfigError(
            f"{p}.publish_ahead",
            f"{ks.publish_ahead:g}s is too short: must be >= max(jwks.max_age + jwks.stale_while_revalidate, "
            f"jwks.verifier_cache) + backend.refresh_interval + clock_skew = {need_a:g}s, so that every "
            "verifier has the key cached before it signs",
        )
    need_r = ks.max_token_ttl + i + s
    if ks.retain_after < need_r:
        yield ConfigError(
            f"{p}.retain_after",
            f"{ks.retain_after:g}s is too short: must be >= max_token_ttl + backend.refresh_interval + "
            f"clock_skew = {need_r:g}s, so that every token stays verifiable until it expires",
        )
    if ks.rotation_period <= ks.publish_ahead:
        yield ConfigError(
            f"{p}.rotation_period",
            f"{ks.rotation_period:g}s must be greater than publish_ahead ({ks.publish_ahead:g}s)",
        )
    if ks.max_token_ttl > ks.rotation_period:
        yield ConfigError(
            f"{p}.max_token_ttl",
            f"{ks.max_token_ttl:g}s must not exceed rotation_period ({ks.rotation_period:g}s)",
        )
    if ks.max_token_ttl < 1:  # tokens carry whole seconds: below 1s every token would expire on issue
        yield ConfigError(f"{p}.max_token_ttl", "must be at least 1s")


def check_invariants(settings: Settings) -> None:
    """The timing invariants of every keyset. Raises one ConfigError listing each broken bound."""
    collector = Collector()
    for ks in settings.keysets.values():
        for error in timing_errors(ks, settings.jwks, settings.backend.refresh_interval, settings.clock_skew):
            collector.add(error)
    collector.check()


def _listen(listen: Section) -> tuple[Address, Address, TlsSettings | None, ListenTimeouts]:
    public = listen.attempt(lambda: _address(listen.text("public", "0.0.0.0:8080"), "listen.public"))
    internal = listen.attempt(lambda: _address(listen.text("internal", "127.0.0.1:8081"), "listen.internal"))
    tls = listen.attempt(lambda: _tls(listen.section("tls")))
    timeouts = _listen_timeouts(listen)
    if public and internal and (public.host, public.port) == (internal.host, internal.port) and public.port:
        listen.error("internal", "must differ from listen.public")
    listen.done()
    assert public is not None and internal is not None and timeouts is not None  # nosec B101 - done() refused
    return public, internal, tls, timeouts


def _jwks(sec: Section) -> JwksSettings:
    return JwksSettings(**sec.read(
        max_age=lambda: sec.duration("max_age", "5m"),
        stale_while_revalidate=lambda: sec.duration("stale_while_revalidate", "1m"),
        stale_if_error=lambda: sec.duration("stale_if_error", "1d"),
        verifier_cache=lambda: sec.duration("verifier_cache", "10m"),
    ))


def _log(sec: Section) -> tuple[bool, str]:
    v = sec.read(access=lambda: sec.flag("access", True), public=lambda: sec.choice("public", LOG_PUBLIC))
    return v["access"], v["public"]


def _keysets(
    top: Section, backend: BackendSettings | None
) -> tuple[list[tuple[str, Section]], dict[str, KeysetSettings]]:
    """Every keyset declared (its section), and those valid by name; at most one is the default."""
    sec = top.attempt(top.section, "keysets")
    declared = sec.named() if sec is not None else []
    keysets = {}
    for name, keyset_sec in declared:
        keyset = top.attempt(_keyset, name, keyset_sec, backend.type if backend else None)
        if keyset is not None:
            keysets[name] = keyset
    defaults = [k.name for k in keysets.values() if k.default]
    if len(defaults) > 1:
        top.collector.add(ConfigError(f"keysets.{defaults[1]}.default", "only one keyset may be the default"))
    return declared, keysets


def _clients(top: Section, keysets: list[str] | None) -> dict[str, ClientSettings]:
    """The valid clients by name (`keysets`: every keyset declared, None when none is)."""
    sec = top.attempt(top.section, "clients")
    clients = {}
    for name, client_sec in sec.named() if sec is not None else []:
        client = top.attempt(_client, name, client_sec, keysets)
        if client is not None:
            clients[name] = client
    return clients


def parse_settings(raw: object, options: ReadOptions | None = None, *, document: Document | None = None) -> Settings:
    """Validate a parsed YAML document into Settings. Every section is read even after a refusal, so the
    one ConfigError raised lists every problem found, each naming its field (and its line, given the
    `document` it came from); an invariant between fields is checked once those fields are valid."""
    collector = Collector(document.line if document is not None else None)
    top = Section(raw, "", options, collector)
    ok = collector.attempt
    listen = ok(lambda: _listen(top.section("listen")))
    backend = ok(lambda: _backend(top.section("backend")))
    jwks = ok(lambda: _jwks(top.section("jwks")))
    clock_skew = ok(top.duration, "clock_skew", "60s")
    declared, keysets = _keysets(top, backend)
    clients = _clients(top, [name for name, _ in declared] if declared else None)
    refused = [name for name, _ in declared if name not in keysets]
    exchange = ok(lambda: _token_exchange(top.section("token_exchange"), keysets, refused)) \
        if top.present("token_exchange") else None
    for error in _check_clients(clients, listen[2] if listen else None, top.present("token_exchange")):
        collector.add(error)
    canary = ok(lambda: _canary(top.section("canary"))) if top.present("canary") else None
    mirror = ok(lambda: _mirror(top.section("mirror"), backend)) if top.present("mirror") else None
    log = ok(lambda: _log(top.section("log")))
    public_url = ok(public_base_url, top, "public_url")
    if top.raw.get("keysets") in (None, {}):
        collector.add(top.missing("keysets", "at least one keyset is required"))
    ok(top.done)
    if jwks is not None and backend is not None and clock_skew is not None:
        for keyset in keysets.values():
            for error in timing_errors(keyset, jwks, backend.refresh_interval, clock_skew):
                collector.add(error)
    collector.check()
    assert listen and backend and jwks and clock_skew is not None and log  # nosec B101 - check() raised
    return Settings(
        listen_public=listen[0],
        listen_internal=listen[1],
        backend=backend,
        clock_skew=clock_skew,
        jwks=jwks,
        keysets=keysets,
        clients=clients,
        token_exchange=exchange,
        canary=canary,
        mirror=mirror,
        access_log=log[0],
        tls=listen[2],
        listen_timeouts=listen[3],
        log_public=log[1],
        public_url=public_url,
    )


def parse_yaml(text: str, options: ReadOptions | None = None) -> Settings:
    """Parse YAML text into Settings (an empty document is refused as such)."""
    document = read_document(text)
    if document.empty:
        raise ConfigError("config", "the file is empty: it needs at least a backend and one keyset")
    return parse_settings(document.data, options, document=document)


def load_settings(path: str | Path, options: ReadOptions | None = None) -> Settings:
    """Read and validate a YAML configuration file; a ConfigError names the file and each problem's line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError("config", f"cannot read {path}: {type(exc).__name__}: {reason}") from None
    try:
        return parse_yaml(text, options)
    except ConfigError as exc:
        raise ConfigError.collected(exc.problems, str(path)) from None
