"""The server side of the partner (Zapier): the token-exchange endpoint and the embed gateway, one feature of
the service behind one seam (keysvc.feature), going out to the partner one way (aiohttp, `outbound.py`).

wiring.py          partner_feature / build_partner: the feature (routes, OpenAPI part, metrics, start and
                   close hooks); with token_exchange.store, the store, its SharedBudget and registry
outbound.py        the ONE way out: one aiohttp session for every partner URL, transport failures mapped,
                   the one retry loop (keysvc.client.retry); AiohttpTokenEndpoint (POST /oauth/token)
partner_api.py     the Partner API client: budget, retries of reads, envelopes, error mapping
budget.py          this replica's token bucket and the cooldown after a 429 (pure), the async Budget every
                   call to Zapier asks first (ReplicaBudget, or StoreBudget: every replica's)
registry.py        the connection registry (StoreRegistry or per-replica MemoryRegistry), single-use states
state.py           the Connect flow's sealed `state` (pure)
keyring_signer.py  KeyringSigner, the TokenSigner over this process's keyring
exchange_body.py   body contract of POST /v1/token-exchange (pure)
exchange_route.py  the POST /v1/token-exchange route
fields.py          each field's rule (Text, Uuid, Integer, Duration, Choice), once: parsers and OpenAPI use it
contracts.py       each partner route's contract, written once (fields, schemas; routes, parsers' field
                   sets and OpenAPI entries derive from it)
gateway_inputs.py  strict parsing of the gateway's query parameters and bodies into typed inputs (pure)
openapi_part.py    the partner's OpenAPI part (paths from the contracts, the token exchange's schemas)
observers.py       PartnerMetrics: the partner side's Prometheus metrics, registered through the seam
gateway.py         the gateway's flows, framework-free
routing.py         what every `/v1/zapier/*` route shares: the client checks, the JSON answer, one route per path
gateway_routes.py  the `/v1/zapier/*` routes of the internal listener
trigger_inboxes.py the trigger inboxes' flows over the Trigger Inbox API (same session, same budget)
trigger_routes.py  the `/v1/zapier/trigger-inboxes*` routes of the internal listener
trigger_push.py    push delivery's engine: lease, a Standard Webhooks POST, ack only after a 2xx
trigger_notify.py  push delivery's outside: the sealed notification URL, its public route, the sweep job
store/             the gateway store: shared state across replicas (SQLite or PostgreSQL): one Partner API
                   budget and cooldown, the connection registry, single-use Connect states, known inboxes
triggers/          Zapier's Trigger Inbox: typed answers, route inputs, Standard Webhooks signing, the sealed
                   notification token (pure pieces)

The Python clients (TokenExchanger, RemoteSigner, ZapierClient, their CLIs) are keysvc.client: this package
imports their transport-free modules (oauth, retry, cache, connect, exchanger), never the reverse.
"""
