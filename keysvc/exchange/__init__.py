"""RFC 8693 token exchange with a partner such as Zapier (docs/zapier.md).

(configuration: keysvc.config.exchange, the `token_exchange` section -> TokenExchangeSettings)
signer.py     TokenSigner protocol, SignedToken, RemoteSigner (keysvc's POST /v1/sign)
partner.py    one exchange request to the partner: client auth, retries, RFC 6749 error mapping
cache.py      single-flight cache: one upstream call per key however many callers wait
client.py     TokenExchanger: partner JWT claims, access and connect flows, the access-token cache
browser.py    Connect URL and redirect-callback helpers
endpoint.py   body contract of POST /v1/token-exchange
cli.py        `keysvc exchange`
"""

from keysvc.config import Secret, TokenExchangeSettings, parse_token_exchange
from keysvc.exchange.client import ExchangeResult, TokenExchanger
from keysvc.exchange.errors import PartnerError
from keysvc.exchange.signer import RemoteSigner, SignedToken, TokenSigner

__all__ = [
    "ExchangeResult",
    "PartnerError",
    "RemoteSigner",
    "Secret",
    "SignedToken",
    "TokenExchangeSettings",
    "TokenExchanger",
    "TokenSigner",
    "parse_token_exchange",
]
