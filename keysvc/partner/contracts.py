"""Each partner route's contract, written once: its path, method and name, its inputs (query parameters or
body fields, each with its JSON Schema, whether it is required, and an example) and its answers. The route
tables (keysvc.partner.gateway_routes, keysvc.partner.exchange_route), the parsers' field sets
(keysvc.partner.gateway_inputs, keysvc.partner.exchange_body: an unknown field is refused) and the OpenAPI
entries (keysvc.partner.openapi_part) are all derived from these declarations; tests/test_zapier_units.py
holds every parser to its contract's required fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keysvc.openapi import BODY_ERRORS, JsonObject, json_answer, json_body, operation, path_param, query_param

_USER_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,256}$"}
_APP_ID = {"type": "string", "format": "uuid", "description": "Zapier's app id, from /v1/zapier/apps"}
_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
ERRORS = (400, 401, 403, 404, 409, 413, 415, 429, 502, 503)
RUN = {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string", "enum": ["success", "error", "pending"]},
    "results": {}, "errors": {"type": "array", "items": _OBJECT}}}
APP_UUID = "0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6978"  # an example app id


@dataclass(frozen=True)
class Field:
    """One input: its name, its JSON Schema, whether it is required, and a valid example value."""

    name: str
    schema: JsonObject
    required: bool = False
    example: Any = "x"


@dataclass(frozen=True)
class Contract:
    """One route: where, its inputs (`query` parameters, or `body` fields of a JSON object), its answers."""

    path: str
    method: str
    name: str  # the OpenAPI operationId, and the access log's bounded route label
    summary: str
    query: tuple[Field, ...] = ()
    body: tuple[Field, ...] | None = None
    path_params: tuple[tuple[str, str], ...] = ()  # (name, description)
    runs: bool = False  # answers an action run: 200 when done, 202 while pending
    errors: tuple[int, ...] = ERRORS
    answer: JsonObject | None = None  # the 200 body's schema (default: an object, or RUN when `runs`)
    answer_description: str = "The answer"
    body_schema_name: str | None = None  # the body's schema goes to components.schemas under this name
    no_content: bool = False  # answers 204 without a body

    @property
    def fields(self) -> tuple[Field, ...]:
        """The inputs the parser accepts (any other name is refused)."""
        return self.body if self.body is not None else self.query

    @property
    def names(self) -> tuple[str, ...]:
        """The names of `fields`."""
        return tuple(f.name for f in self.fields)

    def body_schema(self) -> JsonObject:
        """The JSON Schema of the body: exactly the declared fields, the required ones required."""
        fields = self.body or ()
        return {"type": "object", "required": [f.name for f in fields if f.required],
                "additionalProperties": False, "properties": {f.name: f.schema for f in fields}}

    def openapi(self) -> JsonObject:
        """This route's OpenAPI path item (its body schema by reference when `body_schema_name` is set)."""
        answer = self.answer or (RUN if self.runs else {"type": "object"})
        parameters = [query_param(f.name, f.schema, required=f.required) for f in self.query]
        parameters += [path_param(name, description) for name, description in self.path_params]
        body = None
        if self.body is not None:
            schema = self.body_schema()
            if self.body_schema_name is not None:
                schema = {"$ref": f"#/components/schemas/{self.body_schema_name}"}
            body = json_body(schema)
        op = operation(self.name, self.summary, json_answer(self.answer_description, answer), self.errors, body=body,
                       parameters=parameters or None)
        if self.runs:
            op["responses"]["202"] = json_answer("Still pending", RUN)
        if self.no_content:
            op["responses"]["204"] = {"description": op["responses"].pop("200")["description"]}
        return {self.method.lower(): op}


