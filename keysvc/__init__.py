"""keysvc: a hardened JWKS and signing-key service."""

__version__ = "0.1.0"
