"""The Zapier embed gateway: a user's connections, the Connect flow, actions and action runs, with the
user's Partner API access token kept inside keysvc (internal callers name the user, keysvc holds the token).

budget.py       this replica's token bucket towards the Partner API, and the cooldown after a 429 (pure)
state.py        the Connect flow's sealed `state` (pure)
requests.py     strict parsing of query parameters and bodies into typed inputs (pure)
partner_api.py  the Partner API client: budget, retries of reads, envelopes, error mapping
partner_http.py the Partner API calls' HTTP session (aiohttp: no cookies, no redirects)
gateway.py      the flows, framework-free
routes.py       the `/v1/zapier/*` routes of the internal listener
client.py       `ZapierClient` for internal services (httpx only, no server stack)
cli.py          `keysvc zapier ...`
"""
