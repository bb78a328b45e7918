"""The embed gateway's flows, framework-free: parsed inputs in, JSON-ready answers out. The user's access
token comes from the TokenExchanger's cache and never leaves this module but towards the Partner API.

    apps          GET /v2/apps                                        one page
    connections   GET /v2/authentications?app=                        every page (links.next)
    connect       a connect token (token exchange) + a sealed state   no Partner API call
    complete      the state, then the user's live connections of the state's app
    actions       GET /v2/actions?app=&action_type=                   stable keys out, ids kept inside
    inputs        fresh id by key, POST /v2/actions/{id}/inputs
    choices       fresh id by key, POST /v2/actions/{id}/inputs/{input_id}/choices?page=
    run           fresh id by key, POST /v2/action-runs once, then GET /v2/action-runs/{id} with back-off
    run_status    GET /v2/action-runs/{id} with back-off

A 401 from the Partner API drops the cached access token and runs the step once more with a new one;
a second 401 is a 502.

The connection registry (keysvc.partner.registry): complete and connections record the user's verified
usable connection per app (complete also under the state's `connect_app`, an app key trigger inboxes
use); inputs, choices and runs that omit `connection` use it (none: 409 connection_required); Zapier
refusing it (an inputs or choices call refused for the authentication, a run ending with an error of code
`authentication`) marks it expired and answers 409 reconnect_required with its id. A Connect state
completes once (single use, across replicas with the store).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

from keysvc.client.connect import connect_url
from keysvc.client.exchanger import TokenExchanger
from keysvc.client.oauth import PartnerError, oauth_text
from keysvc.client.retry import shared_deadline
from keysvc.errors import (
    ConnectionRequired,
    Forbidden,
    InvalidRequest,
    NotFound,
    ReconnectRequired,
    RequestError,
    Unavailable,
    UpstreamError,
)
from keysvc.logs import audit_request
from keysvc.partner.contracts import MAX_OFFSET, PARTNER_ID
from keysvc.partner.gateway_inputs import (
    ActionCall,
    ActionsQuery,
    AppQuery,
    AppsQuery,
    ChoicesCall,
    CompleteBody,
    ConnectBody,
    RunBody,
    RunQuery,
    User,
    is_uuid,
)
from keysvc.partner.partner_api import PartnerApi, PartnerAuthRefused, with_access_token
from keysvc.partner.registry import ConnectionRegistry, MemoryRegistry
from keysvc.partner.state import StateCodec
from keysvc.partner.store import RunRecord

T = TypeVar("T")
FINAL = frozenset({"success", "error"})
FIRST_POLL, MAX_POLL = 1.0, 8.0
MAX_RUN_ERRORS = 50  # errors of one run we repeat
MAX_LINK = 2048  # characters of a links.next
MAX_PAGES = 100  # 1000 connections of one app for one user: past that, something is wrong upstream
_ACTION_FIELDS = ("key", "title", "description", "action_type")
log = logging.getLogger("keysvc.zapier")


def poll_delay(polls: int, hint: float | None) -> float:
    """Seconds before the next poll of a run: 1, 2, 4, 8, 8, ... or longer when the partner says so."""
    backoff = min(FIRST_POLL * 2.0**polls, MAX_POLL)
    return max(backoff, hint or 0.0)


@dataclass(frozen=True)
class RunAnswer:
    """The answer about an action run: 200 when final, 202 while pending."""

    status_code: int
    body: dict[str, Any]
    delay: float | None = None  # pending: the partner's own hint, seconds before polling again


class ZapierGateway:
    """The flows of the embed gateway for one replica."""

    def __init__(
        self,
        exchanger: TokenExchanger,
        api: PartnerApi,
        states: StateCodec,
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_run: Callable[[str], None] = lambda status: None,
        registry: ConnectionRegistry | None = None,
        connect_theme: str | None = None,
        on_registry: Callable[[str, str], None] = lambda result, kind: None,
    ) -> None:
        self._registry: ConnectionRegistry = registry or MemoryRegistry(wall=wall)
        self._connect_theme = connect_theme  # token_exchange.connect_theme: a call's own `theme` wins
        self._on_registry = on_registry  # told each lookup of an omitted connection: hit, miss or expired
        self._exchanger = exchanger
        self._api = api
        self._states = states
        self._wall = wall
        self._clock = clock
        self._sleep = sleep
        self._on_run = on_run  # told the status each run answer ends with: success, error or pending

    def __repr__(self) -> str:
        return f"ZapierGateway({self._api!r})"

    # ------------------------------------------------------------------------ apps and connections

    async def apps(self, q: AppsQuery) -> dict[str, Any]:
        """One page of Zapier's app directory."""
        params = {k: str(v) for k, v in (("query", q.query), ("limit", q.limit), ("offset", q.offset)) if v is not None}
        with self._deadline():
            body = await self._with_token(q.user, lambda token: self._api.get("apps", "/v2/apps", token, params))
        apps = [item for item in _items(body) if isinstance(item.get("id"), str)]
        return {"apps": apps, "next_offset": _next_number(body, "offset")}

    async def connections(self, q: AppQuery) -> dict[str, Any]:
        """Every connection the user owns for the app, and one that is not expired (or None)."""
        with self._deadline():  # every page and every retry of this one listing
            connections = await self._with_token(q.user, lambda token: self._connections(token, q.app))
        usable = next((c for c in connections if not c["is_expired"]), None)
        if usable is not None:
            await self._remember(q.user, q.app, usable)
        return {"connections": connections, "usable": None if usable is None else usable["id"]}

    async def _remember(self, user: User, app: str, connection: dict[str, Any]) -> None:
        """Record a verified usable connection; best effort (the store failing must not fail the listing)."""
        try:
            await self._registry.record(user.tenant_id, user.user_id, app, connection["id"], connection["title"])
        except Unavailable:
            log.warning("the connection registry could not record a connection", extra={"app": app})

    async def _connections(self, token: str, app: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        params = {"app": app}
        for _ in range(MAX_PAGES):
            body = await self._api.get("authentications", "/v2/authentications", token, params)
            found.extend(c for item in _items(body) if (c := _connection(item, app)) is not None)
            offset = _next_number(body, "offset")
            if offset is None:
                return found
            # Only the offset of links.next is used: the bearer token goes to api_url, nowhere else.
            params = {"app": app, "offset": str(offset), **_next_limit(body)}
        raise UpstreamError(f"the Zapier Partner API listed more than {MAX_PAGES} pages of connections")

    # ---------------------------------------------------------------------------------- connect

    async def connect(self, client: str, b: ConnectBody) -> dict[str, Any]:
        """A Connect URL with a fresh connect token, and the state to complete the flow with."""
        u = b.user
        fields = _audit(client, u, b.app, outcome="ok", redirect=b.redirect_uri is not None,
                        reconnect=b.reconnect_id is not None)
        state = self._states.seal(u.user_id, u.tenant_id, b.app, b.redirect_uri, self._wall(),
                                  connect_app=b.connect_app)
        try:
            with self._deadline():
                token = await self._exchanger.connect_token(u.user_id, u.tenant_id, b.connect_app)
        except RequestError as exc:
            audit_request("zapier.connect", {**fields, "outcome": exc.code})
            raise
        url = connect_url(b.connect_app, token.access_token, b.redirect_uri, state, b.reconnect_id,
                          template=self._exchanger.settings.connect_url, theme=b.theme or self._connect_theme)
        expires_in = min(token.expires_in or self._states.ttl, self._states.ttl)
        audit_request("zapier.connect", fields)
        return {"connect_url": url, "state": state, "expires_in": expires_in}

    async def complete(self, client: str, b: CompleteBody,
                       allowed: Callable[[str], bool] = lambda app: True) -> dict[str, Any]:
        """Check the state (and that `allowed` the state's app for this client), then that the returned id
        is one of the user's live connections of that app."""
        u = b.user
        try:
            opened = self._states.check(b.state, self._wall(), u.user_id, u.tenant_id, b.redirect_uri)
            if not allowed(opened.app):
                raise Forbidden("this client may not use this app (clients.<name>.zapier.apps)")
        except RequestError as exc:
            audit_request("zapier.complete", _audit(client, u, None, outcome=exc.code, reason="state"))
            raise
        fields = _audit(client, u, opened.app, outcome="ok")
        try:
            if b.error is not None:
                code = b.error  # one of CONNECT_ERRORS (checked when parsed)
                said = oauth_text(b.error_description)
                raise PartnerError(400, code, f"the Connect flow ended with {code}" + (f": {said}" if said else ""))
            with self._deadline():
                connections = await self._with_token(u, lambda token: self._connections(token, opened.app))
            found = next((c for c in connections if c["id"] == b.authentication_id), None)
            if found is None or found["is_expired"]:
                raise Forbidden("authentication_id is not one of this user's live connections of this app")
            if not await self._registry.consume_state(b.state, opened.expires_at):
                raise InvalidRequest("this Connect state was completed already (a state is single-use)")
        except RequestError as exc:
            audit_request("zapier.complete", {**fields, "outcome": exc.code})
            raise
        await self._remember(u, opened.app, found)
        if opened.connect_app is not None:  # also by the app's key or slug: trigger inboxes name it so
            await self._remember(u, opened.connect_app, found)
        audit_request("zapier.complete", fields)
        return {"connection": found}

    # ---------------------------------------------------------------------------------- actions

    async def actions(self, q: ActionsQuery) -> dict[str, Any]:
        """The app's actions by stable key (Zapier's per-lookup ids stay here)."""
        with self._deadline():
            body = await self._with_token(q.user, lambda token: self._list_actions(token, q.app, q.action_type))
        items = (item for item in _items(body) if isinstance(item.get("key"), str))
        actions = [{k: item.get(k) for k in _ACTION_FIELDS} for item in items]
        return {"actions": actions}

    async def inputs(self, c: ActionCall) -> dict[str, Any]:
        """The input fields of an action, for these inputs so far."""
        c = await self._with_connection(c)

        async def step(token: str) -> dict[str, Any]:
            action_id = await self._fresh_id(token, c)
            path = f"/v2/actions/{quote(action_id, safe='')}/inputs"
            return await self._api.post("inputs", path, token, _action_body(c), retry=True)

        with self._deadline():
            return {"fields": _items(await self._refusing_reconnect(c, self._with_token(c.user, step)))}

    async def choices(self, q: ChoicesCall) -> dict[str, Any]:
        """One page of the choices of a dynamic input."""
        c = await self._with_connection(q.call)

        async def step(token: str) -> dict[str, Any]:
            action_id = await self._fresh_id(token, c)
            path = f"/v2/actions/{quote(action_id, safe='')}/inputs/{quote(q.input_id, safe='')}/choices"
            params = None if q.page is None else {"page": str(q.page)}
            return await self._api.post("choices", path, token, _action_body(c), retry=True, params=params)

        with self._deadline():
            body = await self._refusing_reconnect(c, self._with_token(c.user, step))
        return {"choices": _items(body), "next_page": _next_number(body, "page")}

    async def _with_connection(self, c: ActionCall) -> ActionCall:
        """`c` with the recorded connection when the caller omitted `connection` (409 connection_required
        when none is recorded, or the recorded one expired)."""
        if c.connection_given:
            return c
        found = await self._registry.usable(c.user.tenant_id, c.user.user_id, c.app)
        self._on_registry("hit" if found is not None else "miss", self._registry.kind)
        if found is None:
            raise ConnectionRequired("no usable connection of this user's is recorded for this app: pass "
                                     "`connection`, or complete Connect (or list /v1/zapier/connections) first")
        return dataclasses.replace(c, connection=found.connection_id, connection_given=True)

    async def _refusing_reconnect(self, c: ActionCall, call: Awaitable[T]) -> T:
        """`call`, and when Zapier refuses it for the connection: expire it, 409 reconnect_required."""
        try:
            return await call
        except PartnerAuthRefused:
            if c.connection is None:
                raise
            await self._expire(c)
            raise ReconnectRequired("Zapier refused the connection: reconnect it (open Connect with reconnect_id)",
                                    c.connection) from None

    async def _expire(self, c: ActionCall) -> None:
        assert c.connection is not None  # nosec B101 - callers check
        await self._registry.expire(c.user.tenant_id, c.user.user_id, c.app, c.connection)
        self._on_registry("expired", self._registry.kind)

    async def _list_actions(self, token: str, app: str, action_type: str | None) -> dict[str, Any]:
        params = {"app": app} if action_type is None else {"app": app, "action_type": action_type}
        return await self._api.get("actions", "/v2/actions", token, params)

    async def _fresh_id(self, token: str, c: ActionCall) -> str:
        """The id of the action for this one call: Zapier issues a new one per lookup, never reused."""
        for item in _items(await self._list_actions(token, c.app, c.action_type)):
            if item.get("key") == c.action and isinstance(item.get("id"), str) and item["id"]:
                return str(item["id"])
        raise NotFound(f"the app has no {c.action_type} action with this key")

    # --------------------------------------------------------------------------------------- runs

    async def run(self, client: str, b: RunBody) -> RunAnswer:
        """Create the run (once: never retried once it may have reached Zapier), then wait up to `wait`."""
        c = await self._with_connection(b.call)
        fields = _audit(client, c.user, c.app, outcome="pending", action=c.action, action_type=c.action_type)
        started = self._clock()

        async def create(token: str) -> dict[str, Any]:
            body = {"data": {"action": await self._fresh_id(token, c), "authentication": c.connection,
                             "inputs": c.inputs}}
            return await self._api.post("run_create", "/v2/action-runs", token, body, retry=False)

        try:
            with self._deadline():
                created = await self._refusing_reconnect(c, self._with_token(c.user, create))
            run_id = _data(created).get("id")
            if isinstance(run_id, int) and not isinstance(run_id, bool):
                run_id = str(run_id)
            if not isinstance(run_id, str) or not PARTNER_ID.matches(run_id):
                raise UpstreamError("the Zapier Partner API created a run without an id")
        except RequestError as exc:
            audit_request("zapier.run", {**fields, "outcome": exc.code})
            raise
        # From here on the run exists at Zapier: the caller gets its id whatever happens (202 at worst).
        if c.connection is not None:
            await self._remember_run(c, run_id)
        answer = await self._wait(c.user, run_id, started + b.wait, None)
        self._on_run(answer.body["status"])
        if c.connection is not None and _refused_authentication(answer):
            audit_request("zapier.run", {**fields, "run": answer.body["id"], "outcome": "reconnect_required"})
            await self._expire(c)
            raise ReconnectRequired("the run ended with an authentication error: reconnect the connection "
                                    "(open Connect with reconnect_id)", c.connection)
        audit_request("zapier.run", {**fields, "run": answer.body["id"], "outcome": answer.body["status"]})
        return answer

    async def run_status(self, q: RunQuery) -> RunAnswer:
        """Poll a run now, then with back-off up to `wait`. A run that ended with an authentication error and
        was created through keysvc with a known connection expires that connection: 409 reconnect_required,
        as `run` answers when it saw the end itself."""
        deadline = self._clock() + q.wait
        first = await self._poll(q.user, q.run_id)
        answer = first if first.status_code == 200 else await self._wait(q.user, q.run_id, deadline, first.delay)
        self._on_run(answer.body["status"])
        if _refused_authentication(answer):
            run = await self._remembered_run(q)
            if run is not None and await self._expired(run):
                raise ReconnectRequired("the run ended with an authentication error: reconnect the connection "
                                        "(open Connect with reconnect_id)", run.connection_id)
        return answer

    async def _remember_run(self, c: ActionCall, run_id: str) -> None:
        """Best effort: the run exists at Zapier, so a registry that fails must not fail the caller's request
        (the run's poll then cannot expire the connection; the run's own answer still says what happened)."""
        assert c.connection is not None  # nosec B101 - the caller checks
        try:
            await self._registry.remember_run(c.user.tenant_id, c.user.user_id, run_id, c.app, c.connection)
        except Unavailable:
            log.warning("gateway store unavailable: a created run's connection is not remembered",
                        extra={"run": run_id})

    async def _expired(self, run: RunRecord) -> bool:
        """Expire the run's connection; False when the store fails (the run's answer then goes back as is)."""
        try:
            await self._registry.expire(run.tenant_id, run.user_id, run.app, run.connection_id)
        except Unavailable:
            return False
        self._on_registry("expired", self._registry.kind)
        return True

    async def _remembered_run(self, q: RunQuery) -> RunRecord | None:
        """The connection the run was created with, or None (not created through keysvc, forgotten, or the
        store failing: the run's answer goes back as it is)."""
        try:
            return await self._registry.run(q.user.tenant_id, q.user.user_id, q.run_id)
        except Unavailable:
            return None

    async def _wait(self, user: User, run_id: str, deadline: float, hint: float | None) -> RunAnswer:
        pending = RunAnswer(202, {"id": run_id, "status": "pending"})
        polls = 0
        while (remaining := deadline - self._clock()) > 0:
            if hint is not None and hint > remaining:
                return pending  # the partner asked for more time than the caller gives
            await self._sleep(min(poll_delay(polls, hint), remaining))
            polls += 1
            try:
                answer = await self._poll(user, run_id)
            except Unavailable as exc:
                hint = float(exc.retry_after or 1)  # a 429 or 503: Retry-After, or give up within `wait`
                continue
            except RequestError:
                return pending  # the run exists: the caller polls again later, its id is not lost
            if answer.status_code == 200:
                return answer
            hint = answer.delay
        return pending

    async def _poll(self, user: User, run_id: str) -> RunAnswer:
        path = f"/v2/action-runs/{quote(run_id, safe='')}"
        with self._deadline():
            data = _data(await self._with_token(user, lambda token: self._api.get("run_get", path, token)))
        status, raw_errors = data.get("status"), data.get("errors")
        if not isinstance(status, str) or not (raw_errors is None or isinstance(raw_errors, list)):
            raise UpstreamError("the Zapier Partner API answered a run whose status or errors are malformed")
        errors = [_run_error(e) for e in (raw_errors or [])[:MAX_RUN_ERRORS] if isinstance(e, dict)]
        if status not in FINAL:
            delay = max((float(e["delay"]) for e in errors if "delay" in e), default=None)
            return RunAnswer(202, {"id": run_id, "status": "pending"}, delay)
        return RunAnswer(200, {"id": run_id, "status": status, "results": data.get("results"), "errors": errors})

    # ------------------------------------------------------------------------------------ tokens

    def _deadline(self) -> AbstractContextManager[None]:
        """One deadline (`total_timeout`) for everything one step of a caller's request sends to the partner."""
        return shared_deadline(self._exchanger.settings.total_timeout, self._clock)

    async def _with_token(self, user: User, step: Callable[[str], Awaitable[T]]) -> T:
        """Run `step` with the user's access token; after a 401, once more with a new token."""
        return await with_access_token(self._exchanger, user.user_id, user.tenant_id, step)


def _audit(client: str, user: User, app: str | None, **extra: Any) -> dict[str, Any]:
    return {"client": client, "user": user.user_id, "tenant": user.tenant_id, "app": app, **extra}


def _data(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    if not isinstance(data, dict):
        raise UpstreamError("the Zapier Partner API answered without a data object")
    return data


def _items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The objects of a list answer's `data` (anything else in it is dropped)."""
    data = body.get("data")
    if not isinstance(data, list):
        raise UpstreamError("the Zapier Partner API answered a list without a data array")
    return [item for item in data if isinstance(item, dict)]


def _next_params(body: dict[str, Any]) -> dict[str, list[str]]:
    """The query of the answer's links.next; a links.next that is not a URL of at most 2 KiB is a 502."""
    links = body.get("links")
    nxt = links.get("next") if isinstance(links, dict) else None
    if not isinstance(nxt, str) or not nxt:
        return {}
    try:
        if len(nxt) > MAX_LINK:
            raise ValueError("too long")
        return parse_qs(urlsplit(nxt).query, max_num_fields=32)
    except ValueError:  # urlsplit of "http://[::1/...", too many fields
        raise UpstreamError("the Zapier Partner API answered a links.next that is not a URL") from None


def _next_number(body: dict[str, Any], name: str) -> int | None:
    """`name` (offset, page) of the answer's links.next, or None on the last page; a number past
    MAX_OFFSET (or not a number) is a 502: the partner's paging is broken, no page of it is trusted."""
    values = _next_params(body).get(name)
    if not values:
        return None
    value = values[0]
    if not (value.isascii() and value.isdigit() and len(value) <= 9 and int(value) <= MAX_OFFSET):
        raise UpstreamError(f"the Zapier Partner API answered a links.next whose {name} is not a number "
                            f"from 0 to {MAX_OFFSET}")
    return int(value)


def _next_limit(body: dict[str, Any]) -> dict[str, str]:
    values = _next_params(body).get("limit")
    ok = values and values[0].isascii() and values[0].isdigit() and len(values[0]) <= 3
    return {"limit": values[0]} if values and ok else {}


def _connection(item: dict[str, Any], app: str) -> dict[str, Any] | None:
    """A connection as we answer it, or None when it is malformed or of another app."""
    cid, title, expired, owner = item.get("id"), item.get("title"), item.get("is_expired"), item.get("app")
    owner_id = owner.get("id") if isinstance(owner, dict) else owner
    if isinstance(owner_id, str) and is_uuid(owner_id) and owner_id.lower() != app:
        return None
    if not isinstance(cid, str | int) or isinstance(cid, bool) or not isinstance(expired, bool):
        return None
    return {"id": str(cid), "title": title if isinstance(title, str) else "", "is_expired": expired}


def _run_error(item: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = {k: oauth_text(item.get(k), 500) for k in ("code", "title", "detail")}
    delay = item.get("delay")
    if isinstance(delay, int | float) and not isinstance(delay, bool) and 0 <= delay <= 3600:
        error["delay"] = delay
    return error


def _refused_authentication(answer: RunAnswer) -> bool:
    """A final run whose errors include one of code `authentication` (the connection expired or revoked)."""
    errors = answer.body.get("errors") or []
    return answer.body["status"] == "error" and any(e.get("code") == "authentication" for e in errors)


def _action_body(c: ActionCall) -> dict[str, Any]:
    return {"data": {"authentication": c.connection, "inputs": c.inputs}}
