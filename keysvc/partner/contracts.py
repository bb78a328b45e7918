"""Each partner route's contract, written once: its path, method and name, its inputs (query parameters or
body fields, each with its JSON Schema, whether it is required, and an example) and its answers. The route
tables (keysvc.partner.gateway_routes, keysvc.partner.exchange_route), the parsers' field sets
(keysvc.partner.gateway_inputs, keysvc.partner.exchange_body: an unknown field is refused) and the OpenAPI
entries (keysvc.partner.openapi_part) are all derived from these declarations; tests/test_zapier_units.py
holds every parser to its contract's required fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keysvc.client.connect import APP_NAME as _APP_NAME
from keysvc.config.exchange import CONNECT_THEME as _CONNECT_THEME
from keysvc.config.exchange import SCOPE_TOKEN
from keysvc.openapi import BODY_ERRORS, JsonObject, json_answer, json_body, operation, query_param
from keysvc.partner.fields import IDENTIFIER, Choice, Duration, Integer, Limits, Rule, Schema, Text, Uuid
from keysvc.partner.triggers.answers import STATUSES

_STRING = {"type": "string"}
_OBJECT = {"type": "object"}
ERRORS = (400, 401, 403, 404, 409, 413, 415, 429, 502, 503)
RUN = {"type": "object", "required": ["id", "status"], "properties": {
    "id": {"type": "string"}, "status": {"type": "string", "enum": ["success", "error", "pending"]},
    "results": {}, "errors": {"type": "array", "items": _OBJECT}}}
APP_UUID = "0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6978"  # an example app id
# What the document states for the configured bounds when no settings are given (the settings' defaults).
DEFAULT_LIMITS: Mapping[str, Any] = {"run_wait_max": 60.0, "lease_wait_max": 30.0, "redirect_uris": ()}

# ------------------------------------------------------------------------------ the rules, each written once
_PARTNER_ID = r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}"  # Zapier's connection, run and input ids
APP_ID = Uuid("Zapier's app id, a UUID from /v1/zapier/apps")
ACTION_KEY = Text(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}", "an action key from /v1/zapier/actions")
# the action types the Partner API takes in a request (an Action it lists may also say FILTER)
ACTION_TYPE = Text(r"(READ|READ_BULK|SEARCH|SEARCH_AND_WRITE|SEARCH_OR_WRITE|WRITE)",
                   "an action type: READ, READ_BULK, SEARCH, SEARCH_AND_WRITE, SEARCH_OR_WRITE or WRITE")
CONNECTION = Text(_PARTNER_ID, "a Zapier connection id (letters, digits, _ . : -), or null for an app without "
                               "authentication")
PARTNER_ID = Text(_PARTNER_ID, "a Zapier id (letters, digits, _ . : -)")
RECONNECT_ID = Text(_PARTNER_ID, "the id of the user's expired connection")
AUTHENTICATION_ID = Text(_PARTNER_ID, "the connection id the partner returned")
CONNECT_APP = Text(_APP_NAME.pattern, "the Connect URL's app segment (letters, digits, _ . -)")
THEME = Text(_CONNECT_THEME.pattern, "a Connect UI theme name Zapier set up for you (letters, digits, _ . -)")
# The codes the Connect flow documents for `error` (RFC 6749 §4.1.2.1's); anything else is refused, never echoed.
CONNECT_ERROR = Choice(("access_denied", "invalid_request", "server_error", "temporarily_unavailable"))
MAX_QUERY = 200
MAX_OFFSET = 1_000_000
QUERY = Schema({"type": "string", "maxLength": MAX_QUERY, "pattern": "^[ -~]*$",
                "description": f"printable text of at most {MAX_QUERY} characters"})
LIMIT, OFFSET, PAGE = Integer(1, 100), Integer(0, MAX_OFFSET), Integer(1, MAX_OFFSET)
STATE = Schema({"type": "string", "minLength": 1, "description": "the state /v1/zapier/connect answered"})
RUN_WAIT = Duration(0, limit="run_wait_max")
INPUTS_OBJECT = Schema({"type": "object", "description": "input values: at most 32 levels deep and 64 KiB encoded, "
                                                         "integers within +-(2**53 - 1), finite numbers"})
# trigger inboxes
INBOX_KEY = Text(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}", "1 to 100 letters, digits, _ . : - (starting with a letter "
                                                      "or digit)")
INBOX_ID = Uuid("Zapier's inbox id (a UUID)")
APP_KEY = Text(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,126}(@[A-Za-z0-9_.\-]{1,32})?",
               "Zapier's app key, such as SlackCLIAPI (from /v1/zapier/apps)")
TRIGGER_KEY = Text(r"[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}", "a trigger's key from /v1/zapier/actions?action_type=READ")
INBOX_CONNECTION = Text(_PARTNER_ID, "a Zapier connection id (letters, digits, _ . : -), or null")
TRIGGER_INPUTS = Schema({"type": "object", "description": "the trigger's input values: at most 16 levels deep and "
                                                          "64 KiB encoded, integers within +-(2**53 - 1)"})
INBOX_STATUS = Choice(STATUSES)
LEASE_LIMIT = Integer(1, 100)
LEASE = Duration(1, 3600, whole=True)
LEASE_WAIT = Duration(0, limit="lease_wait_max")
LEASE_ID = Uuid("the lease_id a lease answered (a UUID)")
MAX_MESSAGE_IDS = 100
MESSAGE_IDS = Schema({"type": "array", "items": {"type": "string", "format": "uuid"}, "minItems": 1,
                      "maxItems": MAX_MESSAGE_IDS, "uniqueItems": True,
                      "description": f"1 to {MAX_MESSAGE_IDS} distinct message ids (UUIDs)"})
# token exchange
TOKEN = Choice(("access", "connect"))


@dataclass(frozen=True)
class RedirectUri:
    """One of the configured `token_exchange.redirect_uris`, exactly."""

    def schema(self, limits: Limits) -> JsonObject:
        uris = list(limits.get("redirect_uris", ()))
        if not uris:
            return {"not": {}, "description": "no token_exchange.redirect_uris are configured"}
        return {"type": "string", "enum": uris}


@dataclass(frozen=True)
class Field:
    """One input: its name, its rule (or a plain JSON Schema), whether it is required, a valid example."""

    name: str
    rule: Rule | JsonObject
    required: bool = False
    example: Any = "x"
    null_absent: bool = True  # (optional body fields) null counts as absent

    def schema(self, limits: Limits) -> JsonObject:
        return self.rule if isinstance(self.rule, dict) else self.rule.schema(limits)

    def body_schema(self, limits: Limits) -> JsonObject:
        """Its schema as a body field: an optional one may be null (absent) unless `null_absent` is off."""
        schema = self.schema(limits)
        return schema if self.required or not self.null_absent else nullable(schema)


@dataclass(frozen=True)
class Contract:
    """One route: where, its inputs (`query` parameters, or `body` fields of a JSON object), its answers."""

    path: str
    method: str
    name: str  # the OpenAPI operationId, and the access log's bounded route label
    summary: str
    query: tuple[Field, ...] = ()
    body: tuple[Field, ...] | None = None
    path_params: tuple[Field, ...] = ()
    one_of: tuple[str, ...] = ()  # exactly one of these body fields
    body_extra: JsonObject | None = None  # what relates the body's fields (JSON Schema keywords)
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

    def body_schema(self, limits: Limits = DEFAULT_LIMITS) -> JsonObject:
        """The JSON Schema of the body: exactly the declared fields with their rules, the required ones
        required, `one_of` as a oneOf."""
        fields = self.body or ()
        schema: JsonObject = {"type": "object", "required": [f.name for f in fields if f.required],
                              "additionalProperties": False,
                              "properties": {f.name: f.body_schema(limits) for f in fields}}
        if self.one_of:  # exactly one of them present and not null
            schema["oneOf"] = [{"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                               for name in self.one_of]
        return {**schema, **(self.body_extra or {})}

    def openapi(self, limits: Limits = DEFAULT_LIMITS) -> JsonObject:
        """This route's OpenAPI path item (its body schema by reference when `body_schema_name` is set)."""
        answer = self.answer or (RUN if self.runs else {"type": "object"})
        parameters = [query_param(f.name, _query_schema(f.schema(limits)), required=f.required) for f in self.query]
        parameters += [{"name": f.name, "in": "path", "required": True, "schema": f.schema(limits),
                        "description": f.schema(limits).get("description", f.name)} for f in self.path_params]
        body = None
        if self.body is not None:
            schema = self.body_schema(limits)
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


