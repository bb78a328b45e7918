"""RFC 8693 token exchange with a partner such as Zapier (docs/zapier.md).

(configuration: keysvc.config.exchange, the `token_exchange` section -> TokenExchangeSettings)
signer.py     TokenSigner protocol, RemoteSigner (keysvc's POST /v1/sign); SignedToken: keysvc.records
requests.py   body contract of POST /v1/token-exchange (pure)
partner.py    one exchange request to the partner: client auth, retries, RFC 6749 error mapping
cache.py      single-flight cache: one upstream call per key however many callers wait
client.py     TokenExchanger: partner JWT claims, access and connect flows, the access-token cache
browser.py    Connect URL and redirect-callback helpers
cli.py        `keysvc exchange` (the command's exchange; the keyring it signs with is built by keysvc.cli)

Server side only (they import the keyring or starlette; the clients above never do):
keyring_signer.py  KeyringSigner, the TokenSigner over this process's keyring
routes.py          the POST /v1/token-exchange route
"""

from keysvc.config import Secret, TokenExchangeSettings, parse_token_exchange
from keysvc.exchange.client import ExchangeResult, TokenExchanger
from keysvc.exchange.errors import PartnerError
from keysvc.exchange.signer import RemoteSigner, TokenSigner
from keysvc.records import SignedToken

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
