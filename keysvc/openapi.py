"""The OpenAPI 3 document of the internal API, served at `GET /openapi.json` on the internal listener.

Built once from the settings and the features' parts (keysvc.feature.OpenApiPart: a feature's paths and
schemas, listed only when it is configured; this module names no feature, and offers the builders below,
`operation`, `json_answer`, `json_body`, `path_param`, `query_param`, to write them). It is
the contract the fuzz test (tests/test_fuzz_api.py, schemathesis) holds the live service to: every
documented status, header and body schema, and nothing undocumented — so each status an operation can
answer is listed here, with the error body every 4xx/5xx carries.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from keysvc import __version__
from keysvc.config import Settings
from keysvc.feature import OpenApiPart
from keysvc.tokens import RESERVED_CLAIMS

if TYPE_CHECKING:  # the document itself is data: only serving it needs starlette (a route's contract does not)
    from starlette.requests import Request
    from starlette.responses import Response

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
    502: "upstream_error: a service keysvc called failed or answered something malformed",
    503: "unavailable: the key store or a service keysvc calls cannot serve now (`Retry-After`)",
}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
BODY_ERRORS = (400, 401, 403, 413, 415, 429)  # what any authenticated JSON-body route can answer


def error_answer(status: int) -> JsonObject:
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


def json_answer(description: str, schema: JsonObject) -> JsonObject:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def json_body(schema: JsonObject, *, required: bool = True) -> JsonObject:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def operation(op_id: str, summary: str, ok: JsonObject, errors: tuple[int, ...], *, secured: bool = True,
               body: JsonObject | None = None, parameters: list[JsonObject] | None = None) -> JsonObject:
    op: JsonObject = {
        "operationId": op_id,
        "summary": summary,
        "responses": {"200": ok, **{str(s): error_answer(s) for s in errors}},
        # a client certificate mapped by listen.tls is the alternative to the key (see the scheme)
        "security": [{"apiKey": []}] if secured else [],
    }
    if body is not None:
        op["requestBody"] = body
    if parameters:
        op["parameters"] = parameters
    return op


def query_param(name: str, schema: JsonObject, *, required: bool = False) -> JsonObject:
    """A query parameter."""
    return {"name": name, "in": "query", "required": required, "schema": schema}


def path_param(name: str, description: str) -> JsonObject:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _schemas() -> JsonObject:
    audience = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    return {
        "Error": {
            "type": "object",
            "required": ["error", "error_description"],
            "properties": {"error": {"type": "string"}, "error_description": {"type": "string"},
                           "connection": {"type": "string", "description": "409 reconnect_required only: the "
                                          "Zapier connection to reconnect (open Connect with reconnect_id)"}},
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
    }


def build_openapi(settings: Settings, parts: Sequence[OpenApiPart] = ()) -> JsonObject:
    """The OpenAPI 3.1 document of the internal listener for these settings: the core's routes, and the
    paths and schemas of each feature's part (keysvc.feature.OpenApiPart)."""
    body_errors = BODY_ERRORS
    paths: JsonObject = {
        "/v1/sign": {"post": operation(
            "sign", "Sign: a JWT with the keyset's active key",
            json_answer("The signed token", {"$ref": "#/components/schemas/SignResponse"}),
            (*body_errors, 503), body=json_body({"$ref": "#/components/schemas/SignRequest"}),
        )},
        "/v1/keys": {"get": operation(
            "list_keys", "List keys: every key of the keysets this client administers (admin)",
            json_answer("Keys", {"type": "object", "required": ["keys"], "additionalProperties": False,
                           "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}}}),
            (401, 403, 429),
        )},
        "/v1/keysets/{name}/rotate": {"post": operation(
            "rotate", "Rotate: promote the pending key now (admin of the keyset)",
            json_answer("The newly active key", {
                "type": "object", "required": ["keyset", "active_kid", "activated_at"], "additionalProperties": False,
                "properties": {"keyset": {"type": "string"}, "active_kid": {"type": "string"},
                               "activated_at": {"type": "number"}},
            }),
            (*body_errors, 404, 409, 503),
            body=json_body({"type": "object", "properties": {"force": {"type": "boolean"}},
                            "additionalProperties": False}, required=False),
            parameters=[path_param("name", "keyset name")],
        )},
        "/v1/keys/{kid}/revoke": {"post": operation(
            "revoke", "Revoke: a key at once (admin of its keyset; any other kid is not_found)",
            json_answer("The revoked key", {
                "type": "object", "required": ["keyset", "kid", "revoked_at"], "additionalProperties": False,
                "properties": {"keyset": {"type": "string"}, "kid": {"type": "string"},
                               "revoked_at": {"type": "number"}},
            }),
            (*body_errors, 404, 503),
            parameters=[path_param("kid", "the key's RFC 7638 thumbprint")],
        )},
        "/metrics": {"get": operation(
            "metrics", "Metrics: Prometheus exposition",
            {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
            (), secured=False,
        )},
        "/healthz": {"get": operation(
            "healthz", "Health: the process is alive",
            json_answer("Alive", {"type": "object", "required": ["status"],
                                  "properties": {"status": {"type": "string"}}}),
            (), secured=False,
        )},
        "/openapi.json": {"get": operation(
            "openapi", "OpenAPI: this document", json_answer("OpenAPI 3.1 document", {"type": "object"}), (),
            secured=False,
        )},
    }
    schemas = _schemas()
    for part in parts:
        paths.update(part.paths)
        schemas.update(part.schemas)
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
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {
                    "type": "http", "scheme": "bearer",
                    "description": "Authorization: Bearer <API key>; or, with listen.tls, a client certificate "
                                   "mapped to the client (cert_subjects) instead",
                },
            },
        },
    }


def openapi_endpoint(settings: Settings, parts: Sequence[OpenApiPart] = ()) -> Callable[[Request], Awaitable[Response]]:
    """A route handler serving the document (serialised once)."""
    from starlette.responses import Response

    body = json.dumps(build_openapi(settings, parts), separators=(",", ":")).encode("utf-8")

    async def openapi(request: Request) -> Response:
        """GET /openapi.json"""
        return Response(body, media_type="application/json")

    return openapi
