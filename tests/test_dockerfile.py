"""The container image recipe: linted by hadolint and checkov, held to the deployment contract, and its
install steps replayed in a fresh virtualenv.

No Docker engine runs here, so nothing builds the image. What can be proved without one is proved:
the Dockerfile is parsed, the build stage's COPY and RUN instructions are replayed verbatim (only the
/opt/keysvc prefix is moved into a temp dir), and the resulting venv must import every runtime dependency.
The linters come from `.venv-tools/` (`make tools`); a missing one fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
TOOLS_BIN = REPO / ".venv-tools" / "bin"
VENV_PREFIX = "/opt/keysvc"
# Offline: checkov must not try to fetch guidelines from its SaaS (it would hang on DNS, then pass anyway).
CHECKOV_ENV = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
OCI_LABELS = {
    "org.opencontainers.image.title": "text",
    "org.opencontainers.image.description": "text",
    "org.opencontainers.image.version": "text",
    "org.opencontainers.image.revision": "text",
    "org.opencontainers.image.source": "url",
    "org.opencontainers.image.licenses": "spdx",
}


def tool(name: str) -> Path:
    """Path of a linter in .venv-tools; fails (never skips) when `make tools` has not run."""
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (installs requirements-tools.txt)")
    return path


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined, comments dropped."""

    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions the way the builder does (comments, `\\` continuations)."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        keyword, _, args = joined.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = []
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped by build stage, each starting with its FROM."""
    grouped: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            grouped.append([])
        assert grouped, f"line {ins.line}: {ins.keyword} before the first FROM"
        grouped[-1].append(ins)
    return grouped


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """ENV key=value pairs set in a stage (the modern `ENV k=v k2=v2` form only)."""
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for pair in shlex.split(ins.args):
                key, sep, value = pair.partition("=")
                assert sep, f"line {ins.line}: use `ENV key=value`"
                env[key] = value
    return env


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    """The repository's Dockerfile, parsed into stages."""
    return stages(parse(DOCKERFILE.read_text()))


