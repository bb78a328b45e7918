"""The OpenAPI entries of the partner's routes, given to the core document through the seam
(Feature.openapi, merged by keysvc.openapi): POST /v1/token-exchange, and the gateway's /v1/zapier/*
derived from their contracts (keysvc.partner.contracts)."""

from __future__ import annotations

from keysvc.feature import OpenApiPart
from keysvc.openapi import JsonObject
from keysvc.partner.contracts import DEFAULT_LIMITS, EXCHANGE, gateway_paths
from keysvc.partner.fields import Limits


def _exchange_schemas() -> JsonObject:
    return {
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


def partner_openapi(limits: Limits = DEFAULT_LIMITS) -> OpenApiPart:
    """The partner feature's paths and schemas; the configured bounds (`run_wait_max`, `lease_wait_max`,
    `redirect_uris`) stated as this replica's settings set them."""
    paths: JsonObject = {EXCHANGE.path: EXCHANGE.openapi(limits)}
    paths.update(gateway_paths(limits))
    schemas = {EXCHANGE.body_schema_name or "": EXCHANGE.body_schema(limits), **_exchange_schemas()}
    return OpenApiPart(paths=paths, schemas=schemas)
