"""ZapierClient, SyncZapierClient and `keysvc zapier` against a real `keysvc serve` and the fake Partner API:
the clients a product backend and an operator use, holding only a keysvc API key."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysvc.client.zapier import RECORDED, SyncZapierClient, ZapierClient
from keysvc.errors import ConnectionRequired, Forbidden, InvalidRequest, ReconnectRequired, UpstreamError
from tests.helpers import ROOT, KeysvcProcess, api_key, base_config, remember_secret, run_cli, sha256_hex, write_config
from tests.zapier_fake import InputField, RunBehaviour, ZapierFake, running_zapier

pytestmark = pytest.mark.system

ISSUER = "https://issuer.example/zapier"
U, T = "u-7", "t-3"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeysvcProcess, ZapierFake]]:
    """One keysvc with the gateway against the fake; client `web` may use it, `signer` may not."""
    tmp = tmp_path_factory.mktemp("zapier-client")
    with running_zapier() as zapier:
        remember_secret(zapier.partner.client_secret)
        (tmp / "secret").write_text(zapier.partner.client_secret)
        config = base_config(tmp / "keys")
        config["clients"]["web"] = {
            "api_key_sha256": sha256_hex(api_key("web")), "keysets": ["zapier"],
            "audiences": ["connect.zapier.com"], "zapier": True,
        }
        config["token_exchange"] = {
            "token_url": zapier.token_url, "api_url": zapier.api_url, "client_id": zapier.partner.client_id,
            "client_secret_file": str(tmp / "secret"), "run_wait_max": "20s",
        }
        with KeysvcProcess(write_config(tmp / "keysvc.yaml", config), name="zapier-client") as proc:
            zapier.trust(f"{proc.public}/.well-known/jwks.json", ISSUER)
            yield proc, zapier


def test_client_imports_without_the_server_stack() -> None:
    """Importing keysvc.client.zapier loads neither starlette, uvicorn nor boto3 (nor keysvc's config)."""
    code = (
        "import sys, keysvc.client.zapier\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'boto3', 'botocore',"
        " 'yaml') or m in ('keysvc.config', 'keysvc.service', 'keysvc.serve'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == ""


def test_sync_client_lists_and_runs(served: tuple[KeysvcProcess, ZapierFake]) -> None:
    """connections() names the usable connection; run(wait=) returns the final result."""
    proc, zapier = served
    app = zapier.add_app("Slack")
    zapier.add_action(app, "send_message", "Send", "WRITE", fields=[InputField("channel")])
    conn = zapier.add_connection((U, T), app).id
    zapier.queue_runs(RunBehaviour(pending_polls=1))
    with SyncZapierClient(proc.internal, api_key("web")) as client:
        assert client.connections(U, T, app.id)["usable"] == conn
        assert [a["key"] for a in client.actions(U, T, app.id)["actions"]] == ["send_message"]
        assert [f["id"] for f in client.inputs(U, T, app.id, "send_message", "WRITE", conn)["fields"]] == ["channel"]
        run = client.run(U, T, app.id, "send_message", "WRITE", conn, {"channel": "C9"}, wait=10)
    assert run["status"] == "success" and run["results"] == [{"channel": "C9"}]


def test_client_omits_connection_and_learns_to_reconnect(served: tuple[KeysvcProcess, ZapierFake]) -> None:
    """connection=RECORDED omits it: before any is recorded, ConnectionRequired (409); after connections()
    recorded the usable one, runs use it; once Zapier finds it expired, ReconnectRequired names it."""
    proc, zapier = served
    app = zapier.add_app("Teams")
    zapier.add_action(app, "post", "Post", "WRITE", fields=[InputField("channel")])
    conn = zapier.add_connection((U, T), app)
    with SyncZapierClient(proc.internal, api_key("web")) as client:
        with pytest.raises(ConnectionRequired) as missing:
            client.inputs(U, T, app.id, "post", "WRITE", RECORDED)
        assert missing.value.status == 409
        assert client.connections(U, T, app.id)["usable"] == conn.id
        run = client.run(U, T, app.id, "post", "WRITE", RECORDED, {"channel": "C1"}, wait=10)
        assert run["status"] == "success"
        conn.is_expired = True
        with pytest.raises(ReconnectRequired) as refused:
            client.inputs(U, T, app.id, "post", "WRITE", RECORDED)
        assert refused.value.connection == conn.id and refused.value.code == "reconnect_required"
        with pytest.raises(ConnectionRequired):
            client.run(U, T, app.id, "post", "WRITE", RECORDED, {"channel": "C1"})


def test_async_client_connects_and_completes(served: tuple[KeysvcProcess, ZapierFake]) -> None:
    """connect() then complete() with the id Connect returned; the partner's error keeps its code."""
    proc, zapier = served
    app = zapier.add_app("Notion")

    async def go() -> tuple[dict[str, object], Forbidden | InvalidRequest]:
        async with ZapierClient(proc.internal, api_key("web")) as client:
            started = await client.connect(U, T, app.id, connect_app=app.slug)
            new_id = zapier.connect((U, T), app)
            done = await client.complete(U, T, str(started["state"]), authentication_id=new_id)
            again = await client.connect(U, T, app.id, connect_app=app.slug)
            try:
                await client.complete(U, T, str(again["state"]), error="access_denied")
            except InvalidRequest as exc:
                return done, exc
        raise AssertionError("the partner's error was accepted")

    done, error = asyncio.run(go())
    connection = done["connection"]
    assert isinstance(connection, dict)
    assert (connection["id"], connection["is_expired"]) == (zapier.connections_of((U, T), app)[-1].id, False)
    assert error.code == "access_denied"


def test_client_errors_are_keysvc_errors(served: tuple[KeysvcProcess, ZapierFake]) -> None:
    """A client without the zapier flag gets Forbidden; a wrong API key is UpstreamError (our config)."""
    proc, _ = served
    with SyncZapierClient(proc.internal, api_key("signer")) as client, pytest.raises(Forbidden):
        client.connections(U, T, "6f1c6c0e-2d6e-4b8e-9b8a-3f0a1f7b2c11")
    with SyncZapierClient(proc.internal, "ks_wrong") as client, pytest.raises(UpstreamError):
        client.connections(U, T, "6f1c6c0e-2d6e-4b8e-9b8a-3f0a1f7b2c11")


def test_cli_lists_connections_and_runs_an_action(served: tuple[KeysvcProcess, ZapierFake], tmp_path: Path) -> None:
    """`keysvc zapier connections` and `keysvc zapier run` print JSON; a run's status is the exit status."""
    proc, zapier = served
    app = zapier.add_app("Sheets")
    zapier.add_action(app, "add_row", "Add Row", "WRITE")
    conn = zapier.add_connection((U, T), app).id
    env = {"KEYSVC_API_KEY": api_key("web")}
    base = ("zapier", "--url", proc.internal)
    listed = run_cli(*base, "connections", "--user", U, "--tenant", T, "--app", app.id, env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["usable"] == conn
    zapier.queue_runs(RunBehaviour(pending_polls=0), RunBehaviour.throttled(delay=1, pending_polls=0))
    args = ("run", "--user", U, "--tenant", T, "--app", app.id, "--action", "add_row", "--action-type", "WRITE",
            "--connection", conn, "--inputs", '{"a": 1}', "--wait", "5")
    ok = run_cli(*base, *args, env=env)
    assert ok.returncode == 0 and json.loads(ok.stdout)["results"] == [{"a": 1}]
    failed = run_cli(*base, *args, env=env)
    assert failed.returncode == 1 and json.loads(failed.stdout)["status"] == "error"
    key_file = tmp_path / "key"
    key_file.write_text(api_key("signer"))
    refused = run_cli(*base, "--api-key-file", str(key_file), "connections", "--user", U, "--tenant", T,
                      "--app", app.id)
    assert refused.returncode == 1 and "forbidden" in refused.stderr
    assert api_key("web") not in ok.stdout + ok.stderr + failed.stderr


def test_cli_connect_complete_inputs_choices_with_options_after_the_command(
    served: tuple[KeysvcProcess, ZapierFake], tmp_path: Path
) -> None:
    """--url and --api-key-file after the command; connect/complete/inputs/choices print the answers as JSON;
    a refusal is one line `keysvc: CODE: DESCRIPTION` (exit 1); no httpx log line; the key never printed."""
    proc, zapier = served
    app = zapier.add_app("Trello")
    zapier.add_action(app, "add_card", "Add Card", "WRITE",
                      fields=[InputField("board", choices=[(f"B{n}", f"Board {n}") for n in range(12)])])
    conn = zapier.add_connection((U, T), app).id
    key_file = tmp_path / "key"
    key_file.write_text(api_key("web") + "\n")
    user = ("--url", proc.internal, "--api-key-file", str(key_file), "--user", U, "--tenant", T)

    started = run_cli("zapier", "connect", *user, "--app", app.id, "--connect-app", app.slug)
    assert started.returncode == 0, started.stderr
    state = json.loads(started.stdout)["state"]
    assert json.loads(started.stdout)["connect_url"].startswith("http")
    new_id = zapier.connect((U, T), app)
    done = run_cli("zapier", "complete", *user, "--state", state, "--authentication-id", new_id)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["connection"]["id"] == zapier.connections_of((U, T), app)[-1].id

    again = json.loads(run_cli("zapier", "connect", *user, "--app", app.id).stdout)["state"]
    denied = run_cli("zapier", "complete", *user, "--state", again, "--error", "access_denied",
                     "--error-description", "the user said no")
    assert denied.returncode == 1 and denied.stdout == ""
    assert denied.stderr.startswith("keysvc: access_denied: ") and denied.stderr.count("keysvc:") == 1

    action = ("--app", app.id, "--action", "add_card", "--action-type", "WRITE", "--connection", conn)
    fields = run_cli("zapier", "inputs", *user, *action)
    assert fields.returncode == 0, fields.stderr
    assert [f["id"] for f in json.loads(fields.stdout)["fields"]] == ["board"]
    page2 = run_cli("zapier", "choices", *user, *action, "--input", "board", "--page", "2")
    assert page2.returncode == 0, page2.stderr
    assert len(json.loads(page2.stdout)["choices"]) == 2

    everything = (started, done, denied, fields, page2)
    assert not any("httpx" in r.stderr or "HTTP Request" in r.stderr for r in everything)
    assert not any(api_key("web") in r.stdout + r.stderr for r in everything)


def test_cli_usage_key_and_reachability_exit_statuses(tmp_path: Path) -> None:
    """No API key or bad --inputs: 2 (usage); an unreadable --api-key-file: 78; keysvc unreachable: 1 with
    one `keysvc: CODE: ...` line; a value given before the command is kept, after it wins."""
    user = ("--user", U, "--tenant", T, "--app", "a")
    env = {"KEYSVC_API_KEY": ""}
    nokey = run_cli("zapier", "connections", *user, env=env)
    assert nokey.returncode == 2 and "no API key" in nokey.stderr
    unreadable = run_cli("zapier", "connections", "--api-key-file", str(tmp_path / "absent"), *user)
    assert unreadable.returncode == 78 and "--api-key-file" in unreadable.stderr
    bad = run_cli("zapier", "run", *user, "--action", "x", "--action-type", "WRITE", "--inputs", "[1]")
    assert bad.returncode == 2 and "JSON object" in bad.stderr
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    for argv in (("zapier", "--url", closed, "connections", *user),
                 ("zapier", "--url", "http://127.0.0.1:1", "connections", "--url", closed, *user)):
        down = run_cli(*argv, env={"KEYSVC_API_KEY": "ks_x"})
        assert down.returncode == 1 and down.stderr.count("keysvc:") == 1, down.stderr
        assert re.match(r"keysvc: [a-z_]+: keysvc http://127\.0\.0\.1:9 unreachable", down.stderr), down.stderr


def test_exchange_and_check_config_connect_print_no_library_log_lines(
    served: tuple[KeysvcProcess, ZapierFake]
) -> None:
    """`keysvc exchange` and `keysvc check-config --connect` (HTTP to the partner) print no httpx/aiohttp
    INFO lines at the default level; --log-level debug (after the command too) shows them: the quieting is real."""
    proc, _ = served
    exchanged = run_cli("exchange", "--user", U, "--tenant", T, config=proc.config_path)
    assert exchanged.returncode == 0, exchanged.stderr
    assert json.loads(exchanged.stdout)["access_token"]
    checked = run_cli("check-config", "--connect", config=proc.config_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for result in (exchanged, checked):
        assert not re.search(r'"logger":"(httpx|httpcore|aiohttp)', result.stderr), result.stderr
        assert "HTTP Request" not in result.stderr
    loud = run_cli("exchange", "--user", U, "--tenant", T, "--log-level", "debug", config=proc.config_path)
    assert re.search(r'"logger":"(httpx|httpcore|aiohttp)', loud.stderr), loud.stderr
