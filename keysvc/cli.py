"""`keysvc` command line: argument parsing only; the work is done by the package."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from keysvc import __version__, lifecycle, operations
from keysvc.backends.registry import open_backend
from keysvc.client.zapier_command import add_zapier_parser
from keysvc.clock import SystemClock
from keysvc.config import Address, KeysetSettings, ReadOptions, Settings, load_settings, parse_settings
from keysvc.errors import ConfigError, Conflict, KeysvcError, NotFound, RequestError
from keysvc.extras import SERVER_EXTRA, missing_server_extra
from keysvc.jwks import build
from keysvc.keyring import Keyring
from keysvc.logs import setup
from keysvc.records import KeyRecord

DEV_DIR = Path(".keysvc-dev")
EXIT_FAILED = 1  # the operation failed or was refused
EXIT_USAGE = 2  # bad command line (argparse)
EXIT_CONFIG = 78  # EX_CONFIG (sysexits.h): the configuration is invalid
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
T = TypeVar("T")
EPILOG = """configuration: --config FILE or $KEYSVC_CONFIG (YAML), or --dev for the embedded development default
  (not both); --config and --dev go before or after the command. `keysvc config example` prints a starter file.
logging: --log-level (before or after the command) or $KEYSVC_LOG_LEVEL: debug, info (default), warning,
  error, critical (any case); the libraries' own log lines (HTTP, AWS) only with debug. Times are ISO 8601 UTC.
running replicas: `keys rotate/revoke --server URL` act through a running replica (served at once); without
  --server they write the backend, which running replicas read within backend.refresh_interval.
exit status: 0 success; 1 the operation failed or was refused (a rotation not yet safe, an unknown keyset
  or kid, an address in use, a server unreachable, a zapier call refused or a zapier run that ended in
  error, the server extra not installed); 2 usage error (bad arguments, --dev with --config, no API key);
  3 a zapier run still pending; 78 configuration error (EX_CONFIG: the configuration is invalid or
  unreadable, or a --pem or --api-key-file file cannot be read).
"""
DEV_PUBLIC = Address("127.0.0.1", 8080)
DEV_INTERNAL = Address("127.0.0.1", 8081)
# third-party loggers a command line keeps quiet unless --log-level debug
LIBRARY_LOGGERS = ("httpx", "httpcore", "botocore", "boto3", "urllib3", "s3transfer", "aiohttp", "apscheduler")


class Failed(KeysvcError):
    """A command could not do what it was asked; the message is the whole explanation (exit status 1)."""


class Unreadable(KeysvcError):
    """A file named on the command line cannot be read (exit status 78, as a configuration that cannot)."""


def new_api_key() -> tuple[str, str]:
    """A fresh API key and its SHA-256 (hex), the only form the config holds."""
    key = "ks_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def dev_settings(directory: Path = DEV_DIR, public: Address = DEV_PUBLIC,
                 internal: Address = DEV_INTERNAL,
                 token_exchange: Mapping[str, Any] | None = None) -> tuple[Settings, Path]:
    """The embedded development configuration: file backend under ./.keysvc-dev/, both listeners on
    127.0.0.1 (8080, 8081 unless given), and a dev admin client whose API key is kept in a 0600 file
    (created on first use). The issuer is the public listener's URL. With a `token_exchange` section, its
    gateway store is SQLite under the same directory unless the section names one (dev_store)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    key_file = directory / "dev-client.key"
    if not key_file.exists():
        key, _ = new_api_key()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    digest = hashlib.sha256(key_file.read_text().strip().encode()).hexdigest()
    raw = {
        "listen": {"public": str(public), "internal": str(internal)},
        "backend": {"type": "file", "path": str(directory / "keys"), "refresh_interval": "30s"},
        "keysets": {
            "dev": {
                "default": True,
                "issuer": f"http://{public}",
                "alg": "ES256",
                "rotation_period": "30d",
                "publish_ahead": "2d",
                "retain_after": "1d",
                "max_token_ttl": "5m",  # nosec B105 - a duration, not a password
            }
        },
        "clients": {
            "dev": {
                "api_key_sha256": digest,
                "keysets": ["dev"],
                "audiences": ["connect.zapier.com", "dev"],
                "max_ttl": "5m",
                "admin": True,
            }
        },
    }
    if token_exchange is not None:
        raw["token_exchange"] = dev_store(token_exchange, directory)
    return parse_settings(raw), key_file


