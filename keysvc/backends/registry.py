"""Backend registry: name -> factory. An unknown name fails at start-up (config validation)."""

from __future__ import annotations

from collections.abc import Callable

from keysvc.backends.base import Backend
from keysvc.config import BackendSettings


def _file(settings: BackendSettings, instance_id: str) -> Backend:
    from keysvc.backends.file import FileBackend

    assert settings.path is not None  # nosec B101 - guaranteed by config validation
    passphrase = settings.passphrase.reveal().encode("utf-8") if settings.passphrase else None
    return FileBackend(settings.path, passphrase, instance_id=instance_id)


def _kms(settings: BackendSettings, instance_id: str) -> Backend:
    from keysvc.backends.kms import KmsBackend  # boto3 is only imported when KMS is used

    assert settings.region is not None  # nosec B101 - guaranteed by config validation
    assert settings.alias_prefix is not None  # nosec B101 - guaranteed by config validation
    return KmsBackend(
        region=settings.region,
        alias_prefix=settings.alias_prefix,
        endpoint_url=settings.endpoint_url,
        deletion_window_days=settings.deletion_window_days,
        instance_id=instance_id,
    )


REGISTRY: dict[str, Callable[[BackendSettings, str], Backend]] = {"file": _file, "kms": _kms}


def open_backend(settings: BackendSettings, instance_id: str) -> Backend:
    """Build the configured backend (no I/O beyond building clients)."""
    return REGISTRY[settings.type](settings, instance_id)
