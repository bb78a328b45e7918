"""The `/v1/zapier/*` routes of the internal listener: thin handlers over ZapierGateway.

    zapier_routes(gateway, exchange settings, api) -> [Route, ...]   (a RouteSource once bound)
        client API key (Bearer), client flag `zapier` (else 403) and its grant (ZapierGrant: which apps,
        actions and triggers; else 403 before any call to Zapier); authentication, the client's rate
        limit and strict JSON body reading are the internal API's own (keysvc.http.context.RouteContext)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keysvc.config import ClientSettings, TokenExchangeSettings, ZapierGrant
from keysvc.errors import Forbidden
from keysvc.http.context import RouteContext
from keysvc.partner import contracts as c
from keysvc.partner import gateway_inputs as inputs_of
from keysvc.partner.contracts import Contract
from keysvc.partner.gateway import RunAnswer, ZapierGateway
from keysvc.partner.gateway_inputs import ActionCall

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def zapier_routes(gateway: ZapierGateway, exchange: TokenExchangeSettings, api: RouteContext) -> list[Route]:
    """The gateway's routes (redirect allow-list and longest run wait from `exchange`)."""
    Handler = Callable[[Request, ClientSettings], Awaitable[Any]]

    def route(contract: Contract, handle: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            client = api.client(request)
            if not client.zapier:
                raise Forbidden("this client may not call /v1/zapier/* (zapier is not set)")
            answer = await handle(request, client)
            if isinstance(answer, RunAnswer):
                return _json(answer.body, answer.status_code)
            return _json(answer, 200)

        endpoint.__name__ = contract.name  # the access log's and http_requests_total's bounded route label
        return Route(contract.path, endpoint, methods=[contract.method])

    def query(request: Request) -> list[tuple[str, str]]:
        return request.query_params.multi_items()

    async def apps(request: Request, client: ClientSettings) -> Any:
        answer = await gateway.apps(inputs_of.apps_query(query(request)))
        grant = _grant(client)
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
        return await gateway.complete(client.name, body, allowed=_grant(client).allows_app)

    async def actions(request: Request, client: ClientSettings) -> Any:
        q = inputs_of.actions_query(query(request))
        _allow_app(client, q.app)
        answer = await gateway.actions(q)
        grant = _grant(client)
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
        return await gateway.run(client.name, body)

    async def run_status(request: Request, client: ClientSettings) -> Any:
        run_id = request.path_params["run_id"]
        q = inputs_of.run_query(query(request), run_id, exchange.run_wait_max)
        if not _grant(client).any_action:
            raise Forbidden("this client may run no action (clients.<name>.zapier.actions)")
        return await gateway.run_status(q)

    return [
        route(c.APPS, apps),
        route(c.CONNECTIONS, connections),
        route(c.CONNECT, connect),
        route(c.COMPLETE, complete),
        route(c.ACTIONS, actions),
        route(c.INPUTS, inputs),
        route(c.CHOICES, choices),
        route(c.RUN_CREATE, run),
        route(c.RUN_STATUS, run_status),
    ]


_NOTHING = ZapierGrant()


def _grant(client: ClientSettings) -> ZapierGrant:
    return client.zapier_grant or _NOTHING


def _allow_app(client: ClientSettings, *names: str) -> None:
    """403 before any call to Zapier when the client's grant does not name the app."""
    if not _grant(client).allows_app(*names):
        raise Forbidden("this client may not use this app (clients.<name>.zapier.apps)")


def _allow_action(client: ClientSettings, call: ActionCall) -> ActionCall:
    """403 before any call to Zapier when the client's grant names neither the app nor the action."""
    _allow_app(client, call.app)
    if not _grant(client).allows_action(call.action):
        raise Forbidden("this client may not use this action (clients.<name>.zapier.actions)")
    return call


def _app_keys(app: dict[str, Any]) -> list[str | None]:
    """An app's key and slug as the Partner API answers them (a grant may name either)."""
    return [v if isinstance(v, str) else None for v in (app.get("key"), app.get("slug"))]


def _json(body: Any, status_code: int) -> Response:
    # orjson: the answers hold only what orjson parsed from the partner and our own str-keyed dicts
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=_NO_STORE)
