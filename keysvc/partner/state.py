"""The `state` of a Connect flow: opaque to callers, bound to (user, tenant, app, redirect_uri), valid for
at most ten minutes, checkable by every replica with nothing shared but the partner's client secret.

    key   = HKDF-SHA256(client secret, info="keysvc zapier connect-state v1")   (domain-separated: this key
            is used for nothing else, and the secret itself never touches a state)
    state = "v1." + base64url(nonce[12] || AES-256-GCM(key, nonce, JSON{u, t, a, r, e}, aad="v1"))

AES-GCM both hides the payload (a user id is not the caller's business in a URL) and authenticates it:
a changed byte fails the tag check (constant time, in OpenSSL), so a caller can neither forge a state nor
move one to another user, app or redirect. Pure: the caller passes the time and, in tests, the nonce.

Only the canonical encoding opens: unpadded base64url whose unused trailing bits are zero (no `=`, no `+/`),
so one sealed state has exactly one spelling. The key follows the client secret: given a `secret` callable
(the configured Secret or SecretFile's `reveal`), the codec derives the key again when the secret changes,
seals with the new key and still opens states sealed with the previous one (a rotation's overlap: replicas
that have not yet read the new secret, and states issued just before it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import threading
from collections.abc import Callable
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
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class ConnectState:
    """What a state is bound to; `expires_at` in the clock's seconds (wall time: replicas share it)."""

    user_id: str
    tenant_id: str
    app: str
    redirect_uri: str | None
    expires_at: int
    connect_app: str | None = None  # the Connect URL's app segment when it is not `app` (an app key or slug)


def state_key(client_secret: str) -> bytes:
    """The 32-byte state key derived from the partner's client secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(client_secret.encode())


class StateCodec:
    """Seals and opens Connect states with one key."""

    def __init__(self, key: bytes | Callable[[], str], ttl: int = STATE_TTL) -> None:
        """`key`: 32 bytes, or a callable answering the client secret now (the key follows it)."""
        if not 1 <= ttl <= STATE_TTL or (isinstance(key, bytes) and len(key) != 32):
            raise ValueError("the state key is 32 bytes; ttl is 1 to 600 seconds")
        self._secret = None if isinstance(key, bytes) else key
        self._lock = threading.Lock()
        self._seen: str | None = None
        self._aead = AESGCM(key) if isinstance(key, bytes) else AESGCM(state_key(key()))
        self._previous: AESGCM | None = None
        if self._secret is not None:
            self._seen = self._secret()
        self.ttl = ttl

    def _keys(self) -> tuple[AESGCM, AESGCM | None]:
        """The current key (derived again when the secret changed) and the one before it."""
        if self._secret is not None:
            secret = self._secret()
            with self._lock:
                if secret != self._seen:
                    self._previous, self._aead, self._seen = self._aead, AESGCM(state_key(secret)), secret
        return self._aead, self._previous

    def __repr__(self) -> str:
        return f"StateCodec(ttl={self.ttl})"

    def seal(self, user_id: str, tenant_id: str, app: str, redirect_uri: str | None, now: float,
             nonce: bytes | None = None, connect_app: str | None = None) -> str:
        """A fresh state for this flow, valid `ttl` seconds from `now`."""
        nonce = os.urandom(12) if nonce is None else nonce
        payload: dict[str, str | int | None] = {"u": user_id, "t": tenant_id, "a": app, "r": redirect_uri,
                                                "e": int(now) + self.ttl}
        if connect_app is not None and connect_app != app:
            payload["k"] = connect_app
        plain = json.dumps(payload, separators=(",", ":")).encode()
        sealed = nonce + self._keys()[0].encrypt(nonce, plain, _AAD)
        return _PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, state: str, now: float) -> ConnectState:
        """The flow a state was sealed for, or InvalidRequest (forged, damaged, expired)."""
        if not state.startswith(_PREFIX) or len(state) > _MAX_STATE:
            raise InvalidRequest("state is not one keysvc issued")
        body = state[len(_PREFIX):]
        try:
            if not _BASE64URL.fullmatch(body):
                raise ValueError("not unpadded base64url")
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            if base64.urlsafe_b64encode(sealed).rstrip(b"=").decode() != body:
                raise ValueError("not the canonical encoding")
            plain = self._decrypt(sealed)
            payload = json.loads(plain)
            connect_app = payload.get("k")
            if connect_app is not None and not isinstance(connect_app, str):
                raise TypeError("k")
            opened = ConnectState(payload["u"], payload["t"], payload["a"], payload["r"], int(payload["e"]),
                                  connect_app)
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            raise InvalidRequest("state is not one keysvc issued") from None
        if now >= opened.expires_at:
            raise InvalidRequest("state has expired: start the Connect flow again")
        return opened

    def _decrypt(self, sealed: bytes) -> bytes:
        current, previous = self._keys()
        try:
            return current.decrypt(sealed[:12], sealed[12:], _AAD)
        except InvalidTag:
            if previous is None:
                raise
            return previous.decrypt(sealed[:12], sealed[12:], _AAD)

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
