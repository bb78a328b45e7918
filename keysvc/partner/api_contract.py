"""The OpenAPI entries of the partner's routes (POST /v1/token-exchange, the gateway's /v1/zapier/*), given
to the core document through the seam (Feature.openapi, merged by keysvc.openapi)."""

from __future__ import annotations

from typing import Any

from keysvc.feature import OpenApiPart
from keysvc.openapi import BODY_ERRORS, JsonObject, json_answer, json_body, operation, path_param, query_param

_USER_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,256}$"}
_APP_ID = {"type": "string", "format": "uuid", "description": "Zapier's app id, from /v1/zapier/apps"}
_OBJECT = {"type": "object"}


def _zapier_body(properties: JsonObject, required: tuple[str, ...]) -> JsonObject:
    return json_body({
        "type": "object", "required": ["user_id", "tenant_id", *required], "additionalProperties": False,
        "properties": {"user_id": _USER_ID, "tenant_id": _USER_ID, **properties},
    })


def _zapier_paths() -> JsonObject:
    """The embed gateway's routes (client flag `zapier`); every call names the user."""
    user = [query_param("user_id", _USER_ID, required=True), query_param("tenant_id", _USER_ID, required=True)]
    app = query_param("app", _APP_ID, required=True)
    wait = {"description": "seconds (or a duration such as 10s) to wait for the run, at most run_wait_max",
            "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
    call = {"app": _APP_ID, "action_type": {"type": "string"}, "connection": {"type": ["string", "null"]},
            "inputs": _OBJECT}
    errors = (400, 401, 403, 404, 409, 413, 415, 429, 502, 503)
    run = {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string", "enum": ["success", "error", "pending"]},
        "results": {}, "errors": {"type": "array", "items": _OBJECT}}}

    def op(op_id: str, summary: str, answer: JsonObject, **kw: Any) -> JsonObject:
        return operation(op_id, summary, json_answer("The answer", answer), errors, **kw)

    def run_op(op_id: str, summary: str, **kw: Any) -> JsonObject:
        operation = op(op_id, summary, run, **kw)
        operation["responses"]["202"] = json_answer("Still pending", run)
        return operation

    listing = {"type": "object"}
    return {
        "/v1/zapier/apps": {"get": op("zapier_apps", "Zapier: apps for the app picker", listing, parameters=[
            *user, query_param("query", {"type": "string"}), query_param("limit", {"type": "integer", "minimum": 1,
                                                                         "maximum": 100}),
            query_param("offset", {"type": "integer", "minimum": 0})])},
        "/v1/zapier/connections": {"get": op(
            "zapier_connections", "Zapier: the user's connections of an app, and a usable one", listing,
            parameters=[*user, app])},
        "/v1/zapier/connect": {"post": op(
            "zapier_connect", "Zapier: a Connect URL with a fresh connect token, and its state", listing,
            body=_zapier_body({"app": _APP_ID, "connect_app": {"type": "string"}, "redirect_uri": {"type": "string"},
                               "reconnect_id": {"type": "string"}}, ("app",)))},
        "/v1/zapier/connect/complete": {"post": op(
            "zapier_complete", "Zapier: check the state and the returned connection", listing,
            body=_zapier_body({"state": {"type": "string"}, "authentication_id": {"type": "string"},
                               "error": {"type": "string"}, "error_description": {"type": "string"},
                               "redirect_uri": {"type": "string"}}, ("state",)))},
        "/v1/zapier/actions": {"get": op("zapier_actions", "Zapier: an app's actions by stable key", listing,
                                         parameters=[*user, app, query_param("action_type", {"type": "string"})])},
        "/v1/zapier/actions/{key}/inputs": {"post": op(
            "zapier_inputs", "Zapier: an action's input fields", listing,
            body=_zapier_body(call, ("app", "action_type")), parameters=[path_param("key", "action key")])},
        "/v1/zapier/actions/{key}/inputs/{input_id}/choices": {"post": op(
            "zapier_choices", "Zapier: one page of a dynamic input's choices", listing,
            body=_zapier_body({**call, "page": {"type": "integer", "minimum": 1}}, ("app", "action_type")),
            parameters=[path_param("key", "action key"), path_param("input_id", "input field id")])},
        "/v1/zapier/action-runs": {"post": run_op(
            "zapier_run", "Zapier: run an action (created once), waiting up to `wait` for its result",
            body=_zapier_body({**call, "action": {"type": "string"}, "wait": wait}, ("app", "action", "action_type")))},
        "/v1/zapier/action-runs/{run_id}": {"get": run_op(
            "zapier_run_status", "Zapier: an action run's status, waiting up to `wait`",
            parameters=[*user, query_param("wait", {"type": "string"}), path_param("run_id", "the run's id")])},
    }


def _exchange_schemas() -> JsonObject:
    return {
        "ExchangeRequest": {
            "type": "object",
            "required": ["user_id", "tenant_id", "token"],
            "properties": {
                "user_id": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,256}$"},
                "tenant_id": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,256}$"},
                "token": {"type": "string", "enum": ["access", "connect"]},
                "app": {"type": ["string", "null"], "description": "required with token=connect; null = absent"},
                "scope": {"type": ["string", "null"], "description": "space-separated; null = absent"},
            },
            "additionalProperties": False,
        },
        "ExchangeResponse": {
            "type": "object",
            "required": ["access_token", "issued_token_type"],
            "properties": {
                "access_token": {"type": "string"},
                "issued_token_type": {"type": "string"},
                "expires_in": {"type": "integer"},
                "connect_url": {"type": "string"},
            },
            "additionalProperties": True,
        },
    }


def partner_openapi() -> OpenApiPart:
    """The partner feature's paths and schemas."""
    paths: JsonObject = {"/v1/token-exchange": {"post": operation(
        "token_exchange", "Token exchange: a partner access or connect token (RFC 8693)",
        json_answer("The partner's token", {"$ref": "#/components/schemas/ExchangeResponse"}),
        (*BODY_ERRORS, 502, 503), body=json_body({"$ref": "#/components/schemas/ExchangeRequest"}),
    )}}
    paths.update(_zapier_paths())
    return OpenApiPart(paths=paths, schemas=_exchange_schemas())
