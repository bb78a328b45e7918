"""keysvc's Python clients: exactly what `pip install keysvc[client]` ships (httpx, PyYAML, cryptography).

Nothing here imports a keysvc server module or a server library (tests/test_architecture.py enforces it by
folder, tests/test_packaging.py by importing each module in a fresh interpreter). The server side of the
partner (keysvc.partner) imports the transport-free modules below; the httpx ones are the clients' own.

oauth.py             PartnerError, the RFC 6749/8693 form and answer rules, the partner-failure mapping (pure)
cache.py             single-flight cache: one upstream call per key however many callers wait (pure)
connect.py           Connect URL and redirect-callback helpers (pure)
exchanger.py         TokenExchanger: partner JWT claims, access and connect flows, the access-token cache;
                     it speaks to the token endpoint through a `TokenEndpoint` (transport-free)
token_endpoint.py    the httpx TokenEndpoint: one exchange request, client auth, retries
signer.py            TokenSigner protocol, RemoteSigner (keysvc's POST /v1/sign over httpx)
zapier.py            ZapierClient / SyncZapierClient for the gateway's `/v1/zapier/*` (httpx)
exchange_command.py  `keysvc exchange` (the keyring it signs with is built by keysvc.cli)
zapier_command.py    `keysvc zapier ...`

The names below are importable from the package itself; each loads its module on first use, so importing a
transport-free module (`keysvc.client.oauth`) never loads httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keysvc.client.exchanger import ExchangeResult, TokenExchanger
    from keysvc.client.oauth import PartnerError
    from keysvc.client.signer import RemoteSigner, TokenSigner
    from keysvc.client.zapier import SyncZapierClient, ZapierClient
    from keysvc.config import Secret, TokenExchangeSettings, parse_token_exchange
    from keysvc.records import SignedToken

_EXPORTS = {
    "ExchangeResult": "keysvc.client.exchanger",
    "TokenExchanger": "keysvc.client.exchanger",
    "PartnerError": "keysvc.client.oauth",
    "RemoteSigner": "keysvc.client.signer",
    "TokenSigner": "keysvc.client.signer",
    "ZapierClient": "keysvc.client.zapier",
    "SyncZapierClient": "keysvc.client.zapier",
    "Secret": "keysvc.config",  # nosec B105 - a module path, not a password
    "TokenExchangeSettings": "keysvc.config",
    "parse_token_exchange": "keysvc.config",  # nosec B105 - a module path, not a password
    "SignedToken": "keysvc.records",
}

__all__ = [
    "ExchangeResult",
    "PartnerError",
    "RemoteSigner",
    "Secret",
    "SignedToken",
    "SyncZapierClient",
    "TokenExchangeSettings",
    "TokenExchanger",
    "TokenSigner",
    "ZapierClient",
    "parse_token_exchange",
]


def __getattr__(name: str) -> Any:
    """`from keysvc.client import TokenExchanger` loads keysvc.client.exchanger then, not before."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keysvc.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
