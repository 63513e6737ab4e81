"""The OpenAPI 3 description of every HTTP endpoint, served at `/api/v1/openapi.json`.

It covers the management port (command, configuration and monitoring APIs) and, for
completeness, the Transmissions API of the `<transmissions-api-listener>` port (its
`servers` entry says so). The test suite runs schemathesis against this document and
the real server, so the document and the code cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from mtaserver.commands import SPECS, version

_ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"type": "string", "enum": ["success", "error"]},
        "message": {"type": "string"},
        "data": {},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["message"],
                "properties": {
                    "message": {"type": "string"},
                    "description": {"type": "string"},
                },
            },
        },
    },
}

_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["json", "json-text"], "default": "json"},
    "description": "`json`: structured data; `json-text`: data is the text mtactl prints.",
}


def _reply(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}}},
    }


_ERRORS = {
    "400": _reply("Bad request: unknown command, bad argument, invalid config"),
    "401": _reply("The X-API-Key header matches no http-api-key"),
    "403": _reply("Access denied (http-access level too low, or a forbidden file name)"),
}


def _monitor(summary: str, command: str) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["monitoring"],
            "summary": summary,
            "description": f"The data of `{command}`.",
            "parameters": [_FORMAT],
            "responses": {"200": _reply("Success"), **_ERRORS},
        }
    }


_FORM_COMMAND = {
    "type": "object",
    "required": ["command"],
    "properties": {
        "command": {"type": "string", "description": "One mtactl command line"},
        "format": {"type": "string", "enum": ["json", "json-text"]},
    },
}

_FORM_COMMIT = {
    "type": "object",
    "required": ["op"],
    "properties": {
        "op": {"type": "string", "enum": ["commit"]},
        "format": {"type": "string", "enum": ["json", "json-text"]},
    },
    "additionalProperties": {"type": "string"},
    "description": "`file.N.name`, `file.N.op` (write) and `file.N.content` for N = 1, 2, ...",
}

_ADDRESS = {
    "oneOf": [
        {"type": "string"},
        {
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string"},
                "name": {"type": "string"},
                "header_to": {"type": "string"},
            },
        },
    ]
}

_TRANSMISSION = {
    "type": "object",
    "required": ["recipients", "content"],
    "properties": {
        "return_path": {"type": "string"},
        "campaign_id": {"type": "string"},
        "options": {"type": "object", "properties": {"smtputf8": {"type": "boolean"}}},
        "metadata": {"type": "object"},
        "substitution_data": {"type": "object"},
        "recipients": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["address"],
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
            "properties": {
                "email_rfc822": {"type": "string"},
                "from": _ADDRESS,
                "subject": {"type": "string"},
                "text": {"type": "string"},
                "html": {"type": "string"},
                "reply_to": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "attachments": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type", "data"],
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"type": "string"},
                            "data": {"type": "string", "description": "base64"},
                        },
                    },
                },
            },
        },
    },
}

_SPARKPOST_ERRORS = {
    "type": "object",
    "required": ["errors"],
    "properties": {"errors": _ENVELOPE["properties"]["errors"]},
}


def _sparkpost_error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.0 document."""
    commands = "\n".join(f"- `{spec.usage}` ({spec.level})" for spec in SPECS)
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mtaserver HTTP APIs",
            "version": version(),
            "description": (
                "Management (http-mgmt-port): commands, config files, monitoring. "
                "Access: `X-API-Key: <http-api-key>` is admin; otherwise the first "
                "`http-access CIDR none|monitor|admin` matching the client decides."
            ),
        },
        "servers": [{"url": "/", "description": "the http-mgmt-port"}],
        "components": {
            "schemas": {
                "Envelope": _ENVELOPE,
                "Errors": _SPARKPOST_ERRORS,
                "Transmission": _TRANSMISSION,
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "transmissionsKey": {"type": "apiKey", "in": "header", "name": "Authorization"},
            },
        },
        "security": [{"apiKey": []}, {}],
        "paths": {
            "/command": {
                "post": {
                    "tags": ["command"],
                    "summary": "Run one mtactl command",
                    "description": "Commands and the access level each needs:\n" + commands,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {"schema": _FORM_COMMAND},
                            "multipart/form-data": {"schema": _FORM_COMMAND},
                        },
                    },
                    "responses": {
                        "200": _reply("The command ran"),
                        **_ERRORS,
                        "413": _reply("Body too large"),
                    },
                }
            },
            "/configFile": {
                "get": {
                    "tags": ["configuration"],
                    "summary": "Read or list config files",
                    "parameters": [
                        {
                            "name": "op",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "enum": ["read", "listconfigfiles"]},
                        },
                        {
                            "name": "filename",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "Relative to the main config file's directory",
                        },
                        _FORMAT,
                    ],
                    "responses": {
                        "200": _reply("The file's text, or the list of file names"),
                        **_ERRORS,
                        "404": _reply("No such file"),
                    },
                },
                "post": {
                    "tags": ["configuration"],
                    "summary": "Validate then atomically write config files (no reload)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {"schema": _FORM_COMMIT},
                            "application/x-www-form-urlencoded": {"schema": _FORM_COMMIT},
                        },
                    },
                    "responses": {
                        "200": _reply("Written"),
                        **_ERRORS,
                        "413": _reply("Body too large"),
                    },
                },
            },
            "/status": _monitor("Traffic, connections and queue totals", "show status"),
            "/queues": _monitor("Every queue: size, mode, pause state, counters", "show queues"),
            "/domains": _monitor("Queues grouped by domain", "show domains"),
            "/vmtas": _monitor("Queues grouped by virtual MTA", "show vmtas"),
            "/jobs": _monitor("Queued messages grouped by job id", "show jobs"),
            "/metrics": {
                "get": {
                    "tags": ["monitoring"],
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _ERRORS["401"],
                        "403": _ERRORS["403"],
                    },
                }
            },
            "/api/v1/openapi.json": {
                "get": {
                    "tags": ["meta"],
                    "summary": "This document",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3 JSON",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/api/v1/transmissions": {
                "servers": [
                    {
                        "url": "https://{listener}",
                        "description": "a <transmissions-api-listener>, not the mgmt port",
                        "variables": {"listener": {"default": "127.0.0.1:8585"}},
                    }
                ],
                "post": {
                    "tags": ["transmissions"],
                    "summary": "Send a message (SparkPost compatible)",
                    "security": [{"transmissionsKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Transmission"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Accepted",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "results": {
                                                "type": "object",
                                                "properties": {
                                                    "total_accepted_recipients": {
                                                        "type": "integer"
                                                    },
                                                    "total_rejected_recipients": {
                                                        "type": "integer"
                                                    },
                                                    "id": {"type": "string"},
                                                },
                                            }
                                        },
                                    }
                                }
                            },
                        },
                        **{
                            code: _sparkpost_error(text)
                            for code, text in (
                                ("400", "Invalid request"),
                                ("403", "Bad or missing API key"),
                                ("404", "Not found"),
                                ("405", "Method not allowed"),
                                ("413", "Body too large"),
                                ("500", "Server error"),
                            )
                        },
                    },
                },
            },
        },
    }
