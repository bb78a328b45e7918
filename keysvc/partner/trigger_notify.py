"""Push delivery's outside: the notification URL Zapier POSTs to (the public listener's only POST route),
the sweep job, and the URL keysvc gives each inbox it ensures.

    POST {public_url}/zapier/inbox-notifications/{sealed}  -> 202 at once (body read, at most 64 KiB, and
         not trusted: the sealed token alone names the inbox, user and tenant); a token keysvc did not seal
         is 404 like any unknown URL; delivery runs in the background (keysvc.partner.trigger_push)
"""

from __future__ import annotations

import hashlib

import orjson
from starlette.types import Receive, Scope, Send

from keysvc.config import TokenExchangeSettings
from keysvc.config.exchange import TriggerDeliverySettings
from keysvc.errors import MethodNotAllowed, NotFound, PayloadTooLarge
from keysvc.feature import Job, PublicRoute
from keysvc.partner.outbound import PartnerHttp
from keysvc.partner.trigger_inboxes import TriggerInboxes
from keysvc.partner.trigger_push import InboxDirectory, PushDelivery, PushObserver, Target
from keysvc.partner.triggers.sealing import NotificationSealer
from keysvc.partner.triggers.signing import WebhookSecret

PREFIX = "/zapier/inbox-notifications/"
MAX_BODY = 64 << 10  # Zapier's notification is a few dozen bytes
_ACCEPTED = orjson.dumps({"status": "accepted"})


def sealer_for(secret: WebhookSecret) -> NotificationSealer:
    """The notification tokens' sealer: a key derived from the webhook secret (rotating it re-seals at the
    next ensure; the sweep delivers meanwhile)."""
    return NotificationSealer(hashlib.sha256(b"keysvc trigger-inbox notification key\x00" + secret.key).digest())


class Push:
    """Push delivery of one replica, configured: the engine, its sealer, its public route and its job."""

    def __init__(self, settings: TriggerDeliverySettings, inboxes: TriggerInboxes, http: PartnerHttp,
                 directory: InboxDirectory, *, observer: PushObserver | None = None) -> None:
        secret = WebhookSecret.parse(settings.secret.reveal())
        self.settings = settings
        self.sealer = sealer_for(secret)
        self.delivery = PushDelivery(inboxes, http, directory,
                                     Target(settings.url, (secret,), lease_seconds=int(settings.lease)),
                                     observer=observer)

    def __repr__(self) -> str:
        return f"Push({self.delivery!r})"

    def notification_url(self, inbox_id: str, user_id: str, tenant_id: str) -> str:
        """`{public_url}/zapier/inbox-notifications/{sealed}` for this inbox of this user."""
        return self.settings.public_url + PREFIX + self.sealer.seal(inbox_id, user_id, tenant_id)

    def route(self) -> PublicRoute:
        """The public listener's route."""
        return PublicRoute(PREFIX, "zapier_inbox_notification", self._handle)

    def job(self) -> Job:
        """The sweep: every recorded inbox, every `sweep_interval`."""
        return Job("zapier_inbox_sweep", self.settings.sweep_interval, self.delivery.sweep)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        if scope["method"] != "POST":
            raise MethodNotAllowed("only POST is allowed here", allow="POST")
        token = scope["path"][len(PREFIX):]
        if not token or "/" in token:
            raise NotFound("no such resource")
        size = 0
        while True:  # read (and drop) the body: bounded, its content is not needed
            message = await receive()
            size += len(message.get("body", b""))
            if size > MAX_BODY:
                raise PayloadTooLarge(f"a notification is at most {MAX_BODY} bytes")
            if not message.get("more_body"):
                break
        self.delivery.notified(self.sealer, token)  # BadSealedToken: 404
        await send({"type": "http.response.start", "status": 202, "headers": [
            (b"content-type", b"application/json"), (b"cache-control", b"no-store"),
            (b"content-length", str(len(_ACCEPTED)).encode())]})
        await send({"type": "http.response.body", "body": _ACCEPTED})
        return 202


def build_push(exchange: TokenExchangeSettings, inboxes: TriggerInboxes, http: PartnerHttp,
               directory: InboxDirectory | None, observer: PushObserver | None = None) -> Push | None:
    """Push delivery when `trigger_delivery` is configured and a store (the inbox directory) is there."""
    if exchange.trigger_delivery is None or directory is None:
        return None
    return Push(exchange.trigger_delivery, inboxes, http, directory, observer=observer)
