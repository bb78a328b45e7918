"""The Partner API fake: its control surface (seeding, behaviour, records) and its HTTP side (Starlette).

Every Partner API request goes through `_serve`: count it against the budget, check the Bearer token and
its scope, validate query and body against the transcribed schemas, then run the endpoint's handler under
one lock (tests change the fake from their own thread while uvicorn serves it from another).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.partner_server import ACCESS_TOKEN, Grant, PartnerServer, PartnerState
from tests.published_shapes import LoggedRequest, ShapeChecks, User, Violation
from tests.zapier_fake import schemas
from tests.zapier_fake.model import (
    Action,
    ActionIds,
    App,
    Budget,
    Connection,
    InputField,
    IssuedActionId,
    Run,
    RunBehaviour,
)

# The scopes keysvc asks for (all those the endpoints below require, plus `external`).
SCOPES = frozenset({"external", "connection:read", "connection:write", "zap", "zap:write", "action:run"})
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
}
NO_LINKS = {"next": None, "prev": None}


def zapier_error(
    status: int, code: str, detail: str, source: dict[str, str] | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    """The document's ErrorResponse: `{"errors": [{status, code, title, detail, source, meta}]}`."""
    item = {"status": status, "code": code, "title": TITLES[status], "detail": detail, "source": source, "meta": None}
    return JSONResponse({"errors": [item]}, status_code=status, headers=headers)


@dataclass
class Call:
    """One admitted request, as a handler sees it."""

    request: Request
    user: User
    query: dict[str, Any]
    body: Any


@dataclass(frozen=True)
class Operation:
    """One endpoint: its shapes, the OAuth scope the document requires, and its handler."""

    method: str
    path: str
    scope: str
    query: schemas.Schema
    body: schemas.Schema | None
    handler: Callable[[Call], Response]

    @property
    def name(self) -> str:
        """`METHOD /path/{template}`: the key of counts, log and violations."""
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class RawAnswer:
    """An answer sent as it is: status, headers, then the body in `chunks` (each `pause` seconds apart);
    `repeat` sends the chunks that many times (a huge body without holding it in memory)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    chunks: tuple[bytes, ...] = (b"{}",)
    repeat: int = 1
    pause: float = 0.0

    @classmethod
    def json(cls, body: Any, status: int = 200, **headers: str) -> RawAnswer:
        """A JSON body (any value; `raw` bytes pass through)."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return cls(status, (("content-type", "application/json"), *headers.items()), (data,))

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status,
                    "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers]})
        for _ in range(self.repeat):
            for chunk in self.chunks:
                if self.pause:
                    await asyncio.sleep(self.pause)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@dataclass
