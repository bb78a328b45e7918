"""ZapierClient, SyncZapierClient and `keysvc zapier` against a real `keysvc serve` and the fake Partner API:
the clients a product backend and an operator use, holding only a keysvc API key."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysvc.client.zapier import SyncZapierClient, ZapierClient
from keysvc.errors import Forbidden, InvalidRequest, UpstreamError
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
