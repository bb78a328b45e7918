"""PURE: a keyset's OpenID Provider Metadata (OpenID Connect Discovery 1.0 §3), built once per configuration.

Verifiers that start from an issuer (AWS IAM OIDC identity providers, GCP workload identity federation,
Vault's JWT auth method, Kubernetes-style issuer discovery) fetch `<issuer>/.well-known/openid-configuration`
and follow its `jwks_uri`. keysvc answers that path for the default keyset and `/keysets/<name>/...` for each
keyset; the document names the keyset's issuer and an absolute JWKS URL, which keysvc cannot know from a
request (a `Host` header is the caller's text): it comes from the keyset's `jwks_uri` or from `public_url`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from keysvc.config import KeysetSettings
from keysvc.jwks import b64url

WELL_KNOWN = "/.well-known/openid-configuration"


@dataclass(frozen=True)
class DiscoveryDocument:
    """The bytes served at a keyset's discovery paths and their strong ETag."""

    body: bytes
    etag: str


def keyset_path(name: str) -> str:
    """The public listener's discovery path of one keyset (the default keyset's is also WELL_KNOWN)."""
    return f"/keysets/{name}{WELL_KNOWN}"


def jwks_uri(keyset: KeysetSettings, public_url: str | None) -> str | None:
    """The absolute JWKS URL of a keyset: its own `jwks_uri`, else `public_url` + its JWKS path, else None."""
    if keyset.jwks_uri is not None:
        return keyset.jwks_uri
    if public_url is not None:
        return f"{public_url}/keysets/{keyset.name}/jwks.json"
    return None


def build(keyset: KeysetSettings, public_url: str | None) -> DiscoveryDocument | None:
    """The discovery document of a keyset, or None when no absolute JWKS URL is configured for it."""
    uri = jwks_uri(keyset, public_url)
    if uri is None:
        return None
    doc = {
        "issuer": keyset.issuer,
        "jwks_uri": uri,
        "id_token_signing_alg_values_supported": [keyset.alg],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
    }
    body = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return DiscoveryDocument(body, '"' + b64url(hashlib.sha256(body).digest())[:32] + '"')


def served_at(keyset: KeysetSettings, public_url: str, default: bool) -> tuple[str, ...]:
    """The absolute URLs keysvc answers a keyset's discovery document at, behind `public_url`."""
    urls = (public_url + keyset_path(keyset.name),)
    return (public_url + WELL_KNOWN, *urls) if default else urls


def issuer_discoverable(keyset: KeysetSettings, public_url: str, default: bool) -> bool:
    """Whether a discoverer starting from the keyset's issuer (issuer + WELL_KNOWN, as OpenID Connect
    Discovery and every verifier named above build it) reaches keysvc's document."""
    return keyset.issuer.rstrip("/") + WELL_KNOWN in served_at(keyset, public_url, default)