def _query_schema(schema: JsonObject) -> JsonObject:
    """A duration in a query is text: its number of seconds with or without the `s`."""
    if "oneOf" not in schema:
        return schema
    text = schema["oneOf"][1]["pattern"]
    return {"type": "string", "pattern": text[:-2] + "s?$", "description": schema["description"]}


def nullable(schema: JsonObject) -> JsonObject:
    """`schema` or null: an optional body field sent as null counts as absent."""
    kind = schema.get("type")
    if isinstance(kind, str):
        out = {**schema, "type": [kind, "null"]}
        if "enum" in schema:
            out["enum"] = [*schema["enum"], None]
        return out
    if isinstance(kind, list):
        return schema
    if "oneOf" in schema:
        return {**schema, "oneOf": [*schema["oneOf"], {"type": "null"}]}
    return {"anyOf": [schema, {"type": "null"}]}


USER = (Field("user_id", IDENTIFIER, True, "u-1"), Field("tenant_id", IDENTIFIER, True, "t-9"))
APP = Field("app", APP_ID, True, APP_UUID)
_CALL = (*USER, APP, Field("action_type", ACTION_TYPE, True, "WRITE"),
         Field("connection", CONNECTION), Field("inputs", INPUTS_OBJECT, null_absent=False))
_KEY = Field("key", ACTION_KEY)

