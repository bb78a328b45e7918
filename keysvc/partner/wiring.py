"""The partner side of one replica as ONE feature of the service (keysvc.feature): ONE TokenExchanger (one
access-token cache) shared by `POST /v1/token-exchange` and the embed gateway, both going out through the
one aiohttp session (keysvc.partner.outbound), closed by the service.

    feature = partner_feature(settings, keyring)    (only when `token_exchange` is configured; no I/O)
    feature.routes(api)   the /v1/token-exchange and /v1/zapier/* routes (a RouteSource)
    feature.openapi       their paths and schemas;  feature.metrics  PartnerMetrics' collectors
    await feature.close() the session's connections to the partner
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from starlette.routing import BaseRoute

from keysvc.client.exchanger import TokenExchanger
from keysvc.config import Settings, TokenExchangeSettings
from keysvc.feature import Feature
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.partner.budget import ApiBudget
from keysvc.partner.exchange_route import exchange_routes
from keysvc.partner.gateway import ZapierGateway
from keysvc.partner.gateway_routes import zapier_routes
from keysvc.partner.keyring_signer import KeyringSigner
from keysvc.partner.observers import PartnerMetrics
from keysvc.partner.openapi_part import partner_openapi
from keysvc.partner.outbound import AiohttpTokenEndpoint, PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.state import StateCodec


@dataclass
class Partner:
    """The exchanger, the gateway over it, and the one session to the partner both go out through."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: PartnerHttp
    metrics: PartnerMetrics

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api)]

    async def aclose(self) -> None:
        """Close the session to the partner (the token endpoint's and the Partner API's connections)."""
        await self.http.aclose()

    def feature(self) -> Feature:
        """This partner side as the service's feature: routes, OpenAPI part, metrics, close hook."""
        return Feature("partner", routes=self.routes, openapi=partner_openapi(), metrics=self.metrics.collectors(),
                       close=self.aclose, part=self)


def build_partner(settings: Settings, keyring: Keyring) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O)."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    metrics = PartnerMetrics()
    http = PartnerHttp()
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    endpoint = AiohttpTokenEndpoint(exchange, http, observer=metrics)
    exchanger = TokenExchanger(exchange, signer, endpoint=endpoint, observer=metrics)
    limit = exchange.api_rate_limit
    api = PartnerApi(exchange, http, ApiBudget(limit.per_minute, limit.burst), observer=metrics)
    states = StateCodec(exchange.client_secret.reveal)  # the key follows a rotated secret file
    gateway = ZapierGateway(exchanger, api, states, on_run=metrics.run)
    return Partner(exchange, exchanger, gateway, http, metrics)


def partner_feature(settings: Settings, keyring: Keyring) -> Feature:
    """The partner side as one feature of the service (see the module docstring)."""
    return build_partner(settings, keyring).feature()
