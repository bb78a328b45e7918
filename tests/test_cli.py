"""The `keysvc` command line as a person meets it, black box (`python -m keysvc` in a subprocess): listener
addresses and their clashes, starter configurations, messages and exit statuses, the API key of a new
client, key operations through a running replica, and an install without the server extra."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from keysvc import errors
from tests.helpers import ROOT, KeysvcProcess, api_key, base_config, run_cli, wait_for, write_config

pytestmark = pytest.mark.system

# every exception class keysvc raises on purpose, and the lifecycle's refusal: none is a word for people
ERROR_CLASSES = sorted({name for name, value in vars(errors).items()
                        if isinstance(value, type) and issubclass(value, Exception)} | {"RotationRefused"})
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
EXAMPLES = {"file": [], "gateway": ["--gateway"], "kms": ["--kms"]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another process's socket listens on for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _one_line_refusal(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [expected], result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "never retrieved" not in result.stdout + result.stderr


def test_an_address_in_use_is_one_line_and_exit_1_in_either_mode(tmp_path: Path, busy_port: int) -> None:
    """`serve --listen-public` overrides the file's listen.public, `--listen-internal` works with --dev too;
    an address already in use is one stderr line naming it and its listener, exit 1, no traceback."""
    config = write_config(tmp_path / "keysvc.yaml", base_config(tmp_path / "keys"))
    refused = run_cli("serve", "--listen-public", f"127.0.0.1:{busy_port}", config=config, timeout=30)
    _one_line_refusal(refused, f"keysvc: cannot listen on 127.0.0.1:{busy_port} (public): address already in use")
    refused = run_cli("serve", "--dev", "--listen-public", f"127.0.0.1:{_free_port()}",
                      "--listen-internal", f"127.0.0.1:{busy_port}", cwd=tmp_path, timeout=30)
    _one_line_refusal(refused, f"keysvc: cannot listen on 127.0.0.1:{busy_port} (internal): address already in use")


def test_dev_service_listens_where_the_flags_say(tmp_path: Path) -> None:
    """`serve --dev --listen-public A --listen-internal B` serves on A and B (not 8080/8081): ready on A,
    signing on B with the dev client's key, and the dev issuer follows A."""
    public, internal = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "keysvc", "serve", "--dev", "--listen-public", f"127.0.0.1:{public}",
         "--listen-internal", f"127.0.0.1:{internal}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{public}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, "keysvc serve --dev exited"
                return False

        wait_for(ready, 30, "the dev service on the flags' addresses")
        key = (tmp_path / ".keysvc-dev" / "dev-client.key").read_text().strip()
        signed = httpx.post(f"http://127.0.0.1:{internal}/v1/sign", headers={"Authorization": f"Bearer {key}"},
                            json={"claims": {"sub": "u-1", "aud": "dev"}}, timeout=10)
        assert signed.status_code == 200, signed.text
        payload = signed.json()["token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["iss"] == f"http://127.0.0.1:{public}"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_config_example_is_the_examples_file_and_check_config_accepts_it(kind: str) -> None:
    """`keysvc config example [--gateway|--kms]` prints exactly examples/<kind>.yaml, `check-config
    --offline` accepts that file, and it writes no secret inline (secrets are named by *_file)."""
    printed = run_cli("config", "example", *EXAMPLES[kind])
    assert printed.returncode == 0, printed.stderr
    path = ROOT / "examples" / f"{kind}.yaml"
    assert printed.stdout == path.read_text()
    checked = run_cli("check-config", "--offline", config=path)
    assert checked.returncode == 0 and checked.stdout.startswith("ok: "), checked.stdout + checked.stderr
    doc = yaml.safe_load(path.read_text())
    secrets = [k for k in _keys(doc) if re.search(r"secret|passphrase|password", k) and not k.endswith("_file")]
    assert secrets == []


def _keys(doc: object) -> Iterator[str]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield str(key)
            yield from _keys(value)


def test_readme_configuration_block_passes_check_config(tmp_path: Path) -> None:
    """The YAML block of README's Configuration section is a file `check-config --offline` accepts."""
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    block = next(b for b in blocks if b.startswith("listen:"))
    checked = run_cli("check-config", "--offline", config=write_config(tmp_path / "r.yaml", yaml.safe_load(block)))
    assert checked.returncode == 0, checked.stderr


def test_messages_and_exit_statuses_for_people(tmp_path: Path) -> None:
    """Each refusal is a sentence with the README's exit status and no exception class name: --dev with
    --config (2), an unknown keyset (1), an unreadable --pem (78), `jwks` of a keyset with no key yet (1,
    fails closed as the server's 503), a rotation not yet safe (1, naming --force and an ISO time)."""
    config = write_config(tmp_path / "keysvc.yaml", base_config(tmp_path / "keys"))
    both = run_cli("keys", "list", "--dev", config=config, cwd=tmp_path)
    assert both.returncode == 2 and "--dev and --config" in both.stderr
    empty = run_cli("jwks", config=config)
    assert empty.returncode == 1 and "no published key" in empty.stderr and empty.stdout == ""
    nope = run_cli("keys", "rotate", "nope", config=config)
    assert nope.returncode == 1
    assert nope.stderr.splitlines() == ["keysvc: no keyset named 'nope' in the configuration (keysets: zapier)"]
    pem = run_cli("keys", "import", "zapier", "--pem", str(tmp_path / "nonexist.pem"), config=config)
    assert pem.returncode == 78
    assert pem.stderr.splitlines()[-1] == f"keysvc: --pem {tmp_path / 'nonexist.pem'}: cannot read it " \
        "(no such file or directory)"
    early = run_cli("keys", "rotate", "zapier", config=config)  # creates the keys, then refuses
    last = early.stderr.splitlines()[-1]
    assert early.returncode == 1 and "--force" in last and ISO.search(last) and "use force" not in last, last
    for result in (nope, pem, early, empty):
        assert not [name for name in ERROR_CLASSES if name in result.stderr], result.stderr
    forced = run_cli("keys", "rotate", "zapier", "--force", config=config)
    assert forced.returncode == 0 and ISO.fullmatch(json.loads(forced.stdout)["activated_at"]), forced.stdout
    revoked = run_cli("keys", "revoke", json.loads(forced.stdout)["active_kid"], config=config)
    assert revoked.returncode == 0 and ISO.fullmatch(json.loads(revoked.stdout)["revoked_at"]), revoked.stdout


def test_client_new_never_puts_the_key_in_the_config_entry(tmp_path: Path) -> None:
    """`client new NAME --key-file F` writes the key to F (0600, never overwritten) and prints on stdout only
    the entry with its hash; `--print-key` prints the key alone on stdout; with neither it is a usage error."""
    neither = run_cli("client", "new", "billing")
    assert neither.returncode == 2 and "--key-file" in neither.stderr
    key_file = tmp_path / "billing.key"
    made = run_cli("client", "new", "billing", "--keyset", "zapier", "--key-file", str(key_file))
    assert made.returncode == 0, made.stderr
    key = key_file.read_text().strip()
    assert key.startswith("ks_") and key_file.stat().st_mode & 0o777 == 0o600
    assert key not in made.stdout + made.stderr
    entry = yaml.safe_load(made.stdout)["clients"]["billing"]
    assert entry["api_key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    again = run_cli("client", "new", "billing", "--key-file", str(key_file))
    assert again.returncode == 1 and key_file.read_text().strip() == key
    printed = run_cli("client", "new", "billing", "--print-key")
    assert printed.returncode == 0 and re.fullmatch(r"ks_[A-Za-z0-9_-]{43}\n", printed.stdout)
    digest = yaml.safe_load(printed.stderr.split("\n", 1)[1])["clients"]["billing"]["api_key_sha256"]
    assert digest == hashlib.sha256(printed.stdout.strip().encode()).hexdigest()


def test_rotate_and_revoke_through_a_running_replica_take_effect_at_once(tmp_path: Path) -> None:
    """`keys rotate/revoke --server URL --api-key-file F` act through the replica's admin API: with a 30 s
    refresh interval the replica signs with the promoted key and drops the revoked one from its JWKS at
    once; a refusal names --force; a wrong API key is refused (exit 1); --api-key-file without --server is a
    usage error (2), not silently a direct backend write; no httpx log line unless
    --log-level debug."""
    config = write_config(tmp_path / "keysvc.yaml", base_config(tmp_path / "keys"))
    admin = tmp_path / "admin.key"
    admin.write_text(api_key("admin") + "\n")
    wrong = tmp_path / "wrong.key"
    wrong.write_text(api_key("signer") + "\n")
    with KeysvcProcess(config, name="cli-server") as replica:
        active, pending = [k["kid"] for k in replica.jwks().json()["keys"]]
        server = ["--server", replica.internal, "--api-key-file", str(admin)]
        early = run_cli("keys", "rotate", "zapier", *server)
        assert early.returncode == 1 and "--force" in early.stderr and ISO.search(early.stderr), early.stderr
        assert '"httpx"' not in early.stderr
        forced = run_cli("--log-level", "debug", "keys", "rotate", "zapier", "--force", *server)
        assert forced.returncode == 0, forced.stderr
        assert '"logger":"httpx"' in forced.stderr  # the library's lines, only when asked for
        result = json.loads(forced.stdout)
        assert result["active_kid"] == pending and ISO.fullmatch(result["activated_at"])
        assert replica.sign().json()["kid"] == pending
        revoked = run_cli("keys", "revoke", pending, *server)
        assert revoked.returncode == 0 and json.loads(revoked.stdout)["kid"] == pending, revoked.stderr
        assert pending not in [k["kid"] for k in replica.jwks().json()["keys"]]
        assert replica.sign().json()["kid"] not in (active, pending)
        refused = run_cli("keys", "revoke", active, "--server", replica.internal, "--api-key-file", str(wrong))
        assert refused.returncode == 1 and refused.stderr.startswith("keysvc: "), refused.stderr
        no_key = run_cli("keys", "revoke", active, "--server", replica.internal)
        assert no_key.returncode == 2 and "--api-key-file" in no_key.stderr
        unreadable = run_cli("keys", "revoke", active, "--server", replica.internal,
                             "--api-key-file", str(tmp_path / "absent.key"))
        assert unreadable.returncode == 78 and "cannot read" in unreadable.stderr
        direct = run_cli("keys", "revoke", active, "--api-key-file", str(admin), config=replica.config_path)
        assert direct.returncode == 2 and "--api-key-file needs --server" in direct.stderr, direct.stderr
    unreachable = run_cli("keys", "rotate", "zapier", *server)
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


SHIM = '''
import importlib.abc, sys

class _NoServerExtra(importlib.abc.MetaPathFinder):
    """What `pip install keysvc` (no [server]) leaves out."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("orjson", "starlette", "uvicorn"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoServerExtra())
'''


@pytest.mark.parametrize("command", [["serve", "--dev"], ["keys", "list", "--dev"]])
def test_without_the_server_extra_one_line_names_it(tmp_path: Path, command: list[str]) -> None:
    """With the server's dependencies not importable (a sitecustomize shim, as a client-only install),
    `keysvc serve` says in one line which install it needs and exits 1: no ModuleNotFoundError traceback."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SHIM)
    result = run_cli(*command, cwd=tmp_path, env={"PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"})
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["keysvc: the server needs its extra: pip install 'keysvc[server]'"]
    assert result.stdout == ""