APPS = Contract("/v1/zapier/apps", "GET", "zapier_apps", "Zapier: apps for the app picker", query=(
    *USER, Field("query", QUERY), Field("limit", LIMIT), Field("offset", OFFSET)))
CONNECTIONS = Contract("/v1/zapier/connections", "GET", "zapier_connections",
                       "Zapier: the user's connections of an app, and a usable one", query=(*USER, APP))
CONNECT = Contract("/v1/zapier/connect", "POST", "zapier_connect",
                   "Zapier: a Connect URL with a fresh connect token, and its state", body=(
                       *USER, APP, Field("connect_app", CONNECT_APP), Field("redirect_uri", RedirectUri()),
                       Field("reconnect_id", RECONNECT_ID), Field("theme", THEME)))
COMPLETE = Contract("/v1/zapier/connect/complete", "POST", "zapier_complete",
                    "Zapier: check the state and the returned connection", body=(
                        *USER, Field("state", STATE, True, "sealed-state"),
                        Field("authentication_id", AUTHENTICATION_ID, example="auth-1"),
                        Field("error", CONNECT_ERROR), Field("error_description", _STRING),
                        Field("redirect_uri", _STRING)), one_of=("authentication_id", "error"))
ACTIONS = Contract("/v1/zapier/actions", "GET", "zapier_actions", "Zapier: an app's actions by stable key",
                   query=(*USER, APP, Field("action_type", ACTION_TYPE)))
INPUTS = Contract("/v1/zapier/actions/{key}/inputs", "POST", "zapier_inputs", "Zapier: an action's input fields",
                  body=_CALL, path_params=(_KEY,))
CHOICES = Contract("/v1/zapier/actions/{key}/inputs/{input_id}/choices", "POST", "zapier_choices",
                   "Zapier: one page of a dynamic input's choices", body=(*_CALL, Field("page", PAGE)),
                   path_params=(_KEY, Field("input_id", PARTNER_ID)))
RUN_CREATE = Contract("/v1/zapier/action-runs", "POST", "zapier_run",
                      "Zapier: run an action (created once), waiting up to `wait` for its result",
                      body=(*_CALL, Field("action", ACTION_KEY, True, "send_message"), Field("wait", RUN_WAIT)),
                      runs=True)
RUN_STATUS = Contract("/v1/zapier/action-runs/{run_id}", "GET", "zapier_run_status",
                      "Zapier: an action run's status, waiting up to `wait`",
                      query=(*USER, Field("wait", RUN_WAIT)), path_params=(Field("run_id", PARTNER_ID),), runs=True)

