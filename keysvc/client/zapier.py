"""`ZapierClient` (async) and `SyncZapierClient`: what an internal service uses to drive the embed gateway
over keysvc's internal listener with nothing but its keysvc API key. The user's Zapier access token stays
inside keysvc; these clients never see it.

    async with ZapierClient("http://keysvc.internal:8081", api_key) as zapier:
        found = await zapier.connections("u-1", "t-9", app)
        if found["usable"] is None:
            started = await zapier.connect("u-1", "t-9", app, redirect_uri=CALLBACK)
            ...  # the browser opens started["connect_url"]; the callback brings authentication_id
            await zapier.complete("u-1", "t-9", started["state"], authentication_id=returned_id)
        run = await zapier.run("u-1", "t-9", app, "send_message", "WRITE", connection, {"channel": "C1"}, wait=20)

`connection` may be RECORDED (inputs, choices, runs): keysvc then uses the user's connection it recorded for
the app (ConnectionRequired when none; ReconnectRequired, with `.connection`, when Zapier refused it).
keysvc's errors come back as the same keysvc.errors classes (with the answer's `error` code). Imports only
httpx and keysvc.errors, so a service can use it without keysvc's server stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from keysvc.errors import (
    Conflict,
    ConnectionRequired,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ReconnectRequired,
    RequestError,
    Unavailable,
    UpstreamError,
)

_ERRORS: dict[int, type[RequestError]] = {
    400: InvalidRequest, 403: Forbidden, 404: NotFound, 409: Conflict, 429: RateLimited, 502: UpstreamError,
    503: Unavailable,
}  # fmt: skip
DEFAULT_TIMEOUT = 90.0  # above the longest `wait` keysvc allows by default (run_wait_max 60 s)


@dataclass(frozen=True)
class Call:
    """One request to the gateway: method, path, query or JSON body."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = field(default=None)


def _user(user_id: str, tenant_id: str) -> dict[str, str]:
    return {"user_id": user_id, "tenant_id": tenant_id}


