"""A fake of Zapier's Partner API (version 2024.11.0 of its OpenAPI document) and token endpoint, on 127.0.0.1.

One Starlette app serves both: `POST /oauth/token` is tests/partner_server.py (RFC 8693; verifies our partner
JWT against our JWKS), and the access tokens it issues identify the user, (sub, tenant), to the Partner API:

    GET  /v2/apps?query=&limit=&offset=&ids=&category=          [{links, meta, data: [App]}]
    GET  /v2/authentications?app=<uuid>&limit=&offset=          {links, meta, data: [Authentication]}
    GET  /v2/actions?app=<uuid>&action_type=                    [{links, meta, data: [Action]}]
    POST /v2/actions/{action_id}/inputs                         {links, meta, data: [InputField]}
    POST /v2/actions/{action_id}/inputs/{input_id}/choices?page= [{links, meta: {page}, data: [Choice]}]
    POST /v2/action-runs                                        {data: {type: "run", id}}
    GET  /v2/action-runs/{id}                                   {data: {type, status, results, errors}}

The one-element array envelopes are where the document declares them (see schemas.py); set
`array_envelopes = False` to answer those lists bare, as a caller must also accept. Behaviour:
- Bearer access token required; missing -> 401 (and a violation); unknown, expired or a connect token -> 401;
  a token without the scope the document names for the endpoint -> 403 (`check_scopes`).
- Authentications are the user's own connections of that app, 10 per page by default, `links.next` to the
  next page; every other item has its `app` expanded to an object.
- Every actions lookup hands out new ids; an id not from the latest lookup by that user and app, or older
  than `action_ids.ttl` seconds, is refused with 400 `invalid` (the document declares 400 for 4xx errors).
- Runs answer `pending` statuses for `pending_polls` GETs, then `success` or `error` (RunBehaviour); a run
  with an expired connection ends `error`/`authentication`, one missing a required input `error`/`user`.
- Rate limit (Budget): 60 per IP and 150 in all per `window` (60 s), every request counted; past it
  429 `throttled` with Retry-After (seconds until one more request fits, plus `cooldown`).
- Every request is validated against the transcribed shapes: a mismatch is answered 400 (415 for a non-JSON
  body) and recorded in `violations`; a member or query parameter the document does not name is answered
  normally (Zapier ignores it) but recorded too. Unknown paths: 404 and a violation.
Errors are the document's `{"errors": [{status, code, title, detail, source, meta}]}`.

Start it (a thread running uvicorn; stopped when the block ends):

    with running_zapier() as zapier:                  # zapier.api_url, zapier.token_url
        zapier.trust(keysvc_jwks_url, issuer)        # when the partner JWTs come from a real keysvc
        slack = zapier.add_app("Slack")
        zapier.add_action(slack, "send_message", fields=[InputField("channel", is_required=True,
                                                                    choices=[("C1", "#general"), ...])])
        user = ("u-1", "t-9")                         # (sub, tenant claim) of the partner JWT
        zapier.add_connections(user, slack, 12, expired_every=4)
        new_id = zapier.connect(user, slack)          # what the Connect popup/redirect would carry
        zapier.queue_runs(RunBehaviour(pending_polls=3), RunBehaviour.throttled(delay=2))
        zapier.budget.per_ip = 5                      # tighter rate limit
        ...
        assert zapier.violations == []                # every request matched the published shapes
        zapier.log, zapier.counts(), zapier.count("POST /v2/action-runs", status=200)

`zapier.serve_raw("GET /v2/authentications", RawAnswer.json({...}, 200, **{"Retry-After": "9" * 5000}))`
answers the next such request with exactly that (RawAnswer also streams huge or slow bodies): a hostile partner.
`zapier.access_token(user)` makes a token without the exchange (tests of the fake); `expire_access_tokens()`
expires every token issued so far. `zapier.partner` is the token endpoint's PartnerState (error modes, calls).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.exchange_support import ISSUER, serve
from tests.partner_server import PartnerState
from tests.published_shapes import LoggedRequest, User, Violation
from tests.zapier_fake.fake import SCOPES, RawAnswer, ZapierFake, zapier_error
from tests.zapier_fake.model import (
    Action,
    App,
    Budget,
    Connection,
    InputField,
    Run,
    RunBehaviour,
)

__all__ = [
    "SCOPES",
    "Action",
    "App",
    "Budget",
    "Connection",
    "InputField",
    "LoggedRequest",
    "RawAnswer",
    "Run",
    "RunBehaviour",
    "User",
    "Violation",
    "ZapierFake",
    "running_zapier",
    "zapier_error",
]

# Until `trust()` names a real JWKS, partner JWTs are checked against a port nothing listens on (refused).
NO_JWKS = "http://127.0.0.1:9/.well-known/jwks.json"


@contextmanager
def running_zapier(jwks_url: str = NO_JWKS, issuer: str = ISSUER, **fake: Any) -> Iterator[ZapierFake]:
    """Serve a ZapierFake on an ephemeral 127.0.0.1 port; `fake` sets its fields (budget, clock, ...)."""
    partner = PartnerState(jwks_url=jwks_url, issuer=issuer, scopes=SCOPES)
    zapier = ZapierFake(partner, **fake)
    with serve(zapier.app()) as url:
        zapier.base_url = url
        yield zapier
