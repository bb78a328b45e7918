"""The view of one keyset that a replica serves from: its settings, records, lifecycle status, JWKS document
and minter, valid until the next lifecycle instant.

Built by the keyring (keysvc.keyring), read by the HTTP routes, and handed to observers when a keyset's JWKS
changes (keysvc.events.JwksChanged): a domain type, below everything that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from keysvc.config import KeysetSettings
from keysvc.jwks import JwksDocument
from keysvc.lifecycle import KeysetStatus
from keysvc.records import KeyRecord
from keysvc.tokens import Minter


@dataclass(frozen=True)
class KeysetView:
    """Everything a request needs about one keyset, valid until `valid_until`."""

    settings: KeysetSettings
    records: tuple[KeyRecord, ...]
    status: KeysetStatus
    document: JwksDocument
    minter: Minter | None
    valid_until: float
