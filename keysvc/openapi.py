"""The OpenAPI 3 document of the internal API, served at `GET /openapi.json` on the internal listener.

Built once from the settings (the token-exchange operation is listed only when it is configured). It is
the contract the fuzz test (tests/test_fuzz_api.py, schemathesis) holds the live service to: every
documented status, header and body schema, and nothing undocumented — so each status an operation can
answer is listed here, with the error body every 4xx/5xx carries.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keysvc import __version__
from keysvc.config import Settings
from keysvc.tokens import RESERVED_CLAIMS

JsonObject = dict[str, Any]

_ERROR_TEXT = {
    400: "invalid_request: malformed JSON, wrong types, unknown fields, a reserved claim, no `aud`",
    401: "invalid_client: no, malformed or unknown credentials (`WWW-Authenticate: Bearer`)",
    403: "forbidden: audience, keyset or operation not allowed for this client",
    404: "not_found: no such keyset or key",
    409: "conflict: the lifecycle refuses now (e.g. the pending key is not yet safe to promote)",
    413: "payload_too_large: bodies are limited to 64 KiB",
    415: "unsupported_media_type: bodies must be application/json (UTF-8)",
    429: "rate_limited: the client's token bucket is empty (`Retry-After`)",
    502: "upstream_error: the partner's token endpoint failed",
    503: "unavailable: the key store or the partner cannot serve now (`Retry-After`)",
}
_NUMBER_OR_NULL = {"type": ["number", "null"]}


def _error(status: int) -> JsonObject:
    headers: JsonObject = {}
    if status == 401:
        headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string"}}
    if status in (429, 503):
        headers["Retry-After"] = {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
    response: JsonObject = {
        "description": _ERROR_TEXT[status],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _json(description: str, schema: JsonObject) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: JsonObject, *, required: bool = True) -> JsonObject:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _operation(op_id: str, summary: str, ok: JsonObject, errors: tuple[int, ...], *, secured: bool = True,
               body: JsonObject | None = None, parameters: list[JsonObject] | None = None) -> JsonObject:
    op: JsonObject = {
        "operationId": op_id,
        "summary": summary,
        "responses": {"200": ok, **{str(s): _error(s) for s in errors}},
        # a client certificate mapped by listen.tls is the alternative to the key (see the scheme)
        "security": [{"apiKey": []}] if secured else [],
    }
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def _path_param(name: str, description: str) -> JsonObject:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _schemas() -> JsonObject:
    audience = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "error_description"],
            "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
            "additionalProperties": False,
        },
        "SignRequest": {
            "type": "object",
            "required": ["claims"],
            "properties": {
                "keyset": {"type": "string", "description": "optional when the client may use one keyset"},
                "claims": {
                    "type": "object",
                    "required": ["aud"],
                    "properties": {"aud": audience},
                    "propertyNames": {"not": {"enum": sorted(RESERVED_CLAIMS)}},
                    "additionalProperties": True,
                    "description": "caller claims; iss, iat, nbf, exp and jti are set by keysvc",
                },
                "ttl": {"type": "integer", "minimum": 1, "description": "seconds, capped by client and keyset"},
            },
            "additionalProperties": False,
        },
        "SignResponse": {
            "type": "object",
            "required": ["token", "kid", "alg", "expires_at"],
            "properties": {
                "token": {"type": "string"},
                "kid": {"type": "string"},
                "alg": {"type": "string"},
                "expires_at": {"type": "integer"},
            },
            "additionalProperties": False,
        },
        "Key": {
            "type": "object",
            "required": ["keyset", "kid", "alg", "state", "seq", "created_at", "activates_at"],
            "properties": {
                "keyset": {"type": "string"},
                "kid": {"type": "string"},
                "alg": {"type": "string"},
                "state": {"type": "string", "enum": ["pending", "active", "retiring", "retired", "revoked"]},
                "seq": {"type": "integer"},
                "created_at": {"type": "number"},
                "activates_at": {"type": "number"},
                "superseded_at": _NUMBER_OR_NULL,
                "removes_at": _NUMBER_OR_NULL,
                "revoked_at": _NUMBER_OR_NULL,
                "destroyed_at": _NUMBER_OR_NULL,
            },
            "additionalProperties": False,
        },
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


def build_openapi(settings: Settings) -> JsonObject:
    """The OpenAPI 3.1 document of the internal listener for these settings."""
    body_errors = (400, 401, 403, 413, 415, 429)
    paths: JsonObject = {
        "/v1/sign": {"post": _operation(
            "sign", "Sign: a JWT with the keyset's active key",
            _json("The signed token", {"$ref": "#/components/schemas/SignResponse"}),
            (*body_errors, 503), body=_body({"$ref": "#/components/schemas/SignRequest"}),
        )},
        "/v1/keys": {"get": _operation(
            "list_keys", "List keys: every key of the keysets this client administers (admin)",
            _json("Keys", {"type": "object", "required": ["keys"], "additionalProperties": False,
                           "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}}}),
            (401, 403, 429),
        )},
        "/v1/keysets/{name}/rotate": {"post": _operation(
            "rotate", "Rotate: promote the pending key now (admin of the keyset)",
            _json("The newly active key", {
                "type": "object", "required": ["keyset", "active_kid", "activated_at"], "additionalProperties": False,
                "properties": {"keyset": {"type": "string"}, "active_kid": {"type": "string"},
                               "activated_at": {"type": "number"}},
            }),
            (*body_errors, 404, 409, 503),
            body=_body({"type": "object", "properties": {"force": {"type": "boolean"}}, "additionalProperties": False},
                       required=False),
            parameters=[_path_param("name", "keyset name")],
        )},
        "/v1/keys/{kid}/revoke": {"post": _operation(
            "revoke", "Revoke: a key at once (admin of its keyset; any other kid is not_found)",
            _json("The revoked key", {
                "type": "object", "required": ["keyset", "kid", "revoked_at"], "additionalProperties": False,
                "properties": {"keyset": {"type": "string"}, "kid": {"type": "string"},
                               "revoked_at": {"type": "number"}},
            }),
            (*body_errors, 404, 503),
            parameters=[_path_param("kid", "the key's RFC 7638 thumbprint")],
        )},
        "/metrics": {"get": _operation(
            "metrics", "Metrics: Prometheus exposition",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            (), secured=False,
        )},
        "/healthz": {"get": _operation(
            "healthz", "Health: the process is alive",
            _json("Alive", {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}),
            (), secured=False,
        )},
        "/openapi.json": {"get": _operation(
            "openapi", "OpenAPI: this document", _json("OpenAPI 3.1 document", {"type": "object"}), (), secured=False,
        )},
    }
    if settings.token_exchange is not None:
        paths["/v1/token-exchange"] = {"post": _operation(
            "token_exchange", "Token exchange: a partner access or connect token (RFC 8693)",
            _json("The partner's token", {"$ref": "#/components/schemas/ExchangeResponse"}),
            (*body_errors, 502, 503), body=_body({"$ref": "#/components/schemas/ExchangeRequest"}),
        )}
        paths.update(_zapier_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keysvc internal API",
            "version": __version__,
            "description": "Signing and key administration. Never exposed outside the cluster. Errors are "
                           '`{"error": code, "error_description": text}`; a wrong method answers 405 with Allow.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "apiKey": {
                    "type": "http", "scheme": "bearer",
                    "description": "Authorization: Bearer <API key>; or, with listen.tls, a client certificate "
                                   "mapped to the client (cert_subjects) instead",
                },
            },
        },
    }


_USER_ID = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,256}$"}
_APP_ID = {"type": "string", "format": "uuid", "description": "Zapier's app id, from /v1/zapier/apps"}
_OBJECT = {"type": "object"}


def _query(name: str, schema: JsonObject, *, required: bool = False) -> JsonObject:
    return {"name": name, "in": "query", "required": required, "schema": schema}


def _zapier_body(properties: JsonObject, required: tuple[str, ...]) -> JsonObject:
    return _body({
        "type": "object", "required": ["user_id", "tenant_id", *required], "additionalProperties": False,
        "properties": {"user_id": _USER_ID, "tenant_id": _USER_ID, **properties},
    })


def _zapier_paths() -> JsonObject:
    """The embed gateway's routes (client flag `zapier`); every call names the user."""
    user = [_query("user_id", _USER_ID, required=True), _query("tenant_id", _USER_ID, required=True)]
    app = _query("app", _APP_ID, required=True)
    wait = {"description": "seconds (or a duration such as 10s) to wait for the run, at most run_wait_max",
            "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}]}
    call = {"app": _APP_ID, "action_type": {"type": "string"}, "connection": {"type": ["string", "null"]},
            "inputs": _OBJECT}
    errors = (400, 401, 403, 404, 409, 413, 415, 429, 502, 503)
    run = {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string", "enum": ["success", "error", "pending"]},
        "results": {}, "errors": {"type": "array", "items": _OBJECT}}}

    def op(op_id: str, summary: str, answer: JsonObject, **kw: Any) -> JsonObject:
        return _operation(op_id, summary, _json("The answer", answer), errors, **kw)

    def run_op(op_id: str, summary: str, **kw: Any) -> JsonObject:
        operation = op(op_id, summary, run, **kw)
        operation["responses"]["202"] = _json("Still pending", run)
        return operation

    listing = {"type": "object"}
    return {
        "/v1/zapier/apps": {"get": op("zapier_apps", "Zapier: apps for the app picker", listing, parameters=[
            *user, _query("query", {"type": "string"}), _query("limit", {"type": "integer", "minimum": 1,
                                                                         "maximum": 100}),
            _query("offset", {"type": "integer", "minimum": 0})])},
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
                                         parameters=[*user, app, _query("action_type", {"type": "string"})])},
        "/v1/zapier/actions/{key}/inputs": {"post": op(
            "zapier_inputs", "Zapier: an action's input fields", listing,
            body=_zapier_body(call, ("app", "action_type")), parameters=[_path_param("key", "action key")])},
        "/v1/zapier/actions/{key}/inputs/{input_id}/choices": {"post": op(
            "zapier_choices", "Zapier: one page of a dynamic input's choices", listing,
            body=_zapier_body({**call, "page": {"type": "integer", "minimum": 1}}, ("app", "action_type")),
            parameters=[_path_param("key", "action key"), _path_param("input_id", "input field id")])},
        "/v1/zapier/action-runs": {"post": run_op(
            "zapier_run", "Zapier: run an action (created once), waiting up to `wait` for its result",
            body=_zapier_body({**call, "action": {"type": "string"}, "wait": wait}, ("app", "action", "action_type")))},
        "/v1/zapier/action-runs/{run_id}": {"get": run_op(
            "zapier_run_status", "Zapier: an action run's status, waiting up to `wait`",
            parameters=[*user, _query("wait", {"type": "string"}), _path_param("run_id", "the run's id")])},
    }


def openapi_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    """A route handler serving the document (serialised once)."""
    body = json.dumps(build_openapi(settings), separators=(",", ":")).encode("utf-8")

    async def openapi(request: Request) -> Response:
        """GET /openapi.json"""
        return Response(body, media_type="application/json")

    return openapi
