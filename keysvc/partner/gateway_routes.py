"""The `/v1/zapier/*` routes of the internal listener: thin handlers over ZapierGateway.

    zapier_routes(gateway, exchange settings, api) -> [Route, ...]   (a RouteSource once bound)
        client API key (Bearer), client flag `zapier` (else 403) and its grant (ZapierGrant: which apps,
        actions and triggers; else 403 before any call to Zapier); authentication, the client's rate
        limit and strict JSON body reading are the internal API's own (keysvc.http.context.RouteContext);
        what every gateway route shares is keysvc.partner.routing's
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from keysvc.config import ClientSettings, TokenExchangeSettings
from keysvc.errors import Forbidden
from keysvc.http.context import RouteContext
from keysvc.partner import contracts as c
from keysvc.partner import gateway_inputs as inputs_of
from keysvc.partner.contracts import Contract
from keysvc.partner.gateway import RunAnswer, ZapierGateway
from keysvc.partner.gateway_inputs import ActionCall
from keysvc.partner.routing import Answer, Endpoint, Handler, endpoint, grant_of, query, routes


def zapier_routes(gateway: ZapierGateway, exchange: TokenExchangeSettings, api: RouteContext) -> list[Route]:
    """The gateway's routes (redirect allow-list and longest run wait from `exchange`)."""

    def route(contract: Contract, handle: Handler) -> tuple[Contract, Endpoint]:
        return contract, endpoint(api, contract, handle)

    async def apps(request: Request, client: ClientSettings) -> Any:
        answer = await gateway.apps(inputs_of.apps_query(query(request)))
        grant = grant_of(client)
        if not grant.everything:  # the directory shows only the apps this client may use
            answer["apps"] = [a for a in answer["apps"] if grant.allows_app(a.get("id"), *_app_keys(a))]
        return answer

    async def connections(request: Request, client: ClientSettings) -> Any:
        q = inputs_of.connections_query(query(request))
        _allow_app(client, q.app)
        return await gateway.connections(q)

    async def connect(request: Request, client: ClientSettings) -> Any:
        body = inputs_of.connect_body(await api.body(request), exchange.redirect_uris)
        _allow_app(client, body.app, body.connect_app)
        return await gateway.connect(client.name, body)

    async def complete(request: Request, client: ClientSettings) -> Any:
        body = inputs_of.complete_body(await api.body(request))
        return await gateway.complete(client.name, body, allowed=grant_of(client).allows_app)

    async def actions(request: Request, client: ClientSettings) -> Any:
        q = inputs_of.actions_query(query(request))
        _allow_app(client, q.app)
        answer = await gateway.actions(q)
        grant = grant_of(client)
        answer["actions"] = [a for a in answer["actions"] if grant.allows_action(a["key"])]
        return answer

    async def inputs(request: Request, client: ClientSettings) -> Any:
        key = request.path_params["key"]
        return await gateway.inputs(_allow_action(client, inputs_of.inputs_body(await api.body(request), key)))

    async def choices(request: Request, client: ClientSettings) -> Any:
        key, input_id = request.path_params["key"], request.path_params["input_id"]
        q = inputs_of.choices_body(await api.body(request), key, input_id)
        _allow_action(client, q.call)
        return await gateway.choices(q)

    async def run(request: Request, client: ClientSettings) -> Any:
        body = inputs_of.run_body(await api.body(request), exchange.run_wait_max)
        _allow_action(client, body.call)
        return _run(await gateway.run(client.name, body))

    async def run_status(request: Request, client: ClientSettings) -> Any:
        run_id = request.path_params["run_id"]
        q = inputs_of.run_query(query(request), run_id, exchange.run_wait_max)
        if not grant_of(client).any_action:
            raise Forbidden("this client may run no action (clients.<name>.zapier.actions)")
        return _run(await gateway.run_status(q))

    return routes([
        route(c.APPS, apps),
        route(c.CONNECTIONS, connections),
        route(c.CONNECT, connect),
        route(c.COMPLETE, complete),
        route(c.ACTIONS, actions),
        route(c.INPUTS, inputs),
        route(c.CHOICES, choices),
        route(c.RUN_CREATE, run),
        route(c.RUN_STATUS, run_status),
    ])


def _run(answer: RunAnswer) -> Answer:
    """An action run's answer: 200 when final, 202 while pending."""
    return Answer(answer.status_code, answer.body)


def _allow_app(client: ClientSettings, *names: str) -> None:
    """403 before any call to Zapier when the client's grant does not name the app."""
    if not grant_of(client).allows_app(*names):
        raise Forbidden("this client may not use this app (clients.<name>.zapier.apps)")


def _allow_action(client: ClientSettings, call: ActionCall) -> ActionCall:
    """403 before any call to Zapier when the client's grant names neither the app nor the action."""
    _allow_app(client, call.app)
    if not grant_of(client).allows_action(call.action):
        raise Forbidden("this client may not use this action (clients.<name>.zapier.actions)")
    return call


def _app_keys(app: dict[str, Any]) -> list[str | None]:
    """An app's key and slug as the Partner API answers them (a grant may name either)."""
    return [v if isinstance(v, str) else None for v in (app.get("key"), app.get("slug"))]

