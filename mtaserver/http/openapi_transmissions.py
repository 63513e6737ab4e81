"""The OpenAPI paths and schemas of the `<transmissions-api-listener>` port.

`mtaserver.http.openapi.document()` includes them (`paths()`, `schemas()`); each path
names its own server (a Transmissions API listener, not the management port). The
schemas list every field the API takes and say which ones are refused with a 422
(`x-unsupported`), and `additionalProperties: false` where an unknown field is a
422, so a generated client sends nothing the server would refuse by surprise. The
test suite runs schemathesis against a real server's listener with these paths.
"""

from __future__ import annotations

from typing import Any

_SERVERS = [
    {
        "url": "https://{listener}",
        "description": "a <transmissions-api-listener>, not the mgmt port",
        "variables": {"listener": {"default": "127.0.0.1:8585"}},
    }
]
_SECURITY: list[dict[str, list[str]]] = [{"transmissionsKey": []}]

_ADDRESS = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "required": ["email"],
            "additionalProperties": False,
            "properties": {
                "email": {"type": "string"},
                "name": {"type": "string"},
                "header_to": {"type": "string"},
            },
        },
    ]
}

_PART = {
    "type": "object",
    "required": ["name", "type", "data"],
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string"},
        "data": {"type": "string", "description": "base64"},
    },
}


def _refused(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description + " (true: 422)", "x-unsupported": True}


_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "start_time": {
            "type": "string",
            "description": "ISO 8601 with an offset, or `now`; at most 3 days ahead (422)",
            "example": "2026-12-01T08:00:00+01:00",
        },
        "ip_pool": {"type": "string", "description": "a <virtual-mta-pool> (unknown: 422)"},
        "transactional": {"type": "boolean"},
        "skip_suppression": {"type": "boolean"},
        "perform_substitutions": {"type": "boolean"},
        "smtputf8": {"type": "boolean"},
        "open_tracking": _refused("no engagement tracking"),
        "click_tracking": _refused("no engagement tracking"),
        "initial_open": _refused("no engagement tracking"),
        "inline_css": _refused("no CSS inlining"),
        "sandbox": _refused("no sandbox domain"),
    },
}

_CONTENT_FIELDS: dict[str, Any] = {
    "from": _ADDRESS,
    "subject": {"type": "string"},
    "text": {"type": "string"},
    "html": {"type": "string"},
    "reply_to": {"type": "string"},
    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
    "attachments": {"type": "array", "items": _PART},
    "inline_images": {"type": "array", "items": _PART},
    "email_rfc822": {"type": "string"},
    "amp_html": {"type": "string", "description": "not supported (non-empty: 422)"},
}

_TRANSMISSION = {
    "type": "object",
    "required": ["recipients", "content"],
    "additionalProperties": False,
    "properties": {
        "return_path": {"type": "string"},
        "campaign_id": {"type": "string"},
        "description": {"type": "string"},
        "options": _OPTIONS,
        "metadata": {"type": "object"},
        "substitution_data": {"type": "object"},
        "recipients": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["address"],
                "additionalProperties": False,
                "properties": {
                    "address": _ADDRESS,
                    "return_path": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object"},
                    "substitution_data": {"type": "object"},
                },
            },
        },
        "content": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                **_CONTENT_FIELDS,
                "template_id": {"type": "string", "description": "a stored template"},
                "use_draft_template": {"type": "boolean"},
            },
        },
    },
}

_TEMPLATE_CONTENT = {
    "type": "object",
    "additionalProperties": False,
    "properties": _CONTENT_FIELDS,
}

_TEMPLATE_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "open_tracking": _refused("no engagement tracking"),
        "click_tracking": _refused("no engagement tracking"),
        "transactional": {"type": "boolean"},
    },
}

_TEMPLATE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "published": {"type": "boolean"},
        "options": _TEMPLATE_OPTIONS,
        "content": _TEMPLATE_CONTENT,
        "shared_with_subaccounts": _refused("no subaccounts"),
    },
}