@pytest.mark.system
def test_hadolint_passes_at_the_strictest_threshold() -> None:
    """hadolint reports nothing, not even style notes, and the OCI labels are present and well-formed."""
    cmd = [str(tool("hadolint")), "--no-color", "--failure-threshold", "style"]
    for label, kind in OCI_LABELS.items():
        cmd += ["--require-label", f"{label}:{kind}"]
    result = subprocess.run([*cmd, str(DOCKERFILE)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.system
def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The hadolint wrapper really lints: an unpinned, root, shell-form Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    result = subprocess.run([str(tool("hadolint")), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in result.stdout, result.stdout


@pytest.mark.unit
def test_every_lint_suppression_is_explained() -> None:
    """A `hadolint ignore=` or `checkov:skip=` pragma carries its reason, and no config file hides rules."""
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if "hadolint ignore=" in line:
            previous = lines[number - 2].strip() if number > 1 else ""
            reason = line.split("hadolint ignore=", 1)[1].partition(" ")[2].strip()
            assert reason or (previous.startswith("#") and "hadolint" not in previous), (
                f"Dockerfile:{number}: hadolint ignore without an explanation"
            )
        if "checkov:skip=" in line:
            match = re.search(r"checkov:skip=(CKV\w+):\s*(\S.{20,})", line)
            assert match, f"Dockerfile:{number}: checkov skip without a justification"
    for name in (".hadolint.yaml", ".hadolint.yml"):
        assert not (REPO / name).exists(), f"{name} would ignore rules out of sight of this test"


@pytest.mark.system
def test_checkov_dockerfile_checks_pass() -> None:
    """checkov's Dockerfile policies pass; every skip is an inline pragma with a stated reason."""
    result = subprocess.run(
        [str(tool("checkov")), "--framework", "dockerfile", "-f", str(DOCKERFILE), "-o", "json",
         "--skip-download", "--compact"],
        capture_output=True, text=True, cwd=REPO, timeout=180, env={**os.environ, **CHECKOV_ENV},
    )
    report = json.loads(result.stdout)
    failed = report["results"]["failed_checks"]
    assert not failed, [(c["check_id"], c["check_name"]) for c in failed]
    assert report["summary"]["passed"] >= 50, "checkov ran suspiciously few Dockerfile checks"
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment") or ""
        assert len(reason.strip()) > 20, f"{skipped['check_id']}: skip without a justification"
    assert result.returncode == 0, result.stderr


@pytest.mark.unit
def test_image_contract(dockerfile: list[list[Instruction]]) -> None:
    """Multi-stage, pinned slim base, numeric non-root user, exec-form entrypoint, STOPSIGNAL, no
    HEALTHCHECK."""
    assert len(dockerfile) >= 2, "build tools must stay in a build stage"
    bases = [stage[0].args.split()[0] for stage in dockerfile]
    for base in bases:
        # a tag can be moved to other bytes, a digest cannot
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+@sha256:[0-9a-f]{64}", base), f"pin by digest: {base}"
    assert len(set(bases)) == 1, "build and runtime stages must share one base (same Python ABI)"
    lock_header = (REPO / "requirements.lock").read_text()
    lock_python = re.search(r"autogenerated by pip-compile with Python (3\.\d+)", lock_header)
    assert lock_python, "requirements.lock header lost the Python version it was compiled for"
    assert bases[0].startswith(f"python:{lock_python.group(1)}."), "lock and base image Python differ"

    final = dockerfile[-1]
    keywords = [ins.keyword for ins in final]
    assert "HEALTHCHECK" not in keywords, "Kubernetes probes do health checking; HEALTHCHECK is ignored there"
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users and re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", users[-1]), f"USER: numeric uid:gid, {users}"
    assert [ins.args for ins in final if ins.keyword == "STOPSIGNAL"] == ["SIGTERM"]
    entrypoint = [ins.args for ins in final if ins.keyword == "ENTRYPOINT"]
    assert entrypoint and json.loads(entrypoint[-1])[0] == f"{VENV_PREFIX}/bin/keysvc", "exec-form ENTRYPOINT"
    assert json.loads(next(ins.args for ins in final if ins.keyword == "CMD")) == ["serve"]
    labels = " ".join(ins.args for ins in final if ins.keyword == "LABEL")
    for label in OCI_LABELS:
        assert f"{label}=" in labels, label
    for ins in final:
        if ins.keyword == "RUN":
            assert "apt-get install" not in ins.args and "pip install" not in ins.args, (
                f"line {ins.line}: the runtime stage installs nothing"
            )
    copies = [ins.args for ins in final if ins.keyword == "COPY"]
    assert copies == [f"--from=build {VENV_PREFIX} {VENV_PREFIX}"], "the runtime stage gets only the venv"


@pytest.mark.unit
def test_dockerignore_admits_only_what_is_copied(dockerfile: list[list[Instruction]]) -> None:
    """The build context is an allow-list: exactly the sources the Dockerfile copies (no .git, .venv)."""
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied: set[str] = set()
    for stage in dockerfile:
        for ins in stage:
            if ins.keyword == "COPY" and "--from=" not in ins.args:
                copied.update(src.rstrip("/") for src in shlex.split(ins.args)[:-1])
    assert allowed == copied


def replay_build_stage(stage: list[Instruction], workdir: Path, prefix: Path) -> None:
    """Run the stage's COPY and RUN steps as the builder would, with /opt/keysvc moved to `prefix`."""
    shim = workdir.parent / "shim"
    shim.mkdir()
    # `python` in the image is the base image's interpreter; here it is this test's Python 3.11.
    (shim / "python").symlink_to(sys.executable)
    env = {**os.environ, **env_of(stage), "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    workdir.mkdir()
    for ins in stage[1:]:
        if ins.keyword == "COPY":
            *sources, dest = shlex.split(ins.args)
            for src in sources:
                origin = REPO / src
                assert origin.exists(), f"line {ins.line}: COPY source {src} missing from the repository"
                target = workdir / dest
                if origin.is_dir():
                    shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(origin, target / origin.name if dest.endswith("/") else target)
        elif ins.keyword == "RUN":
            command = ins.args.replace(VENV_PREFIX, str(prefix))
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"line {ins.line}: {command}\n{result.stdout}\n{result.stderr}"
        else:
            assert ins.keyword in {"ENV", "WORKDIR", "ARG"}, f"line {ins.line}: cannot replay {ins.keyword}"


@pytest.mark.system
def test_install_steps_work_in_a_fresh_venv(dockerfile: list[list[Instruction]], tmp_path: Path) -> None:
    """The build stage's own commands (hash-locked wheels, --no-deps, pip check) produce a working venv."""
    build = dockerfile[0]
    assert build[0].args.endswith(" AS build"), "the first stage is the build stage"
    runs = " ".join(ins.args for ins in build if ins.keyword == "RUN")
    assert "--require-hashes --no-deps" in runs and "-r requirements.lock" in runs
    assert "pip check" in runs, "a dependency missing from the lock must fail the build"
    # the build backend is hash-locked too, and pip must not fetch an unpinned one into an isolated env
    assert "-r requirements-build.lock" in runs and "--no-build-isolation ." in runs
    build_lock = (REPO / "requirements-build.lock").read_text()
    assert re.search(r"^setuptools==[\d.]+ \\\n\s+--hash=sha256:[0-9a-f]{64}", build_lock, re.M), build_lock

    prefix = tmp_path / "opt-keysvc"
    replay_build_stage(build, tmp_path / "src", prefix)

    python = prefix / "bin" / "python"
    assert (prefix / "bin" / "keysvc").exists(), "the console script the ENTRYPOINT runs"
    assert not (prefix / "bin" / "pip").exists(), "pip must not reach the runtime image"
    modules = ["keysvc", "starlette", "uvicorn", "jwcrypto", "cryptography", "boto3", "apscheduler",
               "prometheus_client", "httpx", "aiohttp", "yaml", "uvloop", "httptools"]
    probe = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    result = subprocess.run([str(python), "-c", probe, *modules], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
