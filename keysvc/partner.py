"""The partner side of one replica, built once: ONE TokenExchanger (one access-token cache) shared by
`POST /v1/token-exchange` and the embed gateway, over one HTTP client that the service closes.

    build_partner(settings, keyring, metrics) -> Partner   (only when `token_exchange` is configured)
    partner.routes(api) -> the /v1/token-exchange and /v1/zapier/* routes (a RouteSource)
    await partner.aclose()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from starlette.routing import BaseRoute

from keysvc.config import Settings, TokenExchangeSettings
from keysvc.exchange.client import TokenExchanger
from keysvc.exchange.keyring_signer import KeyringSigner
from keysvc.exchange.routes import exchange_routes
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.metrics import ExchangeMetrics, Metrics, PartnerApiMetrics
from keysvc.zapier.budget import ApiBudget
from keysvc.zapier.gateway import ZapierGateway
from keysvc.zapier.partner_api import PartnerApi
from keysvc.zapier.routes import zapier_routes
from keysvc.zapier.state import StateCodec, state_key


@dataclass
class Partner:
    """The exchanger, the gateway over it, and the HTTP client both use."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: httpx.AsyncClient

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api)]

    async def aclose(self) -> None:
        """Close the HTTP client (its connections to the partner)."""
        await self.http.aclose()


def build_partner(settings: Settings, keyring: Keyring, metrics: Metrics) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O)."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    http = httpx.AsyncClient(follow_redirects=False)
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    exchanger = TokenExchanger(exchange, signer, client=http, observer=ExchangeMetrics(metrics))
    limit = exchange.api_rate_limit
    api = PartnerApi(exchange, http, ApiBudget(limit.per_minute, limit.burst), observer=PartnerApiMetrics(metrics))
    states = StateCodec(state_key(exchange.client_secret.reveal()))
    for result in ("waited", "refused", "cooling"):
        metrics.zapier_budget.labels(result)  # at 0 from the start, so alerts see the first increment
    for status in ("success", "error", "pending"):
        metrics.zapier_runs.labels(status)
    gateway = ZapierGateway(exchanger, api, states, on_run=lambda status: metrics.zapier_runs.labels(status).inc())
    return Partner(exchange, exchanger, gateway, http)