_TEMPLATE_SUMMARY = {
    "type": "object",
    "required": ["id", "name", "published", "has_draft", "has_published"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "published": {"type": "boolean"},
        "has_draft": {"type": "boolean"},
        "has_published": {"type": "boolean"},
        "last_update_time": {"type": "string"},
        "shared_with_subaccounts": {"type": "boolean"},
        "options": {"type": "object"},
        "content": {"type": "object"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _results(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _json(
        {"type": "object", "required": ["results"], "properties": {"results": schema}},
        description,
    )


def _errors(*codes: str) -> dict[str, Any]:
    text = {
        "400": "Invalid request (malformed JSON or value; the field is named)",
        "403": "Bad or missing API key",
        "404": "Not found",
        "405": "Method not allowed",
        "409": "A template with this id exists",
        "413": "Body too large (max-request-size) or message too large",
        "415": "Not application/json",
        "422": "A field this server does not know or support (named), or an unknown "
        "template, ip_pool or too late a start_time",
        "500": "Server error",
        "503": "Spool full (Retry-After) or suppression list unavailable",
    }
    error = {"$ref": "#/components/schemas/Errors"}
    return {code: _json(error, text[code]) for code in codes}


_ID_PARAMETER = {
    "name": "template_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": ["true", "false"]},
        "description": description,
    }


_DRAFT = _flag("draft", "true: the draft; false: the published version; absent: the latest")


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def schemas() -> dict[str, Any]:
    """The component schemas these paths refer to (`Errors` is the document's own)."""
    return {"Transmission": _TRANSMISSION, "Template": _TEMPLATE}


def paths() -> dict[str, Any]:
    """`/api/v1/transmissions` and `/api/v1/templates...`."""
    common = {"servers": _SERVERS}
    template_ref = {"$ref": "#/components/schemas/Template"}
    return {
        "/api/v1/transmissions": {
            **common,
            "post": {
                "tags": ["transmissions"],
                "summary": "Send a message (SparkPost compatible)",
                "security": _SECURITY,
                "requestBody": _body({"$ref": "#/components/schemas/Transmission"}),
                "responses": {
                    "200": _results(
                        {
                            "type": "object",
                            "properties": {
                                "total_accepted_recipients": {"type": "integer"},
                                "total_rejected_recipients": {"type": "integer"},
                                "id": {"type": "string"},
                                "rcpt_to_errors": {"type": "array"},
                            },
                        },
                        "Accepted (every message durable)",
                    ),
                    **_errors("400", "403", "405", "413", "415", "422", "500", "503"),
                },
            },
        },
        "/api/v1/templates": {
            **common,
            "get": {
                "tags": ["templates"],
                "summary": "List stored templates",
                "security": _SECURITY,
                "responses": {
                    "200": _results({"type": "array", "items": _TEMPLATE_SUMMARY}, "Templates"),
                    **_errors("403"),
                },
            },
            "post": {
                "tags": ["templates"],
                "summary": "Create a template (a draft unless published is true)",
                "security": _SECURITY,
                "requestBody": _body(template_ref),
                "responses": {
                    "200": _results(
                        {"type": "object", "properties": {"id": {"type": "string"}}}, "Created"
                    ),
                    **_errors("400", "403", "409", "413", "415", "422"),
                },
            },
        },
        "/api/v1/templates/{template_id}": {
            **common,
            "parameters": [_ID_PARAMETER],
            "get": {
                "tags": ["templates"],
                "summary": "One template's draft, published or latest version",
                "security": _SECURITY,
                "parameters": [_DRAFT],
                "responses": {
                    "200": _results(_TEMPLATE_SUMMARY, "The template"),
                    **_errors("400", "403", "404"),
                },
            },
            "put": {
                "tags": ["templates"],
                "summary": "Change the draft (published: true publishes it)",
                "security": _SECURITY,
                "parameters": [
                    _flag("update_published", "true: change the published version in place")
                ],
                "requestBody": _body(template_ref),
                "responses": {
                    "200": _results(
                        {"type": "object", "properties": {"id": {"type": "string"}}}, "Updated"
                    ),
                    **_errors("400", "403", "404", "413", "415", "422"),
                },
            },
            "delete": {
                "tags": ["templates"],
                "summary": "Delete every version",
                "security": _SECURITY,
                "responses": {
                    "200": _json({"type": "object"}, "Deleted"),
                    **_errors("403", "404"),
                },
            },
        },
        "/api/v1/templates/{template_id}/preview": {
            **common,
            "parameters": [_ID_PARAMETER],
            "post": {
                "tags": ["templates"],
                "summary": "The content rendered with substitution_data",
                "security": _SECURITY,
                "parameters": [_DRAFT],
                "requestBody": _body(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"substitution_data": {"type": "object"}},
                    }
                ),
                "responses": {
                    "200": _results({"type": "object"}, "The rendered content"),
                    **_errors("400", "403", "404", "413", "415", "422"),
                },
            },
        },
    }
