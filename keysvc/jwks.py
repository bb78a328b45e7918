"""PURE: published key records -> JWKS bytes and strong ETag, computed once per change of the set."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from keysvc.records import KeyRecord

# Public JWK members by key type (RFC 7518 §6); anything else (d, p, q, dp, dq, qi, k, oth) never leaves.
PUBLIC_MEMBERS: dict[str, tuple[str, ...]] = {
    "RSA": ("kty", "n", "e"),
    "EC": ("kty", "crv", "x", "y"),
    "OKP": ("kty", "crv", "x"),
}


@dataclass(frozen=True)
class JwksDocument:
    """The bytes served for one keyset and their ETag."""

    body: bytes
    etag: str
    kids: tuple[str, ...]


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_members(jwk: Mapping[str, str]) -> dict[str, str]:
    """Only the public members of a JWK; refuses an unknown key type."""
    kty = jwk.get("kty", "")
    if kty not in PUBLIC_MEMBERS:
        raise ValueError(f"unsupported key type {kty!r}")
    return {m: jwk[m] for m in PUBLIC_MEMBERS[kty]}


def thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the required members, sorted, no white space."""
    members = public_members(jwk)
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b64url(hashlib.sha256(canonical).digest())


def published_jwk(record: KeyRecord) -> dict[str, str]:
    """The JWK a verifier sees for one key."""
    return {**public_members(record.public_jwk), "kid": record.kid, "alg": record.alg, "use": "sig"}


def build(records: Iterable[KeyRecord]) -> JwksDocument:
    """The JWKS document of the given published keys (in the given order)."""
    keys = [published_jwk(r) for r in records]
    body = json.dumps({"keys": keys}, separators=(",", ":")).encode("utf-8")
    etag = '"' + b64url(hashlib.sha256(body).digest())[:32] + '"'
    return JwksDocument(body, etag, tuple(k["kid"] for k in keys))
