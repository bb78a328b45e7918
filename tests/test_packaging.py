"""Packaging: the Python clients import none of the server stack, and requirements.lock pins a version of
every dependency the service (`keysvc[server]`) declares."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT, base_config

SERVER_ONLY = ("starlette", "uvicorn", "uvloop", "httptools", "boto3", "botocore", "apscheduler",
               "prometheus_client", "jwcrypto", "orjson", "aiohttp", "psycopg")
# every module of the client folder (keysvc/client/, what `pip install keysvc[client]` ships)
CLIENT_MODULES = sorted(f"keysvc.client.{p.stem}" if p.stem != "__init__" else "keysvc.client"
                        for p in (ROOT / "keysvc" / "client").glob("*.py"))
# the server stack: `keysvc serve`'s modules and the partner package; its one outbound HTTP library is aiohttp
SERVER_STACK = ["keysvc.cli", "keysvc.serve", "keysvc.service",
                *sorted(f"keysvc.partner.{p.stem}" for p in (ROOT / "keysvc" / "partner").glob("*.py")
                        if p.stem != "__init__")]


@pytest.mark.system
@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_modules_import_no_server_dependency(module: str) -> None:
    """In a fresh interpreter, importing a client module loads none of the server-only packages, so
    `pip install keysvc[client]` (httpx, PyYAML, cryptography) is enough to use it."""
    probe = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}

    assert sorted(loaded & set(SERVER_ONLY)) == []


PROBE = """
import importlib, json, sys
for name in NAMES:
    importlib.import_module(name)
from keysvc.cli import build_parser
from keysvc.config import parse_settings
from keysvc.service import build_service
build_parser().parse_args(["serve", "--dev"])  # what `keysvc serve` runs before serving: every command's parser
service = build_service(parse_settings(json.loads(sys.stdin.read())))
assert [f.name for f in service.features] == ["partner", "canary"], service.features
service.resources.close_from_sync()
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.system
def test_the_server_stack_imports_one_outbound_http_library(tmp_path: Path) -> None:
    """In a fresh interpreter, importing the server (`keysvc serve` is keysvc.cli, then keysvc.serve and
    keysvc.service) and every module of the partner package, building the CLI's parser as `keysvc serve`
    does, then building a service with the partner side
    and the canary configured, loads aiohttp and never httpx: the token endpoint, the Partner API and the
    canary all go out over the one aiohttp stack."""
    (tmp_path / "secret").write_text("s3cr3t")
    config = base_config(tmp_path / "keys")  # built here: tests.helpers itself imports httpx
    config["token_exchange"] = {"keyset": "zapier", "token_url": "http://127.0.0.1:9/oauth/token",
                                "api_url": "http://127.0.0.1:9", "client_id": "keysvc",
                                "client_secret_file": str(tmp_path / "secret")}
    config["canary"] = {"jwks_url": "http://127.0.0.1:9/.well-known/jwks.json", "interval": "1h"}
    probe = f"NAMES = {SERVER_STACK!r}\n{PROBE}"
    result = subprocess.run([sys.executable, "-c", probe], input=json.dumps(config), capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded = {name.split(".")[0] for name in json.loads(result.stdout)}

    assert "aiohttp" in loaded and "httpx" not in loaded


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return dict(tomllib.load(f)["project"])


@pytest.mark.unit
def test_lock_pins_every_server_and_base_dependency_within_its_bounds() -> None:
    """The image installs requirements.lock with --no-deps: each requirement of the base install and of the
    `server` extra (marker applying on Linux) must be pinned there at a version its specifier allows."""
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    pins = {canonicalize_name(name): version for name, version in
            re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;]+)", (ROOT / "requirements.lock").read_text(), re.M)}
    wanted = [Requirement(r) for r in [*project["dependencies"], *extras["server"]]]  # type: ignore[misc]
    linux = {"sys_platform": "linux", "platform_system": "Linux"}

    problems = [
        f"{req} (lock: {pins.get(canonicalize_name(req.name))})"
        for req in wanted
        if (req.marker is None or req.marker.evaluate(linux))
        and not req.specifier.contains(pins.get(canonicalize_name(req.name), "0.0.0.dev0"), prereleases=True)
    ]
    assert problems == []


@pytest.mark.unit
def test_client_extra_is_the_base_install_and_the_lock_drops_uvicorn_standard() -> None:
    """`keysvc[client]` names exactly the base dependencies; websockets, watchfiles and python-dotenv (what
    uvicorn[standard] would add and keysvc never uses) are not in the lock."""
    project = _project()
    extras = project["optional-dependencies"]
    assert isinstance(extras, dict)
    lock = (ROOT / "requirements.lock").read_text()

    assert sorted(extras["client"]) == sorted(project["dependencies"])  # type: ignore[arg-type]
    assert [name for name in ("websockets", "watchfiles", "python-dotenv") if f"\n{name}==" in lock] == []
