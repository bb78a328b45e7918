"""`keysvc exchange --user U --tenant T [--connect APP] [--scope S]`: an operator's exchange by hand.

It prints the partner's token: that is its purpose, on the operator's own terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from keysvc.client.exchanger import TokenExchanger
from keysvc.config.exchange import TokenExchangeSettings
from keysvc.errors import RequestError

if TYPE_CHECKING:  # a protocol for annotations: its module loads httpx (RemoteSigner), which `keysvc serve` never needs
    from keysvc.client.signer import TokenSigner


def add_exchange_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `exchange` subcommand to the `keysvc` parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "exchange",
        help="exchange a partner JWT for an access or connect token (prints the token)",
        description="Sign a partner JWT for USER in TENANT and exchange it at the partner's token URL.",
    )
    parser.add_argument("--user", required=True, help="user id (the JWT's sub)")
    parser.add_argument("--tenant", required=True, help="tenant id (the configured tenant claim)")
    parser.add_argument("--connect", metavar="APP", help="ask for a connect token for APP, e.g. SlackAPI")
    parser.add_argument("--scope", help="space-separated scope (default: token_exchange.scope)")
    return parser


def run_exchange(
    args: argparse.Namespace,
    settings: TokenExchangeSettings,
    signer: TokenSigner,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run one exchange in a new event loop; see `run_exchange_async`."""
    return asyncio.run(run_exchange_async(args, settings, signer, out=out, err=err))


async def run_exchange_async(
    args: argparse.Namespace,
    settings: TokenExchangeSettings,
    signer: TokenSigner,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the answer as JSON (exit 0) or the error as JSON on stderr (exit 1). For callers that must
    load a keyring in the same event loop as the signing."""
    try:
        async with TokenExchanger(settings, signer) as exchanger:
            if args.connect:
                result = await exchanger.connect_token(args.user, args.tenant, args.connect, args.scope)
            else:
                result = await exchanger.access_token(args.user, args.tenant, args.scope)
    except RequestError as exc:
        error = {"error": exc.code, "error_description": exc.description}
        print(json.dumps(error), file=err or sys.stderr)
        return 1
    print(json.dumps(result.to_json(), indent=2), file=out or sys.stdout)
    return 0