def dev_store(token_exchange: Mapping[str, Any], directory: Path = DEV_DIR) -> dict[str, Any]:
    """A development `token_exchange` section with its gateway store: SQLite at <directory>/gateway.db
    (one replica) unless the section configures a store itself."""
    section = dict(token_exchange)
    section.setdefault("store", {"url": f"sqlite:///{directory / 'gateway.db'}"})
    return section


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "dev", False):
        public = getattr(args, "listen_public", None) or DEV_PUBLIC
        internal = getattr(args, "listen_internal", None) or DEV_INTERNAL
        settings, key_file = dev_settings(public=public, internal=internal)
        args.dev_key_file = key_file
        return settings
    path = args.config or os.environ.get("KEYSVC_CONFIG")
    if not path:
        raise ConfigError("config", "no configuration: pass --config FILE, set KEYSVC_CONFIG, or use --dev")
    return load_settings(path, ReadOptions(offline=getattr(args, "offline", False)))


def listen_address(value: str) -> Address:
    """An address flag: HOST:PORT (`[::1]:8080` for IPv6; port 0 picks a free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
    return Address(host.strip("[]"), int(port))


def cmd_serve(args: argparse.Namespace) -> int:
    from keysvc.logs import LOG
    from keysvc.serve import ListenError, serve

    settings = _settings(args)
    if args.listen_public is not None:
        settings = dataclasses.replace(settings, listen_public=args.listen_public)
    if args.listen_internal is not None:
        settings = dataclasses.replace(settings, listen_internal=args.listen_internal)
    if args.dev:
        LOG.warning(
            "development mode: file keys under ./.keysvc-dev/, not for production",
            extra={"dev_api_key_file": str(args.dev_key_file.resolve())},
        )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        pass
    try:
        asyncio.run(serve(settings))
    except ListenError as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_config_example(args: argparse.Namespace) -> int:
    from keysvc.starter import example

    sys.stdout.write(example("gateway" if args.gateway else "kms" if args.kms else "file"))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    offline = " (offline: secrets and TLS files configured, not read)" if args.offline else ""
    print(
        f"ok: {len(settings.keysets)} keyset(s), {len(settings.clients)} client(s), "
        f"backend {settings.backend.type}{offline}"
    )
    if not args.connect:
        return 0
    from keysvc import preflight

    checks = preflight.run(settings)
    for check in checks:
        print(check.line(), flush=True)
    return preflight.exit_status(checks)


def _now() -> float:
    return time.time()


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    records = _read(settings, list(settings.keysets.values()))
    now = _now()
    rows = [row for ks in settings.keysets.values() for row in operations.describe(records[ks.name], ks, now)]
    if args.json:
        print(json.dumps({"keys": rows}, indent=2))
        return 0
    columns = ("keyset", "kid", "alg", "state", "created_at", "activates_at", "superseded_at", "removes_at")
    table = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _cell(value: object) -> str:
    if isinstance(value, float):
        return iso(value)
    return "-" if value is None else str(value)


def iso(value: float) -> str:
    """A time for people: ISO 8601, UTC, whole seconds (`2026-12-07T02:10:00Z`)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))


