"""`make image`: builds keysvc:VERSION with the version and git revision as build arguments where a Docker
engine answers, and fails with a clear message where none does. A hand-written `docker` stand-in (a shell
script recording its arguments) plays the engine; the real image build needs a real one."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.system

FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1" = info ]; then exit {info_status}; fi
exit 0
"""


def _fake_docker(tmp_path: Path, info_status: int) -> tuple[Path, Path]:
    log = tmp_path / "docker-calls.log"
    script = tmp_path / "docker"
    script.write_text(FAKE_DOCKER.format(log=log, info_status=info_status))
    script.chmod(0o755)
    return script, log


def _make_image(docker: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "image", f"DOCKER={docker}"],
                          capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ))


def test_image_is_built_with_version_and_revision(tmp_path: Path) -> None:
    """With an engine answering `docker info`: one `docker build` tagged keysvc:<pyproject version>, with
    VERSION and the full git revision as build arguments, from the repository root."""
    docker, log = _fake_docker(tmp_path, info_status=0)
    with (ROOT / "pyproject.toml").open("rb") as f:
        version = tomllib.load(f)["project"]["version"]
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()

    result = _make_image(str(docker))

    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "info", f"build --build-arg VERSION={version} --build-arg REVISION={revision} -t keysvc:{version} ."
    ]


def test_no_engine_fails_with_a_message_and_builds_nothing(tmp_path: Path) -> None:
    """`docker info` failing (no daemon) and no docker command at all: make fails, says why, never builds."""
    docker, log = _fake_docker(tmp_path, info_status=1)

    no_engine = _make_image(str(docker))
    no_command = _make_image(str(tmp_path / "no-such-docker"))

    assert no_engine.returncode != 0 and no_command.returncode != 0
    assert "no Docker engine answers" in no_engine.stderr
    assert f"no '{tmp_path / 'no-such-docker'}' command here" in no_command.stderr
    assert log.read_text().splitlines() == ["info"]
