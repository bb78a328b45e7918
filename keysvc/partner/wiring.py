"""The partner side of one replica as ONE feature of the service (keysvc.feature): ONE TokenExchanger (one
access-token cache) shared by `POST /v1/token-exchange` and the embed gateway, both going out through the
one aiohttp session (keysvc.partner.outbound), closed by the service.

    feature = partner_feature(settings, keyring)    (only when `token_exchange` is configured; no I/O)
    feature.routes(api)   the /v1/token-exchange and /v1/zapier/* routes (a RouteSource)
    feature.openapi       their paths and schemas;  feature.metrics  PartnerMetrics' collectors
    await feature.start() the gateway store's migrations (when `token_exchange.store` is configured)
    await feature.close() the session's connections to the partner, then the store's

With `token_exchange.store`, the Partner API budget (token exchanges included) is every replica's one
SharedBudget and the connection registry is the store's; without it, this replica's ApiBudget and a
registry in memory. The store failing never fails the service: start-up goes on (migrations are tried
again by a job every few seconds), the budget falls back to a local one, `keysvc_gateway_store_up` says 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute

from keysvc.client.exchanger import TokenExchanger
from keysvc.config import Settings, StoreConfig, TokenExchangeSettings
from keysvc.feature import Feature, Job
from keysvc.http.context import RouteContext
from keysvc.keyring import Keyring
from keysvc.partner.budget import ApiBudget, Budget, ReplicaBudget, StoreBudget
from keysvc.partner.exchange_route import exchange_routes
from keysvc.partner.gateway import ZapierGateway
from keysvc.partner.gateway_routes import zapier_routes
from keysvc.partner.keyring_signer import KeyringSigner
from keysvc.partner.observers import PartnerMetrics
from keysvc.partner.openapi_part import partner_openapi
from keysvc.partner.outbound import AiohttpTokenEndpoint, PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.registry import ConnectionRegistry, MemoryRegistry, StoreRegistry
from keysvc.partner.state import StateCodec
from keysvc.partner.store import GatewayStore, SharedBudget, StoreSettings, StoreUnavailable, open_store
from keysvc.partner.trigger_inboxes import REAUTH_CODES, TRIGGER_INBOX_API, TriggerInboxes
from keysvc.partner.trigger_notify import Push, build_push
from keysvc.partner.trigger_routes import trigger_routes

log = logging.getLogger("keysvc.partner.store")
STORE_CHECK_INTERVAL = 5.0  # seconds between the job's migration attempts (until done) and pings


class StoreKeeper:
    """The gateway store's life in this replica: migrations at start-up (tried again until they succeed),
    a ping every few seconds, `up` for the `keysvc_gateway_store_up` gauge, closing it."""

    def __init__(self, store: GatewayStore, budget: SharedBudget) -> None:
        self.store = store
        self.budget = budget
        self.migrated = False
        self.answered = False  # the last migration or ping succeeded

    def __repr__(self) -> str:
        return f"StoreKeeper({self.store!r}, migrated={self.migrated})"

    @property
    def up(self) -> bool:
        """The store is migrated, answered the last ping, and the budget is not on its fallback."""
        return self.migrated and self.answered and self.budget.store_up

    async def check(self) -> None:
        """Migrate (idempotent; replicas take turns) until done, then ping; never raises."""
        try:
            if self.migrated:
                await self.store.ping()
            else:
                version = await self.store.migrate()
                self.migrated = True
                log.info("gateway store ready", extra={"schema_version": version})
            self.answered = True
        except StoreUnavailable as exc:
            if self.answered or not self.migrated:
                log.warning("gateway store unreachable", extra={"operation": exc.operation, "reason": exc.reason})
            self.answered = False

    async def aclose(self) -> None:
        """Close the store's connections."""
        await self.store.close()


def store_settings(config: StoreConfig) -> StoreSettings:
    """The store's settings from the configuration (the URL was checked when it was read)."""
    password = None if config.password is None else config.password.reveal()
    return StoreSettings.from_url(config.url, password=password, timeout=config.timeout)


