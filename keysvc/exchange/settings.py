"""Moved to keysvc.config.exchange (one configuration model); kept so existing imports keep working."""

from keysvc.config.exchange import (
    CLIENT_AUTH_METHODS,
    CONNECT_FROM,
    LOOPBACK_HOSTS,
    MAX_JWT_TTL,
    REGISTERED_CLAIMS,
    SCOPE_TOKEN,
    ZAPIER_ALGS,
    ApiRateLimit,
    ClientAuth,
    ConnectFrom,
    TokenExchangeSettings,
    parse_token_exchange,
)
from keysvc.config.secrets import Secret

__all__ = [
    "CLIENT_AUTH_METHODS", "CONNECT_FROM", "LOOPBACK_HOSTS", "MAX_JWT_TTL", "REGISTERED_CLAIMS", "SCOPE_TOKEN",
    "ZAPIER_ALGS", "ApiRateLimit", "ClientAuth", "ConnectFrom", "Secret", "TokenExchangeSettings",
    "parse_token_exchange",
]  # fmt: skip
