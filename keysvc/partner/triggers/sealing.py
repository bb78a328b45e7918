"""The sealed notification token: which inbox of which user a Zapier notification is about, in the
notification URL's last path segment, so that keysvc's public listener needs no lookup to trust it.

    token = base64url_nopad( VERSION || key id || nonce(12) || AES-256-GCM(plaintext, aad=VERSION||key id) )
    plaintext = len16(inbox_id) inbox_id  len16(user_id) user_id  len16(tenant_id) tenant_id   (UTF-8)

Unforgeable and unreadable: AES-GCM authenticates and encrypts it under a key derived (HKDF-SHA256) from
a secret only keysvc holds. The key id byte, derived from the secret, picks the key to open with, so a
rotated secret is accepted during an overlap (`NotificationSealer(current, previous)`); an unknown key id
or any tampered byte fails the same way. The text is canonical base64url (no padding, no '+' or '/', no
stray bits) of bounded length: one token has one spelling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keysvc.errors import NotFound

VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
MIN_SECRET_BYTES = 32
MAX_FIELD_BYTES = 256  # inbox id (a UUID), user_id and tenant_id (printable ASCII, at most 256)
_HEADER = 2 + NONCE_BYTES
_MAX_PLAINTEXT = 3 * (2 + MAX_FIELD_BYTES)
MAX_TOKEN_CHARS = -(-(_HEADER + _MAX_PLAINTEXT + TAG_BYTES) * 4 // 3)  # 1072 characters
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")
_INFO = b"keysvc trigger-inbox notification token v1"


class BadSealedToken(NotFound):
    """The token was not sealed by this keysvc (forged, tampered, truncated, another key, not canonical).
    Answered 404 like any unknown URL: the caller learns nothing about why."""


@dataclass(frozen=True)
class Sealed:
    """What a notification token names."""

    inbox_id: str
    user_id: str
    tenant_id: str


@dataclass(frozen=True)
class _Key:
    key_id: int
    aead: AESGCM = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes) -> _Key:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"a notification secret holds at least {MIN_SECRET_BYTES} bytes")
        material = HKDF(hashes.SHA256(), 32, salt=None, info=_INFO).derive(secret)
        key_id = hashlib.sha256(b"key id\x00" + material).digest()[0]  # names the key, reveals nothing of it
        return cls(key_id, AESGCM(material))


class NotificationSealer:
    """Seals with `current`; opens tokens sealed with `current` or any of `previous` (a rotation's overlap)."""

    def __init__(self, current: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current = _Key.derive(current)
        self._keys = [self._current, *(_Key.derive(s) for s in previous)]

    def __repr__(self) -> str:
        return f"NotificationSealer(key_ids={[k.key_id for k in self._keys]})"

    def seal(self, inbox_id: str, user_id: str, tenant_id: str) -> str:
        """An opaque URL-safe token naming (inbox, user, tenant); a fresh nonce each time."""
        plaintext = b"".join(_field(v) for v in (inbox_id, user_id, tenant_id))
        header = bytes((VERSION, self._current.key_id))
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = header + nonce + self._current.aead.encrypt(nonce, plaintext, header)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str) -> Sealed:
        """The triple a token names, or BadSealedToken."""
        raw = _decode(token)
        if len(raw) < _HEADER + TAG_BYTES or raw[0] != VERSION:
            raise BadSealedToken("no such notification endpoint")
        header, nonce, ciphertext = raw[:2], raw[2:_HEADER], raw[_HEADER:]
        for key in self._keys:
            if key.key_id != raw[1]:
                continue
            try:
                plaintext = key.aead.decrypt(nonce, ciphertext, header)
            except InvalidTag:
                continue
            return _unpack(plaintext)
        raise BadSealedToken("no such notification endpoint")


def _field(value: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError("inbox, user and tenant are non-empty strings")
    data = value.encode("utf-8")
    if len(data) > MAX_FIELD_BYTES:
        raise ValueError(f"inbox, user and tenant hold at most {MAX_FIELD_BYTES} bytes each")
    return struct.pack(">H", len(data)) + data


def _decode(token: object) -> bytes:
    """Strict canonical base64url without padding, of bounded length."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS or not _ALPHABET.fullmatch(token):
        raise BadSealedToken("no such notification endpoint")
    if len(token) % 4 == 1:
        raise BadSealedToken("no such notification endpoint")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise BadSealedToken("no such notification endpoint") from exc
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:  # stray bits in the last char
        raise BadSealedToken("no such notification endpoint")
    return raw


def _unpack(plaintext: bytes) -> Sealed:
    values: list[str] = []
    at = 0
    for _ in range(3):
        if at + 2 > len(plaintext):
            raise BadSealedToken("no such notification endpoint")
        (size,) = struct.unpack_from(">H", plaintext, at)
        at += 2
        chunk = plaintext[at : at + size]
        if len(chunk) != size or not size or size > MAX_FIELD_BYTES:
            raise BadSealedToken("no such notification endpoint")
        values.append(chunk.decode("utf-8"))  # sealed by us from a str: always UTF-8
        at += size
    if at != len(plaintext):
        raise BadSealedToken("no such notification endpoint")
    return Sealed(*values)
