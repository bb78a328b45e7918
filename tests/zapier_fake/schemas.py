"""The request and response shapes of the Partner API endpoints keysvc uses, as JSON Schema (2020-12).

Transcribed by hand from Zapier's OpenAPI document "Partner API", version 2024.11.0
(`openapi/zapier-partner-api.yml`): the component schemas of the same name, and each operation's
parameters as a schema over the query string (`*_QUERY`). Only what these endpoints need is here;
descriptions are left out. Where we add a bound the document does not state, the line says so.

Which 200 answers the document types as a one-element array around `{links, meta, data}`:
GET /v2/apps, GET /v2/actions, POST /v2/actions/{action_id}/inputs/{input_id}/choices.
GET /v2/authentications and POST /v2/actions/{action_id}/inputs answer the object itself.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

NULLABLE_STRING: Schema = {"type": ["string", "null"]}
FREE_OBJECT: Schema = {"type": "object", "additionalProperties": {}}

# --- shared components -------------------------------------------------------------------------------

LINKS: Schema = {
    "type": "object",
    "properties": {"next": NULLABLE_STRING, "prev": NULLABLE_STRING},
}
BASE_META: Schema = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "limit": {"type": ["integer", "null"], "minimum": 1},
        "offset": {"type": "integer", "minimum": 0, "default": 0},
    },
    "required": ["count", "limit"],
}
META: Schema = {"type": "object", "properties": {"page": {"type": "integer"}}, "required": ["page"]}

ERROR_SOURCE: Schema = {
    "type": "object",
    "properties": {"pointer": {"type": "string"}, "parameter": {"type": "string"}, "header": {"type": "string"}},
}
ERROR: Schema = {
    "type": "object",
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
        "source": {"oneOf": [ERROR_SOURCE, {"type": "null"}]},
        "meta": {"type": ["object", "null"], "additionalProperties": {}},
    },
}
ERROR_RESPONSE: Schema = {
    "type": "object",
    "properties": {"errors": {"type": "array", "items": ERROR}},
    "required": ["errors"],
}

APPS_IMAGES: Schema = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in ("url_16x16", "url_32x32", "url_64x64", "url_128x128")},
    "required": ["url_128x128", "url_16x16", "url_32x32", "url_64x64"],
}
APP: Schema = {  # the document's `Apps`
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "default": "app"},
        "image": {"type": "string"},
        "links": FREE_OBJECT,
        "action_types": {"type": "array", "items": {}},
        "title": {"type": "string"},
        "images": APPS_IMAGES,
        "hex_color": {"type": "string"},
        "categories": {
            "type": "array",
            "items": {"type": "object", "properties": {"slug": {"type": "string"}}, "required": ["slug"]},
        },
        "description": {"type": "string"},
    },
    "required": ["action_types", "categories", "description", "hex_color", "id", "image", "images", "links", "title"],
}
APP_OR_ID: Schema = {"oneOf": [APP, {"type": "string"}]}

ACTION_TYPES = ["READ", "READ_BULK", "SEARCH", "SEARCH_AND_WRITE", "SEARCH_OR_WRITE", "WRITE"]
# The `action_type` member of an Action also allows FILTER (the document's description of the member).
ACTION_TYPES_OF_ITEMS = [*ACTION_TYPES, "FILTER"]
ACTION: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "key": {"type": "string"},
        "app": APP_OR_ID,
        "type": {"enum": ["action"], "type": "string"},
        "action_type": {"enum": ACTION_TYPES_OF_ITEMS, "type": "string"},
        "is_instant": {"type": "boolean"},
        "title": {"type": "string"},
        "description": {"type": "string"},
    },
    "required": ["action_type", "app", "description", "id", "is_instant", "key", "title", "type"],
}

AUTHENTICATION: Schema = {
    "type": "object",
    "properties": {
        "type": {"enum": ["authentication"], "type": "string", "default": "authentication"},
        "id": {"type": "string"},
        "app": APP_OR_ID,
        "is_expired": {"type": "boolean"},
        "title": {"type": "string"},
    },
    "required": ["app", "id", "is_expired", "title", "type"],
}

FORMATS = ["DATETIME", "MULTILINE", "PASSWORD", "CODE", "READONLY", "FILE", "SELECT"]
VALUE_TYPES = ["STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT"]
INPUT_FIELD: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "id": {"type": "string"},
        "default_value": {"type": "string"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "format": {"enum": FORMATS, "type": "string"},
        "invalidates_input_fields": {"type": "boolean"},
        "is_required": {"type": "boolean"},
        "items": {"type": "object", "additionalProperties": {"type": "string"}},
        "placeholder": {"type": "string"},
        "title": {"type": "string"},
        "value_type": {"enum": VALUE_TYPES, "type": "string"},
    },
    "required": [
        "default_value",
        "depends_on",
        "description",
        "format",
        "id",
        "invalidates_input_fields",
        "is_required",
        "items",
        "placeholder",
        "title",
        "type",
        "value_type",
    ],
}
INFO_FIELD: Schema = {
    "type": "object",
    "properties": {"type": {"type": "string"}, "id": {"type": "string"}, "description": {"type": "string"}},
    "required": ["description", "id", "type"],
}
FIELDSET: Schema = {
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "id": {"type": "string"},
        "fields": {"anyOf": [INPUT_FIELD, INFO_FIELD]},  # the document's FieldsetFieldsField, verbatim
        "title": {"type": "string"},
    },
    "required": ["fields", "id", "title", "type"],
}
ROOT_FIELDSET: Schema = {"type": "array", "items": {"anyOf": [INPUT_FIELD, INFO_FIELD, FIELDSET]}}

CHOICE: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "label": NULLABLE_STRING,
        "value": {"type": "string"},
    },
    "required": ["id", "type", "value"],
}

RUN_STATUSES = ["success", "error", "waiting"]  # _ActionRunResponseStatusEnum
RUN_ERROR_CODES = ["user", "authentication", "partner", "system", "throttled", "system_throttled", "hydration"]
RUN_ERROR: Schema = {  # _ActionRunResponseError
    "type": "object",
    "properties": {
        "code": {"enum": RUN_ERROR_CODES, "type": "string"},
        "title": {"type": "string"},
        "detail": {"type": "string"},
        "delay": {"type": "integer"},
        "meta": {"type": ["object", "null"], "additionalProperties": {}},
    },
}

# --- responses (200) ---------------------------------------------------------------------------------

EXPANDED_APPS_RESPONSE: Schema = {
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": APP},
        "meta": {"type": ["object", "null"], "additionalProperties": {}},
        "links": {"type": ["object", "null"], "additionalProperties": {}},
    },
    "required": ["data", "links", "meta"],
}
AUTHENTICATION_RESPONSE: Schema = {
    "type": "object",
    "properties": {"links": LINKS, "meta": BASE_META, "data": {"type": "array", "items": AUTHENTICATION}},
    "required": ["links", "meta"],
}
ACTIONS_RESPONSE: Schema = {
    "type": "object",
    "properties": {"links": LINKS, "meta": BASE_META, "data": {"type": "array", "items": ACTION}},
    "required": ["links", "meta"],
}
INPUT_FIELDS_RESPONSE: Schema = {
    "type": "object",
    "properties": {"links": LINKS, "meta": BASE_META, "data": ROOT_FIELDSET},
    "required": ["data", "links", "meta"],
}
CHOICE_RESPONSE: Schema = {
    "type": "object",
    "properties": {"data": {"type": "array", "items": CHOICE}, "links": LINKS, "meta": META},
    "required": ["links", "meta"],
}
RUN_ACTION_RESPONSE: Schema = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {"type": {"enum": ["run"], "type": "string"}, "id": {"type": "string", "format": "uuid"}},
            "required": ["id", "type"],
        }
    },
    "required": ["data"],
}
ACTION_RUN_RESPONSE: Schema = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {
                "type": {"enum": ["run"], "type": "string"},
                "status": {"enum": RUN_STATUSES, "type": "string"},
                "results": {"type": "array", "items": FREE_OBJECT},
                "errors": {"type": "array", "items": RUN_ERROR},
            },
            "required": ["errors", "status", "type"],
        }
    },
    "required": ["data"],
}


def one_element_array(schema: Schema) -> Schema:
    """The document's `type: array, items: X` answer, which Zapier fills with exactly one X."""
    return {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}


