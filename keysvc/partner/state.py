"""The `state` of a Connect flow: opaque to callers, bound to (user, tenant, app, redirect_uri), valid for
at most ten minutes, checkable by every replica with nothing shared but the partner's client secret.

    key   = HKDF-SHA256(client secret, info="keysvc zapier connect-state v1")   (domain-separated: this key
            is used for nothing else, and the secret itself never touches a state)
    state = "v1." + base64url(nonce[12] || AES-256-GCM(key, nonce, JSON{u, t, a, r, e}, aad="v1"))

AES-GCM both hides the payload (a user id is not the caller's business in a URL) and authenticates it:
a changed byte fails the tag check (constant time, in OpenSSL), so a caller can neither forge a state nor
move one to another user, app or redirect. Pure: the caller passes the time and, in tests, the nonce.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keysvc.errors import InvalidRequest

STATE_TTL = 600  # seconds: the longest a Connect flow may take
_PREFIX = "v1."
_AAD = b"v1"
_INFO = b"keysvc zapier connect-state v1"
_MAX_STATE = 4096  # characters: user and tenant are at most 256 each, far below


@dataclass(frozen=True)
class ConnectState:
    """What a state is bound to; `expires_at` in the clock's seconds (wall time: replicas share it)."""

    user_id: str
    tenant_id: str
    app: str
    redirect_uri: str | None
    expires_at: int


def state_key(client_secret: str) -> bytes:
    """The 32-byte state key derived from the partner's client secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(client_secret.encode())


class StateCodec:
    """Seals and opens Connect states with one key."""

    def __init__(self, key: bytes, ttl: int = STATE_TTL) -> None:
        if len(key) != 32 or not 1 <= ttl <= STATE_TTL:
            raise ValueError("the state key is 32 bytes; ttl is 1 to 600 seconds")
        self._aead = AESGCM(key)
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"StateCodec(ttl={self.ttl})"

    def seal(self, user_id: str, tenant_id: str, app: str, redirect_uri: str | None, now: float,
             nonce: bytes | None = None) -> str:
        """A fresh state for this flow, valid `ttl` seconds from `now`."""
        nonce = os.urandom(12) if nonce is None else nonce
        payload = {"u": user_id, "t": tenant_id, "a": app, "r": redirect_uri, "e": int(now) + self.ttl}
        plain = json.dumps(payload, separators=(",", ":")).encode()
        sealed = nonce + self._aead.encrypt(nonce, plain, _AAD)
        return _PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, state: str, now: float) -> ConnectState:
        """The flow a state was sealed for, or InvalidRequest (forged, damaged, expired)."""
        if not state.startswith(_PREFIX) or len(state) > _MAX_STATE:
            raise InvalidRequest("state is not one keysvc issued")
        body = state[len(_PREFIX):]
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = self._aead.decrypt(sealed[:12], sealed[12:], _AAD)
            payload = json.loads(plain)
            opened = ConnectState(payload["u"], payload["t"], payload["a"], payload["r"], int(payload["e"]))
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            raise InvalidRequest("state is not one keysvc issued") from None
        if now >= opened.expires_at:
            raise InvalidRequest("state has expired: start the Connect flow again")
        return opened

    def check(self, state: str, now: float, user_id: str, tenant_id: str, redirect_uri: str | None) -> ConnectState:
        """Open `state` and check it belongs to this user and tenant (and redirect, when the caller names one)."""
        opened = self.open(state, now)
        same_user = _same(opened.user_id, user_id) & _same(opened.tenant_id, tenant_id)
        same_redirect = redirect_uri is None or _same(opened.redirect_uri or "", redirect_uri)
        if not (same_user and same_redirect):
            raise InvalidRequest("state was issued for another user, tenant or redirect")
        return opened


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
