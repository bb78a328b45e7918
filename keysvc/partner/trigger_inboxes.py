"""The trigger-inbox flows (Zapier's Trigger Inbox API), framework-free: parsed inputs in (keysvc.partner.
triggers.inputs), JSON-ready answers out. The user's access token comes from the TokenExchanger's cache and
goes only to the Trigger Inbox API (its own PartnerApi over the one session, within the Partner API budget).

    ensure    PUT /inboxes {key, subscription}; with `wait`, GET /inboxes/{id} with back-off until active
    inboxes   GET /inboxes?status=&limit=&offset=                 every page
    inbox     GET /inboxes/{id}
    pause     POST /inboxes/{id}/pause;  resume  POST /inboxes/{id}/resume
    delete    DELETE /inboxes/{id}
    lease     POST /inboxes/{id}/messages/lease; with `wait`, again with back-off until a message arrives
    ack       POST /inboxes/{id}/messages/ack;  release  POST /inboxes/{id}/messages/release

A refused access token (401, or the Trigger Inbox's 400 `unauthenticated`) drops the cached token and runs
the step once more with a new one; a second refusal is a 502. An inbox paused for `authentication` answers
`reconnect_required: true`: only a new Connect of the user's connection ends that pause.

The connection registry (keysvc.partner.registry), keyed here by the app as inboxes name it (its key,
`SlackCLIAPI`; the gateway's entries are keyed by the app's UUID, and Zapier's published app objects carry
no key to relate the two): a Connect opened with `connect_app` set to the app key records the completed
connection under it (keysvc.partner.gateway), and an ensure that names `connection` records it for
(tenant, user, app key) once Zapier took the subscription; an ensure that omits `connection` uses the
recorded one (none: 409 connection_required; `connection: null` is an app without authentication). An
inbox seen paused for `authentication` marks its connection expired; when that connection came from the
registry, the ensure answers 409 reconnect_required with its id, as the gateway's actions do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

from keysvc.errors import ConnectionRequired, ReconnectRequired, RequestError, Unavailable, UpstreamError
from keysvc.logs import audit_request
from keysvc.partner.partner_api import PartnerApi, with_access_token
from keysvc.partner.registry import ConnectionRegistry
from keysvc.partner.store import StoreUnavailable
from keysvc.partner.store.base import InboxRecord
from keysvc.partner.triggers.answers import (
    Inbox,
    Lease,
    parse_inbox,
    parse_inbox_page,
    parse_lease,
    parse_settled,
)
from keysvc.partner.triggers.delivery import inbox_view, lease_view
from keysvc.partner.triggers.inputs import EnsureInbox, InboxRef, LeaseCall, ListInboxes, SettleCall, User

T = TypeVar("T")
log = logging.getLogger("keysvc.zapier")
TRIGGER_INBOX_API = "the Zapier Trigger Inbox API"
REAUTH_CODES = frozenset({"unauthenticated"})  # its errors guide: an expired or revoked access token
PAGE = 100  # inboxes per list page (the most Zapier serves)
MAX_PAGES = 100  # 10,000 inboxes of one user: past that, something is wrong upstream
FIRST_POLL, MAX_POLL = 0.25, 4.0
MAX_KNOWN_SUBSCRIPTIONS = 10_000  # inboxes whose app and trigger this replica remembers


def poll_delay(polls: int) -> float:
    """Seconds before the next look at an inbox (activation, messages): 0.25, 0.5, 1, 2, 4, 4, ..."""
    return float(min(FIRST_POLL * 2.0**polls, MAX_POLL))


class AccessToken(Protocol):
    @property
    def access_token(self) -> str:
        """The bearer token."""


class AccessTokens(Protocol):
    """Where the user's access token comes from (keysvc's TokenExchanger: cached, exchanged on a miss)."""

    async def access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> AccessToken:
        """The user's access token."""

    def forget_access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> None:
        """Drop the cached token (the partner refused it)."""


class InboxRecorder(Protocol):
    """Where push delivery keeps the inboxes keysvc ensured (the gateway store)."""

    async def record_inbox(self, inbox: InboxRecord) -> None:
        """Record (or replace) an inbox."""

    async def delete_inbox(self, inbox_id: str) -> bool:
        """Forget an inbox."""

    async def inbox(self, inbox_id: str) -> InboxRecord | None:
        """The recorded inbox, or None."""


class InboxObserver(Protocol):
    """Where the flows report messages and inbox statuses (keysvc feeds Prometheus)."""

    def messages(self, event: str, count: int) -> None:
        """`count` messages `leased`, `acked` or `released`."""

    def inbox_seen(self, status: str, paused_reason: str | None = None) -> None:
        """An inbox answered with this status (and pause reason)."""


