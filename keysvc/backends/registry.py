"""Backend registry: each backend settings type (keysvc.config.backends) -> how to open its backend, so no
code chooses a backend by an if/elif. The dependency goes one way: backends build on the configuration,
the configuration never imports a backend.

This module imports no backend implementation at module level (no boto3): each opener imports its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keysvc.backends.base import Backend
from keysvc.config.backends import FileSettings, KmsSettings
from keysvc.config.model import BackendSettings


def open_file(settings: FileSettings, instance_id: str) -> Backend:
    """A FileBackend on `path` (the passphrase is read now, once)."""
    from keysvc.backends.file import FileBackend

    passphrase = settings.passphrase.reveal().encode("utf-8") if settings.passphrase else None
    return FileBackend(settings.path, passphrase, instance_id=instance_id)


def open_kms(settings: KmsSettings, instance_id: str) -> Backend:
    """A KmsBackend (boto3 is imported only now)."""
    from keysvc.backends.kms import KmsBackend

    return KmsBackend(
        region=settings.region,
        alias_prefix=settings.alias_prefix,
        endpoint_url=settings.endpoint_url,
        deletion_window_days=settings.deletion_window_days,
        instance_id=instance_id,
    )


OPENERS: dict[type[BackendSettings], Callable[[Any, str], Backend]] = {FileSettings: open_file, KmsSettings: open_kms}


def open_backend(settings: BackendSettings, instance_id: str) -> Backend:
    """Build the configured backend (no I/O beyond building clients)."""
    return OPENERS[type(settings)](settings, instance_id)