@dataclass
class Partner:
    """The exchanger, the gateway over it, and the one session to the partner both go out through."""

    settings: TokenExchangeSettings
    exchanger: TokenExchanger
    gateway: ZapierGateway
    http: PartnerHttp
    metrics: PartnerMetrics
    inboxes: TriggerInboxes
    keeper: StoreKeeper | None = field(default=None)
    push: Push | None = None  # push delivery of trigger-inbox messages (trigger_delivery, with the store)

    def routes(self, api: RouteContext) -> Sequence[BaseRoute]:
        """The internal listener's partner routes."""
        return [*exchange_routes(self.exchanger, api), *zapier_routes(self.gateway, self.settings, api),
                *trigger_routes(self.inboxes, self.settings, api)]

    async def start(self) -> None:
        """Migrate the gateway store when there is one (a failure is logged; the job tries again)."""
        if self.keeper is not None:
            await self.keeper.check()

    async def aclose(self) -> None:
        """Stop push deliveries in flight, close the session to the partner (the token endpoint's and the
        Partner API's connections), then the gateway store."""
        try:
            if self.push is not None:
                await self.push.delivery.aclose()
            await self.http.aclose()
        finally:
            if self.keeper is not None:
                await self.keeper.aclose()

    def limits(self) -> dict[str, Any]:
        """The configured bounds the OpenAPI document states (the parsers apply the same ones)."""
        s = self.settings
        return {"run_wait_max": s.run_wait_max, "lease_wait_max": s.lease_wait_max, "redirect_uris": s.redirect_uris}

    def feature(self) -> Feature:
        """This partner side as the service's feature: routes, OpenAPI part, metrics, start and close hooks,
        the store's check job, and push delivery's sweep job and public route when it is configured."""
        jobs = [] if self.keeper is None else [Job("gateway-store", STORE_CHECK_INTERVAL, self.keeper.check)]
        if self.push is not None:
            jobs.append(self.push.job())
        return Feature("partner", routes=self.routes, openapi=partner_openapi(self.limits()),
                       metrics=self.metrics.collectors(), jobs=jobs, start=self.start, close=self.aclose, part=self,
                       public=None if self.push is None else self.push.route())


def build_partner(settings: Settings, keyring: Keyring) -> Partner:
    """The partner side of this replica, for `settings.token_exchange` (no I/O)."""
    exchange = settings.token_exchange
    assert exchange is not None  # nosec B101 - only called when configured
    metrics = PartnerMetrics()
    http = PartnerHttp()
    budget, registry, keeper = _shared_state(exchange)
    metrics.watch_store(lambda: keeper is None or keeper.up)
    signer = KeyringSigner(keyring, settings.keysets, exchange.keyset)
    endpoint = AiohttpTokenEndpoint(exchange, http, observer=metrics, budget=budget, budget_observer=metrics)
    exchanger = TokenExchanger(exchange, signer, endpoint=endpoint, observer=metrics)
    api = PartnerApi(exchange, http, budget, observer=metrics)
    # the Trigger Inbox API: same session, same budget (every call counts against the Partner API's limit)
    inbox_api = PartnerApi(exchange, http, budget, observer=metrics, base_url=exchange.trigger_inbox_url,
                           name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
    inboxes = TriggerInboxes(exchanger, inbox_api, observer=metrics, registry=registry)
    store = None if keeper is None else keeper.store
    push = build_push(exchange, inboxes, http, store, observer=metrics)
    if push is not None and store is not None:
        inboxes.push_to(store, push.notification_url)
    states = StateCodec(exchange.client_secret.reveal)  # the key follows a rotated secret file
    gateway = ZapierGateway(exchanger, api, states, on_run=metrics.run, registry=registry,
                            connect_theme=exchange.connect_theme, on_registry=metrics.registry)
    return Partner(exchange, exchanger, gateway, http, metrics, inboxes, keeper, push)


def _shared_state(exchange: TokenExchangeSettings) -> tuple[Budget, ConnectionRegistry, StoreKeeper | None]:
    """The budget and the registry: the store's (every replica's) when one is configured, else this
    replica's own (no I/O: the store connects on its first call)."""
    limit = exchange.api_rate_limit
    if exchange.store is None:
        return ReplicaBudget(ApiBudget(limit.per_minute, limit.burst)), MemoryRegistry(), None
    store = open_store(store_settings(exchange.store))
    shared = SharedBudget(store, limit.per_minute, limit.burst, fallback_divisor=exchange.store.fallback_divisor)
    return StoreBudget(shared), StoreRegistry(store), StoreKeeper(store, shared)


def partner_feature(settings: Settings, keyring: Keyring) -> Feature:
    """The partner side as one feature of the service (see the module docstring)."""
    return build_partner(settings, keyring).feature()