class NullInboxObserver:
    """Reports nothing."""

    def messages(self, event: str, count: int) -> None:
        """Drop it."""

    def inbox_seen(self, status: str, paused_reason: str | None = None) -> None:
        """Drop it."""


def view(inbox: Inbox) -> dict[str, Any]:
    """The inbox as keysvc answers it: Zapier's ids, keysvc's names, and `reconnect_required`."""
    return {**inbox_view(inbox), "reconnect_required": inbox.reconnect_required}


class TriggerInboxes:
    """The trigger-inbox flows for one replica."""

    def __init__(
        self,
        exchanger: AccessTokens,
        api: PartnerApi,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: InboxObserver | None = None,
        registry: ConnectionRegistry | None = None,
    ) -> None:
        self._exchanger = exchanger
        self._registry = registry  # None: `connection` omitted is an app without authentication
        self._api = api
        self._clock = clock
        self._sleep = sleep
        self._observer = observer or NullInboxObserver()
        self._recorder: InboxRecorder | None = None
        # (inbox id, tenant, user) -> (app key, trigger key): an inbox's subscription never changes (the
        # same key with another subscription is a 409), so Zapier's answer is kept, bounded, oldest out
        self._subscriptions: OrderedDict[tuple[str, str, str], tuple[str, str]] = OrderedDict()
        self._notification_url: Callable[[str, str, str], str] | None = None

    def __repr__(self) -> str:
        return f"TriggerInboxes({self._api!r})"

    def push_to(self, recorder: InboxRecorder, notification_url: Callable[[str, str, str], str]) -> None:
        """Push delivery is on: record every ensured inbox, give it `notification_url(inbox, user, tenant)`."""
        self._recorder, self._notification_url = recorder, notification_url

    # ---------------------------------------------------------------------------------- inboxes

    async def ensure(self, client: str, e: EnsureInbox) -> dict[str, Any]:
        """The user's inbox with this key for this subscription (created when missing; 409 when the key
        names another subscription), waiting up to `e.wait` for it to turn `active`."""
        deadline = self._clock() + e.wait
        fields = _audit(client, e.user, key=e.key, app=e.app, trigger=e.trigger, outcome="ok")
        try:
            connection = await self._connection(e)
            subscription: dict[str, Any] = {"app_key": e.app, "action_key": e.trigger, "inputs": e.inputs}
            if connection is not None:
                subscription["connection_id"] = connection
            body: dict[str, Any] = {"key": e.key, "subscription": subscription}
            inbox = parse_inbox(await self._with_token(e.user, lambda token: self._api.request(
                "PUT", "inbox_ensure", "/inboxes", token, body=body, retry=True)))
            if self._notification_url is not None and self._recorder is not None:
                url = self._notification_url(inbox.id, e.user.user_id, e.user.tenant_id)
                if inbox.notification_url != url:  # the 409 compares the subscription, never this URL
                    inbox = await self._patch_notification_url(e.user, inbox.id, url)
                await self._recorder.record_inbox(InboxRecord(inbox.id, e.user.tenant_id, e.user.user_id, e.key,
                                                              e.app, e.trigger))
            polls = 0
            while inbox.status == "initializing" and (remaining := deadline - self._clock()) > 0:
                await self._sleep(min(poll_delay(polls), remaining))
                polls += 1
                inbox = await self._get(e.user, inbox.id)
            self._know(e.user, inbox)
            if await self._noticed(e.user, inbox) and not e.connection_given and connection is not None:
                raise ReconnectRequired("the inbox is paused because Zapier refused the recorded connection: "
                                        "reconnect it (open Connect with reconnect_id)", connection)
            if e.connection_given and connection is not None and not inbox.reconnect_required:
                await self._remember(e.user, e.app, connection)
        except RequestError as exc:
            audit_request("zapier.inbox.ensure", {**fields, "outcome": exc.code})
            raise
        audit_request("zapier.inbox.ensure", {**fields, "inbox": inbox.id, "status": inbox.status})
        return {"inbox": self._seen(inbox)}

    async def _connection(self, e: EnsureInbox) -> str | None:
        """The connection the subscription names: the caller's, else the registry's recorded one."""
        if e.connection_given or self._registry is None:
            return e.connection
        found = await self._registry.usable(e.user.tenant_id, e.user.user_id, e.app)
        if found is None:
            raise ConnectionRequired("no usable connection of this user's is recorded for this app key: pass "
                                     "`connection` (null for an app without authentication) on one ensure first")
        return found.connection_id

    async def _remember(self, user: User, app: str, connection: str) -> None:
        """Record the connection Zapier took for (user, app key); best effort."""
        if self._registry is None:
            return
        try:
            await self._registry.record(user.tenant_id, user.user_id, app, connection)
        except Unavailable:
            log.warning("the connection registry could not record an inbox's connection", extra={"app": app})

    async def _noticed(self, user: User, inbox: Inbox) -> bool:
        """Whether the inbox is paused for authentication; if so its connection is marked expired (best
        effort: the store failing must not fail the answer)."""
        if not inbox.reconnect_required:
            return False
        sub = inbox.subscription
        if self._registry is not None and sub.connection_id is not None:
            try:
                await self._registry.expire(user.tenant_id, user.user_id, sub.app_key, sub.connection_id)
            except Unavailable:
                log.warning("the connection registry could not expire a connection", extra={"app": sub.app_key})
        return True

    async def _patch_notification_url(self, user: User, inbox_id: str, url: str) -> Inbox:
        path = f"/inboxes/{quote(inbox_id, safe='')}"
        return parse_inbox(await self._with_token(user, lambda token: self._api.request(
            "PATCH", "inbox_patch", path, token, body={"notification_url": url}, retry=True)))

    async def inboxes(self, q: ListInboxes) -> dict[str, Any]:
        """Every inbox of the user (every page), optionally only those with `status`."""
        found: list[dict[str, Any]] = []

        async def pages(token: str) -> None:
            found.clear()
            for page in range(MAX_PAGES):
                params = {"limit": str(PAGE), "offset": str(page * PAGE)}
                if q.status is not None:
                    params["status"] = q.status
                listed = parse_inbox_page(await self._api.get("inbox_list", "/inboxes", token, params))
                for i in listed.inboxes:
                    await self._noticed(q.user, i)
                found.extend(self._seen(i) for i in listed.inboxes)
                if not listed.has_next or not listed.inboxes:
                    return
            raise UpstreamError(f"{TRIGGER_INBOX_API} listed more than {MAX_PAGES} pages of inboxes")

        await self._with_token(q.user, pages)
        return {"inboxes": found}

    async def inbox(self, r: InboxRef) -> dict[str, Any]:
        """One inbox of the user."""
        inbox = await self._get(r.user, r.inbox_id)
        await self._noticed(r.user, inbox)
        return {"inbox": self._seen(inbox)}

    async def _get(self, user: User, inbox_id: str) -> Inbox:
        path = f"/inboxes/{quote(inbox_id, safe='')}"
        return parse_inbox(await self._with_token(user, lambda token: self._api.get("inbox_get", path, token)))

    async def subscription(self, user: User, inbox_id: str) -> tuple[str, str]:
        """The (app key, trigger key) the user's inbox subscribes to, for the routes' least-privilege check:
        remembered from an ensure or an earlier look-up, or the store's record when push delivery recorded
        this inbox of this user (no call to Zapier), else
        GET /inboxes/{id} (one call within the Partner API budget; an unknown or foreign inbox is Zapier's
        404), remembered for this user (an inbox's subscription never changes). A store failure falls back
        to the GET: the answer never comes from a guess."""
        known = self._subscriptions.get((inbox_id, user.tenant_id, user.user_id))
        if known is not None:
            return known
        if self._recorder is not None:
            try:
                record = await self._recorder.inbox(inbox_id)
            except StoreUnavailable:
                record = None
            if record is not None and (record.tenant_id, record.user_id) == (user.tenant_id, user.user_id):
                return record.app, record.trigger
        inbox = await self._get(user, inbox_id)
        self._observer.inbox_seen(inbox.status, inbox.paused_reason)
        return self._know(user, inbox)

    def _know(self, user: User, inbox: Inbox) -> tuple[str, str]:
        """Remember the inbox's (app key, trigger key) for this user."""
        key = (inbox.id, user.tenant_id, user.user_id)
        self._subscriptions.pop(key, None)
        known = self._subscriptions[key] = (inbox.subscription.app_key, inbox.subscription.action_key)
        while len(self._subscriptions) > MAX_KNOWN_SUBSCRIPTIONS:
            self._subscriptions.popitem(last=False)
        return known

    async def pause(self, client: str, r: InboxRef) -> dict[str, Any]:
        """Pause the inbox (Zapier stops collecting; queued messages can still be leased)."""
        return await self._switch(client, r, "pause")

    async def resume(self, client: str, r: InboxRef) -> dict[str, Any]:
        """Resume the inbox (back through `initializing` to `active`)."""
        return await self._switch(client, r, "resume")

    async def _switch(self, client: str, r: InboxRef, verb: str) -> dict[str, Any]:
        path = f"/inboxes/{quote(r.inbox_id, safe='')}/{verb}"
        fields = _audit(client, r.user, inbox=r.inbox_id, outcome="ok")
        try:
            inbox = parse_inbox(await self._with_token(r.user, lambda token: self._api.request(
                "POST", f"inbox_{verb}", path, token, retry=True)))
        except RequestError as exc:
            audit_request(f"zapier.inbox.{verb}", {**fields, "outcome": exc.code})
            raise
        audit_request(f"zapier.inbox.{verb}", {**fields, "status": inbox.status})
        await self._noticed(r.user, inbox)
        return {"inbox": self._seen(inbox)}

    async def delete(self, client: str, r: InboxRef) -> None:
        """Delete the inbox (its messages go with it)."""
        path = f"/inboxes/{quote(r.inbox_id, safe='')}"
        fields = _audit(client, r.user, inbox=r.inbox_id, outcome="ok")
        try:
            await self._with_token(r.user, lambda token: self._api.request(
                "DELETE", "inbox_delete", path, token, retry=True))
            self._subscriptions.pop((r.inbox_id, r.user.tenant_id, r.user.user_id), None)
            if self._recorder is not None:
                await self._recorder.delete_inbox(r.inbox_id)
        except RequestError as exc:
            audit_request("zapier.inbox.delete", {**fields, "outcome": exc.code})
            raise
        audit_request("zapier.inbox.delete", fields)

    # ---------------------------------------------------------------------------------- messages

    async def lease(self, c: LeaseCall) -> dict[str, Any]:
        """Lease up to `limit` messages for `lease_seconds`; with `wait`, lease again with back-off until
        a message arrives or `wait` has passed (nothing leased is an empty list, not an error)."""
        return lease_view(await self.lease_messages(c))

    async def lease_messages(self, c: LeaseCall) -> Lease:
        """The typed lease (push delivery uses it too)."""
        deadline = self._clock() + c.wait
        path = f"/inboxes/{quote(c.inbox_id, safe='')}/messages/lease"
        body = {"lease_seconds": c.lease_seconds, "lease_limit": c.limit}
        polls = 0
        while True:
            # not retried: a lost answer's messages come back when that lease expires, never lost
            lease = parse_lease(await self._with_token(c.user, lambda token: self._api.post(
                "inbox_lease", path, token, body, retry=False)))
            if lease.inbox is not None:
                self._observer.inbox_seen(lease.inbox.status, lease.inbox.paused_reason)
            remaining = deadline - self._clock()
            if lease.messages or remaining <= 0:
                self._observer.messages("leased", len(lease.messages))
                return lease
            await self._sleep(min(poll_delay(polls), remaining))
            polls += 1

    async def ack(self, client: str, s: SettleCall) -> dict[str, Any]:
        """Remove leased messages for good (the whole lease, or `message_ids` of it)."""
        return {"acked": await self._settle(client, s, "ack", "acked")}

    async def release(self, client: str, s: SettleCall) -> dict[str, Any]:
        """Give leased messages back at once (the whole lease, or `message_ids` of it)."""
        return {"released": await self._settle(client, s, "release", "released")}

    async def _settle(self, client: str, s: SettleCall, verb: str, kind: str) -> list[str]:
        path = f"/inboxes/{quote(s.inbox_id, safe='')}/messages/{verb}"
        body: dict[str, Any] = {"lease_id": s.lease_id}
        if s.message_ids is not None:
            body["message_ids"] = list(s.message_ids)
        fields = _audit(client, s.user, inbox=s.inbox_id, outcome="ok")
        try:
            settled = parse_settled(await self._with_token(s.user, lambda token: self._api.post(
                f"inbox_{verb}", path, token, body, retry=True)), kind)
        except RequestError as exc:
            if verb == "ack":
                audit_request("zapier.inbox.ack", {**fields, "outcome": exc.code})
            raise
        self._observer.messages(kind, len(settled.message_ids))
        if verb == "ack":
            audit_request("zapier.inbox.ack", {**fields, "messages": len(settled.message_ids)})
        return list(settled.message_ids)

    # ------------------------------------------------------------------------------------ tokens

    def _seen(self, inbox: Inbox) -> dict[str, Any]:
        self._observer.inbox_seen(inbox.status, inbox.paused_reason)
        return view(inbox)

    async def _with_token(self, user: User, step: Callable[[str], Awaitable[T]]) -> T:
        """Run `step` with the user's access token; after a refusal of it, once more with a new token."""
        return await with_access_token(self._exchanger, user.user_id, user.tenant_id, step)


def _audit(client: str, user: User, **extra: Any) -> dict[str, Any]:
    return {"client": client, "user": user.user_id, "tenant": user.tenant_id, **extra}
