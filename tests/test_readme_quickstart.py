"""README.md's Quickstart, run as a newcomer runs it: its shell block, verbatim, in bash.

The block starts `make run` (the service on its embedded default: file backend, `--dev`, 127.0.0.1:8080 and
:8081), waits for /readyz, signs a token with the dev client's key, fetches the JWKS and verifies the token
with PyJWT. It runs in a scratch directory holding the Makefile, pyproject.toml and this checkout's venv, so
`make run` builds nothing and the dev keys land in the scratch directory, not the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent


def quickstart() -> str:
    """The README's Quickstart shell block, exactly as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Quickstart", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README.md: the Quickstart has no ```sh block"
    return block.group(1)


def test_the_readme_quickstart_runs_as_written(tmp_path: Path) -> None:
    """The five commands end with PyJWT printing the claims of the token keysvc signed (sub u-1, the
    audience asked for, iss/iat/nbf/exp/jti set by keysvc), after the JWKS was printed; nothing fails."""
    stamp = Path(sys.prefix) / ".installed"
    assert stamp.exists(), f"run this test in a venv `make` built ({stamp} is missing)"
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    # the venv running the suite (the checkout's own in `make test`), its stamp newer than pyproject.toml:
    # `make run` must start the service, never reinstall into that venv from the scratch directory
    (tmp_path / ".venv").symlink_to(sys.prefix)
    built = stamp.stat().st_mtime
    os.utime(tmp_path / "pyproject.toml", (built - 60, built - 60))
    assert subprocess.run(["make", "-q", ".venv/.installed"], cwd=tmp_path, check=False).returncode == 0
    script = "set -e\n" + quickstart() + "\nkill %1\nwait %1 || true\n"
    proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "MAKEFLAGS": ""})
    try:
        out, err = proc.communicate(timeout=120)
        stopped = _gone(proc.pid, 15)  # `kill %1`, as the README says: make passes the TERM on to keysvc
    finally:
        _stop_group(proc.pid)
    log = (tmp_path / "keysvc.log").read_text() if (tmp_path / "keysvc.log").exists() else ""
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}\nkeysvc.log:\n{log[-3000:]}"
    assert '{"status":"ready"}' in out.replace(" ", "")
    assert '"keys":[' in out.replace(" ", "")
    claims = out.strip().splitlines()[-1]
    for expected in ("'sub': 'u-1'", "'aud': 'connect.zapier.com'", "'iss':", "'exp':", "'jti':", "'nbf':"):
        assert expected in claims, claims
    assert (tmp_path / ".keysvc-dev" / "dev-client.key").stat().st_mode & 0o777 == 0o600
    assert "make run exited" not in out
    assert stopped, "keysvc still ran after `kill %1`"


def _gone(group: int, seconds: float) -> bool:
    """Whether no process of `group` is left within `seconds`."""
    deadline = time.monotonic() + seconds
    while subprocess.run(["pgrep", "-g", str(group)], capture_output=True, check=False).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _stop_group(group: int) -> None:
    """Stop whatever the block left running (make and the keysvc it runs share the block's process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        if _gone(group, 15):
            return
