"""Optional TLS on the internal listener, client certificates (mTLS) as an alternative to API keys, and the
trust of keysvc's outbound calls (`outbound_context`).

    listen:
      tls:
        cert_file: /run/tls/tls.crt          # server certificate chain (PEM)
        key_file: /run/tls/tls.key           # its private key (PEM)
        client_ca_file: /run/tls/clients.crt # verify client certificates against this CA (optional)
        require_client_cert: true            # refuse the handshake without a valid client certificate
    clients:
      billing-api:
        cert_subjects: ["uri:spiffe://cluster.local/ns/billing/sa/api", "dns:billing-api.internal"]

A client certificate is only ever read after the TLS layer has verified it against `client_ca_file`
(Python's `getpeercert()` is empty otherwise). Its identities are typed, so that one kind of name can
never pass for another: `uri:`, `dns:` and `email:` for its subjectAltNames, and `cn:` for its subject
CN **only when the certificate has no subjectAltName at all** (RFC 6125 §6.4.4: a CA that checks SANs
often lets the requester choose the CN, so a CN next to SANs proves nothing). DNS names compare
case-insensitively (they are lower-cased on both sides). A certificate that names no configured client,
or names two different clients, gets 401, as a wrong API key does.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from typing import Any

import certifi

from keysvc.config import TlsSettings, typed_subject

# Where the HTTP protocol puts the verified identities of the peer's certificate in the ASGI scope
# (inside the ASGI "tls" extension, under a keysvc-specific key).
SCOPE_KEY = "keysvc.client_cert_identities"
# getpeercert()'s subjectAltName types -> the prefix of a typed identity (IP and other SANs name no client)
_SAN_PREFIX = {"URI": "uri", "DNS": "dns", "email": "email"}
def uvicorn_ssl_options(tls: TlsSettings | None) -> dict[str, Any]:
    """Keyword arguments of uvicorn.Config for this TLS setting (empty: plain HTTP)."""
    if tls is None:
        return {}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        options["ssl_ca_certs"] = str(tls.client_ca_file)
        options["ssl_cert_reqs"] = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return options


def identities(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """The typed identities of a verified peer certificate (`SSLObject.getpeercert()`): its URI, DNS and
    e-mail SANs; its subject CN only when it has no SAN of any type."""
    if not peercert:
        return ()
    sans = peercert.get("subjectAltName", ())
    if sans:
        found = [typed_subject(_SAN_PREFIX[kind], value) for kind, value in sans if kind in _SAN_PREFIX]
    else:
        found = [typed_subject("cn", value) for rdn in peercert.get("subject", ())
                 for key, value in rdn if key == "commonName"]
    return tuple(dict.fromkeys(found))


def scope_extension(ssl_object: ssl.SSLObject | None) -> dict[str, Any]:
    """The ASGI `tls` extension for one connection: the verified client identities (possibly none)."""
    if ssl_object is None:
        return {}
    return {"tls": {SCOPE_KEY: identities(ssl_object.getpeercert())}}


def client_identities(scope: Mapping[str, Any]) -> tuple[str, ...]:
    """The verified client-certificate identities of a request (empty without TLS or a client cert)."""
    tls = scope.get("extensions", {}).get("tls", {})
    return tuple(tls.get(SCOPE_KEY, ()))


def outbound_context() -> ssl.SSLContext:
    """The trust of keysvc's outbound calls (the partner, the canary), as httpx gives keysvc's clients:
    `SSL_CERT_FILE`, else `SSL_CERT_DIR`, else certifi's bundle."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())
