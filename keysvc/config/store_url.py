"""Where the gateway store is and how long a call may take: `StoreSettings`, parsed from a URL.

    sqlite:///relative/path.db, sqlite:////absolute/path.db   one replica (a file on its disk)
    postgresql://user@host:port/database                      any number of replicas (also postgres://)

The password never sits in the URL: the caller reads it from `password_file` or `password_env` and passes
it in; `repr` and `str` hide it. Parsing checks everything at start-up (an unknown scheme, a password in the
URL, a missing database name): ValueError, which the configuration model reports as a ConfigError.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_TIMEOUT = 2.0
DEFAULT_FALLBACK_DIVISOR = 3
SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


@dataclass(frozen=True)
class StoreSettings:
    """A parsed store URL: `engine` is "sqlite" (with `path`) or "postgresql" (with host, port, user,
    database); `password` is hidden from repr; `timeout` bounds every call (seconds)."""

    engine: str
    path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    database: str = ""
    password: str | None = field(default=None, repr=False, compare=False)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_url(cls, url: str, *, password: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> StoreSettings:
        """Parse `url`; ValueError naming what is wrong (never echoing a password)."""
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        scheme, sep, _ = url.partition("://")
        engine = SCHEMES.get(scheme.lower())
        if not sep or engine is None:
            raise ValueError("the store URL must start with sqlite:/// or postgresql://")
        if engine == "sqlite":
            return cls._sqlite(url[len(scheme) + 3:], timeout)
        return cls._postgresql(url, password, timeout)

    @classmethod
    def _sqlite(cls, rest: str, timeout: float) -> StoreSettings:
        if not rest.startswith("/") or rest == "/":
            raise ValueError("a SQLite store URL is sqlite:///relative/file.db or sqlite:////absolute/file.db")
        path = rest[1:]
        if "?" in path or "#" in path:
            raise ValueError("a SQLite store URL takes no query or fragment")
        return cls("sqlite", path=Path(unquote(path)), timeout=timeout)

    @classmethod
    def _postgresql(cls, url: str, password: str | None, timeout: float) -> StoreSettings:
        parts = urlsplit(url)
        try:
            port = parts.port or 5432
        except ValueError:
            raise ValueError("the PostgreSQL store URL has an invalid port") from None
        if parts.password is not None:
            raise ValueError("the PostgreSQL store URL must not carry a password: use password_file or password_env")
        if parts.query or parts.fragment:
            raise ValueError("the PostgreSQL store URL takes no query or fragment")
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname or not parts.username or not database or "/" in database:
            raise ValueError("a PostgreSQL store URL is postgresql://user@host:port/database")
        return cls("postgresql", host=parts.hostname, port=port, user=unquote(parts.username),
                   database=database, password=password, timeout=timeout)

    @property
    def display(self) -> str:
        """The URL without any secret, for logs and errors."""
        if self.engine == "sqlite":
            return f"sqlite:///{self.path}"
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


def read_password(password_file: Path | None = None, password_env: str | None = None,
                  environ: Mapping[str, str] | None = None) -> str | None:
    """The PostgreSQL password from `password_file` (its first line, surrounding whitespace dropped) or the
    environment variable `password_env`; None when neither is given. ValueError (naming the file or the
    variable, never the value) when both are given, the file cannot be read, or the password is empty."""
    if password_file is not None and password_env is not None:
        raise ValueError("give password_file or password_env, not both")
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"password_file {password_file} cannot be read ({type(exc).__name__})") from None
        password = lines[0].strip() if lines else ""
        if not password:
            raise ValueError(f"password_file {password_file} is empty")
        return password
    if password_env is not None:
        password = (os.environ if environ is None else environ).get(password_env, "")
        if not password:
            raise ValueError(f"password_env {password_env} is not set or empty")
        return password
    return None