# --- requests ----------------------------------------------------------------------------------------

LIST_INPUT_FIELDS_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {"authentication": NULLABLE_STRING, "inputs": FREE_OBJECT},
            "required": ["authentication", "inputs"],
        }
    },
    "required": ["data"],
}
CHOICE_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "data": {  # ChoiceParams
            "type": "object",
            "properties": {
                "authentication": NULLABLE_STRING,
                "inputs": {"type": ["object", "null"], "additionalProperties": {}},
            },
            "required": ["authentication", "inputs"],
        }
    },
    "required": ["data"],
}
RUN_ACTION_REQUEST: Schema = {
    "type": "object",
    "properties": {
        "data": {
            "type": "object",
            "properties": {"action": {"type": "string"}, "authentication": NULLABLE_STRING, "inputs": FREE_OBJECT},
            "required": ["action", "authentication", "inputs"],
        }
    },
    "required": ["data"],
}

# Query strings: integers and UUIDs arrive as text; the fake converts what parses before validating.
# `minimum` on limit/offset is ours, taken from the document's BaseMeta (limit >= 1, offset >= 0).
_PAGING = {"limit": {"type": "integer", "minimum": 1}, "offset": {"type": "integer", "minimum": 0}}
APPS_QUERY: Schema = {
    "type": "object",
    "properties": {
        "category": {"type": "string"},
        "ids": {"type": "string"},
        "query": {"type": "string"},
        "client_id": {"type": "string"},  # ClientIDAuthentication
        **_PAGING,
    },
}
AUTHENTICATIONS_QUERY: Schema = {
    "type": "object",
    "properties": {"app": {"type": "string", "format": "uuid"}, **_PAGING},
    "required": ["app"],
}
ACTIONS_QUERY: Schema = {
    "type": "object",
    "properties": {
        "action_type": {"type": "string", "enum": ACTION_TYPES},
        "app": {"type": "string", "format": "uuid"},
        "client_id": {"type": "string"},
    },
    "required": ["app"],
}
# The document types `page` as a string (default "1"); the pattern is ours: Zapier counts pages from 1.
CHOICES_QUERY: Schema = {
    "type": "object",
    "properties": {"page": {"type": "string", "pattern": "^[1-9][0-9]{0,5}$"}},
}
NO_QUERY: Schema = {"type": "object", "properties": {}}

# Which query parameters are integers (converted from text before validation).
INTEGER_PARAMETERS = frozenset({"limit", "offset"})

