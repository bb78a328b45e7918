"""One replica's push delivery as its own process, for the kill -9 and two-replica tests:

    python -m tests.trigger_push_worker INBOX_API_URL RECEIVER_URL STORE_URL LEASE_SECONDS

The user's access token comes from KEYSVC_TEST_INBOX_TOKEN (issued by the fake). It sweeps every inbox of
the store (keysvc.partner.trigger_push) again and again, 20 times a second, until it is killed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from typing import Any

from keysvc.config.exchange import TokenExchangeSettings
from keysvc.config.secrets import Secret
from keysvc.partner.budget import ApiBudget, ReplicaBudget
from keysvc.partner.outbound import PartnerHttp
from keysvc.partner.partner_api import PartnerApi
from keysvc.partner.store import StoreSettings, open_store
from keysvc.partner.trigger_inboxes import REAUTH_CODES, TRIGGER_INBOX_API, TriggerInboxes
from keysvc.partner.trigger_push import PushDelivery, Target
from keysvc.partner.triggers.signing import WebhookSecret

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


class Tokens:
    """The token the test issued (stands in for the TokenExchanger's cache)."""

    async def access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> Any:
        return type("T", (), {"access_token": os.environ["KEYSVC_TEST_INBOX_TOKEN"]})()

    def forget_access_token(self, user_id: str, tenant_id: str, scope: str | None = None) -> None:
        """Nothing cached."""


async def main(argv: list[str]) -> None:
    inbox_api, receiver, store_url, lease = argv[0], argv[1], argv[2], int(argv[3])
    store = open_store(StoreSettings.from_url(store_url))
    http = PartnerHttp()
    settings = TokenExchangeSettings(client_id="c", client_secret=Secret("s"), total_timeout=5.0)
    budget = ReplicaBudget(ApiBudget(6000, 100))
    api = PartnerApi(settings, http, budget, base_url=inbox_api, name=TRIGGER_INBOX_API, reauth_codes=REAUTH_CODES)
    push = PushDelivery(TriggerInboxes(Tokens(), api), http, store,
                        Target(receiver, (WebhookSecret.parse(SECRET),), lease_seconds=lease, batch=5, timeout=30))
    print("sweeping", flush=True)
    while True:
        await push.sweep()
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
