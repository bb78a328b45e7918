"""A real, throwaway PostgreSQL server on 127.0.0.1 for the gateway store's tests.

`PostgresServer.start()` runs Debian's `initdb` into a fresh temporary directory, starts `postgres` on a
free loopback port (fsync off: a test cluster is thrown away, durability buys nothing), creates a role
with a password and a database owned by it, and `stop()` removes it all. PostgreSQL refuses to run as
root, so when the tests run as root the server's commands run as the `postgres` user (`runuser`).
`tests/tools/ensure_postgres.sh` installs the server package when it is missing (`make test` runs it).

The fixture `postgres_server` (session-scoped) is one server for the whole run; a test that stops a server
starts its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROLE = "keysvc"
DATABASE = "keysvc"
SERVER_SETTINGS = (
    "listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off",
    "max_connections=100", "shared_buffers=32MB", "log_min_messages=warning",
)


def bindir() -> Path:
    """Where initdb, pg_ctl and postgres are: `pg_config --bindir`, else Debian's /usr/lib/postgresql/N/bin."""
    candidates: list[str] = []
    if pg_config := shutil.which("pg_config"):
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(found.stdout.strip())
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).resolve().parent))
    for directory in candidates:
        if directory and (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    raise RuntimeError("PostgreSQL's initdb/pg_ctl not found: run `sh tests/tools/ensure_postgres.sh`")


def free_port() -> int:
    """A TCP port nobody listens on right now (the server binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PostgresServer:
    """One running cluster: connect as `user`/`password` to `database` on 127.0.0.1:`port`."""

    root: Path
    port: int
    password: str = field(repr=False)
    user: str = ROLE
    database: str = DATABASE

    @property
    def url(self) -> str:
        """The store URL, without the password (the store takes that separately)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb, start, create the role and the database: a couple of seconds."""
        root = Path(tempfile.mkdtemp(prefix="keysvc-pg-"))
        server = cls(root, free_port(), secrets.token_urlsafe(18))
        try:
            server._initdb()
            server.resume()
            server._psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{server.password}'",
                         f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
        except BaseException:
            server.remove()
            raise
        return server

    def _as_server_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._as_server_user(list(argv)), capture_output=True, text=True, timeout=60,
                              check=False, cwd=self.root)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}")

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self.root.chmod(0o700)
        # The superuser logs in only over the cluster's own socket directory (trust there, nowhere else);
        # TCP asks every role for its password (scram-sha-256).
        self._run(str(bindir() / "initdb"), "-D", str(self.data), "-U", "postgres", "--no-sync",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")

    def resume(self) -> None:
        """Start (or start again) the server on the same port and data."""
        options = " ".join(f"-c {s}" for s in (*SERVER_SETTINGS, f"port={self.port}",
                                                 f"unix_socket_directories={self.root}"))
        self._run(str(bindir() / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "-t", "30", "start")

    def halt(self) -> None:
        """Stop the server (sessions ended, port closed; "fast": what it committed stays, which "immediate"
        with fsync off would not keep); `resume()` brings it back."""
        self._run(str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def create_database(self) -> str:
        """A new, empty database owned by the role (each test its own): its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self._psql(f"CREATE DATABASE {name} OWNER {ROLE}")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def _psql(self, *statements: str) -> None:
        argv = [str(bindir() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
                "-p", str(self.port), "-U", "postgres", "-d", "postgres"]
        for statement in statements:
            argv += ["-c", statement]
        self._run(*argv)

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session, removed at the end."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.remove()
