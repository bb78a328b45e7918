"""A fake of Zapier's Trigger Inbox API (OpenAPI "Trigger Inbox API" 1.0.0; PUBLISHED.md) on 127.0.0.1.

    GET    {base}/inboxes?key=&status=&limit=&offset=      {count, next, previous, results: [Inbox]}
    POST   {base}/inboxes                                  201 Inbox (409 when the key exists)
    PUT    {base}/inboxes                                  Inbox: ensure by key (201 when created; 409 when
                                                           the key exists with another subscription)
    GET    {base}/inboxes/{id}   PATCH (notification_url)   DELETE (204)
    POST   {base}/inboxes/{id}/pause | /resume             Inbox
    POST   {base}/inboxes/{id}/messages/lease              {lease_id, leased_until, results, inbox_attributes}
    POST   {base}/inboxes/{id}/messages/ack | /release     {acked_id | released_id, results}

`base` is `base_path` (default `/trigger-inbox/v1`). Behaviour:
- Bearer token required: missing -> 401 (and a violation); unknown or expired -> 400 `unauthenticated`
  (the errors guide). Tokens come from `issue_token(user)`, or from any `tokens` check given, e.g.
  `partner_tokens(zapier.partner)` to accept the Partner API fake's access tokens (the same token).
- Inboxes start `initializing` and turn `active` `activation_delay` seconds later (resume likewise);
  pause sets `paused`/`user`; injected messages are dropped unless the inbox is `active`.
- Leases are exclusive; an expired lease gives its messages back (a ticker checks every 50 ms); ack
  removes, release gives back at once; a paused inbox with no messages left answers a lease 409.
- When messages become available (inject, release, expiry) and the inbox has a notification_url, the
  fake POSTs `{inbox_id, received_message_count, redelivery: false}` there (recorded in `notifications`).
- Failures: `per_minute` is a request budget (then 429 + Retry-After); `fail_next(status, count)` injects.
- Every request is validated against schemas.py: a mismatch is answered 400 (404 for a path id that is
  not a UUID, 415 for a non-JSON body) and recorded in `violations`; a member the document does not name,
  or the deprecated `name`, is answered normally but recorded too.

Start it (uvicorn in a thread plus the background threads; stopped when the block ends):

    with running_trigger_inbox(activation_delay=0.2) as inbox_api:
        inbox_api.api_url                        # -> token_exchange.trigger_inbox_url
        token = inbox_api.issue_token(("u-1", "t-9"))
        ...                                      # keysvc or httpx calls
        inbox_api.inject(inbox_id, {"text": "hi"}, {"text": "there"})
        inbox_api.force_status(inbox_id, "paused", "authentication")
        inbox_api.expire_token(token); inbox_api.fail_next(429, 2, retry_after=1)
        assert inbox_api.violations == []
        inbox_api.log, inbox_api.counts(), inbox_api.notifications

`fake.routes()` are the same routes, to mount beside the Partner API fake's on one host (as api.zapier.com
serves both); a `TriggerInboxFake(tokens=partner_tokens(zapier.partner))` then accepts its access tokens.

Control over HTTP (for another process, e.g. a benchmark), under `inbox_api.control_url`:
POST /_control/inboxes/{id}/messages {"payloads": [...]} -> {"message_ids"}; POST
/_control/inboxes/{id}/status {"status", "paused_reason"}; POST /_control/tokens/expire {"token"};
POST /_control/fail {"status", "count", "code", "retry_after"}; GET /_control/state ->
{violations, counts, inboxes, notifications}.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.exchange_support import serve
from tests.partner_server import ACCESS_TOKEN, PartnerState
from tests.published_shapes import LoggedRequest, User, Violation
from tests.trigger_inbox_fake.fake import TokenCheck, TriggerInboxFake, inbox_error
from tests.trigger_inbox_fake.model import Inbox, Message, Notice

__all__ = [
    "Inbox",
    "LoggedRequest",
    "Message",
    "Notice",
    "TokenCheck",
    "TriggerInboxFake",
    "User",
    "Violation",
    "inbox_error",
    "partner_tokens",
    "running_trigger_inbox",
]


def partner_tokens(partner: PartnerState) -> TokenCheck:
    """Accept the access tokens the Partner API fake's token endpoint issued (the same Bearer token)."""

    def check(token: str) -> User | None:
        grant = partner.issued.get(token)
        if grant is None or grant.token_type != ACCESS_TOKEN or grant.expires_at <= time.time():
            return None
        return (grant.sub, grant.tenant)

    return check


@contextmanager
def running_trigger_inbox(**fields: Any) -> Iterator[TriggerInboxFake]:
    """Serve a TriggerInboxFake on an ephemeral 127.0.0.1 port; `fields` set its fields."""
    fake = TriggerInboxFake(**fields)
    with serve(fake.app()) as url:
        fake.base_url = url
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()