_NULL = {"type": "null"}
_SCOPE = f"^\\s*{SCOPE_TOKEN.pattern}(\\s+{SCOPE_TOKEN.pattern})*\\s*$"
EXCHANGE = Contract(
    "/v1/token-exchange", "POST", "token_exchange", "Token exchange: a partner access or connect token (RFC 8693)",
    body=(*USER, Field("token", TOKEN, True, "access"),
          Field("app", {"type": ["string", "null"], "description": "required with token=connect; null = absent"}),
          Field("scope", {"type": ["string", "null"], "pattern": _SCOPE,
                          "description": "space-separated RFC 6749 scope tokens; null = absent"})),
    body_extra={"oneOf": [  # an app with token=connect only, and then a partner app identifier
        {"properties": {"token": {"const": "access"}, "app": _NULL}},
        {"required": ["app"], "properties": {"token": {"const": "connect"},
                                             "app": {"type": "string", "pattern": f"^{_APP_NAME.pattern}$"}}}]},
    errors=(*BODY_ERRORS, 502, 503), answer={"$ref": "#/components/schemas/ExchangeResponse"},
    answer_description="The partner's token", body_schema_name="ExchangeRequest",
)

GATEWAY = (APPS, CONNECTIONS, CONNECT, COMPLETE, ACTIONS, INPUTS, CHOICES, RUN_CREATE, RUN_STATUS)

# ---------------------------------------------------------------- trigger inboxes (Zapier's Trigger Inbox API)
_INBOXES = "/v1/zapier/trigger-inboxes"
_INBOX = _INBOXES + "/{inbox}"  # one path parameter name for the key (PUT) and Zapier's inbox id (the rest)
_INBOX_ID = (Field("inbox", INBOX_ID),)
_UUID = {"type": "string", "format": "uuid"}
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
_SETTLE = (*USER, Field("lease_id", LEASE_ID, True, "0b9d2f8e-6c1a-4f7e-9a51-2d3c4b5a6979"),
           Field("message_ids", MESSAGE_IDS))

INBOX_ENSURE = Contract(
    _INBOX, "PUT", "zapier_inbox_ensure", "Zapier: ensure the user's trigger inbox with this key (idempotent)",
    body=(*USER, Field("app", APP_KEY, True, "SlackCLIAPI"), Field("trigger", TRIGGER_KEY, True, "new_message"),
          Field("connection", INBOX_CONNECTION), Field("inputs", TRIGGER_INPUTS), Field("wait", RUN_WAIT)),
    path_params=(Field("inbox", INBOX_KEY),), answer=_ONE_INBOX)
INBOX_LIST = Contract(_INBOXES, "GET", "zapier_inboxes", "Zapier: the user's trigger inboxes (every page)",
                      query=(*USER, Field("status", INBOX_STATUS)),
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
    body=(*USER, Field("limit", LEASE_LIMIT), Field("lease", LEASE), Field("wait", LEASE_WAIT)),
    path_params=_INBOX_ID, answer=_LEASE)
INBOX_ACK = Contract(_INBOX + "/ack", "POST", "zapier_inbox_ack", "Zapier: acknowledge leased messages",
                     body=_SETTLE, path_params=_INBOX_ID,
                     answer={"type": "object", "required": ["acked"], "properties": {"acked": _IDS}})
INBOX_RELEASE = Contract(_INBOX + "/release", "POST", "zapier_inbox_release", "Zapier: release leased messages",
                         body=_SETTLE, path_params=_INBOX_ID,
                         answer={"type": "object", "required": ["released"], "properties": {"released": _IDS}})

TRIGGERS = (INBOX_ENSURE, INBOX_LIST, INBOX_GET, INBOX_DELETE, INBOX_PAUSE, INBOX_RESUME, INBOX_LEASE, INBOX_ACK,
            INBOX_RELEASE)


def gateway_paths(limits: Limits = DEFAULT_LIMITS) -> JsonObject:
    """The OpenAPI paths of every gateway route (the trigger inboxes' too; several methods share a path)."""
    paths: JsonObject = {}
    for c in (*GATEWAY, *TRIGGERS):
        paths.setdefault(c.path, {}).update(c.openapi(limits))
    return paths
