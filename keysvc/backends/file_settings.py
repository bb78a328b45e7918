"""`backend.type: file` settings (no heavy imports: the configuration reads this module)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from keysvc.config.model import BackendSettings
from keysvc.config.reader import Section
from keysvc.config.secrets import Secret, SecretFile, read_secret

if TYPE_CHECKING:
    from keysvc.backends.base import Backend


@dataclass(frozen=True)
class FileSettings(BackendSettings):
    """A key directory (a shared volume for several replicas); keys encrypted at rest with `passphrase`."""

    type: ClassVar[str] = "file"
    path: Path
    passphrase: Secret | SecretFile | None = None

    def open(self, instance_id: str) -> Backend:
        """A FileBackend on `path` (the passphrase is read now, once)."""
        from keysvc.backends.file import FileBackend

        passphrase = self.passphrase.reveal().encode("utf-8") if self.passphrase else None
        return FileBackend(self.path, passphrase, instance_id=instance_id)


def parse_file(sec: Section, refresh_interval: float) -> FileSettings:
    """`backend` for the file type: `path`, optional `passphrase_file` or `passphrase_env`."""
    path = Path(sec.required_text("path"))
    passphrase = read_secret(sec, "passphrase", required=False)
    return FileSettings(refresh_interval, path, passphrase)
