"""`keysvc zapier ...`: an operator drives the embed gateway of a running keysvc by hand, through its
internal listener (so the replica's access-token cache and Partner API budget are the ones used).

    keysvc zapier COMMAND [--url URL] [--api-key-file FILE] --user U --tenant T ...
    keysvc zapier apps        [--query TEXT]
    keysvc zapier connections --app APP
    keysvc zapier connect     --app APP [--connect-app SLUG] [--redirect-uri URI] [--reconnect-id ID]
    keysvc zapier complete    --state STATE (--authentication-id ID | --error CODE [--error-description TEXT])
    keysvc zapier actions     --app APP [--action-type WRITE]
    keysvc zapier inputs      --app APP --action KEY --action-type WRITE [--connection ID] [--inputs JSON]
    keysvc zapier choices     --app APP --action KEY --action-type WRITE --input ID [--connection ID]
                              [--inputs JSON] [--page N]
    keysvc zapier run         --app APP --action KEY --action-type WRITE [--connection ID] [--inputs JSON]
                              [--wait SECONDS]
    keysvc zapier status RUN_ID [--wait SECONDS]
    keysvc zapier ensure-inbox --key KEY --app APP_KEY --trigger KEY [--connection ID] [--inputs JSON]
                              [--wait SECONDS]
    keysvc zapier inboxes     [--status STATUS]
    keysvc zapier inbox | pause-inbox | resume-inbox | delete-inbox INBOX_ID
    keysvc zapier lease INBOX_ID [--limit N] [--lease SECONDS] [--wait SECONDS]
    keysvc zapier ack | release INBOX_ID --lease-id ID [--message-id ID ...]

--url and --api-key-file go before or after COMMAND. The API key is read from --api-key-file or
$KEYSVC_API_KEY (never a command-line argument: it would show in `ps`). Every answer is printed as JSON on
stdout; a refusal of the running keysvc is one line `keysvc: CODE: DESCRIPTION` on stderr.

Each command is one row of COMMANDS (name, help, an argument adder, the client call, its exit status): a
new gateway route is a new row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keysvc.errors import RequestError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PENDING, EXIT_CONFIG = 0, 1, 2, 3, 78
RUN_EXIT = {"success": EXIT_OK, "error": EXIT_FAILED, "pending": EXIT_PENDING}
DEFAULT_URL = "http://127.0.0.1:8081"

Adder = Callable[[argparse.ArgumentParser], None]
Caller = Callable[[Any, argparse.Namespace], Mapping[str, Any]]


def _always_ok(answer: Mapping[str, Any]) -> int:
    return EXIT_OK


def run_exit(answer: Mapping[str, Any]) -> int:
    """A run's exit status: 0 success, 1 error, 3 still pending."""
    return RUN_EXIT.get(str(answer.get("status")), EXIT_OK)


@dataclass(frozen=True)
class Command:
    """One `keysvc zapier NAME`: its arguments (beyond --url/--api-key-file/--user/--tenant) and its call on a
    SyncZapierClient; `exit_status` maps the answer to the exit status (0 unless said otherwise)."""

    name: str
    help: str
    add: Adder
    call: Caller
    exit_status: Callable[[Mapping[str, Any]], int] = _always_ok


class Unusable(Exception):
    """The command line is complete but the API key cannot be had; `status` is the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def json_object(text: str) -> dict[str, Any]:
    """argparse type of --inputs: a JSON object (anything else is a usage error)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"channel\": \"C1\"}'")
    return value


