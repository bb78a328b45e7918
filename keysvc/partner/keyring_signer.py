"""`KeyringSigner`: the `TokenSigner` keysvc itself uses, over its own keyring (the private key never leaves
the process). Server side: it imports the keyring, so the Python clients (keysvc.client) never load it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from keysvc.config import KeysetSettings
from keysvc.keyring import Keyring
from keysvc.records import SignedToken

TOKEN_EXCHANGE_ACTOR = "token_exchange"  # noqa: S105  # nosec B105 - a client label of audit lines, not a secret


class KeyringSigner:
    """A `TokenSigner` over this process's keyring."""

    def __init__(self, keyring: Keyring, keysets: Mapping[str, KeysetSettings], default_keyset: str) -> None:
        self._keyring = keyring
        self._keysets = keysets
        self._default = default_keyset

    def __repr__(self) -> str:
        return f"KeyringSigner(default_keyset={self._default!r})"

    async def sign(self, claims: Mapping[str, Any], ttl: int, keyset: str | None = None) -> SignedToken:
        """Sign with the keyset's active key; the lifetime is capped by the keyset's max_token_ttl."""
        name = keyset or self._default
        ttl = min(ttl, int(self._keysets[name].max_token_ttl))
        # every partner JWT gets its token.sign audit line (kid, jti, exp) like a /v1/sign token; the
        # token.exchange line that follows names the client and the user
        audit = {"client": TOKEN_EXCHANGE_ACTOR, "keyset": name, "sub": claims.get("sub"), "aud": claims.get("aud")}
        return await self._keyring.sign(name, claims, ttl, audit=audit)
