"""Optional TLS on the internal listener, and client certificates (mTLS) as an alternative to API keys.

    listen:
      tls:
        cert_file: /run/tls/tls.crt          # server certificate chain (PEM)
        key_file: /run/tls/tls.key           # its private key (PEM)
        client_ca_file: /run/tls/clients.crt # verify client certificates against this CA (optional)
        require_client_cert: true            # refuse the handshake without a valid client certificate
    clients:
      billing-api:
        cert_subjects: ["billing-api.internal", "spiffe://cluster.local/ns/billing/sa/api"]

A client certificate is only ever read after the TLS layer has verified it against `client_ca_file`
(Python's `getpeercert()` is empty otherwise). Its identities are the subject CN and every DNS, URI and
e-mail subjectAltName; the first one configured in some client's `cert_subjects` names the client.
Certificates that verify but name no configured client get 401, as a wrong API key does.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from keysvc.config import TlsSettings

# Where the HTTP protocol puts the verified identities of the peer's certificate in the ASGI scope
# (inside the ASGI "tls" extension, under a keysvc-specific key).
SCOPE_KEY = "keysvc.client_cert_identities"
_SAN_TYPES = frozenset({"DNS", "URI", "email"})


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
    """The subject CN and DNS/URI/e-mail SANs of a verified peer certificate (`SSLObject.getpeercert()`)."""
    if not peercert:
        return ()
    found: list[str] = []
    for rdn in peercert.get("subject", ()):
        found.extend(value for key, value in rdn if key == "commonName")
    found.extend(value for kind, value in peercert.get("subjectAltName", ()) if kind in _SAN_TYPES)
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
