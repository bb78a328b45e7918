"""What every `/v1/zapier/*` route shares: the client checks before a handler runs, its answer, its routes.

    endpoint(api, contract, handle, admit=...)   a Starlette endpoint: the client (API key or certificate,
                                                  rate limit: keysvc.http.context.RouteContext), 403 unless
                                                  it has `zapier` set and `admit(grant)` passes, then
                                                  `handle(request, client)`; the answer as JSON, no-store
    routes([(contract, endpoint), ...])           one Starlette route per path (405 lists every method)
    grant_of(client), query(request)              the client's ZapierGrant; the query's (name, value) pairs

A handler returns a JSON-able body (200), `Answer(status, body)` for another status, or NO_CONTENT (204).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keysvc.config import ClientSettings, ZapierGrant
from keysvc.errors import Forbidden
from keysvc.http.context import RouteContext
from keysvc.partner.contracts import Contract

Handler = Callable[[Request, ClientSettings], Awaitable[Any]]
Endpoint = Callable[[Request], Awaitable[Response]]
NO_CONTENT = object()  # a handler's answer for 204
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_NOTHING = ZapierGrant()


class Answer(NamedTuple):
    """A handler's answer with a status other than 200 (an action run still pending: 202)."""

    status: int
    body: Any


def grant_of(client: ClientSettings) -> ZapierGrant:
    """What the client may use through the gateway (nothing when `zapier` is not set)."""
    return client.zapier_grant or _NOTHING


def query(request: Request) -> list[tuple[str, str]]:
    """The request's query as (name, value) pairs, repeated names kept (the parsers refuse them)."""
    return request.query_params.multi_items()


def _everyone(grant: ZapierGrant) -> None:
    """Every client with `zapier` set may reach the route; its handler decides the rest."""


def endpoint(api: RouteContext, contract: Contract, handle: Handler,
             admit: Callable[[ZapierGrant], None] = _everyone) -> Endpoint:
    """`handle` behind the checks every gateway route makes first; labelled with the contract's name."""

    async def answer(request: Request) -> Response:
        client = api.client(request)
        if not client.zapier:
            raise Forbidden("this client may not call /v1/zapier/* (zapier is not set)")
        admit(grant_of(client))
        body = await handle(request, client)
        if body is NO_CONTENT:
            return Response(status_code=204, headers=_NO_STORE)
        status = 200
        if isinstance(body, Answer):
            status, body = body
        # orjson: the answers hold only what orjson parsed from the partner and our own str-keyed dicts
        return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=_NO_STORE)

    answer.__name__ = contract.name  # the access log's and http_requests_total's bounded route label
    return answer


def routes(endpoints: list[tuple[Contract, Endpoint]]) -> list[Route]:
    """One Starlette route per path, so a wrong method is 405 with every method of the path in `Allow`
    (PUT, GET and DELETE share one inbox path); the label stays the contract's name."""
    paths: dict[str, dict[str, Endpoint]] = {}
    for contract, handler in endpoints:
        paths.setdefault(contract.path, {})[contract.method] = handler
    found = []
    for path, methods in paths.items():
        if len(methods) == 1:
            [(method, handler)] = methods.items()
            found.append(Route(path, handler, methods=[method]))
            continue

        async def dispatch(request: Request, methods: dict[str, Endpoint] = methods) -> Response:
            chosen = methods["GET" if request.method == "HEAD" else request.method]
            request.scope["endpoint"] = chosen  # the access log's label: the contract's name
            return await chosen(request)

        found.append(Route(path, dispatch, methods=list(methods)))
    return found
