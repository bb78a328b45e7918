"""`keysvc zapier ...`: an operator drives the embed gateway of a running keysvc by hand, through its
internal listener (so the replica's access-token cache and Partner API budget are the ones used).

    keysvc zapier [--url URL] connections --user U --tenant T --app APP
    keysvc zapier apps --user U --tenant T [--query TEXT]
    keysvc zapier actions --user U --tenant T --app APP [--action-type WRITE]
    keysvc zapier run --user U --tenant T --app APP --action KEY --action-type WRITE
                      [--connection ID] [--inputs JSON] [--wait SECONDS]
    keysvc zapier status RUN_ID --user U --tenant T [--wait SECONDS]

The API key is read from --api-key-file or $KEYSVC_API_KEY (never a command-line argument: it would show
in `ps`). Answers are printed as JSON. Exit status: 0, or for runs 0 success, 1 error, 3 still pending.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from keysvc.errors import InvalidRequest, RequestError

EXIT_RUN_ERROR, EXIT_PENDING = 1, 3
RUN_EXIT = {"success": 0, "error": EXIT_RUN_ERROR, "pending": EXIT_PENDING}


def add_zapier_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `keysvc zapier` and its commands to the `keysvc` parser's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "zapier", help="drive the Zapier embed gateway of a running keysvc (connections, actions, runs)",
        description="Call a running keysvc's /v1/zapier/* routes as a client with `zapier: true`.",
    )
    parser.add_argument("--url", default=os.environ.get("KEYSVC_URL", "http://127.0.0.1:8081"),
                        help="keysvc's internal listener (default: $KEYSVC_URL or http://127.0.0.1:8081)")
    parser.add_argument("--api-key-file", metavar="FILE", help="the client's API key (default: $KEYSVC_API_KEY)")
    commands = parser.add_subparsers(dest="zapier_command", required=True, metavar="COMMAND")

    def user(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--user", required=True, help="user id (the partner JWT's sub)")
        p.add_argument("--tenant", required=True, help="tenant id (the configured tenant claim)")
        return p

    p = user(commands.add_parser("connections", help="the user's connections of an app, and a usable one"))
    p.add_argument("--app", required=True, help="Zapier's app id (a UUID)")
    p = user(commands.add_parser("apps", help="one page of Zapier's apps"))
    p.add_argument("--query", help="search text")
    p = user(commands.add_parser("actions", help="an app's actions by key"))
    p.add_argument("--app", required=True, help="Zapier's app id (a UUID)")
    p.add_argument("--action-type", help="READ, WRITE, SEARCH, ...")
    p = user(commands.add_parser("run", help="run an action and print its result"))
    p.add_argument("--app", required=True, help="Zapier's app id (a UUID)")
    p.add_argument("--action", required=True, help="the action's key (keysvc zapier actions)")
    p.add_argument("--action-type", required=True, help="READ, WRITE, SEARCH, ...")
    p.add_argument("--connection", help="the connection id (omit for an app without authentication)")
    p.add_argument("--inputs", default="{}", help="the inputs as a JSON object")
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the result (default 30)")
    p = user(commands.add_parser("status", help="an action run's status"))
    p.add_argument("run_id", help="the run's id")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result")
    parser.set_defaults(fn=zapier_command)
    return parser


def api_key(args: argparse.Namespace) -> str:
    """The client's API key from --api-key-file or $KEYSVC_API_KEY."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"cannot read --api-key-file: {type(exc).__name__}") from None
    else:
        key = os.environ.get("KEYSVC_API_KEY", "").strip()
    if not key:
        raise InvalidRequest("no API key: pass --api-key-file FILE or set KEYSVC_API_KEY")
    return key


def zapier_command(args: argparse.Namespace) -> int:
    """Run one `keysvc zapier` command; keysvc's errors propagate (printed by keysvc.cli, exit 1)."""
    from keysvc.client.zapier import SyncZapierClient  # httpx: loaded when a zapier command runs, not by serve

    try:
        answer = _call(SyncZapierClient, args)
    except RequestError as exc:  # the running keysvc's answer: its code matters to the operator
        print(f"keysvc: {exc.code}: {exc.description}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    command = args.zapier_command
    return RUN_EXIT.get(str(answer.get("status")), 0) if command in ("run", "status") else 0


def _call(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    with client(args.url, api_key(args)) as zapier:
        command, u, t = args.zapier_command, args.user, args.tenant
        if command == "connections":
            answer = zapier.connections(u, t, args.app)
        elif command == "apps":
            answer = zapier.apps(u, t, query=args.query)
        elif command == "actions":
            answer = zapier.actions(u, t, args.app, args.action_type)
        elif command == "run":
            answer = zapier.run(u, t, args.app, args.action, args.action_type, args.connection,
                                _inputs(args.inputs), wait=args.wait)
        else:
            answer = zapier.run_status(u, t, args.run_id, wait=args.wait)
    return dict(answer)


def _inputs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest("--inputs must be a JSON object, e.g. '{\"channel\": \"C1\"}'")
    return value
