"""The Trigger Inbox API's request and answer shapes, as JSON Schema (2020-12).

Transcribed by hand from Zapier's OpenAPI document "Trigger Inbox API", version 1.0.0, and its reference
pages (see PUBLISHED.md for the sources and for each choice where the pages say nothing). Requests are
validated by the fake; answers are what the fake produces, checked by its own tests. Where we add a bound
or a requirement the pages do not state, the line says so.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

UUID: Schema = {"type": "string", "format": "uuid"}
NULLABLE_UUID: Schema = {"type": ["string", "null"], "format": "uuid"}
DATE_TIME: Schema = {"type": "string", "format": "date-time"}
NULLABLE_DATE_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
KEY: Schema = {"type": "string", "minLength": 1, "maxLength": 100}  # minLength: ours (an empty key names nothing)
NOTIFICATION_URL: Schema = {"type": ["string", "null"], "format": "uri", "maxLength": 2048}

STATUSES = ("initializing", "active", "paused", "deleting", "initialization_failure")
PAUSED_REASONS = ("user", "authentication", "authentication_access_revoked", "partner_revoked",
                  "subscribe_failed", "migrate_failed", "abandoned", "unknown", "upstream_failures")
PAUSED_REASON: Schema = {"enum": [*PAUSED_REASONS, None]}

SUBSCRIPTION: Schema = {
    "type": "object",
    "properties": {
        "app_key": {"type": "string", "minLength": 1},
        "action_key": {"type": "string", "minLength": 1},
        # a UUID in the examples, a numeric string from /v2/authentications, none for apps without auth
        "connection_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 128},  # maxLength: ours
        "inputs": {"type": "object", "additionalProperties": {}},
    },
    "required": ["app_key", "action_key"],  # which are required is not legible in the pages: ours
}

CAUSATION_HEADERS = ("zapier-causation-id", "zapier-correlation-id")  # optional UUIDs on create and ensure

ENSURE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "subscription": SUBSCRIPTION,
        "key": KEY,
        "name": {**KEY, "deprecated": True},
        "notification_url": NOTIFICATION_URL,
    },
    "required": ["subscription"],
    "anyOf": [{"required": ["key"]}, {"required": ["name"]}],  # "A key is required (name ... alias)"
}
CREATE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "subscription": SUBSCRIPTION,
        "key": KEY,
        "name": {"type": ["string", "null"], "maxLength": 100, "deprecated": True},
        "notification_url": NOTIFICATION_URL,
    },
    "required": ["subscription"],
}
PATCH_REQUEST: Schema = {"type": "object", "properties": {"notification_url": NOTIFICATION_URL}}
LEASE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "lease_seconds": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 300},
        "lease_limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
    },
}
ACK_REQUEST: Schema = {
    "type": "object",
    "properties": {"lease_id": UUID, "message_ids": {"type": "array", "items": UUID, "minItems": 1, "maxItems": 100}},
    "required": ["lease_id"],
}
RELEASE_REQUEST: Schema = {
    "type": "object",
    "properties": {"lease_id": UUID, "message_ids": {"type": "array", "items": UUID, "minItems": 1}},
    "required": ["lease_id"],
}
NO_BODY: None = None

LIST_QUERY: Schema = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "name": {"type": "string", "deprecated": True},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "status": {"enum": list(STATUSES)},
    },
}
NO_QUERY: Schema = {"type": "object", "properties": {}}
INTEGER_PARAMETERS = frozenset({"limit", "offset"})

# --- answers ------------------------------------------------------------------------------------------

INBOX: Schema = {
    "type": "object",
    "properties": {
        "id": UUID,
        "created_at": DATE_TIME,
        "status": {"type": "string"},
        "subscription": SUBSCRIPTION,
        "key": KEY,
        "name": KEY,
        "paused_reason": PAUSED_REASON,
        "notification_url": NOTIFICATION_URL,
    },
    "required": ["id", "created_at", "status", "subscription"],
}
INBOX_LIST: Schema = {
    "type": "object",
    "properties": {
        "count": {"type": "integer"},
        "results": {"type": "array", "items": INBOX},
        "next": {"type": ["string", "null"], "format": "uri"},
        "previous": {"type": ["string", "null"], "format": "uri"},
    },
    "required": ["count", "results"],
}
MESSAGE: Schema = {
    "type": "object",
    "properties": {
        "id": UUID,
        "created_at": DATE_TIME,
        "status": {"type": "string"},
        "payload": {},
        "message_attributes": {
            "type": "object",
            "properties": {"lease_count": {"type": "integer", "minimum": 0}},
        },
    },
    "required": ["id"],
}
INBOX_ATTRIBUTES: Schema = {
    "type": "object",
    "properties": {"status": {"type": "string"}, "paused_reason": PAUSED_REASON},
    "required": ["status", "paused_reason"],
}
LEASE_ANSWER: Schema = {
    "type": "object",
    "properties": {
        "lease_id": NULLABLE_UUID,
        "leased_until": NULLABLE_DATE_TIME,
        "results": {"type": "array", "items": MESSAGE},
        "inbox_attributes": INBOX_ATTRIBUTES,
    },
    "required": ["lease_id", "leased_until", "results", "inbox_attributes"],
}
ACK_ANSWER: Schema = {
    "type": "object",
    "properties": {"acked_id": NULLABLE_UUID, "results": {"type": "array", "items": MESSAGE}},
    "required": ["acked_id", "results"],
}
RELEASE_ANSWER: Schema = {
    "type": "object",
    "properties": {"released_id": NULLABLE_UUID, "results": {"type": "array", "items": MESSAGE}},
    "required": ["released_id", "results"],
}
ERROR_ANSWER: Schema = {
    "type": "object",
    "properties": {
        "errors": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "code": {"type": "string"},
                    "detail": {"type": "string"},
                    "status": {"type": "integer"},
                    "title": {"type": "string"},
                    "source": {"type": "object"},
                },
                "required": ["code", "detail"],
            },
        }
    },
    "required": ["errors"],
}
NOTIFICATION: Schema = {  # the `messageAvailable` webhook
    "type": "object",
    "properties": {
        "inbox_id": UUID,
        "received_message_count": {"type": "integer", "minimum": 0},
        "redelivery": {"type": "boolean"},
    },
    "required": ["inbox_id", "received_message_count", "redelivery"],
}
