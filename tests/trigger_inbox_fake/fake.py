"""The Trigger Inbox fake: its control surface (seeding, behaviour, records) and its HTTP side (Starlette).

Every API request goes through `_serve`: its path, headers, query and body are checked against the
transcribed schemas (and mismatches recorded) whatever the answer; then the budget, the Bearer token, the
shapes' refusal, injected failures and the endpoint's handler, all under one lock (tests change the fake
from their own thread while uvicorn serves it from another). A background ticker returns the messages of
expired leases and notifications go out from their own thread, so no request waits on a receiver.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.published_shapes import Endpoint, LoggedRequest, ShapeChecks, User, Violation
from tests.trigger_inbox_fake import schemas
from tests.trigger_inbox_fake.model import (
    Failure,
    Inbox,
    Message,
    Notice,
    iso,
)

TITLES = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
          409: "Conflict", 415: "Unsupported Media Type", 429: "Too Many Requests", 500: "Server Error",
          502: "Bad Gateway", 503: "Service Unavailable"}
TokenCheck = Callable[[str], "User | None"]


def inbox_error(status: int, code: str, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    """The errors guide's body: `{"errors": [{code, detail, status, title}]}`."""
    item = {"code": code, "detail": detail, "status": status, "title": TITLES.get(status, "Error")}
    return JSONResponse({"errors": [item]}, status_code=status, headers=headers)


@dataclass
class Call:
    """One admitted request, as a handler sees it."""

    request: Request
    user: User
    query: dict[str, Any]
    body: Any
    now: float


@dataclass(frozen=True)
class Operation:
    """One endpoint: its shapes and its handler. `{id}`/`{inbox_id}` path members are UUIDs."""

    method: str
    path: str
    query: schemas.Schema
    body: schemas.Schema | None
    handler: Callable[[Call], Response]

    @property
    def name(self) -> str:
        """`METHOD /path/{template}`: the key of counts, log and violations."""
        return f"{self.method} {self.path}"


def _is_uuid(value: str) -> bool:
    try:
        return len(value) == 36 and str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


