"""`keysvc exchange`: the operator's parser and runner, against the local partner server."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Iterator

import pytest

from keysvc.client.exchange_command import add_exchange_parser, run_exchange
from tests.exchange_support import World, running_world


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with running_world(("ES256",)) as world:
        yield world


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="keysvc")
    add_exchange_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["exchange", *argv])


@pytest.mark.unit
def test_parser() -> None:
    """--user and --tenant are required; --connect and --scope are optional."""
    args = parse("--user", "u-1", "--tenant", "t-9", "--connect", "SlackAPI", "--scope", "external")

    assert (args.user, args.tenant, args.connect, args.scope) == ("u-1", "t-9", "SlackAPI", "external")
    with pytest.raises(SystemExit):
        parse("--user", "u-1")


@pytest.mark.system
def test_prints_a_connect_token_as_json(world: World) -> None:
    """A connect exchange prints the JSON answer, connect_url included, and exits 0."""
    world.partner.reset()
    out = io.StringIO()

    status = run_exchange(
        parse("--user", "u-1", "--tenant", "t-9", "--connect", "SlackAPI"),
        world.settings(),
        world.signers["ES256"],
        out=out,
    )

    body = json.loads(out.getvalue())
    assert (status, body["access_token"][:3], "connect_url" in body) == (0, "ct-", True)


@pytest.mark.system
def test_prints_the_error_as_json_on_stderr(world: World) -> None:
    """A refused exchange prints {"error", "error_description"} on stderr and exits 1."""
    world.partner.reset()
    world.partner.mode = "invalid_client"
    out, err = io.StringIO(), io.StringIO()

    status = run_exchange(
        parse("--user", "u-1", "--tenant", "t-9"), world.settings(), world.signers["ES256"], out=out, err=err
    )

    assert (status, out.getvalue(), json.loads(err.getvalue())["error"]) == (1, "", "upstream_error")
