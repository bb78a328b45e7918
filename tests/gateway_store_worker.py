"""A replica's share of the gateway store's multi-process tests, run as its own process:

    python -m tests.gateway_store_worker migrate URL START
    python -m tests.gateway_store_worker hammer URL PER_MINUTE BURST START SECONDS

The password comes from KEYSVC_TEST_STORE_PASSWORD. Both connect first, then wait until START (epoch
seconds), so every process begins together. `migrate` migrates and prints the schema version; `hammer`
asks the shared budget for a request as fast as it can (never waiting: max_wait 0) for SECONDS, and
prints the epoch times of the requests it was allowed, one JSON list.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from keysvc.partner.store import Limit, Refused, StoreSettings, open_store


async def main(argv: list[str]) -> None:
    settings = StoreSettings.from_url(argv[1], password=os.environ.get("KEYSVC_TEST_STORE_PASSWORD"))
    store = open_store(settings)
    try:
        start = float(argv[2] if argv[0] == "migrate" else argv[4])
        await store.ping()  # connected before the start, like a running replica
        await asyncio.sleep(max(0.0, start - time.time()))
        if argv[0] == "migrate":
            print(await store.migrate())
            return
        limit, seconds = Limit(float(argv[2]), int(argv[3])), float(argv[5])
        allowed: list[float] = []
        while (now := time.time()) < start + seconds:
            decision = await store.admit("hammer", limit, now, 0.0)
            if not isinstance(decision, Refused):
                allowed.append(now + decision)
        print(json.dumps(allowed))
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
