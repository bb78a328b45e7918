"""Absolute URLs that keysvc publishes about itself (`public_url`, a keyset's `jwks_uri`): https, or plain
http only to a loopback host (a verifier on another machine must never be sent to plain http)."""

from __future__ import annotations

from urllib.parse import urlsplit

from keysvc.config.exchange import LOOPBACK_HOSTS
from keysvc.config.reader import Section
from keysvc.errors import ConfigError

_HINT = "must be an absolute https URL (plain http only to loopback) without user info, query or fragment"


def published_url(sec: Section, key: str) -> str | None:
    """The optional URL under `key`, checked; None when absent."""
    url: str | None = sec.text(key)
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port refuses a port that is not a number
    except ValueError:
        raise ConfigError(sec.name(key), f"{_HINT}, got {url!r}") from None
    secure = parts.scheme == "https" or (parts.scheme == "http" and host in LOOPBACK_HOSTS)
    if not host or not secure or "@" in parts.netloc or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(sec.name(key), f"{_HINT}, got {url!r}")
    return url


def public_base_url(sec: Section, key: str) -> str | None:
    """`public_url`: where the public listener is reached from outside, e.g. `https://keys.example.com`
    (its path, if any, is kept: keysvc behind a proxy at `/jwks`); no trailing slash."""
    url = published_url(sec, key)
    return url.rstrip("/") if url is not None else None
