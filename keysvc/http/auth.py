"""Who calls the internal listener: an API key (`Authorization: Bearer`) or a verified client certificate."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from keysvc.config import ClientSettings
from keysvc.errors import InvalidClient


class Authenticator:
    """Maps an `Authorization: Bearer <api key>` header, or a verified client certificate, to a client.

    The key is hashed (SHA-256) and looked up by digest; the stored digest is then compared in constant
    time. Looking up by digest leaks nothing useful about the key: an attacker cannot steer SHA-256.
    A client certificate (mTLS, keysvc.tls) counts only when the request has no Authorization header;
    when both are sent they must name the same client. A certificate whose typed identities name two
    different clients names none of them (401): which one wins must never depend on SAN order.
    """

    def __init__(self, clients: Mapping[str, ClientSettings]) -> None:
        self._by_digest = {digest: c for c in clients.values() for digest in c.api_key_digests}
        self._by_subject = {subject: c for c in clients.values() for subject in c.cert_subjects}

    def authenticate(self, authorization: str | None, cert_identities: tuple[str, ...] = ()) -> ClientSettings:
        """The client, or InvalidClient."""
        if not cert_identities:  # no client certificate: the API key alone
            return self._by_key(authorization)
        by_cert = self._by_certificate(cert_identities)
        if authorization is None:
            if by_cert is None:
                raise InvalidClient("the client certificate names no configured client")
            return by_cert
        client = self._by_key(authorization)
        if by_cert is not None and by_cert is not client:
            raise InvalidClient("the client certificate and the API key name different clients")
        return client

    def _by_certificate(self, cert_identities: tuple[str, ...]) -> ClientSettings | None:
        named = {id(c): c for i in cert_identities if (c := self._by_subject.get(i)) is not None}
        if len(named) > 1:
            raise InvalidClient("the client certificate names more than one client")
        return next(iter(named.values()), None)

    def _by_key(self, authorization: str | None) -> ClientSettings:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise InvalidClient("send an API key as 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        client = self._by_digest.get(digest)
        expected = client.api_key_digests if client is not None else ("0" * 64,)
        if not any([hmac.compare_digest(d, digest) for d in expected]) or client is None:
            raise InvalidClient("invalid API key")
        return client