# argument adders, combined by the rows below
def _app(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", required=True, help="Zapier's app id (a UUID)")


def _action(p: argparse.ArgumentParser) -> None:
    _app(p)
    p.add_argument("--action", required=True, help="the action's key (keysvc zapier actions)")
    p.add_argument("--action-type", required=True, help="READ, WRITE, SEARCH, ...")
    p.add_argument("--connection", help="the connection id (omit for an app without authentication)")
    p.add_argument("--inputs", type=json_object, default={}, help="the inputs as a JSON object (default {})")


def _apps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--query", help="search text")


def _connect(p: argparse.ArgumentParser) -> None:
    _app(p)
    p.add_argument("--connect-app", metavar="SLUG", help="the app as Zapier Connect names it (e.g. SlackAPI)")
    p.add_argument("--redirect-uri", metavar="URI", help="where Connect sends the browser back (configured)")
    p.add_argument("--reconnect-id", metavar="ID", help="an expired connection to reconnect")


def _complete(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", required=True, help="the state `keysvc zapier connect` printed")
    outcome = p.add_mutually_exclusive_group(required=True)
    outcome.add_argument("--authentication-id", metavar="ID", help="the id Connect returned")
    outcome.add_argument("--error", metavar="CODE", help="the error Connect returned (e.g. access_denied)")
    p.add_argument("--error-description", metavar="TEXT", help="Connect's error_description (with --error)")


def _actions(p: argparse.ArgumentParser) -> None:
    _app(p)
    p.add_argument("--action-type", help="READ, WRITE, SEARCH, ...")


def _choices(p: argparse.ArgumentParser) -> None:
    _action(p)
    p.add_argument("--input", required=True, metavar="ID", help="the dynamic input's id (keysvc zapier inputs)")
    p.add_argument("--page", type=int, help="the page of choices (from 1)")


def _run(p: argparse.ArgumentParser) -> None:
    _action(p)
    p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the result (default 30)")


def _status(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", help="the run's id")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result (default 0)")


def _ensure_inbox(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="the inbox's key (1 to 100 letters, digits, _ . : -)")
    p.add_argument("--app", required=True, help="Zapier's app key (e.g. SlackCLIAPI)")
    p.add_argument("--trigger", required=True, help="the trigger's key (keysvc zapier actions --action-type READ)")
    p.add_argument("--connection", help="the connection id (omit for an app without authentication)")
    p.add_argument("--inputs", type=json_object, default={}, help="the inputs as a JSON object (default {})")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait until it is active (default 0)")


def _inboxes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--status", help="only inboxes with this status (active, paused, initializing, ...)")


def _inbox(p: argparse.ArgumentParser) -> None:
    p.add_argument("inbox_id", help="Zapier's inbox id (keysvc zapier inboxes)")


def _lease(p: argparse.ArgumentParser) -> None:
    _inbox(p)
    p.add_argument("--limit", type=int, help="at most this many messages (1-100, default 10)")
    p.add_argument("--lease", type=float, help="seconds they stay leased (default 300)")
    p.add_argument("--wait", type=float, help="seconds to wait for a message (default 0)")


def _settle(p: argparse.ArgumentParser) -> None:
    _inbox(p)
    p.add_argument("--lease-id", required=True, help="the lease_id `keysvc zapier lease` printed")
    p.add_argument("--message-id", action="append", dest="message_ids", metavar="ID",
                   help="only this message of the lease (repeatable; default: the whole lease)")


def _deleted(z: Any, a: argparse.Namespace) -> Mapping[str, Any]:
    z.delete_inbox(a.user, a.tenant, a.inbox_id)
    return {"deleted": a.inbox_id}


COMMANDS: list[Command] = [
    Command("apps", "one page of Zapier's apps", _apps,
            lambda z, a: z.apps(a.user, a.tenant, query=a.query)),
    Command("connections", "the user's connections of an app, and a usable one", _app,
            lambda z, a: z.connections(a.user, a.tenant, a.app)),
    Command("connect", "start Zapier Connect: print its connect_url and state", _connect,
            lambda z, a: z.connect(a.user, a.tenant, a.app, connect_app=a.connect_app,
                                   redirect_uri=a.redirect_uri, reconnect_id=a.reconnect_id)),
    Command("complete", "finish Zapier Connect with what it returned", _complete,
            lambda z, a: z.complete(a.user, a.tenant, a.state, authentication_id=a.authentication_id,
                                    error=a.error, error_description=a.error_description)),
    Command("actions", "an app's actions by key", _actions,
            lambda z, a: z.actions(a.user, a.tenant, a.app, a.action_type)),
    Command("inputs", "an action's input fields", _action,
            lambda z, a: z.inputs(a.user, a.tenant, a.app, a.action, a.action_type, a.connection, a.inputs)),
    Command("choices", "one page of a dynamic input's choices", _choices,
            lambda z, a: z.choices(a.user, a.tenant, a.app, a.action, a.action_type, a.connection, a.input,
                                   inputs=a.inputs, page=a.page)),
    Command("run", "run an action and print its result (exit 0 success, 1 error, 3 pending)", _run,
            lambda z, a: z.run(a.user, a.tenant, a.app, a.action, a.action_type, a.connection, a.inputs,
                               wait=a.wait), run_exit),
    Command("status", "an action run's status (exit 0 success, 1 error, 3 pending)", _status,
            lambda z, a: z.run_status(a.user, a.tenant, a.run_id, wait=a.wait), run_exit),
    Command("ensure-inbox", "ensure the user's trigger inbox with this key", _ensure_inbox,
            lambda z, a: z.ensure_inbox(a.user, a.tenant, a.key, a.app, a.trigger, a.connection, a.inputs,
                                        wait=a.wait)),
    Command("inboxes", "the user's trigger inboxes", _inboxes, lambda z, a: z.inboxes(a.user, a.tenant, a.status)),
    Command("inbox", "one trigger inbox", _inbox, lambda z, a: z.inbox(a.user, a.tenant, a.inbox_id)),
    Command("pause-inbox", "pause a trigger inbox", _inbox, lambda z, a: z.pause_inbox(a.user, a.tenant, a.inbox_id)),
    Command("resume-inbox", "resume a trigger inbox", _inbox,
            lambda z, a: z.resume_inbox(a.user, a.tenant, a.inbox_id)),
    Command("delete-inbox", "delete a trigger inbox", _inbox, _deleted),
    Command("lease", "lease a trigger inbox's messages", _lease,
            lambda z, a: z.lease(a.user, a.tenant, a.inbox_id, limit=a.limit, lease=a.lease, wait=a.wait)),
    Command("ack", "acknowledge leased messages (they are gone for good)", _settle,
            lambda z, a: z.ack(a.user, a.tenant, a.inbox_id, a.lease_id, a.message_ids)),
    Command("release", "give leased messages back at once", _settle,
            lambda z, a: z.release(a.user, a.tenant, a.inbox_id, a.lease_id, a.message_ids)),
]


def _connection_options(parser: argparse.ArgumentParser, default: Callable[[str], Any]) -> None:
    """--url and --api-key-file: on `keysvc zapier` (real defaults) and on each command (SUPPRESS, so a value
    given before the command is kept when none is given after it)."""
    url = os.environ.get("KEYSVC_URL", DEFAULT_URL)
    parser.add_argument("--url", default=default(url),
                        help=f"keysvc's internal listener (default: $KEYSVC_URL or {DEFAULT_URL})")
    parser.add_argument("--api-key-file", metavar="FILE", default=default(""),
                        help="file holding the client's API key (default: $KEYSVC_API_KEY)")


def add_zapier_parser(subparsers: Any, commands: list[Command] | None = None) -> argparse.ArgumentParser:
    """Add `keysvc zapier` and one command per row of `commands` (default COMMANDS)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "zapier",
        help="drive the Zapier embed gateway of a running keysvc (apps, connections, actions, runs, trigger inboxes)",
        description="Call a running keysvc's /v1/zapier/* routes as a client with `zapier: true`; every answer "
        "is printed as JSON.",
        epilog="exit status: 0 success; 1 keysvc refused (printed as `keysvc: CODE: DESCRIPTION`) or a run "
        "ended in error; 2 usage error (incl. no API key); 3 a run still pending; 78 --api-key-file unreadable.",
    )
    _connection_options(parser, lambda value: value)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, lambda value: argparse.SUPPRESS)
    common.add_argument("--user", required=True, help="user id (the partner JWT's sub)")
    common.add_argument("--tenant", required=True, help="tenant id (the configured tenant claim)")
    sub = parser.add_subparsers(dest="zapier_command", required=True, metavar="COMMAND")
    for command in COMMANDS if commands is None else commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help, parents=[common])
        command.add(p)
        p.set_defaults(zapier_row=command)
    parser.set_defaults(fn=zapier_command)
    return parser


def api_key(args: argparse.Namespace) -> str:
    """The client's API key from --api-key-file or $KEYSVC_API_KEY."""
    if args.api_key_file:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise Unusable(f"--api-key-file {args.api_key_file}: cannot read it ({type(exc).__name__})",
                           EXIT_CONFIG) from None
        if not key:
            raise Unusable(f"--api-key-file {args.api_key_file}: the file is empty", EXIT_CONFIG)
        return key
    key = os.environ.get("KEYSVC_API_KEY", "").strip()
    if not key:
        raise Unusable("no API key: pass --api-key-file FILE or set KEYSVC_API_KEY", EXIT_USAGE)
    return key


def zapier_command(args: argparse.Namespace) -> int:
    """Run one `keysvc zapier` command: the answer as JSON on stdout, or keysvc's refusal as one line."""
    from keysvc.client.zapier import SyncZapierClient  # httpx: loaded when a zapier command runs, not by serve

    command: Command = args.zapier_row
    try:
        with SyncZapierClient(args.url, api_key(args)) as zapier:
            answer = dict(command.call(zapier, args))
    except Unusable as exc:
        print(f"keysvc: {exc}", file=sys.stderr)
        return exc.status
    except RequestError as exc:  # the running keysvc's answer (or keysvc unreachable): its code matters
        print(f"keysvc: {exc.code}: {exc.description}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(answer, indent=2))
    return command.exit_status(answer)
