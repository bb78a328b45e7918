"""The OpenAPI entries of the partner's routes, given to the core document through the seam
(Feature.openapi, merged by keysvc.openapi): POST /v1/token-exchange, and the gateway's /v1/zapier/*
derived from their contracts (keysvc.partner.gateway_contract)."""

from __future__ import annotations

from keysvc.feature import OpenApiPart
from keysvc.openapi import BODY_ERRORS, JsonObject, json_answer, json_body, operation
from keysvc.partner.gateway_contract import gateway_paths


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
    paths.update(gateway_paths())
    return OpenApiPart(paths=paths, schemas=_exchange_schemas())