def _iso_or_none(value: object) -> object:
    return iso(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _read(settings: Settings, keysets: Sequence[KeysetSettings]) -> dict[str, list[KeyRecord]]:
    """Read-only commands: the records of some keysets straight from the backend (no reconcile, no write)."""
    backend = open_backend(settings.backend, "cli")
    try:
        return {ks.name: backend.load(ks.name) for ks in keysets}
    finally:
        backend.close()


def _with_keyring(settings: Settings, work: Callable[[Keyring], Awaitable[T]]) -> T:
    """Run `work` on a keyring over the configured backend: the write API the HTTP admin routes use, so
    the CLI's writes run the same sequence and are audited the same way (actor `cli:<user>`)."""

    async def run() -> T:
        keyring = Keyring(settings, open_backend(settings.backend, "cli"), SystemClock(), "cli")
        try:
            return await work(keyring)
        finally:
            keyring.close()

    return asyncio.run(run())


def _print_result(result: dict[str, object]) -> None:
    print(json.dumps({k: _iso_or_none(v) if k.endswith("_at") else v for k, v in result.items()}))


def _refused(exc: RequestError) -> Failed:
    """A rotation the lifecycle refuses, said for a command line: the flag that overrides it."""
    return Failed(f"rotation refused: {exc.description.replace(lifecycle.FORCE_IT, 'pass --force')}")


def _key_file_needs_server(args: argparse.Namespace) -> None:
    """--api-key-file without --server would be ignored while the command writes the backend: a usage error."""
    if args.api_key_file and not args.server:
        raise argparse.ArgumentTypeError("--api-key-file needs --server URL (without --server the command writes "
                                         "the backend directly and uses no API key)")


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    _key_file_needs_server(args)
    if args.server:
        body: dict[str, object] = {"force": True} if args.force else {}
        try:
            result = _admin_call(args, f"/v1/keysets/{args.keyset}/rotate", body)
        except Conflict as exc:
            raise _refused(exc) from None
        _print_result(result)
        return 0
    settings = _settings(args)
    ks = _keyset(settings, args.keyset)
    try:
        record = _with_keyring(settings, lambda keyring: keyring.rotate(ks.name, f"cli:{_user()}", force=args.force))
    except Conflict as exc:
        raise _refused(exc) from None
    _print_result({"keyset": ks.name, "active_kid": record.kid, "activated_at": record.activates_at})
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    _key_file_needs_server(args)
    if args.server:
        try:
            _print_result(_admin_call(args, f"/v1/keys/{args.kid}/revoke", {}))
        except NotFound:
            raise Failed(f"no key with kid {args.kid!r} in the keysets this API key administers on {args.server}") \
                from None
        return 0
    settings = _settings(args)
    try:
        record = _with_keyring(settings, lambda keyring: keyring.revoke(args.kid, f"cli:{_user()}"))
    except NotFound:
        raise Failed(f"no such key: no key with kid {args.kid!r} in any keyset") from None
    _print_result({"keyset": record.keyset, "kid": record.kid, "revoked_at": record.revoked_at})
    return 0


def _admin_call(args: argparse.Namespace, path: str, body: dict[str, object]) -> dict[str, object]:
    """POST to a running replica's admin API (`--server URL`, `--api-key-file FILE`): the replica writes the
    backend and serves the change at once. Its error answers become this command's errors."""
    import httpx

    from keysvc.errors import InvalidClient, InvalidRequest

    if not args.api_key_file:
        raise argparse.ArgumentTypeError("--server needs --api-key-file FILE (an admin client's API key)")
    api_key = _read_text(args.api_key_file, "--api-key-file").strip()
    url = args.server.rstrip("/") + path
    try:
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    except httpx.HTTPError as exc:
        raise Failed(f"cannot reach {args.server}: {exc or type(exc).__name__}") from None
    try:
        doc = response.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise Failed(f"{args.server} answered HTTP {response.status_code} without a JSON body: is it keysvc's "
                     "internal listener?")
    if response.is_success:
        return doc
    description = str(doc.get("error_description") or doc.get("error") or f"HTTP {response.status_code}")
    error = {409: Conflict, 404: NotFound, 401: InvalidClient, 400: InvalidRequest}.get(response.status_code)
    if error is Conflict:
        raise Conflict(description)
    if error is NotFound and "keysets/" in path:
        raise Failed(f"no keyset named {args.keyset!r} on {args.server}")
    if error is NotFound:
        raise NotFound(description)
    if error is InvalidClient:
        raise Failed(f"{args.server} refused the API key in {args.api_key_file} ({description})")
    raise Failed(f"{args.server} refused: {description} (HTTP {response.status_code})")


def _read_text(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(f"{flag} {path}: cannot read it ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    return (exc.strerror or str(exc)).lower() if isinstance(exc, OSError) else "not text"


def cmd_keys_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ks = _keyset(settings, args.keyset)
    try:
        pem = Path(args.pem).read_bytes()
    except OSError as exc:
        raise Unreadable(f"--pem {args.pem}: cannot read it ({_reason(exc)})") from None
    record = _with_keyring(settings, lambda keyring: keyring.import_key(ks.name, pem, f"cli:{_user()}"))
    _print_result({"keyset": ks.name, "kid": record.kid, "activates_at": record.activates_at})
    return 0


def cmd_jwks(args: argparse.Namespace) -> int:
    settings = _settings(args)
    name = args.keyset or settings.default_keyset or next(iter(settings.keysets))
    ks = _keyset(settings, name)
    status = lifecycle.evaluate(_read(settings, [ks])[ks.name], _now(), operations.policy_of(ks))
    if not status.published:  # the server answers 503 then: an empty key set is never served as if fine
        raise Failed(f"keyset {ks.name!r} has no published key yet (a server answers 503 for it); "
                     "`keysvc serve` creates its keys when it starts")
    print(json.dumps(json.loads(build(status.published).body), indent=2))
    return 0


def cmd_client_new(args: argparse.Namespace) -> int:
    key, digest = new_api_key()
    if args.key_file:
        try:
            fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise Failed(f"--key-file {args.key_file}: cannot create it ({_reason(exc)}); "
                         "keysvc never overwrites a key file") from None
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    entry = {
        "clients": {
            args.name: {
                "api_key_sha256": digest,
                "keysets": args.keyset or ["CHANGE-ME"],
                "audiences": args.audience or ["CHANGE-ME"],
                "max_ttl": "5m",
                "admin": args.admin,
            }
        }
    }
    snippet = yaml.safe_dump(entry, sort_keys=False)
    if args.print_key:  # stdout: the key alone; the entry (no secret in it) on stderr
        print(key)
        print(f"# the config entry of {args.name} (its API key's hash only):", file=sys.stderr)
        print(snippet, end="", file=sys.stderr)
    else:  # stdout: the entry alone, safe to append to a configuration file
        print(f"keysvc: the API key of {args.name} is in {args.key_file} (mode 0600): give it to the client "
              "through a secret store, then delete the file", file=sys.stderr)
        print(snippet, end="")
    return 0


def _keyset(settings: Settings, name: str) -> KeysetSettings:
    if name not in settings.keysets:
        known = ", ".join(settings.keysets)
        raise Failed(f"no keyset named {name!r} in the configuration (keysets: {known})")
    return settings.keysets[name]


def _user() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="keysvc",
        description="Hardened JWKS and signing-key service: keys in files or AWS KMS, rotation by kid, "
        "JWKS with cache headers, authenticated /v1/sign, RFC 8693 token exchange.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"keysvc {__version__}")
    add_log_level(parser, None)
    add_config_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # after the command too; SUPPRESS keeps a value given before the command
        add_config_options(p, argparse.SUPPRESS)
        return p

    p = with_config(sub.add_parser("serve", help="run the service (public and internal listeners)"))
    p.add_argument("--listen-public", type=listen_address, metavar="ADDR",
                   help="HOST:PORT of the public listener (JWKS, health); overrides listen.public")
    p.add_argument("--listen-internal", type=listen_address, metavar="ADDR",
                   help="HOST:PORT of the internal listener (/v1/*, /metrics); overrides listen.internal")
    p.set_defaults(fn=cmd_serve)
    config = sub.add_parser("config", help="starter configurations").add_subparsers(
        dest="config_command", required=True, metavar="ACTION"
    )
    p = config.add_parser("example", help="print a starter configuration that check-config --offline accepts")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--gateway", action="store_true", help="with the token exchange and the Zapier gateway")
    shape.add_argument("--kms", action="store_true", help="with the AWS KMS backend instead of files")
    p.set_defaults(fn=cmd_config_example)
    p = with_config(sub.add_parser("check-config", help="validate the configuration and exit"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true",
                      help="check that secrets and TLS files are configured, not that they are readable here")
    mode.add_argument("--connect", action="store_true",
                      help="also prove the backend, IAM, the S3 mirror and the partner URLs work from here "
                      "(exit 1 if any check fails)")
    p.set_defaults(fn=cmd_check_config)
    keys_help = "inspect and operate keys (on the backend, or through a running server)"
    keys = sub.add_parser("keys", help=keys_help).add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = with_config(keys.add_parser("list", help="every key: keyset, kid, alg, state and its times"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_keys_list)
    p = with_config(keys.add_parser("rotate", help="promote the pending key now (emergency rotation)",
                                    description=WRITE_TIMING, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("keyset")
    p.add_argument("--force", action="store_true", help="promote even if verifiers may not have the key cached yet")
    add_server_options(p)
    p.set_defaults(fn=cmd_keys_rotate)
    p = with_config(keys.add_parser("revoke", help="remove a key from the JWKS and from signing",
                                    description=WRITE_TIMING, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("kid")
    add_server_options(p)
    p.set_defaults(fn=cmd_keys_revoke)
    p = with_config(keys.add_parser("import", help="adopt an existing private key as the keyset's next key"))
    p.add_argument("keyset")
    p.add_argument("--pem", required=True, metavar="FILE", help="unencrypted PKCS#8 or PKCS#1 PEM private key")
    p.set_defaults(fn=cmd_keys_import)
    p = with_config(sub.add_parser("jwks", help="print the JWKS of a keyset as served now"))
    p.add_argument("keyset", nargs="?")
    p.set_defaults(fn=cmd_jwks)
    client = sub.add_parser("client", help="manage API clients").add_subparsers(
        dest="client_command", required=True, metavar="ACTION"
    )
    p = client.add_parser("new", help="a fresh API key (to a 0600 file or, when asked, stdout) and the config "
                          "entry holding only its hash")
    p.add_argument("name")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--key-file", metavar="PATH",
                     help="write the API key to PATH (created, mode 0600); stdout gets the config entry alone")
    out.add_argument("--print-key", action="store_true",
                     help="print the API key alone on stdout; the config entry goes to stderr")
    p.add_argument("--keyset", action="append", help="keyset the client may use (repeatable)")
    p.add_argument("--audience", action="append", help="audience the client may sign for (repeatable)")
    p.add_argument("--admin", action="store_true", help="may rotate, revoke and list keys")
    p.set_defaults(fn=cmd_client_new)
    from keysvc.client.exchange_command import add_exchange_parser

    with_config(add_exchange_parser(sub)).set_defaults(fn=cmd_exchange)
    add_zapier_parser(sub)
    for leaf in leaf_parsers(parser):  # a global option goes after the command too (SUPPRESS: keep one before it)
        add_log_level(leaf, argparse.SUPPRESS)
    return parser


def add_log_level(parser: argparse.ArgumentParser, default: object) -> None:
    """--log-level, on the top-level parser (`default` None) and on each command (SUPPRESS)."""
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL", default=default,
                        help="debug, info, warning, error or critical (default: $KEYSVC_LOG_LEVEL or info)")


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of the commands that run something (`keys rotate`, `zapier run`, ...), depth first."""
    children = [choice for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                for choice in dict.fromkeys(action.choices.values())]
    return [leaf for child in children for leaf in leaf_parsers(child)] if children else [parser]


def cmd_exchange(args: argparse.Namespace) -> int:
    """`keysvc exchange`: sign in this process with the configured backend's active key, exchange once."""
    from keysvc.client.exchange_command import run_exchange_async
    from keysvc.partner.keyring_signer import KeyringSigner

    settings = _settings(args)
    exchange = settings.token_exchange
    if exchange is None:
        raise ConfigError("token_exchange", "not configured: `keysvc exchange` needs a token_exchange section")

    async def run(keyring: Keyring) -> int:
        await keyring.refresh(exchange.keyset)
        return await run_exchange_async(args, exchange, KeyringSigner(keyring, settings.keysets, exchange.keyset))

    return _with_keyring(settings, run)


WRITE_TIMING = """When it takes effect: with --server URL the command goes through that running replica's admin API
(an admin client's API key in --api-key-file): that replica serves the change at once and the others
within backend.refresh_interval. Without --server it writes the backend directly (no server needed):
running replicas serve the change within backend.refresh_interval (30s by default)."""


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--server URL and --api-key-file FILE: act through a running replica's admin API."""
    parser.add_argument("--server", metavar="URL",
                        help="a running replica's internal listener (e.g. http://127.0.0.1:8081): act through "
                        "its admin API, served at once")
    parser.add_argument("--api-key-file", metavar="FILE", help="file holding an admin client's API key (--server)")


def add_config_options(parser: argparse.ArgumentParser, default: object) -> None:
    """--config and --dev, on the top-level parser (`default` None) and on each command (SUPPRESS)."""
    parser.add_argument("--config", metavar="FILE", default=default,
                        help="YAML configuration (default: $KEYSVC_CONFIG)")
    parser.add_argument("--dev", action="store_true", default=False if default is None else default,
                        help="use the embedded development configuration")


def log_level(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """--log-level, else $KEYSVC_LOG_LEVEL (any case), else INFO; an unknown level is a usage error."""
    if args.log_level:
        return str(args.log_level)
    level = os.environ.get("KEYSVC_LOG_LEVEL", "INFO").strip().upper()
    if level not in LOG_LEVELS:
        parser.error(f"KEYSVC_LOG_LEVEL: invalid level {level.lower()!r} (choose from {', '.join(LOG_LEVELS).lower()})")
    return level


# A kid is an RFC 7638 SHA-256 thumbprint: 43 base64url characters, and one in 64 begins with "-"
_DASHED_KID = re.compile(r"-[A-Za-z0-9_-]{42}")


def kid_as_positional(argv: Sequence[str]) -> list[str]:
    """`keysvc keys revoke -AbC...`: argparse would read a kid that begins with "-" as an unknown option. It
    goes last, after "--" (the only positional of `keys revoke`); every other command line is unchanged."""
    args = list(argv)
    if "revoke" not in args or "--" in args:
        return args
    dashed = [a for a in args[args.index("revoke") + 1:] if _DASHED_KID.fullmatch(a)]
    if len(dashed) != 1:
        return args
    args.remove(dashed[0])
    return [*args, "--", dashed[0]]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `keysvc` command."""
    parser = build_parser()
    args = parser.parse_args(kid_as_positional(sys.argv[1:] if argv is None else argv))
    if getattr(args, "dev", False) and getattr(args, "config", None):
        parser.error("--dev and --config exclude each other: --dev runs the embedded development configuration")
    serving = args.command == "serve"
    level = log_level(parser, args)
    # the server logs to stdout; other commands print their result there and log (audit) to stderr
    setup(level, sys.stdout if serving else sys.stderr)
    if not serving and level != "DEBUG":
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return int(args.fn(args))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    except ConfigError as exc:
        if serving:  # the server's log is JSON: so is its refusal to start
            from keysvc.logs import FIELDS, LOG

            LOG.error("configuration error", extra={FIELDS: {"field": exc.field, "message": exc.message,
                                                             "errors": exc.lines()}})
        else:
            print("\n".join(f"keysvc: configuration error: {line}" for line in exc.lines()), file=sys.stderr)
        return EXIT_CONFIG
    except Unreadable as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RequestError as exc:
        print(f"keysvc: {exc.description}", file=sys.stderr)
        return EXIT_FAILED
    except KeysvcError as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ModuleNotFoundError as exc:
        if not missing_server_extra(exc):
            raise
        print(SERVER_EXTRA, file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