class ZapierFake(ShapeChecks):
    """The fake Partner API and Zapier's token endpoint. See the package docstring for how to use it."""

    integer_parameters = schemas.INTEGER_PARAMETERS

    partner: PartnerState
    clock: Callable[[], float] = time.monotonic
    budget: Budget = field(default_factory=Budget)
    run_behaviour: RunBehaviour = field(default_factory=RunBehaviour)
    next_runs: deque[RunBehaviour] = field(default_factory=deque)
    throttle_every: int = 0
    throttle_delay: int = 2
    choices_page_size: int = 10
    check_scopes: bool = True
    array_envelopes: bool = True
    base_url: str = ""
    apps: dict[str, App] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    runs: dict[str, Run] = field(default_factory=dict)
    action_ids: ActionIds = field(default_factory=ActionIds)
    log: list[LoggedRequest] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001), repr=False)
    _lookups: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _runs_created: int = field(default=0, repr=False)
    raw_next: deque[tuple[str, RawAnswer]] = field(default_factory=deque)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def serve_raw(self, endpoint: str, answer: RawAnswer, times: int = 1) -> None:
        """Answer the next `times` requests to `endpoint` ("POST /oauth/token", "GET /v2/authentications",
        a path prefix) with `answer` as it is, before any check (a hostile partner's answer)."""
        with self._lock:
            self.raw_next.extend((endpoint, answer) for _ in range(times))

    def _take_raw(self, method: str, path: str) -> RawAnswer | None:
        with self._lock:
            for i, (endpoint, answer) in enumerate(self.raw_next):
                want_method, _, want_path = endpoint.partition(" ")
                if method == want_method and path.startswith(want_path):
                    del self.raw_next[i]
                    return answer
        return None

    def __post_init__(self) -> None:
        self.token_server = PartnerServer(self.partner)
        self._shapes = {}

    # --- URLs -------------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The Partner API base (`token_exchange.api_url`)."""
        return self.base_url

    @property
    def token_url(self) -> str:
        """The token endpoint (`token_exchange.token_url`)."""
        return f"{self.base_url}/oauth/token"

    def trust(self, jwks_url: str, issuer: str) -> None:
        """Verify partner JWTs from `issuer` against the JWKS at `jwks_url` (e.g. once keysvc has started)."""
        self.token_server.trust(jwks_url, issuer)

    # --- seeding ----------------------------------------------------------------------------------

    def add_app(self, title: str, slug: str | None = None, *, needs_auth: bool = True, **kw: Any) -> App:
        """A new app with a fresh canonical UUID; `slug` (default: title without spaces) is its Connect path."""
        app = App(str(uuid.uuid4()), title, slug or title.replace(" ", ""), needs_auth, **kw)
        with self._lock:
            self.apps[app.id] = app
        return app

    def add_action(
        self, app: App, key: str, title: str = "", action_type: str = "WRITE", fields: list[InputField] | None = None
    ) -> Action:
        """A new action of `app` with stable `key`."""
        action = Action(app.id, key, title or key, action_type, f"{title or key} in {app.title}", fields or [])
        with self._lock:
            self.actions.append(action)
        return action

    def add_connection(self, user: User, app: App, title: str | None = None, *, expired: bool = False) -> Connection:
        """A connection of `user` to `app`, with a fresh numeric id (as Zapier's Connect hands back)."""
        with self._lock:
            conn = Connection(
                str(next(self._ids)), user, app.id, title or f"{app.title} #{len(self.connections)}", expired
            )
            self.connections.append(conn)
        return conn

    def add_connections(self, user: User, app: App, count: int, *, expired_every: int = 0) -> list[Connection]:
        """`count` connections; with `expired_every=k`, every k-th (1-based) is expired."""
        return [
            self.add_connection(user, app, expired=bool(expired_every) and (i + 1) % expired_every == 0)
            for i in range(count)
        ]

    def connect(self, user: User, app: App, *, reconnect_id: str | None = None, title: str | None = None) -> str:
        """The user completes Connect for `app`: a new connection (or `reconnect_id` renewed); its id."""
        with self._lock:
            if reconnect_id is not None:
                conn = next(c for c in self.connections if c.id == reconnect_id and c.user == user)
                conn.is_expired = False
                return conn.id
        return self.add_connection(user, app, title).id

    def access_token(self, user: User, scope: str = " ".join(sorted(SCOPES)), expires_in: float = 3600) -> str:
        """An access token for `user`, as if the token endpoint had issued it (for tests of the fake)."""
        token = f"at-direct-{next(self._ids)}"
        grant = Grant(user[0], user[1], scope, ACCESS_TOKEN, time.time() + expires_in)
        with self._lock:
            self.partner.issued[token] = grant
        return token

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is expired from now on (the Partner API answers 401)."""
        with self._lock:
            for token, grant in list(self.partner.issued.items()):
                self.partner.issued[token] = replace(grant, expires_at=0.0)

    def queue_runs(self, *behaviours: RunBehaviour) -> None:
        """The next runs created behave like these, in order; later ones like `run_behaviour`."""
        with self._lock:
            self.next_runs.extend(behaviours)

    # --- records ----------------------------------------------------------------------------------

    def counts(self) -> Counter[str]:
        """Requests per endpoint (`"GET /v2/authentications"`), whatever they were answered."""
        with self._lock:
            return Counter(r.endpoint for r in self.log)

    def count(self, endpoint: str, status: int | None = None) -> int:
        """Requests to `endpoint` (optionally only those answered `status`)."""
        with self._lock:
            return sum(1 for r in self.log if r.endpoint == endpoint and status in (None, r.status))

    def connections_of(self, user: User, app: App) -> list[Connection]:
        """`user`'s connections of `app`, in creation order."""
        with self._lock:
            return [c for c in self.connections if c.user == user and c.app_id == app.id]

    # --- HTTP -------------------------------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """The Partner API endpoints the fake serves."""
        return [
            Operation("GET", "/v2/apps", "zap", schemas.APPS_QUERY, None, self._apps),
            Operation(
                "GET", "/v2/authentications", "connection:read", schemas.AUTHENTICATIONS_QUERY, None, self._auths
            ),
            Operation("GET", "/v2/actions", "zap", schemas.ACTIONS_QUERY, None, self._actions),
            Operation(
                "POST",
                "/v2/actions/{action_id}/inputs",
                "zap:write",
                schemas.NO_QUERY,
                schemas.LIST_INPUT_FIELDS_REQUEST,
                self._inputs,
            ),
            Operation(
                "POST",
                "/v2/actions/{action_id}/inputs/{input_id}/choices",
                "zap",
                schemas.CHOICES_QUERY,
                schemas.CHOICE_REQUEST,
                self._choices,
            ),
            Operation("POST", "/v2/action-runs", "action:run", schemas.NO_QUERY, schemas.RUN_ACTION_REQUEST, self._run),
            Operation("GET", "/v2/action-runs/{id}", "action:run", schemas.NO_QUERY, None, self._run_status),
        ]

    def app(self) -> Starlette:
        """One ASGI app: POST /oauth/token (tests/partner_server.py) and the Partner API under /v2."""
        routes = [Route("/oauth/token", self.token_server.token, methods=["POST"])]
        for op in self.operations():
            routes.append(Route(op.path, self._endpoint(op), methods=[op.method]))
        inner = Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            raw = self._take_raw(scope["method"], scope["path"]) if scope["type"] == "http" else None
            if raw is None:
                await inner(scope, receive, send)
            else:
                await raw.send(send)

        return app  # type: ignore[return-value]

    def _endpoint(self, op: Operation) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            with self._lock:
                response, user, body = self._serve(op, request, raw)
                query = dict(request.query_params)
                self.log.append(
                    LoggedRequest(op.method, request.url.path, op.name, query, body, response.status_code, user)
                )
            return response

        return endpoint

    def _serve(self, op: Operation, request: Request, raw: bytes) -> tuple[Response, User | None, Any]:
        """Budget, token, scope, shapes, then the handler: (response, user, parsed body for the log)."""
        body: Any = raw.decode(errors="replace") if raw else None
        ip = request.client.host if request.client else "?"
        retry_after = self.budget.admit(ip, self.clock())
        if retry_after is not None:
            return (
                zapier_error(429, "throttled", "Request was throttled.", headers={"Retry-After": str(retry_after)}),
                None,
                body,
            )
        user = self._authenticate(op, request)
        if isinstance(user, Response):
            return user, None, body
        if self.check_scopes and op.scope not in self._grant(request).scope.split():
            return zapier_error(403, "permission_denied", f"the token lacks the {op.scope} scope"), user, body
        query, refused = self._check_query(op, request)
        if refused is not None:
            return refused, user, body
        if op.body is not None:
            body, refused = self._check_body(op, request, raw)
            if refused is not None:
                return refused, user, body
        return op.handler(Call(request, user, query, body)), user, body

    def _grant(self, request: Request) -> Grant:
        return self.partner.issued[request.headers["authorization"][len("Bearer ") :]]

    def _authenticate(self, op: Operation, request: Request) -> User | Response:
        header = request.headers.get("authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if header is None or not header.startswith("Bearer ") or not header[7:]:
            self._violation(op, "header", "Authorization: Bearer <access token> is required")
            return zapier_error(
                401, "not_authenticated", "Authentication credentials were not provided.", headers=challenge
            )
        grant = self.partner.issued.get(header[7:])
        if grant is None or grant.token_type != ACCESS_TOKEN or grant.expires_at <= time.time():
            return zapier_error(401, "authentication_failed", "Invalid or expired token.", headers=challenge)
        return (grant.sub, grant.tenant)

    def _error(self, status: int, code: str, detail: str) -> Response:
        return zapier_error(status, code, detail)

    def _invalid(self, where: str, problems: list[str]) -> Response:
        """The document's 400 names the first bad member: `source.parameter` or `source.pointer`."""
        member = problems[0].split(":")[0]
        if where == "body":
            return zapier_error(400, "invalid", "; ".join(problems), {"pointer": member})
        name = member.lstrip("/")
        return zapier_error(400, "invalid", "; ".join(problems), {"parameter": name} if name else None)

    # --- endpoint handlers (called under the lock, after every check above) ------------------------

    def _page_links(self, call: Call, offset: int, limit: int, count: int) -> dict[str, str | None]:
        url = call.request.url
        nxt = str(url.include_query_params(limit=limit, offset=offset + limit)) if offset + limit < count else None
        prev = str(url.include_query_params(limit=limit, offset=max(0, offset - limit))) if offset > 0 else None
        return {"next": nxt, "prev": prev}

    def _apps(self, call: Call) -> Response:
        q = call.query
        found = list(self.apps.values())
        if "query" in q:
            found = [a for a in found if q["query"].lower() in a.title.lower()]
        if "ids" in q:
            found = [a for a in found if a.id in q["ids"].split(",")]
        if "category" in q:
            found = [a for a in found if q["category"] in a.categories]
        limit, offset = q.get("limit", 10), q.get("offset", 0)
        page = {
            "data": [a.as_json() for a in found[offset : offset + limit]],
            "links": self._page_links(call, offset, limit, len(found)),
            "meta": {"count": len(found), "limit": limit, "offset": offset},
        }
        return self._envelope(page)

    def _envelope(self, page: dict[str, Any]) -> Response:
        """A list answer the document types as `[{links, meta, data}]`; bare with `array_envelopes=False`."""
        return JSONResponse([page] if self.array_envelopes else page)

    def _known_app(self, app_id: str) -> App | Response:
        app = self.apps.get(app_id)
        return app if app is not None else zapier_error(400, "invalid", "unknown app", {"parameter": "app"})

    def _auths(self, call: Call) -> Response:
        app = self._known_app(call.query["app"])
        if isinstance(app, Response):
            return app
        mine = [c for c in self.connections if c.user == call.user and c.app_id == app.id]
        limit, offset = call.query.get("limit", 10), call.query.get("offset", 0)
        data = [
            {
                "type": "authentication",
                "id": c.id,
                # every other connection comes with its app expanded, as the document allows
                "app": app.as_json() if i % 2 else app.id,
                "is_expired": c.is_expired,
                "title": c.title,
            }
            for i, c in enumerate(mine[offset : offset + limit], start=offset)
        ]
        links = self._page_links(call, offset, limit, len(mine))
        return JSONResponse(
            {"links": links, "meta": {"count": len(mine), "limit": limit, "offset": offset}, "data": data}
        )

    def _actions(self, call: Call) -> Response:
        app = self._known_app(call.query["app"])
        if isinstance(app, Response):
            return app
        wanted = call.query.get("action_type")
        found = [a for a in self.actions if a.app_id == app.id and wanted in (None, a.action_type)]
        lookup, now = next(self._lookups), self.clock()
        data = []
        for a in found:
            action_id = f"core:{uuid.uuid4().hex}"
            self.action_ids.issue(action_id, IssuedActionId(call.user, app.id, a.key, lookup, now))
            data.append(
                {
                    "id": action_id,
                    "key": a.key,
                    "app": app.id,
                    "type": "action",
                    "action_type": a.action_type,
                    "is_instant": False,
                    "title": a.title,
                    "description": a.description,
                }
            )
        if not found:  # a lookup that found nothing still supersedes earlier ids
            self.action_ids.latest[(call.user, app.id)] = lookup
        meta = {"count": len(data), "limit": None, "offset": 0}
        return self._envelope({"links": NO_LINKS, "meta": meta, "data": data})

    def _fresh_action(self, call: Call, action_id: str, source: dict[str, str]) -> Action | Response:
        entry = self.action_ids.check(action_id, call.user, self.clock())
        if isinstance(entry, str):
            return zapier_error(400, "invalid", entry, source)
        return next(a for a in self.actions if a.app_id == entry.app_id and a.key == entry.key)

    def _connection_problem(self, call: Call, action: Action, auth_id: str | None, *, expired_ok: bool) -> str | None:
        if auth_id is None:
            return "this app needs an authentication" if self.apps[action.app_id].needs_auth else None
        conn = next((c for c in self.connections if c.id == auth_id), None)
        if conn is None or conn.user != call.user or conn.app_id != action.app_id:
            return "not one of your authentications of this app"
        if conn.is_expired and not expired_ok:
            return "the authentication has expired: reconnect it"
        return None

    def _inputs(self, call: Call) -> Response:
        action = self._fresh_action(call, call.request.path_params["action_id"], {"parameter": "action_id"})
        if isinstance(action, Response):
            return action
        problem = self._connection_problem(call, action, call.body["data"]["authentication"], expired_ok=False)
        if problem:
            return zapier_error(400, "invalid", problem, {"pointer": "/data/authentication"})
        fields = [f.as_json() for f in action.fields]
        return JSONResponse(
            {"data": fields, "links": NO_LINKS, "meta": {"count": len(fields), "limit": None, "offset": 0}}
        )

    def _choices(self, call: Call) -> Response:
        action = self._fresh_action(call, call.request.path_params["action_id"], {"parameter": "action_id"})
        if isinstance(action, Response):
            return action
        input_field = action.field(call.request.path_params["input_id"])
        if input_field is None or input_field.choices is None:
            return zapier_error(400, "invalid", "no choices for this input", {"parameter": "input_id"})
        problem = self._connection_problem(call, action, call.body["data"]["authentication"], expired_ok=False)
        if problem:
            return zapier_error(400, "invalid", problem, {"pointer": "/data/authentication"})
        page, size = int(call.query.get("page", "1")), self.choices_page_size
        chunk = input_field.choices[(page - 1) * size : page * size]
        data = [{"id": value, "type": "choice", "label": label, "value": value} for value, label in chunk]
        more = page * size < len(input_field.choices)
        url = call.request.url
        links = {
            "next": str(url.include_query_params(page=str(page + 1))) if more else None,
            "prev": str(url.include_query_params(page=str(page - 1))) if page > 1 else None,
        }
        return self._envelope({"data": data, "links": links, "meta": {"page": page}})

    def _run(self, call: Call) -> Response:
        data = call.body["data"]
        action = self._fresh_action(call, data["action"], {"pointer": "/data/action"})
        if isinstance(action, Response):
            return action
        problem = self._connection_problem(call, action, data["authentication"], expired_ok=True)
        if problem:
            return zapier_error(400, "invalid", problem, {"pointer": "/data/authentication"})
        run = Run(str(uuid.uuid4()), call.user, action.key, data["inputs"], self._behaviour(action, data))
        self.runs[run.id] = run
        return JSONResponse({"data": {"type": "run", "id": run.id}})

    def _behaviour(self, action: Action, data: dict[str, Any]) -> RunBehaviour:
        self._runs_created += 1
        conn = next((c for c in self.connections if c.id == data["authentication"]), None)
        if conn is not None and conn.is_expired:
            item = {"code": "authentication", "title": "Authentication expired", "detail": "reconnect the app"}
            return RunBehaviour(pending_polls=1, outcome="error", errors=[item])
        missing = [f.id for f in action.fields if f.is_required and f.id not in data["inputs"]]
        if missing:
            item = {"code": "user", "title": "Missing required fields", "detail": ", ".join(missing)}
            return RunBehaviour(pending_polls=1, outcome="error", errors=[item])
        if self.next_runs:
            return self.next_runs.popleft()
        if self.throttle_every and self._runs_created % self.throttle_every == 0:
            return RunBehaviour.throttled(self.throttle_delay)
        return self.run_behaviour

    def _run_status(self, call: Call) -> Response:
        run = self.runs.get(call.request.path_params["id"])
        if run is None or run.user != call.user:
            return zapier_error(404, "not_found", "no such action run", {"parameter": "id"})
        return JSONResponse({"data": run.poll()})
