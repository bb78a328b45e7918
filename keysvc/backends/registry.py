"""Backend registry: `backend.type` -> the parser of that backend's settings. Each settings type opens its
own backend, so no code chooses a backend by an if/elif; an unknown type is a ConfigError at parse time.

This module and the settings modules it names import no backend implementation (no boto3).
"""

from __future__ import annotations

from collections.abc import Callable

from keysvc.backends.base import Backend
from keysvc.backends.file_settings import parse_file
from keysvc.backends.kms_settings import parse_kms
from keysvc.config.model import BackendSettings
from keysvc.config.reader import Section

REGISTRY: dict[str, Callable[[Section, float], BackendSettings]] = {"file": parse_file, "kms": parse_kms}


def open_backend(settings: BackendSettings, instance_id: str) -> Backend:
    """Build the configured backend (no I/O beyond building clients)."""
    return settings.open(instance_id)
