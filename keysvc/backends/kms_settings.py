"""`backend.type: kms` settings and the AWS naming rules they must follow (no boto3 here: the
configuration reads this module)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from keysvc.config.model import BackendSettings
from keysvc.config.reader import Section
from keysvc.errors import ConfigError

if TYPE_CHECKING:
    from keysvc.backends.base import Backend

# AWS alias names: letters, digits, '/', '_' and '-' after "alias/"; "alias/aws/..." is reserved for AWS.
# keysvc appends "/<keyset>/<seq>" to the prefix.
ALIAS_PREFIX = re.compile(r"^alias/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
MIN_DELETION_DAYS, MAX_DELETION_DAYS = 7, 30


@dataclass(frozen=True)
class KmsSettings(BackendSettings):
    """AWS KMS: one asymmetric key per kid, named by aliases under `alias_prefix`."""

    type: ClassVar[str] = "kms"
    region: str
    alias_prefix: str
    endpoint_url: str | None = None
    deletion_window_days: int = 30

    def open(self, instance_id: str) -> Backend:
        """A KmsBackend (boto3 is imported only now)."""
        from keysvc.backends.kms import KmsBackend

        return KmsBackend(
            region=self.region,
            alias_prefix=self.alias_prefix,
            endpoint_url=self.endpoint_url,
            deletion_window_days=self.deletion_window_days,
            instance_id=instance_id,
        )


def parse_kms(sec: Section, refresh_interval: float) -> KmsSettings:
    """`backend` for the kms type: `region`, `alias_prefix`, optional `endpoint_url` and `deletion_window`."""
    region = sec.required_text("region")
    if not _REGION.match(region):
        raise ConfigError(sec.name("region"), f"expected an AWS region such as eu-west-1, got {region!r}")
    prefix = sec.required_text("alias_prefix").rstrip("/")
    if not ALIAS_PREFIX.match(prefix) or prefix == "alias/aws" or prefix.startswith("alias/aws/"):
        raise ConfigError(
            sec.name("alias_prefix"),
            "must look like alias/keysvc/prod (letters, digits, / _ -), not under alias/aws/",
        )
    endpoint = sec.text("endpoint_url")
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(sec.name("endpoint_url"), f"expected an http(s) URL, got {endpoint!r}")
    window = sec.duration("deletion_window", "30d")
    if window % 86400 or not MIN_DELETION_DAYS * 86400 <= window <= MAX_DELETION_DAYS * 86400:
        raise ConfigError(sec.name("deletion_window"), "must be a whole number of days from 7d to 30d")
    return KmsSettings(refresh_interval, region, prefix, endpoint, int(window // 86400))