@dataclass
class TriggerInboxFake(ShapeChecks):
    """The fake Trigger Inbox API. See the package docstring for how to use it."""

    integer_parameters = schemas.INTEGER_PARAMETERS

    tokens: TokenCheck | None = None
    clock: Callable[[], float] = time.time
    base_path: str = "/trigger-inbox/v1"
    activation_delay: float = 0.0
    deletion_delay: float = 0.0
    page_size: int = 10
    per_minute: int | None = None
    notify_timeout: float = 2.0
    base_url: str = ""
    inboxes: dict[str, Inbox] = field(default_factory=dict)
    issued: dict[str, tuple[User, float]] = field(default_factory=dict)
    log: list[LoggedRequest] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notifications: list[Notice] = field(default_factory=list)
    failures: deque[Failure] = field(default_factory=deque)
    _window: deque[float] = field(default_factory=deque, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _outbox: queue.Queue[tuple[str, dict[str, Any]] | None] = field(default_factory=queue.Queue, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _expired: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._shapes = {}

    # --- URLs -------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The Trigger Inbox base (`token_exchange.trigger_inbox_url`)."""
        return self.base_url + self.base_path

    @property
    def control_url(self) -> str:
        """The test-only control endpoints' base (see the package docstring)."""
        return self.base_url + "/_control"

    # --- tokens -----------------------------------------------------------------------------------

    def issue_token(self, user: User, expires_in: float = 3600) -> str:
        """An access token for `user` that this fake accepts (when no `tokens` check was given)."""
        token = f"ti-{uuid.uuid4().hex}"
        with self._lock:
            self.issued[token] = (user, time.time() + expires_in)
        return token

    def expire_token(self, token: str) -> None:
        """`token` is expired from now on: requests with it answer 400 `unauthenticated`."""
        with self._lock:
            if token in self.issued:
                self.issued[token] = (self.issued[token][0], 0.0)
            self._expired.add(token)

    def _user_of(self, token: str) -> User | None:
        if token in self._expired:
            return None
        if self.tokens is not None:
            return self.tokens(token)
        entry = self.issued.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    # --- seeding and control ----------------------------------------------------------------------

    def inject(self, inbox_id: str, *payloads: Any) -> list[str]:
        """New messages in `inbox_id` (dropped, as Zapier does, unless the inbox is active); their ids.
        The inbox's notification_url, if any, is notified."""
        with self._lock:
            inbox = self.inboxes[inbox_id]
            self._refresh(inbox, self.clock())
            if inbox.status != "active":
                return []
            now = self.clock()
            new = [Message(str(uuid.uuid4()), p, now) for p in payloads]
            inbox.messages.extend(new)
            self._notify(inbox, len(new))
            return [m.id for m in new]

    def force_status(self, inbox_id: str, status: str, paused_reason: str | None = None) -> None:
        """Set an inbox's status (e.g. `paused` for `authentication`); it stays until changed again."""
        with self._lock:
            inbox = self.inboxes[inbox_id]
            inbox.status, inbox.paused_reason, inbox.activates_at = status, paused_reason, None

    def fail_next(self, status: int = 429, count: int = 1, *, code: str = "throttled",
                  retry_after: int | None = 60) -> None:
        """The next `count` API requests answer `status` (after validation, so they still count)."""
        with self._lock:
            self.failures.append(Failure(status, code, retry_after, count))

    def inbox_of(self, user: User, key: str) -> Inbox | None:
        """`user`'s inbox with `key`, if any."""
        with self._lock:
            return next((i for i in self.inboxes.values() if i.user == user and i.key == key), None)

    def pending(self, inbox_id: str) -> int:
        """Messages not yet acked (leased or not)."""
        with self._lock:
            return len(self.inboxes[inbox_id].messages)

    # --- records ----------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        """Requests per endpoint (`"PUT /inboxes"`), whatever they were answered."""
        with self._lock:
            return Counter(r.endpoint for r in self.log)

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Requests to `endpoint` (optionally only those answered `status`)."""
        with self._lock:
            return sum(1 for r in self.log if r.endpoint == endpoint and status in (None, r.status))

    # --- background: lease expiry and notifications -----------------------------------------------

    def start(self, tick: float = 0.05) -> None:
        """Start the expiry ticker and the notification sender (running_trigger_inbox does)."""
        self._stop.clear()
        self._threads = [threading.Thread(target=self._ticker, args=(tick,), daemon=True),
                         threading.Thread(target=self._sender, daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop both background threads."""
        self._stop.set()
        self._outbox.put(None)
        for t in self._threads:
            t.join(5)

    def tick(self) -> None:
        """Return the messages of expired leases now (the ticker does this every `tick` seconds)."""
        with self._lock:
            now = self.clock()
            for inbox in list(self.inboxes.values()):
                self._refresh(inbox, now)

    def _ticker(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.tick()

    def _sender(self) -> None:
        with httpx.Client(timeout=self.notify_timeout) as client:
            while True:
                item = self._outbox.get()
                if item is None:
                    return
                url, body = item
                try:
                    status: int | None = client.post(url, json=body).status_code
                except httpx.HTTPError:
                    status = None
                with self._lock:
                    self.notifications.append(Notice(url, body, status))

    def _notify(self, inbox: Inbox, count: int) -> None:
        if inbox.notification_url and count:
            body = {"inbox_id": inbox.id, "received_message_count": count, "redelivery": False}
            self._outbox.put((inbox.notification_url, body))

    def _refresh(self, inbox: Inbox, now: float) -> None:
        """Lazy state changes: activation, deletion, expired leases giving their messages back."""
        if inbox.status == "initializing" and inbox.activates_at is not None and now >= inbox.activates_at:
            inbox.status, inbox.activates_at = "active", None
        if inbox.deleted_at is not None and now >= inbox.deleted_at:
            self.inboxes.pop(inbox.id, None)
            return
        returned = 0
        for m in inbox.messages:
            if m.lease_id is not None and now >= m.leased_until:
                m.lease_id, returned = None, returned + 1
        self._notify(inbox, returned)

    # --- HTTP -------------------------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """The Trigger Inbox endpoints the fake serves (paths under `base_path`)."""
        s = schemas
        return [
            Operation("GET", "/inboxes", s.LIST_QUERY, None, self._list),
            Operation("POST", "/inboxes", s.NO_QUERY, s.CREATE_REQUEST, self._create),
            Operation("PUT", "/inboxes", s.NO_QUERY, s.ENSURE_REQUEST, self._ensure),
            Operation("GET", "/inboxes/{id}", s.NO_QUERY, None, self._get),
            Operation("PATCH", "/inboxes/{id}", s.NO_QUERY, s.PATCH_REQUEST, self._patch),
            Operation("DELETE", "/inboxes/{id}", s.NO_QUERY, None, self._delete),
            Operation("POST", "/inboxes/{id}/pause", s.NO_QUERY, None, self._pause),
            Operation("POST", "/inboxes/{id}/resume", s.NO_QUERY, None, self._resume),
            Operation("POST", "/inboxes/{inbox_id}/messages/lease", s.NO_QUERY, s.LEASE_REQUEST, self._lease),
            Operation("POST", "/inboxes/{inbox_id}/messages/ack", s.NO_QUERY, s.ACK_REQUEST, self._ack),
            Operation("POST", "/inboxes/{inbox_id}/messages/release", s.NO_QUERY, s.RELEASE_REQUEST, self._release),
        ]

    def routes(self) -> list[Route]:
        """The API routes under `base_path` and the control routes under `/_control`: mount them beside the
        Partner API fake's to serve both from one host, as api.zapier.com does."""
        grouped: dict[str, dict[str, Operation]] = {}
        for op in self.operations():
            grouped.setdefault(op.path, {})[op.method] = op
        api = [Route(self.base_path + path, self._endpoint(ops), methods=list(ops)) for path, ops in grouped.items()]
        control = [
            Route("/_control/inboxes/{id}/messages", self._c_inject, methods=["POST"]),
            Route("/_control/inboxes/{id}/status", self._c_status, methods=["POST"]),
            Route("/_control/tokens/expire", self._c_expire, methods=["POST"]),
            Route("/_control/fail", self._c_fail, methods=["POST"]),
            Route("/_control/state", self._c_state, methods=["GET"]),
        ]
        return [*api, *control]

    def app(self) -> Starlette:
        """One ASGI app of `routes()`; an unknown path or method is a 404/405 and a violation."""
        return Starlette(routes=self.routes(), exception_handlers={HTTPException: self._http_error})

    def _endpoint(self, ops: dict[str, Operation]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            op = ops[request.method]
            raw = await request.body()
            with self._lock:
                response, user, body, query = self._serve(op, request, raw)
                self.log.append(LoggedRequest(op.method, request.url.path, op.name, query, body,
                                              response.status_code, user))
            return response

        return endpoint

    def _serve(self, op: Operation, request: Request, raw: bytes) -> tuple[Response, User | None, Any, dict[str, Any]]:
        """Shapes (always checked and recorded, whatever the answer), then budget, token, the shapes' refusal,
        injected failures and the handler: (response, user, body, query) for the log."""
        now = self.clock()
        body: Any = raw.decode(errors="replace") if raw else None
        refused = self._check_path(op, request) or self._check_headers(op, request)
        query, bad_query = self._check_query(op, request)
        refused = refused or bad_query
        if op.body is not None:
            body, bad_body = self._check_body(op, request, raw)
            refused = refused or bad_body
        elif raw.strip():
            self._violation(op, "body", "this endpoint takes no body")
        throttled = self._budget(now)
        if throttled is not None:
            return throttled, None, body, query
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not header[7:]:
            self._violation(op, "header", "Authorization: Bearer <access token> is required")
            return inbox_error(401, "not_authenticated", "Authorization must be 'Bearer <token>'."), None, body, query
        user = self._user_of(header[7:])
        if user is None:
            return inbox_error(400, "unauthenticated", "Token has expired."), None, body, query
        if refused is not None:
            return refused, user, body, query
        injected = self._injected()
        if injected is not None:
            return injected, user, body, query
        for inbox in list(self.inboxes.values()):
            self._refresh(inbox, now)
        return op.handler(Call(request, user, query, body, now)), user, body, query

    def _budget(self, now: float) -> Response | None:
        if self.per_minute is None:
            return None
        while self._window and self._window[0] <= now - 60:
            self._window.popleft()
        if len(self._window) >= self.per_minute:
            retry = max(1, int(self._window[0] + 60 - now) + 1)
            return inbox_error(429, "throttled", "Request was throttled.", {"Retry-After": str(retry)})
        self._window.append(now)
        return None

    def _injected(self) -> Response | None:
        if not self.failures:
            return None
        failure = self.failures[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            self.failures.popleft()
        headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else None
        return inbox_error(failure.status, failure.code, "injected failure", headers)

    def _check_path(self, op: Operation, request: Request) -> Response | None:
        for name, value in request.path_params.items():
            if not _is_uuid(value):
                self._violation(op, "path", f"{name} must be a UUID")
                return inbox_error(404, "not_found", "Not found.")
        return None

    def _check_headers(self, op: Operation, request: Request) -> Response | None:
        for name in schemas.CAUSATION_HEADERS:
            value = request.headers.get(name)
            if value is not None and not _is_uuid(value):
                self._violation(op, "header", f"{name} must be a UUID")
                return inbox_error(400, "invalid", f"{name} must be a UUID.")
        return None

    def _error(self, status: int, code: str, detail: str) -> Response:
        return inbox_error(status, code, detail)

    def _check_query(self, op: Endpoint, request: Request) -> tuple[dict[str, Any], Response | None]:
        query, refused = super()._check_query(op, request)
        if "name" in query:
            self._violation(op, "query", "name is deprecated: use key")
        return query, refused

    def _check_body(self, op: Endpoint, request: Request, raw: bytes) -> tuple[Any, Response | None]:
        body, refused = super()._check_body(op, request, raw)
        if isinstance(body, dict) and "name" in body:
            self._violation(op, "body", "name is deprecated: use key")
        return body, refused

    # --- endpoint handlers (called under the lock, after every check above) ------------------------

    def _mine(self, call: Call, name: str = "id") -> Inbox | Response:
        inbox = self.inboxes.get(call.request.path_params[name])
        if inbox is None or inbox.user != call.user or inbox.status == "deleting":
            return inbox_error(404, "not_found", "No inbox with that id.")
        return inbox

    def _new(self, call: Call, key: str | None) -> Inbox:
        body = call.body
        subscription = {**body["subscription"]}
        subscription.setdefault("inputs", {})
        subscription.setdefault("connection_id", None)
        inbox = Inbox(str(uuid.uuid4()), call.user, key, subscription, body.get("notification_url"), call.now,
                      activates_at=call.now + self.activation_delay)
        self.inboxes[inbox.id] = inbox
        self._refresh(inbox, call.now)
        return inbox

    def _list(self, call: Call) -> Response:
        q = call.query
        found = [i for i in self.inboxes.values() if i.user == call.user]
        key = q.get("key", q.get("name"))
        if key is not None:
            found = [i for i in found if i.key == key]
        if "status" in q:
            found = [i for i in found if i.status == q["status"]]
        limit = min(max(q.get("limit", self.page_size), 1), 100)
        offset = max(q.get("offset", 0), 0)
        url = call.request.url
        nxt = str(url.include_query_params(limit=limit, offset=offset + limit)) if offset + limit < len(found) else None
        prev = str(url.include_query_params(limit=limit, offset=max(0, offset - limit))) if offset > 0 else None
        page = [i.as_json() for i in found[offset : offset + limit]]
        return JSONResponse({"count": len(found), "next": nxt, "previous": prev, "results": page})

    def _create(self, call: Call) -> Response:
        key = call.body.get("key") or call.body.get("name")
        if key is not None and any(i.user == call.user and i.key == key and i.status != "deleting"
                                   for i in self.inboxes.values()):
            return inbox_error(409, "conflict", "An inbox with that key already exists.")
        return JSONResponse(self._new(call, key).as_json(), status_code=201)

    def _ensure(self, call: Call) -> Response:
        key = call.body.get("key") or call.body["name"]
        existing = next((i for i in self.inboxes.values()
                         if i.user == call.user and i.key == key and i.status != "deleting"), None)
        if existing is None:
            return JSONResponse(self._new(call, key).as_json(), status_code=201)
        wanted = {"inputs": {}, "connection_id": None, **call.body["subscription"]}
        if wanted != existing.subscription:
            return inbox_error(409, "conflict", "An inbox with that key exists with a different subscription.")
        return JSONResponse(existing.as_json())

    def _get(self, call: Call) -> Response:
        inbox = self._mine(call)
        return inbox if isinstance(inbox, Response) else JSONResponse(inbox.as_json())

    def _patch(self, call: Call) -> Response:
        inbox = self._mine(call)
        if isinstance(inbox, Response):
            return inbox
        if "notification_url" in call.body:
            inbox.notification_url = call.body["notification_url"]
        return JSONResponse(inbox.as_json())

    def _delete(self, call: Call) -> Response:
        inbox = self._mine(call)
        if isinstance(inbox, Response):
            return inbox
        inbox.status, inbox.deleted_at = "deleting", call.now + self.deletion_delay
        self._refresh(inbox, call.now)
        return Response(status_code=204)

    def _pause(self, call: Call) -> Response:
        inbox = self._mine(call)
        if isinstance(inbox, Response):
            return inbox
        inbox.status, inbox.paused_reason, inbox.activates_at = "paused", "user", None
        return JSONResponse(inbox.as_json())

    def _resume(self, call: Call) -> Response:
        inbox = self._mine(call)
        if isinstance(inbox, Response):
            return inbox
        if inbox.status == "paused":
            inbox.status, inbox.paused_reason = "initializing", None
            inbox.activates_at = call.now + self.activation_delay
            self._refresh(inbox, call.now)
        return JSONResponse(inbox.as_json())

    def _lease(self, call: Call) -> Response:
        inbox = self._mine(call, "inbox_id")
        if isinstance(inbox, Response):
            return inbox
        attributes = {"status": inbox.status, "paused_reason": inbox.paused_reason}
        if inbox.status in ("paused", "initialization_failure") and not inbox.messages:
            return inbox_error(409, "inbox_paused", "The inbox is paused and has no messages left.")
        seconds = call.body.get("lease_seconds", 300)
        limit = call.body.get("lease_limit", 10)
        free = [m for m in inbox.messages if not m.held(call.now)][:limit]
        if inbox.status == "initializing" or not free:
            return JSONResponse({"lease_id": None, "leased_until": None, "results": [], "inbox_attributes": attributes})
        lease_id, until = str(uuid.uuid4()), call.now + seconds
        for m in free:
            m.lease_id, m.leased_until, m.lease_count = lease_id, until, m.lease_count + 1
        return JSONResponse({"lease_id": lease_id, "leased_until": iso(until),
                             "results": [m.as_json("leased") for m in free], "inbox_attributes": attributes})

    def _held(self, call: Call, inbox: Inbox) -> list[Message]:
        wanted = call.body.get("message_ids")
        return [m for m in inbox.messages if m.lease_id == call.body["lease_id"] and m.held(call.now)
                and (wanted is None or m.id in wanted)]

    def _ack(self, call: Call) -> Response:
        inbox = self._mine(call, "inbox_id")
        if isinstance(inbox, Response):
            return inbox
        done = self._held(call, inbox)
        inbox.messages = [m for m in inbox.messages if m not in done]
        return JSONResponse({"acked_id": call.body["lease_id"] if done else None,
                             "results": [m.as_json("acked") for m in done]})

    def _release(self, call: Call) -> Response:
        inbox = self._mine(call, "inbox_id")
        if isinstance(inbox, Response):
            return inbox
        done = self._held(call, inbox)
        for m in done:
            m.lease_id = None
        self._notify(inbox, len(done))
        return JSONResponse({"released_id": call.body["lease_id"] if done else None,
                             "results": [m.as_json("available") for m in done]})

    # --- control endpoints (test-only; neither logged nor validated as Zapier traffic) -------------

    async def _c_inject(self, request: Request) -> Response:
        body = await request.json()
        inbox_id = request.path_params["id"]
        if inbox_id not in self.inboxes:
            return JSONResponse({"error": "no such inbox"}, status_code=404)
        return JSONResponse({"message_ids": self.inject(inbox_id, *body.get("payloads", []))})

    async def _c_status(self, request: Request) -> Response:
        body = await request.json()
        inbox_id = request.path_params["id"]
        if inbox_id not in self.inboxes:
            return JSONResponse({"error": "no such inbox"}, status_code=404)
        self.force_status(inbox_id, body["status"], body.get("paused_reason"))
        return JSONResponse({"ok": True})

    async def _c_expire(self, request: Request) -> Response:
        self.expire_token((await request.json())["token"])
        return JSONResponse({"ok": True})

    async def _c_fail(self, request: Request) -> Response:
        body = await request.json()
        self.fail_next(body.get("status", 429), body.get("count", 1), code=body.get("code", "throttled"),
                       retry_after=body.get("retry_after", 60))
        return JSONResponse({"ok": True})

    async def _c_state(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse({
                "violations": [v.__dict__ for v in self.violations],
                "counts": dict(self.counts()),
                "inboxes": {i.id: {"key": i.key, "status": i.status, "pending": len(i.messages)}
                            for i in self.inboxes.values()},
                "notifications": len(self.notifications),
            })
