"""Claims policy (pure) and JWS compact serialisation.

`check_sign_request` decides what a caller may have signed; `Minter` serialises and signs. The JWS header
of each kid is encoded once; per token only the claims are encoded and signed.
"""

from __future__ import annotations

import json
import os
from base64 import urlsafe_b64encode
from binascii import b2a_base64
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from keysvc.config import ClientSettings, KeysetSettings
from keysvc.errors import Forbidden, InvalidRequest
from keysvc.jwks import b64url
from keysvc.records import SignedToken, SigningKey

RESERVED_CLAIMS = frozenset({"iss", "iat", "nbf", "exp", "jti"})
_REQUEST_FIELDS = frozenset({"keyset", "claims", "ttl"})
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2): base64.urlsafe_b64encode without its two Python frames."""
    return b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


_stdlib_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def encode_claims(claims: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of a claims set. orjson writes what json.dumps(separators=(",", ":"),
    ensure_ascii=False) writes (floats in their shortest form: 1e-7, not 1e-07) in a tenth of the time;
    integers beyond 64 bits, which it refuses and a strict JSON body may hold, go to the stdlib encoder."""
    try:
        return orjson.dumps(claims)
    except orjson.JSONEncodeError:
        return _stdlib_encode(claims).encode("utf-8")


class _JwtIds:
    """Random JWT ids: 18 bytes (144 bits) from the OS, base64url, 24 characters. Drawn 64 at a time (one
    getrandom() and one base64 pass per 64 tokens; 18 bytes encode to whole base64 groups, so the ids are
    slices). A deque: popleft() is atomic, so threads never share an id; a forked child starts afresh."""

    BATCH = 64

    def __init__(self) -> None:
        self._ready: deque[str] = deque()
        os.register_at_fork(after_in_child=self._ready.clear)

    def __call__(self) -> str:
        try:
            return self._ready.popleft()
        except IndexError:
            text = urlsafe_b64encode(os.urandom(18 * self.BATCH)).decode("ascii")
            self._ready.extend(text[i:i + 24] for i in range(0, len(text), 24))
            return self._ready.popleft()


_jti = _JwtIds()


class SignRequest(NamedTuple):
    """A checked request: which keyset, what claims, for how long (seconds). (A NamedTuple, like SignedToken:
    built per request, and a frozen dataclass's __init__ costs about 1 us more.)"""

    keyset: str
    claims: Mapping[str, Any]
    ttl: int


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sign_request(
    body: object, client: ClientSettings, keysets: Mapping[str, KeysetSettings]
) -> SignRequest:
    """Validate a /v1/sign body against the client's permissions. Raises InvalidRequest or Forbidden."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    if not _REQUEST_FIELDS.issuperset(body):
        unknown = sorted(set(body) - _REQUEST_FIELDS)
        raise InvalidRequest(f"unknown field {unknown[0]!r}; expected keyset, claims, ttl")
    keyset = body.get("keyset")
    if keyset is None:
        if len(client.keysets) != 1:
            raise InvalidRequest("'keyset' is required: this client may use several keysets")
        keyset = client.keysets[0]
    if not isinstance(keyset, str):
        raise InvalidRequest("'keyset' must be a string")
    if keyset not in client.keysets or keyset not in keysets:
        raise Forbidden("this client may not use that keyset")
    claims = body.get("claims")
    if not isinstance(claims, dict):
        raise InvalidRequest("'claims' must be a JSON object")
    if not RESERVED_CLAIMS.isdisjoint(claims):
        reserved = sorted(RESERVED_CLAIMS & set(claims))
        raise InvalidRequest(f"claim {reserved[0]!r} is set by keysvc and may not be supplied")
    if not isinstance(claims.get("sub", ""), str):  # RFC 7519 §4.1.2; verifiers (PyJWT) refuse others
        raise InvalidRequest("claim 'sub' must be a string")
    _check_audience(claims.get("aud"), client)
    ttl = body.get("ttl")
    cap = int(min(client.max_ttl, keysets[keyset].max_token_ttl))
    if ttl is None:
        ttl = cap
    elif not _is_int(ttl) or ttl < 1:
        raise InvalidRequest("'ttl' must be a whole number of seconds >= 1")
    return SignRequest(keyset, claims, min(ttl, cap))


def _check_audience(aud: object, client: ClientSettings) -> None:
    if isinstance(aud, str):  # the common case, checked without building a list
        if aud not in client.audiences:
            raise Forbidden("this client may not sign for that audience")
        return
    if aud is None:
        raise InvalidRequest("claim 'aud' is required")
    if not isinstance(aud, list) or not aud or not all(isinstance(a, str) for a in aud):
        raise InvalidRequest("claim 'aud' must be a string or a non-empty list of strings")
    for audience in aud:
        if audience not in client.audiences:
            raise Forbidden("this client may not sign for that audience")


class Unsigned(NamedTuple):
    """A token's signing input (`header.payload`), and what its SignedToken will report."""

    signing_input: bytes
    expires_at: int
    jti: str


class Minter:
    """Signs claims with one kid. Immutable; one per active key."""

    def __init__(self, signer: SigningKey, issuer: str) -> None:
        self.signer = signer
        self.issuer = issuer
        header = {"alg": signer.alg, "kid": signer.kid, "typ": "JWT"}
        self._header = b64url(json.dumps(header, separators=(",", ":")).encode("ascii"))
        self._prefix = self._header.encode("ascii") + b"."  # per token, only the claims are encoded

    def signing_input(self, claims: Mapping[str, Any], now: int, ttl: int) -> Unsigned:
        """The bytes to sign for the full claims set (caller claims + iss, iat, nbf, exp, jti)."""
        jti = _jti()
        exp = now + ttl
        full = {**claims, "iss": self.issuer, "iat": now, "nbf": now, "exp": exp, "jti": jti}
        return Unsigned(self._prefix + _b64url(encode_claims(full)), exp, jti)

    def mint(self, claims: Mapping[str, Any], now: int, ttl: int) -> SignedToken:
        """Sign in the calling thread (in-process signers; a remote signer blocks)."""
        return self.sign(self.signing_input(claims, now, ttl))

    def sign(self, unsigned: Unsigned) -> SignedToken:
        """Sign a signing input in the calling thread and assemble its token."""
        return self.finish(unsigned, self.signer.sign(unsigned.signing_input))

    def finish(self, unsigned: Unsigned, signature: bytes) -> SignedToken:
        """Assemble the compact JWS once the signature is known."""
        token = (unsigned.signing_input + b"." + _b64url(signature)).decode("ascii")
        return SignedToken(token, self.signer.kid, self.signer.alg, unsigned.expires_at, unsigned.jti)
