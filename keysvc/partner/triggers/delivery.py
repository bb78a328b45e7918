"""What keysvc answers and sends about inboxes and messages, built from the typed answers (pure).

`inbox_view` and `lease_view` are the internal routes' answer members (Zapier's ids, keysvc's names:
`app`, `trigger`, `connection`, `attributes`); `delivery` is one push delivery to the partner's service:
the JSON body `{"type": "zapier.trigger", "inbox", "user_id", "tenant_id", "message"}` and its Standard
Webhooks headers, the message id as `webhook-id` so the receiver deduplicates redeliveries by it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from keysvc.partner.triggers.answers import Inbox, Lease, Message
from keysvc.partner.triggers.signing import WebhookSecret, webhook_headers

EVENT_TYPE = "zapier.trigger"


def inbox_view(inbox: Inbox) -> dict[str, Any]:
    """`{"id", "key", "status", "paused_reason", "app", "trigger", "connection"}`."""
    return {
        "id": inbox.id,
        "key": inbox.key,
        "status": inbox.status,
        "paused_reason": inbox.paused_reason,
        "app": inbox.subscription.app_key,
        "trigger": inbox.subscription.action_key,
        "connection": inbox.subscription.connection_id,
    }


def message_view(message: Message) -> dict[str, Any]:
    """`{"id", "payload", "attributes"}`."""
    return {"id": message.id, "payload": message.payload, "attributes": message.attributes}


def lease_view(lease: Lease) -> dict[str, Any]:
    """`{"lease_id", "leased_until", "messages"}`: an empty lease is `null`, `null`, `[]`."""
    return {
        "lease_id": lease.lease_id,
        "leased_until": _iso(lease.leased_until),
        "messages": [message_view(m) for m in lease.messages],
    }


def delivery(secrets: WebhookSecret | tuple[WebhookSecret, ...], inbox: Inbox, user_id: str, tenant_id: str,
             message: Message, timestamp: int) -> tuple[dict[str, str], bytes]:
    """One push delivery: (headers incl. Content-Type and the three webhook-* headers, body bytes)."""
    body = orjson.dumps({
        "type": EVENT_TYPE,
        "inbox": inbox_view(inbox),
        "user_id": user_id,
        "tenant_id": tenant_id,
        "message": message_view(message),
    })
    headers = {"Content-Type": "application/json", **webhook_headers(secrets, message.id, timestamp, body)}
    return headers, body


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
