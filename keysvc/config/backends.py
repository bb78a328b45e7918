"""The `backend` section: each backend type's settings and the AWS naming rules KMS settings must follow.

Pure data and checks: nothing here imports keysvc.backends (which builds on this module; see
keysvc.backends.registry for how each settings type opens its backend) or boto3.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from keysvc.config.model import BackendSettings
from keysvc.config.reader import Section
from keysvc.config.secrets import Secret, SecretFile, read_secret
from keysvc.errors import ConfigError

# AWS alias names: letters, digits, '/', '_' and '-' after "alias/"; "alias/aws/..." is reserved for AWS.
# keysvc appends "/<keyset>/<seq>" to the prefix.
ALIAS_PREFIX = re.compile(r"^alias/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
MIN_DELETION_DAYS, MAX_DELETION_DAYS = 7, 30


@dataclass(frozen=True)
class FileSettings(BackendSettings):
    """A key directory (a shared volume for several replicas); keys encrypted at rest with `passphrase`."""

    type: ClassVar[str] = "file"
    path: Path
    passphrase: Secret | SecretFile | None = None


@dataclass(frozen=True)
class KmsSettings(BackendSettings):
    """AWS KMS: one asymmetric key per kid, named by aliases under `alias_prefix`."""

    type: ClassVar[str] = "kms"
    region: str
    alias_prefix: str
    endpoint_url: str | None = None
    deletion_window_days: int = 30


def parse_file(sec: Section, refresh_interval: float) -> FileSettings:
    """`backend` for the file type: `path`, optional `passphrase_file` or `passphrase_env`."""
    v = sec.read(
        path=lambda: Path(sec.required_text("path")),
        passphrase=lambda: read_secret(sec, "passphrase", required=False),
    )
    return FileSettings(refresh_interval, **v)


def parse_kms(sec: Section, refresh_interval: float) -> KmsSettings:
    """`backend` for the kms type: `region`, `alias_prefix`, optional `endpoint_url` and `deletion_window`."""
    v = sec.read(
        region=lambda: _region(sec),
        alias_prefix=lambda: _alias_prefix(sec),
        endpoint_url=lambda: _endpoint_url(sec),
        deletion_window_days=lambda: _deletion_window(sec),
    )
    return KmsSettings(refresh_interval, **v)


def _region(sec: Section) -> str:
    region = sec.required_text("region")
    if not _REGION.match(region):
        raise ConfigError(sec.name("region"), f"expected an AWS region such as eu-west-1, got {region[:40]!r}")
    return region


def _alias_prefix(sec: Section) -> str:
    prefix = sec.required_text("alias_prefix").rstrip("/")
    if not ALIAS_PREFIX.match(prefix) or prefix == "alias/aws" or prefix.startswith("alias/aws/"):
        raise ConfigError(
            sec.name("alias_prefix"),
            "must look like alias/keysvc/prod (letters, digits, / _ -), not under alias/aws/",
        )
    return prefix


def _endpoint_url(sec: Section) -> str | None:
    endpoint: str | None = sec.text("endpoint_url")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(sec.name("endpoint_url"), f"expected an http(s) URL, got {endpoint[:60]!r}")
    return endpoint


def _deletion_window(sec: Section) -> int:
    window = sec.duration("deletion_window", "30d")
    if window % 86400 or not MIN_DELETION_DAYS * 86400 <= window <= MAX_DELETION_DAYS * 86400:
        raise ConfigError(sec.name("deletion_window"), "must be a whole number of days from 7d to 30d")
    return int(window // 86400)


# `backend.type` -> the parser of that backend's settings; an unknown type is a ConfigError at parse time
BACKEND_TYPES: dict[str, Callable[[Section, float], BackendSettings]] = {"file": parse_file, "kms": parse_kms}
