"""The partner side of one replica, built once: ONE TokenExchanger (one access-token cache) shared by
`POST /v1/token-exchange` and the embed gateway; the exchanger's httpx client and the gateway's Partner API
session (keysvc.partner.outbound), both closed by the service.

    build_partner(settings, keyring, metrics) -> Partner   (only when `token_exchange` is configured)
    partner.routes(api) -> the /v1/token-exchange and /v1/zapier/* routes (a RouteSource)
    await partner.aclose()
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute

from keysvc.client.exchanger import TokenExchanger
from keysvc.config import Settings, TokenExchangeSettings
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.metrics import ExchangeMetrics, Metrics, PartnerApiMetrics
from keysvc.partner.budget import ApiBudget
from keysvc.partner.exchange_route import exchange_routes
from keysvc.partner.gateway import ZapierGateway
from keysvc.partner.gateway_routes import zapier_routes
from keysvc.partner.keyring_signer import KeyringSigner
from keysvc.partner.outbound import AiohttpTokenEndpoint, PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.state import StateCodec, state_key


@dataclass
class Partner:
    """The exchanger, the gateway over it, the exchanger's HTTP client and the gateway's Partner API session."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: PartnerHttp

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api)]

    async def aclose(self) -> None:
        """Close the session to the partner (the token endpoint's and the Partner API's connections)."""
        await self.http.aclose()


def build_partner(settings: Settings, keyring: Keyring, metrics: Metrics) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O)."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    http = PartnerHttp()
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    observer = ExchangeMetrics(metrics)
    endpoint = AiohttpTokenEndpoint(exchange, http, observer=observer)
    exchanger = TokenExchanger(exchange, signer, endpoint=endpoint, observer=observer)
    limit = exchange.api_rate_limit
    api = PartnerApi(exchange, http, ApiBudget(limit.per_minute, limit.burst), observer=PartnerApiMetrics(metrics))
    states = StateCodec(state_key(exchange.client_secret.reveal()))
    for result in ("waited", "refused", "cooling"):
        metrics.zapier_budget.labels(result)  # at 0 from the start, so alerts see the first increment
    for status in ("success", "error", "pending"):
        metrics.zapier_runs.labels(status)
    gateway = ZapierGateway(exchanger, api, states, on_run=lambda status: metrics.zapier_runs.labels(status).inc())
    return Partner(exchange, exchanger, gateway, http)
