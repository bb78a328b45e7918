"""The `/v1/zapier/trigger-inboxes*` routes of the internal listener: thin handlers over TriggerInboxes,
declared in keysvc.partner.contracts (TRIGGERS). The client API key (Bearer) must belong to a client with
`zapier` set (else 403), and its grant (`clients.<name>.zapier`) decides before any call to Zapier: ensure
needs the app and the trigger allowed; pause, resume, delete, lease, ack and release need the inbox's own
app and trigger allowed (TriggerInboxes.subscription: remembered from an ensure or an earlier look-up, or
the gateway store's record when push delivery recorded the inbox, else one GET of the inbox from Zapier
first, within the Partner API budget; a client with `zapier: true` skips that look-up), checked before any
state-changing call; the list and a single inbox show only inboxes of
allowed apps and triggers. Authentication, the client's rate limit
and strict JSON bodies are the internal API's own (keysvc.http.context.RouteContext). User fields come in
the body on PUT and POST, in the query on GET and DELETE.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from keysvc.config import ClientSettings, TokenExchangeSettings, ZapierGrant
from keysvc.errors import Forbidden
from keysvc.http.context import RouteContext
from keysvc.partner import contracts as c
from keysvc.partner.contracts import Contract
from keysvc.partner.routing import NO_CONTENT, Endpoint, Handler, endpoint, grant_of, query, routes
from keysvc.partner.trigger_inboxes import TriggerInboxes
from keysvc.partner.triggers import inputs as inputs_of
from keysvc.partner.triggers.inputs import User


def trigger_routes(inboxes: TriggerInboxes, exchange: TokenExchangeSettings, api: RouteContext) -> list[Route]:
    """The trigger-inbox routes (longest waits from `exchange`: run_wait_max, lease_wait_max)."""

    def route(contract: Contract, handle: Handler) -> tuple[Contract, Endpoint]:
        return contract, endpoint(api, contract, handle, admit=_uses_triggers)

    def inbox(request: Request) -> str:
        return str(request.path_params["inbox"])

    async def ensure(request: Request, client: ClientSettings) -> Any:
        body = inputs_of.ensure_body(inbox(request), await api.body(request), exchange.run_wait_max)
        grant = grant_of(client)
        if not grant.allows_app(body.app):
            raise Forbidden("this client may not use this app (clients.<name>.zapier.apps)")
        if not grant.allows_trigger(body.trigger):
            raise Forbidden("this client may not use this trigger (clients.<name>.zapier.triggers)")
        return await inboxes.ensure(client.name, body)

    async def listing(request: Request, client: ClientSettings) -> Any:
        answer = await inboxes.inboxes(inputs_of.list_query(query(request)))
        answer["inboxes"] = [i for i in answer["inboxes"] if _allowed(client, i)]
        return answer

    async def one(request: Request, client: ClientSettings) -> Any:
        answer = await inboxes.inbox(inputs_of.inbox_query(query(request), inbox(request)))
        if not _allowed(client, answer["inbox"]):
            raise Forbidden("this client may not use this inbox's app or trigger (clients.<name>.zapier)")
        return answer

    async def owned(client: ClientSettings, user: User, inbox_id: str) -> None:
        """403 unless the grant allows the inbox's own app and trigger (fail closed, before the call)."""
        grant = grant_of(client)
        if grant.everything:
            return
        app, trigger = await inboxes.subscription(user, inbox_id)
        if not grant.allows_app(app) or not grant.allows_trigger(trigger):
            raise Forbidden("this client may not use this inbox's app or trigger (clients.<name>.zapier)")

    async def delete(request: Request, client: ClientSettings) -> Any:
        ref = inputs_of.inbox_query(query(request), inbox(request))
        await owned(client, ref.user, ref.inbox_id)
        await inboxes.delete(client.name, ref)
        return NO_CONTENT

    async def pause(request: Request, client: ClientSettings) -> Any:
        ref = inputs_of.inbox_body(await api.body(request), inbox(request))
        await owned(client, ref.user, ref.inbox_id)
        return await inboxes.pause(client.name, ref)

    async def resume(request: Request, client: ClientSettings) -> Any:
        ref = inputs_of.inbox_body(await api.body(request), inbox(request))
        await owned(client, ref.user, ref.inbox_id)
        return await inboxes.resume(client.name, ref)

    async def lease(request: Request, client: ClientSettings) -> Any:
        body = inputs_of.lease_body(await api.body(request), inbox(request), exchange.lease_wait_max)
        await owned(client, body.user, body.inbox_id)
        return await inboxes.lease(body)

    async def ack(request: Request, client: ClientSettings) -> Any:
        settle = inputs_of.settle_body(await api.body(request), inbox(request))
        await owned(client, settle.user, settle.inbox_id)
        return await inboxes.ack(client.name, settle)

    async def release(request: Request, client: ClientSettings) -> Any:
        settle = inputs_of.settle_body(await api.body(request), inbox(request))
        await owned(client, settle.user, settle.inbox_id)
        return await inboxes.release(client.name, settle)

    return routes([
        route(c.INBOX_LIST, listing),
        route(c.INBOX_ENSURE, ensure),
        route(c.INBOX_GET, one),
        route(c.INBOX_DELETE, delete),
        route(c.INBOX_PAUSE, pause),
        route(c.INBOX_RESUME, resume),
        route(c.INBOX_LEASE, lease),
        route(c.INBOX_ACK, ack),
        route(c.INBOX_RELEASE, release),
    ])


def _uses_triggers(grant: ZapierGrant) -> None:
    """403 for a client whose grant names no trigger (before any call to Zapier)."""
    if not grant.everything and not grant.triggers:
        raise Forbidden("this client may not use triggers (clients.<name>.zapier.triggers)")


def _allowed(client: ClientSettings, view: dict[str, Any]) -> bool:
    """Whether the client's grant allows an inbox's app and trigger (as keysvc answers the inbox)."""
    grant = grant_of(client)
    return grant.allows_app(view.get("app")) and grant.allows_trigger(str(view.get("trigger")))
