"""The `POST /v1/token-exchange` route of the internal listener, over the replica's one TokenExchanger.

    exchange_routes(exchanger, api) -> [Route("/v1/token-exchange")]   (a RouteSource once bound)
        client API key (Bearer), client flag `token_exchange: true`, optional `exchange_scopes: [...]`
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keysvc.client.exchanger import TokenExchanger
from keysvc.errors import Forbidden, RequestError
from keysvc.http.context import RouteContext
from keysvc.logs import audit_request
from keysvc.partner.contracts import EXCHANGE
from keysvc.partner.exchange_body import allowed_scope, parse_body


async def exchange_request(
    exchanger: TokenExchanger, client_name: str, allowed_scopes: frozenset[str] | None, body: Any
) -> dict[str, Any]:
    """Validate, authorise and run one exchange; errors are keysvc RequestErrors (never a 500). Its
    `token.exchange` audit line is written before the answer is returned."""
    request = parse_body(body)
    scope = allowed_scope(request.scope, allowed_scopes, exchanger.settings.scope, client_name)
    fields = {
        "client": client_name, "user": request.user_id, "tenant": request.tenant_id,
        "kind": request.token, "app": request.app, "scope": scope,
    }  # fmt: skip
    try:
        if request.app is not None:
            result = await exchanger.connect_token(request.user_id, request.tenant_id, request.app, scope)
        else:
            result = await exchanger.access_token(request.user_id, request.tenant_id, scope)
    except RequestError as exc:
        audit_request("token.exchange", {**fields, "outcome": exc.code})
        raise
    audit_request("token.exchange", {**fields, "outcome": "ok"})
    return result.to_json()


def exchange_routes(exchanger: TokenExchanger, api: RouteContext) -> list[Route]:
    """The internal listener's token-exchange route.

    Authentication, the client's rate limit (one budget shared with /v1/sign) and strict JSON body reading
    are the internal API's own.
    """

    async def token_exchange(request: Request) -> Response:
        """POST /v1/token-exchange"""
        client = api.client(request)
        if not client.token_exchange:
            raise Forbidden("this client may not call /v1/token-exchange (token_exchange is not set)")
        scopes = None if client.exchange_scopes is None else frozenset(client.exchange_scopes)
        answer = await exchange_request(exchanger, client.name, scopes, await api.body(request))
        return JSONResponse(answer, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    return [Route(EXCHANGE.path, token_exchange, methods=[EXCHANGE.method])]
