"""Secrets in the configuration: a value (`Secret`) or a file re-read when it changes (`SecretFile`).

Either way `reveal()` is the one way to the value, and neither repr nor str shows it. A configuration names
a secret by `<name>_file` (a path) or `<name>_env` (an environment variable), exactly one of them.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from keysvc.config.reader import Section
from keysvc.errors import ConfigError

LOG = logging.getLogger("keysvc")


class Secret:
    """A secret value whose repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretFile:
    """A secret kept in a file that may be replaced while keysvc runs (a Kubernetes Secret update).

    `reveal()` re-reads the file when its inode, size or modification time changed. A file that becomes
    unreadable or empty keeps the last good value and logs one warning (until it is good again).
    """

    def __init__(self, path: Path, field: str) -> None:
        self.path = path
        self.field = field
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value: str | None = None
        self._warned = False

    def __repr__(self) -> str:
        return f"SecretFile({str(self.path)!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretFile) and (other.path, other.field) == (self.path, self.field)

    def __hash__(self) -> int:
        return hash((self.path, self.field))

    def reveal(self) -> str:
        """The file's current content (stripped). ConfigError only if it was never readable."""
        with self._lock:
            try:
                self._refresh()
            except ConfigError as exc:
                if self._value is None:
                    raise
                if not self._warned:
                    self._warned = True
                    LOG.warning("secret file unusable: keeping its last good value",
                                extra={"field": self.field, "reason": exc.message})
            assert self._value is not None  # nosec B101 - set by _refresh, or raised above
            return self._value

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp == self._stamp:
                return
            value = self.path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(self.field, f"cannot read secret file {self.path}: {type(exc).__name__}") from None
        if not value:
            raise ConfigError(self.field, f"secret file {self.path} is empty")
        self._value, self._stamp, self._warned = value, stamp, False


def read_secret(sec: Section, key: str, *, required: bool) -> Secret | SecretFile | None:
    """The secret named by `<key>_file` or `<key>_env` (exactly one). Read now unless the options say
    offline, so a secret that cannot be read refuses the configuration."""
    file_key, env_key = f"{key}_file", f"{key}_env"
    file_path, env_name = sec.text(file_key), sec.text(env_key)
    if file_path and env_name:
        raise ConfigError(sec.name(file_key), f"set exactly one of {file_key}, {env_key} (not both)")
    if file_path:
        secret = SecretFile(Path(file_path), sec.name(file_key))
        if not sec.options.offline:
            secret.reveal()
        return secret
    if env_name:
        value = sec.options.environ.get(env_name, "").strip()
        if not value and not sec.options.offline:
            raise ConfigError(sec.name(env_key), f"environment variable {env_name} is unset or empty")
        return Secret(value)
    if required:
        raise sec.missing(file_key, f"is required: set exactly one of {file_key}, {env_key}")
    return None
