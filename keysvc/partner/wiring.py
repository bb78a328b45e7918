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
from typing import Protocol

from starlette.routing import BaseRoute

from keysvc.client.exchanger import TokenExchanger
from keysvc.config import Settings, TokenExchangeSettings
from keysvc.errors import ConfigError
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
from keysvc.partner.state import StateCodec, state_key
from keysvc.partner.trigger_inboxes import REAUTH_CODES, TRIGGER_INBOX_API, InboxRecorder, TriggerInboxes
from keysvc.partner.trigger_notify import Push, build_push
from keysvc.partner.trigger_push import InboxDirectory
from keysvc.partner.trigger_routes import trigger_routes


class InboxStore(InboxDirectory, InboxRecorder, Protocol):
    """The gateway store's trigger-inbox part (keysvc.partner.store.GatewayStore)."""


@dataclass
class Partner:
    """The exchanger, the gateway over it, and the one session to the partner both go out through."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: PartnerHttp
    metrics: PartnerMetrics
    inboxes: TriggerInboxes
    push: Push | None = None  # push delivery of trigger-inbox messages (trigger_delivery and a store)

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api),
                *trigger_routes(self.inboxes, self.settings, api)]

    async def aclose(self) -> None:
        """Stop push deliveries in flight, then close the session to the partner (the token endpoint's and
        the Partner API's connections)."""
        if self.push is not None:
            await self.push.delivery.aclose()
        await self.http.aclose()

    def feature(self) -> Feature:
        """This partner side as the service's feature: routes, OpenAPI part, metrics, close hook."""
        push = self.push
        return Feature("partner", routes=self.routes, openapi=partner_openapi(), metrics=self.metrics.collectors(),
                       jobs=() if push is None else (push.job(),), public=None if push is None else push.route(),
                       close=self.aclose, part=self)


def build_partner(settings: Settings, keyring: Keyring, directory: InboxStore | None = None) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O). `directory`: the gateway
    store, where push delivery (`trigger_delivery`) records the inboxes keysvc ensured."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    metrics = PartnerMetrics()
    http = PartnerHttp()
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    endpoint = AiohttpTokenEndpoint(exchange, http, observer=metrics)
    exchanger = TokenExchanger(exchange, signer, endpoint=endpoint, observer=metrics)
    limit = exchange.api_rate_limit
    budget = ApiBudget(limit.per_minute, limit.burst)
    api = PartnerApi(exchange, http, budget, observer=metrics)
    # the Trigger Inbox API: same session, same budget (every call counts against the Partner API's limit)
    inbox_api = PartnerApi(exchange, http, budget, observer=metrics, base_url=exchange.trigger_inbox_url,
                           name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
    inboxes = TriggerInboxes(exchanger, inbox_api, observer=metrics)
    states = StateCodec(state_key(exchange.client_secret.reveal()))
    gateway = ZapierGateway(exchanger, api, states, on_run=metrics.run)
    push = build_push(exchange, inboxes, http, directory, observer=metrics)
    if push is not None and directory is not None:
        inboxes.push_to(directory, push.notification_url)
    return Partner(exchange, exchanger, gateway, http, metrics, inboxes, push)


def partner_feature(settings: Settings, keyring: Keyring) -> Feature:
    """The partner side as one feature of the service (see the module docstring)."""
    exchange = settings.token_exchange
    if exchange is not None and exchange.trigger_delivery is not None:
        # push delivery records the inboxes it serves in the gateway store, which is not configurable yet
        raise ConfigError("token_exchange.trigger_delivery", "needs the gateway store (token_exchange.store)")
    return build_partner(settings, keyring).feature()
