"""`keysvc` command line: argument parsing only; the work is done by the package."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import yaml

from keysvc import __version__, lifecycle, operations
from keysvc.backends.registry import open_backend
from keysvc.client.zapier_command import add_zapier_parser
from keysvc.clock import SystemClock
from keysvc.config import KeysetSettings, ReadOptions, Settings, load_settings, parse_settings
from keysvc.errors import ConfigError, InvalidKeyMaterial, KeysvcError, RequestError
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
EPILOG = """configuration: --config FILE or $KEYSVC_CONFIG (YAML), or --dev for the embedded development default;
  --config and --dev go before or after the command.
logging: --log-level or $KEYSVC_LOG_LEVEL: debug, info (default), warning, error, critical (any case).
exit status: 0 success; 1 the operation failed or was refused; 2 usage error (bad arguments);
  78 configuration error (EX_CONFIG).
"""


def new_api_key() -> tuple[str, str]:
    """A fresh API key and its SHA-256 (hex), the only form the config holds."""
    key = "ks_" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def dev_settings(directory: Path = DEV_DIR) -> tuple[Settings, Path]:
    """The embedded development configuration: file backend under ./.keysvc-dev/, both listeners on
    127.0.0.1, and a dev admin client whose API key is kept in a 0600 file (created on first use)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    key_file = directory / "dev-client.key"
    if not key_file.exists():
        key, _ = new_api_key()
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(key + "\n")
    digest = hashlib.sha256(key_file.read_text().strip().encode()).hexdigest()
    raw = {
        "listen": {"public": "127.0.0.1:8080", "internal": "127.0.0.1:8081"},
        "backend": {"type": "file", "path": str(directory / "keys"), "refresh_interval": "30s"},
        "keysets": {
            "dev": {
                "default": True,
                "issuer": "http://127.0.0.1:8080",
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
    return parse_settings(raw), key_file


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "dev", False):
        settings, key_file = dev_settings()
        args.dev_key_file = key_file
        return settings
    path = args.config or os.environ.get("KEYSVC_CONFIG")
    if not path:
        raise ConfigError("config", "no configuration: pass --config FILE, set KEYSVC_CONFIG, or use --dev")
    return load_settings(path, ReadOptions(offline=getattr(args, "offline", False)))


def cmd_serve(args: argparse.Namespace) -> int:
    from keysvc.logs import LOG
    from keysvc.serve import serve

    settings = _settings(args)
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
    asyncio.run(serve(settings))
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
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(value))
    return "-" if value is None else str(value)


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


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ks = _keyset(settings, args.keyset)
    record = _with_keyring(settings, lambda keyring: keyring.rotate(ks.name, f"cli:{_user()}", force=args.force))
    print(json.dumps({"keyset": ks.name, "active_kid": record.kid, "activated_at": record.activates_at}))
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    record = _with_keyring(settings, lambda keyring: keyring.revoke(args.kid, f"cli:{_user()}"))
    print(json.dumps({"keyset": record.keyset, "kid": record.kid, "revoked_at": record.revoked_at}))
    return 0


def cmd_keys_import(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ks = _keyset(settings, args.keyset)
    try:
        pem = Path(args.pem).read_bytes()
    except OSError as exc:
        raise InvalidKeyMaterial(f"cannot read {args.pem}: {exc.strerror}") from None
    record = _with_keyring(settings, lambda keyring: keyring.import_key(ks.name, pem, f"cli:{_user()}"))
    print(json.dumps({"keyset": ks.name, "kid": record.kid, "activates_at": record.activates_at}))
    return 0


def cmd_jwks(args: argparse.Namespace) -> int:
    settings = _settings(args)
    name = args.keyset or settings.default_keyset or next(iter(settings.keysets))
    ks = _keyset(settings, name)
    status = lifecycle.evaluate(_read(settings, [ks])[ks.name], _now(), operations.policy_of(ks))
    print(json.dumps(json.loads(build(status.published).body), indent=2))
    return 0


def cmd_client_new(args: argparse.Namespace) -> int:
    key, digest = new_api_key()
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
    print(f"# API key for {args.name} (shown once; give it to the client, keep it in a secret store):")
    print(f"# {key}")
    print(yaml.safe_dump(entry, sort_keys=False), end="")
    return 0


def _keyset(settings: Settings, name: str) -> KeysetSettings:
    if name not in settings.keysets:
        raise ConfigError("keyset", f"no keyset {name!r} in the configuration")
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
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, metavar="LEVEL",
                        help="debug, info, warning, error or critical (default: $KEYSVC_LOG_LEVEL or info)")
    add_config_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        # after the command too; SUPPRESS keeps a value given before the command
        add_config_options(p, argparse.SUPPRESS)
        return p

    with_config(sub.add_parser("serve", help="run the service (public and internal listeners)")).set_defaults(
        fn=cmd_serve
    )
    p = with_config(sub.add_parser("check-config", help="validate the configuration and exit"))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true",
                      help="check that secrets and TLS files are configured, not that they are readable here")
    mode.add_argument("--connect", action="store_true",
                      help="also prove the backend, IAM, the S3 mirror and the partner URLs work from here "
                      "(exit 1 if any check fails)")
    p.set_defaults(fn=cmd_check_config)
    keys = sub.add_parser("keys", help="inspect and operate keys directly on the backend").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = with_config(keys.add_parser("list", help="every key: keyset, kid, alg, state and its times"))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_keys_list)
    p = with_config(keys.add_parser("rotate", help="promote the pending key now (emergency rotation)"))
    p.add_argument("keyset")
    p.add_argument("--force", action="store_true", help="promote even if verifiers may not have the key cached yet")
    p.set_defaults(fn=cmd_keys_rotate)
    p = with_config(keys.add_parser("revoke", help="remove a key from the JWKS and from signing at once"))
    p.add_argument("kid")
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
    p = client.add_parser("new", help="print a fresh API key once and the config entry holding its hash")
    p.add_argument("name")
    p.add_argument("--keyset", action="append", help="keyset the client may use (repeatable)")
    p.add_argument("--audience", action="append", help="audience the client may sign for (repeatable)")
    p.add_argument("--admin", action="store_true", help="may rotate, revoke and list keys")
    p.set_defaults(fn=cmd_client_new)
    from keysvc.client.exchange_command import add_exchange_parser

    with_config(add_exchange_parser(sub)).set_defaults(fn=cmd_exchange)
    add_zapier_parser(sub)
    return parser


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
    serving = args.command == "serve"
    # the server logs to stdout; other commands print their result there and log (audit) to stderr
    setup(log_level(parser, args), sys.stdout if serving else sys.stderr)
    try:
        return int(args.fn(args))
    except ConfigError as exc:
        if serving:  # the server's log is JSON: so is its refusal to start
            from keysvc.logs import FIELDS, LOG

            LOG.error("configuration error", extra={FIELDS: {"field": exc.field, "message": exc.message}})
        else:
            print(f"keysvc: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RequestError as exc:
        print(f"keysvc: {exc.code}: {exc.description}", file=sys.stderr)
        return EXIT_FAILED
    except KeysvcError as exc:
        print(f"keysvc: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
