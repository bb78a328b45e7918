"""The `/v1/zapier/*` routes of the internal listener: thin handlers over ZapierGateway.

    zapier_routes(gateway, exchange settings, api) -> [Route, ...]   (a RouteSource once bound)
        client API key (Bearer), client flag `zapier: true` (else 403); authentication, the client's rate
        limit and strict JSON body reading are the internal API's own (keysvc.http.context.RouteContext)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keysvc.config import ClientSettings, TokenExchangeSettings
from keysvc.errors import Forbidden
from keysvc.http.context import RouteContext
from keysvc.partner import gateway_inputs as requests
from keysvc.partner.gateway import RunAnswer, ZapierGateway

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def zapier_routes(gateway: ZapierGateway, exchange: TokenExchangeSettings, api: RouteContext) -> list[Route]:
    """The gateway's routes (redirect allow-list and longest run wait from `exchange`)."""
    Handler = Callable[[Request, ClientSettings], Awaitable[Any]]

    def route(path: str, method: str, handle: Handler, name: str) -> Route:
        async def endpoint(request: Request) -> Response:
            client = api.client(request)
            if not client.zapier:
                raise Forbidden("this client may not call /v1/zapier/* (zapier is not set)")
            answer = await handle(request, client)
            if isinstance(answer, RunAnswer):
                return _json(answer.body, answer.status_code)
            return _json(answer, 200)

        endpoint.__name__ = name  # the access log's and http_requests_total's bounded route label
        return Route(path, endpoint, methods=[method])

    def query(request: Request) -> list[tuple[str, str]]:
        return request.query_params.multi_items()

    async def apps(request: Request, client: ClientSettings) -> Any:
        return await gateway.apps(requests.apps_query(query(request)))

    async def connections(request: Request, client: ClientSettings) -> Any:
        return await gateway.connections(requests.connections_query(query(request)))

    async def connect(request: Request, client: ClientSettings) -> Any:
        body = requests.connect_body(await api.body(request), exchange.redirect_uris)
        return await gateway.connect(client.name, body)

    async def complete(request: Request, client: ClientSettings) -> Any:
        return await gateway.complete(client.name, requests.complete_body(await api.body(request)))

    async def actions(request: Request, client: ClientSettings) -> Any:
        return await gateway.actions(requests.actions_query(query(request)))

    async def inputs(request: Request, client: ClientSettings) -> Any:
        key = request.path_params["key"]
        return await gateway.inputs(requests.inputs_body(await api.body(request), key))

    async def choices(request: Request, client: ClientSettings) -> Any:
        key, input_id = request.path_params["key"], request.path_params["input_id"]
        return await gateway.choices(requests.choices_body(await api.body(request), key, input_id))

    async def run(request: Request, client: ClientSettings) -> Any:
        return await gateway.run(client.name, requests.run_body(await api.body(request), exchange.run_wait_max))

    async def run_status(request: Request, client: ClientSettings) -> Any:
        run_id = request.path_params["run_id"]
        return await gateway.run_status(requests.run_query(query(request), run_id, exchange.run_wait_max))

    return [
        route("/v1/zapier/apps", "GET", apps, "zapier_apps"),
        route("/v1/zapier/connections", "GET", connections, "zapier_connections"),
        route("/v1/zapier/connect", "POST", connect, "zapier_connect"),
        route("/v1/zapier/connect/complete", "POST", complete, "zapier_complete"),
        route("/v1/zapier/actions", "GET", actions, "zapier_actions"),
        route("/v1/zapier/actions/{key}/inputs", "POST", inputs, "zapier_inputs"),
        route("/v1/zapier/actions/{key}/inputs/{input_id}/choices", "POST", choices, "zapier_choices"),
        route("/v1/zapier/action-runs", "POST", run, "zapier_run"),
        route("/v1/zapier/action-runs/{run_id}", "GET", run_status, "zapier_run_status"),
    ]


def _json(body: Any, status_code: int) -> Response:
    # orjson: the answers hold only what orjson parsed from the partner and our own str-keyed dicts
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json", headers=_NO_STORE)
