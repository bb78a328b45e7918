"""The keyring, in process on a real key directory: the last guard before any signature."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keysvc.backends.file import FileBackend
from keysvc.clock import FixedClock
from keysvc.config import parse_settings
from keysvc.errors import Unavailable
from keysvc.keyring import Keyring
from tests.helpers import base_config

pytestmark = pytest.mark.unit


def test_keyring_refuses_a_ttl_beyond_the_retention_guarantee(tmp_path: Path) -> None:
    """Whatever path asks (sign endpoint, token exchange), a token whose exp would outlive the keyset's
    max_token_ttl is refused before anything is signed, and the violation hook (metric + error log) fires;
    a ttl at the maximum signs."""
    settings = parse_settings(base_config(tmp_path / "keys"))
    keyring = Keyring(settings, FileBackend(tmp_path / "keys"), FixedClock(1_800_000_000.0))
    seen: list[tuple[str, int]] = []
    keyring.on_exp_violation.append(lambda keyset, ttl: seen.append((keyset, ttl)))

    async def run() -> None:
        await keyring.refresh_all()
        token = await keyring.sign("zapier", {"aud": "connect.zapier.com"}, 300)
        assert token.expires_at == 1_800_000_000 + 300
        with pytest.raises(Unavailable):
            await keyring.sign("zapier", {"aud": "connect.zapier.com"}, 301)

    try:
        asyncio.run(run())
    finally:
        keyring.close()
    assert seen == [("zapier", 301)]