USER = (Field("user_id", _USER_ID, True, "u-1"), Field("tenant_id", _USER_ID, True, "t-9"))
APP = Field("app", _APP_ID, True, APP_UUID)
_WAIT_BODY = {"description": "seconds (or a duration such as 10s) to wait for the run, at most run_wait_max",
              "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
_CALL = (*USER, APP, Field("action_type", _STRING, True, "WRITE"),
         Field("connection", {"type": ["string", "null"]}), Field("inputs", _OBJECT))

APPS = Contract("/v1/zapier/apps", "GET", "zapier_apps", "Zapier: apps for the app picker", query=(
    *USER, Field("query", _STRING), Field("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
    Field("offset", {"type": "integer", "minimum": 0})))
CONNECTIONS = Contract("/v1/zapier/connections", "GET", "zapier_connections",
                       "Zapier: the user's connections of an app, and a usable one", query=(*USER, APP))
CONNECT = Contract("/v1/zapier/connect", "POST", "zapier_connect",
                   "Zapier: a Connect URL with a fresh connect token, and its state", body=(
                       *USER, APP, Field("connect_app", _STRING), Field("redirect_uri", _STRING),
                       Field("reconnect_id", _STRING), Field("theme", _STRING)))
COMPLETE = Contract("/v1/zapier/connect/complete", "POST", "zapier_complete",
                    "Zapier: check the state and the returned connection", body=(
                        *USER, Field("state", _STRING, True, "sealed-state"),
                        Field("authentication_id", _STRING), Field("error", _STRING),
                        Field("error_description", _STRING), Field("redirect_uri", _STRING)))
ACTIONS = Contract("/v1/zapier/actions", "GET", "zapier_actions", "Zapier: an app's actions by stable key",
                   query=(*USER, APP, Field("action_type", _STRING)))
INPUTS = Contract("/v1/zapier/actions/{key}/inputs", "POST", "zapier_inputs", "Zapier: an action's input fields",
                  body=_CALL, path_params=(("key", "action key"),))
CHOICES = Contract("/v1/zapier/actions/{key}/inputs/{input_id}/choices", "POST", "zapier_choices",
                   "Zapier: one page of a dynamic input's choices",
                   body=(*_CALL, Field("page", {"type": "integer", "minimum": 1})),
                   path_params=(("key", "action key"), ("input_id", "input field id")))
RUN_CREATE = Contract("/v1/zapier/action-runs", "POST", "zapier_run",
                      "Zapier: run an action (created once), waiting up to `wait` for its result",
                      body=(*_CALL, Field("action", _STRING, True, "send_message"), Field("wait", _WAIT_BODY)),
                      runs=True)
RUN_STATUS = Contract("/v1/zapier/action-runs/{run_id}", "GET", "zapier_run_status",
                      "Zapier: an action run's status, waiting up to `wait`",
                      query=(*USER, Field("wait", _STRING)), path_params=(("run_id", "the run's id"),), runs=True)

EXCHANGE = Contract(
    "/v1/token-exchange", "POST", "token_exchange", "Token exchange: a partner access or connect token (RFC 8693)",
    body=(*USER, Field("token", {"type": "string", "enum": ["access", "connect"]}, True, "access"),
          Field("app", {"type": ["string", "null"], "description": "required with token=connect; null = absent"}),
          Field("scope", {"type": ["string", "null"], "description": "space-separated; null = absent"})),
    errors=(*BODY_ERRORS, 502, 503), answer={"$ref": "#/components/schemas/ExchangeResponse"},
    answer_description="The partner's token", body_schema_name="ExchangeRequest",
)

GATEWAY = (APPS, CONNECTIONS, CONNECT, COMPLETE, ACTIONS, INPUTS, CHOICES, RUN_CREATE, RUN_STATUS)

# ---------------------------------------------------------------- trigger inboxes (Zapier's Trigger Inbox API)
_INBOXES = "/v1/zapier/trigger-inboxes"
_INBOX = _INBOXES + "/{inbox}"  # one path parameter name for the key (PUT) and Zapier's inbox id (the rest)
_INBOX_ID = (("inbox", "Zapier's inbox id (a UUID)"),)
_UUID = {"type": "string", "format": "uuid"}
_DURATION = {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
             "description": "seconds, or a duration such as 10s or 5m"}
INBOX_VIEW = {"type": "object", "required": ["id", "key", "status", "app", "trigger", "reconnect_required"],
              "properties": {
                  "id": _UUID, "key": {"type": ["string", "null"]}, "status": _STRING,
                  "paused_reason": {"type": ["string", "null"]}, "app": _STRING, "trigger": _STRING,
                  "connection": {"type": ["string", "null"]}, "reconnect_required": {"type": "boolean"}}}
_ONE_INBOX = {"type": "object", "required": ["inbox"], "properties": {"inbox": INBOX_VIEW}}
_LEASE = {"type": "object", "required": ["lease_id", "leased_until", "messages"], "properties": {
    "lease_id": {"type": ["string", "null"]}, "leased_until": {"type": ["string", "null"]},
    "messages": {"type": "array", "items": {"type": "object", "required": ["id", "payload", "attributes"],
                                            "properties": {"id": _UUID, "payload": {}, "attributes": _OBJECT}}}}}
_IDS = {"type": "array", "items": _UUID}
_SETTLE = (*USER, Field("lease_id", _UUID, True, "0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6979"),
           Field("message_ids", {**_IDS, "minItems": 1, "maxItems": 100}))

INBOX_ENSURE = Contract(
    _INBOX, "PUT", "zapier_inbox_ensure", "Zapier: ensure the user's trigger inbox with this key (idempotent)",
    body=(*USER, Field("app", _STRING, True, "SlackCLIAPI"), Field("trigger", _STRING, True, "new_message"),
          Field("connection", {"type": ["string", "null"]}), Field("inputs", _OBJECT),
          Field("wait", {**_DURATION, "description": "how long to wait for `active`, at most run_wait_max"})),
    path_params=(("inbox", "the inbox key: 1 to 100 letters, digits, _ . : -"),), answer=_ONE_INBOX)
INBOX_LIST = Contract(_INBOXES, "GET", "zapier_inboxes", "Zapier: the user's trigger inboxes (every page)",
                      query=(*USER, Field("status", _STRING)),
                      answer={"type": "object", "required": ["inboxes"],
                              "properties": {"inboxes": {"type": "array", "items": INBOX_VIEW}}})
INBOX_GET = Contract(_INBOX, "GET", "zapier_inbox", "Zapier: one trigger inbox", query=USER,
                     path_params=_INBOX_ID, answer=_ONE_INBOX)
INBOX_DELETE = Contract(_INBOX, "DELETE", "zapier_inbox_delete", "Zapier: delete a trigger inbox (204)",
                        query=USER, path_params=_INBOX_ID, answer_description="Deleted", no_content=True)
INBOX_PAUSE = Contract(_INBOX + "/pause", "POST", "zapier_inbox_pause", "Zapier: pause a trigger inbox",
                       body=USER, path_params=_INBOX_ID, answer=_ONE_INBOX)
INBOX_RESUME = Contract(_INBOX + "/resume", "POST", "zapier_inbox_resume", "Zapier: resume a trigger inbox",
                        body=USER, path_params=_INBOX_ID, answer=_ONE_INBOX)
INBOX_LEASE = Contract(
    _INBOX + "/lease", "POST", "zapier_inbox_lease",
    "Zapier: lease an inbox's messages, waiting up to `wait` for one to arrive",
    body=(*USER, Field("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
          Field("lease", {**_DURATION, "description": "how long the messages stay leased, 1s to 1h (5m)"}),
          Field("wait", {**_DURATION, "description": "how long to wait for a message, at most lease_wait_max"})),
    path_params=_INBOX_ID, answer=_LEASE)
INBOX_ACK = Contract(_INBOX + "/ack", "POST", "zapier_inbox_ack", "Zapier: acknowledge leased messages",
                     body=_SETTLE, path_params=_INBOX_ID,
                     answer={"type": "object", "required": ["acked"], "properties": {"acked": _IDS}})
INBOX_RELEASE = Contract(_INBOX + "/release", "POST", "zapier_inbox_release", "Zapier: release leased messages",
                         body=_SETTLE, path_params=_INBOX_ID,
                         answer={"type": "object", "required": ["released"], "properties": {"released": _IDS}})

TRIGGERS = (INBOX_ENSURE, INBOX_LIST, INBOX_GET, INBOX_DELETE, INBOX_PAUSE, INBOX_RESUME, INBOX_LEASE, INBOX_ACK,
            INBOX_RELEASE)


def gateway_paths() -> JsonObject:
    """The OpenAPI paths of every gateway route (the trigger inboxes' too; several methods share a path)."""
    paths: JsonObject = {}
    for c in (*GATEWAY, *TRIGGERS):
        paths.setdefault(c.path, {}).update(c.openapi())
    return paths
