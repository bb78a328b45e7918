"""The partner side of one replica, built once: ONE TokenExchanger (one access-token cache) shared by
`POST /v1/token-exchange` and the embed gateway; the exchanger's httpx client and the gateway's Partner API
session (keysvc.zapier.partner_http), both closed by the service.

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
from keysvc.exchange.partner import token_endpoint_client
from keysvc.exchange.routes import exchange_routes
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.metrics import ExchangeMetrics, Metrics, PartnerApiMetrics
from keysvc.zapier.budget import ApiBudget
from keysvc.zapier.gateway import ZapierGateway
from keysvc.zapier.partner_api import PartnerApi
from keysvc.zapier.partner_http import PartnerHttp
from keysvc.zapier.routes import zapier_routes
from keysvc.zapier.state import StateCodec, state_key


@dataclass
class Partner:
    """The exchanger, the gateway over it, the exchanger's HTTP client and the gateway's Partner API session."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: httpx.AsyncClient
    api_http: PartnerHttp

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api)]

    async def aclose(self) -> None:
        """Close the HTTP client and the Partner API session (their connections to the partner)."""
        await self.http.aclose()
        await self.api_http.aclose()


def build_partner(settings: Settings, keyring: Keyring, metrics: Metrics) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O)."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    http = token_endpoint_client()
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    exchanger = TokenExchanger(exchange, signer, client=http, observer=ExchangeMetrics(metrics))
    limit = exchange.api_rate_limit
    api_http = PartnerHttp(exchange.api_url)
    api = PartnerApi(exchange, api_http, ApiBudget(limit.per_minute, limit.burst), observer=PartnerApiMetrics(metrics))
    states = StateCodec(state_key(exchange.client_secret.reveal()))
    for result in ("waited", "refused", "cooling"):
        metrics.zapier_budget.labels(result)  # at 0 from the start, so alerts see the first increment
    for status in ("success", "error", "pending"):
        metrics.zapier_runs.labels(status)
    gateway = ZapierGateway(exchanger, api, states, on_run=lambda status: metrics.zapier_runs.labels(status).inc())
    return Partner(exchange, exchanger, gateway, http, api_http)