def _given(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


class Recorded:
    """`connection=RECORDED`: omit `connection`, so keysvc uses the one it recorded for (tenant, user, app)."""

    def __repr__(self) -> str:
        return "RECORDED"


RECORDED = Recorded()
ConnectionArg = str | None | Recorded  # a connection id, None (an app without auth), or RECORDED


def _connection(connection: ConnectionArg) -> dict[str, Any]:
    return {} if isinstance(connection, Recorded) else {"connection": connection}


class Calls:
    """The gateway's routes as `Call`s (shared by the async and the sync client)."""

    @staticmethod
    def apps(user_id: str, tenant_id: str, query: str | None = None, limit: int | None = None,
             offset: int | None = None) -> Call:
        extra = {k: str(v) for k, v in _given(query=query, limit=limit, offset=offset).items()}
        return Call("GET", "/v1/zapier/apps", params={**_user(user_id, tenant_id), **extra})

    @staticmethod
    def connections(user_id: str, tenant_id: str, app: str) -> Call:
        return Call("GET", "/v1/zapier/connections", params={**_user(user_id, tenant_id), "app": app})

    @staticmethod
    def connect(user_id: str, tenant_id: str, app: str, connect_app: str | None = None,
                redirect_uri: str | None = None, reconnect_id: str | None = None) -> Call:
        body = _given(connect_app=connect_app, redirect_uri=redirect_uri, reconnect_id=reconnect_id)
        return Call("POST", "/v1/zapier/connect", json={**_user(user_id, tenant_id), "app": app, **body})

    @staticmethod
    def complete(user_id: str, tenant_id: str, state: str, authentication_id: str | None = None,
                 error: str | None = None, error_description: str | None = None) -> Call:
        body = _given(authentication_id=authentication_id, error=error, error_description=error_description)
        return Call("POST", "/v1/zapier/connect/complete", json={**_user(user_id, tenant_id), "state": state, **body})

    @staticmethod
    def actions(user_id: str, tenant_id: str, app: str, action_type: str | None = None) -> Call:
        params = {**_user(user_id, tenant_id), "app": app, **_given(action_type=action_type)}
        return Call("GET", "/v1/zapier/actions", params=params)

    @staticmethod
    def inputs(user_id: str, tenant_id: str, app: str, action: str, action_type: str, connection: ConnectionArg,
               inputs: Mapping[str, Any] | None = None) -> Call:
        body = {**_user(user_id, tenant_id), "app": app, "action_type": action_type, **_connection(connection),
                "inputs": dict(inputs or {})}
        return Call("POST", f"/v1/zapier/actions/{quote(action, safe='')}/inputs", json=body)

    @staticmethod
    def choices(user_id: str, tenant_id: str, app: str, action: str, action_type: str, connection: ConnectionArg,
                input_id: str, inputs: Mapping[str, Any] | None = None, page: int | None = None) -> Call:
        body = {**_user(user_id, tenant_id), "app": app, "action_type": action_type, **_connection(connection),
                "inputs": dict(inputs or {}), **_given(page=page)}
        path = f"/v1/zapier/actions/{quote(action, safe='')}/inputs/{quote(input_id, safe='')}/choices"
        return Call("POST", path, json=body)

    @staticmethod
    def run(user_id: str, tenant_id: str, app: str, action: str, action_type: str, connection: ConnectionArg,
            inputs: Mapping[str, Any] | None = None, wait: float | None = None) -> Call:
        body = {**_user(user_id, tenant_id), "app": app, "action": action, "action_type": action_type,
                **_connection(connection), "inputs": dict(inputs or {}), **_given(wait=wait)}
        return Call("POST", "/v1/zapier/action-runs", json=body)

    @staticmethod
    def run_status(user_id: str, tenant_id: str, run_id: str, wait: float | None = None) -> Call:
        params = {**_user(user_id, tenant_id), **{k: str(v) for k, v in _given(wait=wait).items()}}
        return Call("GET", f"/v1/zapier/action-runs/{quote(run_id, safe='')}", params=params)

    # trigger inboxes: `inbox` is the key on ensure, Zapier's inbox id everywhere else
    @staticmethod
    def ensure_inbox(user_id: str, tenant_id: str, key: str, app: str, trigger: str, connection: str | None = None,
                     inputs: Mapping[str, Any] | None = None, wait: float | None = None) -> Call:
        body = {**_user(user_id, tenant_id), "app": app, "trigger": trigger, "connection": connection,
                "inputs": dict(inputs or {}), **_given(wait=wait)}
        return Call("PUT", _inbox(key), json=body)

    @staticmethod
    def inboxes(user_id: str, tenant_id: str, status: str | None = None) -> Call:
        return Call("GET", "/v1/zapier/trigger-inboxes", params={**_user(user_id, tenant_id), **_given(status=status)})

    @staticmethod
    def inbox(user_id: str, tenant_id: str, inbox_id: str) -> Call:
        return Call("GET", _inbox(inbox_id), params=_user(user_id, tenant_id))

    @staticmethod
    def delete_inbox(user_id: str, tenant_id: str, inbox_id: str) -> Call:
        return Call("DELETE", _inbox(inbox_id), params=_user(user_id, tenant_id))

    @staticmethod
    def switch_inbox(user_id: str, tenant_id: str, inbox_id: str, verb: str) -> Call:
        return Call("POST", _inbox(inbox_id, verb), json=_user(user_id, tenant_id))

    @staticmethod
    def lease(user_id: str, tenant_id: str, inbox_id: str, limit: int | None = None, lease: float | None = None,
              wait: float | None = None) -> Call:
        body = {**_user(user_id, tenant_id), **_given(limit=limit, lease=lease, wait=wait)}
        return Call("POST", _inbox(inbox_id, "lease"), json=body)

    @staticmethod
    def settle(user_id: str, tenant_id: str, inbox_id: str, verb: str, lease_id: str,
               message_ids: list[str] | None = None) -> Call:
        body = {**_user(user_id, tenant_id), "lease_id": lease_id, **_given(message_ids=message_ids)}
        return Call("POST", _inbox(inbox_id, verb), json=body)


def _inbox(inbox: str, verb: str | None = None) -> str:
    path = f"/v1/zapier/trigger-inboxes/{quote(inbox, safe='')}"
    return path if verb is None else f"{path}/{verb}"


def read_answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON answer of a 200 or 202 (`{}` for a 204); any other status raises the keysvc error it carries."""
    if response.status_code == 204:
        return {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code in (200, 202) and isinstance(body, dict):
        return body
    said = body if isinstance(body, dict) else {}
    text = str(said.get("error_description") or f"HTTP {response.status_code}")[:300]
    if response.status_code == 401:
        raise UpstreamError("keysvc rejected this service's API key (invalid_client); check its configuration")
    error_class = _ERRORS.get(response.status_code, UpstreamError)
    retry_after = response.headers.get("Retry-After", "")
    error = error_class(text, retry_after=int(retry_after) if retry_after.isdigit() else None)
    code = said.get("error")
    connection = said.get("connection")
    if response.status_code == 409 and code == "reconnect_required" and isinstance(connection, str):
        raise ReconnectRequired(text, connection[:128])  # `.connection`: open Connect with reconnect_id
    if response.status_code == 409 and code == "connection_required":
        raise ConnectionRequired(text)
    if isinstance(code, str) and code.isascii() and 0 < len(code) <= 64:
        error.code = code  # the answer's own code, e.g. access_denied from the Connect flow
    raise error


class _Base:
    def __init__(self, base_url: str, api_key: str) -> None:
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._base!r})"


class ZapierClient(_Base):
    """The gateway over HTTP, async (httpx.AsyncClient)."""

    def __init__(self, base_url: str, api_key: str, *, client: httpx.AsyncClient | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(base_url, api_key)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(timeout=timeout)

    async def send(self, call: Call) -> dict[str, Any]:
        """Send one call; keysvc unreachable is Unavailable."""
        try:
            response = await self._client.request(call.method, self._base + call.path, params=call.params,
                                                  json=call.json, headers=self._headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"keysvc {self._base} unreachable ({type(exc).__name__})", retry_after=1) from None
        return read_answer(response)

    async def apps(self, user_id: str, tenant_id: str, **kw: Any) -> dict[str, Any]:
        """One page of Zapier's apps (`query`, `limit`, `offset`)."""
        return await self.send(Calls.apps(user_id, tenant_id, **kw))

    async def connections(self, user_id: str, tenant_id: str, app: str) -> dict[str, Any]:
        """The user's connections of `app` and a `usable` one (or None)."""
        return await self.send(Calls.connections(user_id, tenant_id, app))

    async def connect(self, user_id: str, tenant_id: str, app: str, **kw: Any) -> dict[str, Any]:
        """A Connect URL and its state (`connect_app`, `redirect_uri`, `reconnect_id`)."""
        return await self.send(Calls.connect(user_id, tenant_id, app, **kw))

    async def complete(self, user_id: str, tenant_id: str, state: str, **kw: Any) -> dict[str, Any]:
        """Finish the Connect flow (`authentication_id`, or `error` and `error_description`)."""
        return await self.send(Calls.complete(user_id, tenant_id, state, **kw))

    async def actions(self, user_id: str, tenant_id: str, app: str, action_type: str | None = None) -> dict[str, Any]:
        """The app's actions by stable key."""
        return await self.send(Calls.actions(user_id, tenant_id, app, action_type))

    async def inputs(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
                     connection: ConnectionArg, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """An action's input fields."""
        return await self.send(Calls.inputs(user_id, tenant_id, app, action, action_type, connection, inputs))

    async def choices(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
                      connection: ConnectionArg, input_id: str, **kw: Any) -> dict[str, Any]:
        """One page of a dynamic input's choices (`inputs`, `page`)."""
        return await self.send(Calls.choices(user_id, tenant_id, app, action, action_type, connection, input_id,
                                             **kw))

    async def run(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
                  connection: ConnectionArg, inputs: Mapping[str, Any] | None = None, *,
                  wait: float | None = None) -> dict[str, Any]:
        """Run an action; the result if it ends within `wait` seconds, else `{"id", "status": "pending"}`."""
        return await self.send(Calls.run(user_id, tenant_id, app, action, action_type, connection, inputs, wait))

    async def run_status(self, user_id: str, tenant_id: str, run_id: str, *,
                         wait: float | None = None) -> dict[str, Any]:
        """A run's status, waiting up to `wait` seconds for it to end."""
        return await self.send(Calls.run_status(user_id, tenant_id, run_id, wait))

    async def ensure_inbox(self, user_id: str, tenant_id: str, key: str, app: str, trigger: str,
                           connection: str | None = None, inputs: Mapping[str, Any] | None = None,
                           wait: float | None = None) -> dict[str, Any]:
        """Ensure the user's trigger inbox `key` for (app, trigger, connection, inputs): `{"inbox": {...}}`."""
        return await self.send(Calls.ensure_inbox(user_id, tenant_id, key, app, trigger, connection, inputs, wait))

    async def inboxes(self, user_id: str, tenant_id: str, status: str | None = None) -> dict[str, Any]:
        """Every trigger inbox of the user: `{"inboxes": [...]}`."""
        return await self.send(Calls.inboxes(user_id, tenant_id, status))

    async def inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """One trigger inbox: `{"inbox": {...}}`."""
        return await self.send(Calls.inbox(user_id, tenant_id, inbox_id))

    async def pause_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """Pause a trigger inbox."""
        return await self.send(Calls.switch_inbox(user_id, tenant_id, inbox_id, "pause"))

    async def resume_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """Resume a trigger inbox."""
        return await self.send(Calls.switch_inbox(user_id, tenant_id, inbox_id, "resume"))

    async def delete_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> None:
        """Delete a trigger inbox."""
        await self.send(Calls.delete_inbox(user_id, tenant_id, inbox_id))

    async def lease(self, user_id: str, tenant_id: str, inbox_id: str, *, limit: int | None = None,
                    lease: float | None = None, wait: float | None = None) -> dict[str, Any]:
        """Lease messages: `{"lease_id", "leased_until", "messages": [{"id", "payload", "attributes"}]}`."""
        return await self.send(Calls.lease(user_id, tenant_id, inbox_id, limit, lease, wait))

    async def ack(self, user_id: str, tenant_id: str, inbox_id: str, lease_id: str,
                  message_ids: list[str] | None = None) -> dict[str, Any]:
        """Acknowledge leased messages (all of the lease, or `message_ids`): `{"acked": [...]}`."""
        return await self.send(Calls.settle(user_id, tenant_id, inbox_id, "ack", lease_id, message_ids))

    async def release(self, user_id: str, tenant_id: str, inbox_id: str, lease_id: str,
                      message_ids: list[str] | None = None) -> dict[str, Any]:
        """Give leased messages back at once: `{"released": [...]}`."""
        return await self.send(Calls.settle(user_id, tenant_id, inbox_id, "release", lease_id, message_ids))

    async def aclose(self) -> None:
        """Close the HTTP client if this one created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> ZapierClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SyncZapierClient(_Base):
    """The gateway over HTTP, blocking (httpx.Client): the same methods as ZapierClient."""

    def __init__(self, base_url: str, api_key: str, *, client: httpx.Client | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(base_url, api_key)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout)

    def send(self, call: Call) -> dict[str, Any]:
        """Send one call; keysvc unreachable is Unavailable."""
        try:
            response = self._client.request(call.method, self._base + call.path, params=call.params,
                                            json=call.json, headers=self._headers)
        except httpx.HTTPError as exc:
            raise Unavailable(f"keysvc {self._base} unreachable ({type(exc).__name__})", retry_after=1) from None
        return read_answer(response)

    def apps(self, user_id: str, tenant_id: str, **kw: Any) -> dict[str, Any]:
        """One page of Zapier's apps (`query`, `limit`, `offset`)."""
        return self.send(Calls.apps(user_id, tenant_id, **kw))

    def connections(self, user_id: str, tenant_id: str, app: str) -> dict[str, Any]:
        """The user's connections of `app` and a `usable` one (or None)."""
        return self.send(Calls.connections(user_id, tenant_id, app))

    def connect(self, user_id: str, tenant_id: str, app: str, **kw: Any) -> dict[str, Any]:
        """A Connect URL and its state (`connect_app`, `redirect_uri`, `reconnect_id`)."""
        return self.send(Calls.connect(user_id, tenant_id, app, **kw))

    def complete(self, user_id: str, tenant_id: str, state: str, **kw: Any) -> dict[str, Any]:
        """Finish the Connect flow (`authentication_id`, or `error` and `error_description`)."""
        return self.send(Calls.complete(user_id, tenant_id, state, **kw))

    def actions(self, user_id: str, tenant_id: str, app: str, action_type: str | None = None) -> dict[str, Any]:
        """The app's actions by stable key."""
        return self.send(Calls.actions(user_id, tenant_id, app, action_type))

    def inputs(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
               connection: ConnectionArg, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """An action's input fields."""
        return self.send(Calls.inputs(user_id, tenant_id, app, action, action_type, connection, inputs))

    def choices(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
                connection: ConnectionArg, input_id: str, **kw: Any) -> dict[str, Any]:
        """One page of a dynamic input's choices (`inputs`, `page`)."""
        return self.send(Calls.choices(user_id, tenant_id, app, action, action_type, connection, input_id, **kw))

    def run(self, user_id: str, tenant_id: str, app: str, action: str, action_type: str,
            connection: ConnectionArg, inputs: Mapping[str, Any] | None = None, *,
            wait: float | None = None) -> dict[str, Any]:
        """Run an action; the result if it ends within `wait` seconds, else `{"id", "status": "pending"}`."""
        return self.send(Calls.run(user_id, tenant_id, app, action, action_type, connection, inputs, wait))

    def run_status(self, user_id: str, tenant_id: str, run_id: str, *, wait: float | None = None) -> dict[str, Any]:
        """A run's status, waiting up to `wait` seconds for it to end."""
        return self.send(Calls.run_status(user_id, tenant_id, run_id, wait))

    def ensure_inbox(self, user_id: str, tenant_id: str, key: str, app: str, trigger: str,
                     connection: str | None = None, inputs: Mapping[str, Any] | None = None,
                     wait: float | None = None) -> dict[str, Any]:
        """Ensure the user's trigger inbox `key` for (app, trigger, connection, inputs): `{"inbox": {...}}`."""
        return self.send(Calls.ensure_inbox(user_id, tenant_id, key, app, trigger, connection, inputs, wait))

    def inboxes(self, user_id: str, tenant_id: str, status: str | None = None) -> dict[str, Any]:
        """Every trigger inbox of the user: `{"inboxes": [...]}`."""
        return self.send(Calls.inboxes(user_id, tenant_id, status))

    def inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """One trigger inbox: `{"inbox": {...}}`."""
        return self.send(Calls.inbox(user_id, tenant_id, inbox_id))

    def pause_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """Pause a trigger inbox."""
        return self.send(Calls.switch_inbox(user_id, tenant_id, inbox_id, "pause"))

    def resume_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> dict[str, Any]:
        """Resume a trigger inbox."""
        return self.send(Calls.switch_inbox(user_id, tenant_id, inbox_id, "resume"))

    def delete_inbox(self, user_id: str, tenant_id: str, inbox_id: str) -> None:
        """Delete a trigger inbox."""
        self.send(Calls.delete_inbox(user_id, tenant_id, inbox_id))

    def lease(self, user_id: str, tenant_id: str, inbox_id: str, *, limit: int | None = None,
              lease: float | None = None, wait: float | None = None) -> dict[str, Any]:
        """Lease messages: `{"lease_id", "leased_until", "messages": [{"id", "payload", "attributes"}]}`."""
        return self.send(Calls.lease(user_id, tenant_id, inbox_id, limit, lease, wait))

    def ack(self, user_id: str, tenant_id: str, inbox_id: str, lease_id: str,
            message_ids: list[str] | None = None) -> dict[str, Any]:
        """Acknowledge leased messages (all of the lease, or `message_ids`): `{"acked": [...]}`."""
        return self.send(Calls.settle(user_id, tenant_id, inbox_id, "ack", lease_id, message_ids))

    def release(self, user_id: str, tenant_id: str, inbox_id: str, lease_id: str,
                message_ids: list[str] | None = None) -> dict[str, Any]:
        """Give leased messages back at once: `{"released": [...]}`."""
        return self.send(Calls.settle(user_id, tenant_id, inbox_id, "release", lease_id, message_ids))

    def close(self) -> None:
        """Close the HTTP client if this one created it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> SyncZapierClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
