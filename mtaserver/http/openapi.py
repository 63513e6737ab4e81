"""The OpenAPI 3 description of every HTTP endpoint, served at `/api/v1/openapi.json`.

It covers the management port (command, configuration and monitoring APIs) and, for
completeness, the Transmissions API of the `<transmissions-api-listener>` port (its
`servers` entry says so; `openapi_transmissions` describes it). The test suite runs
schemathesis against this document and the real server, so the document and the code
cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from mtaserver.commands import SPECS, version
from mtaserver.http import openapi_transmissions

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


# -- monitoring: PowerMTA's shapes (mtaserver/http/shapes.py) ---------------------------

_MONITOR_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {
        "type": "string",
        "enum": ["json", "xml", "json-text", "xml-text", "mtaserver"],
        "default": "json",
    },
    "description": (
        "`json`: PowerMTA's JSON; `xml`: PowerMTA's `<rsp><data>..</data><succ/></rsp>`; "
        "`json-text`/`xml-text`: `data` is text (mtactl's table, or DOM-style lines); "
        "`mtaserver`: the JSON of the matching `mtactl show` command (the five lists only)."
    ),
}
_TEXT = {"type": "string", "maxLength": 1024}
_YES_NO = {"type": "string", "enum": ["yes", "no", "true", "false", "1", "0"]}


def _param(name: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "schema": schema,
        "description": description,
    }


_PARAMS: dict[str, dict[str, Any]] = {
    "queue": _param("queue", _TEXT, "Queue pattern `domain/vmta` (`*` wildcards)"),
    "domain": _param("domain", _TEXT, "Domain pattern"),
    "vmta": _param("vmta", _TEXT, "Virtual MTA pattern"),
    "paused": _param("paused", _YES_NO, "Only paused (yes) or running (no) queues"),
    "connected": _param("connected", _YES_NO, "Only with (yes) or without (no) connections"),
    "errors": _param("errors", _YES_NO, "Add each item's last errors as `event`"),
    "mode": _param(
        "mode", {"type": "string", "enum": ["normal", "backoff"]}, "Only queues in this mode"
    ),
    "sort": _param(
        "sort",
        {"type": "string", "enum": ["name", "rcpt", "size"], "default": "rcpt"},
        "Order: by name, or most recipients / kilobytes first",
    ),
    "maxitems": _param(
        "maxitems", {"type": "integer", "minimum": 1, "maximum": 100000}, "At most this many"
    ),
    "job": _param("job", _TEXT, "Job id (a pattern in /jobs)"),
    "jobid": _param("jobid", _TEXT, "Job id (the guide's spelling of `job`)"),
    "envid": _param("envid", _TEXT, "Envelope id (RFC 3461 ENVID)"),
    "rcpt": _param("rcpt", _TEXT, "Recipient address (case-insensitive)"),
    "orig": _param("orig", _TEXT, "Sender (MAIL FROM) address (case-insensitive)"),
    "offset": _param(
        "offset", {"type": "integer", "minimum": 0, "maximum": 2**31}, "Page start (0 first)"
    ),
    "page": _param(
        "maxitems",
        {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
        "Page size",
    ),
}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_INT, _KB, _STR, _BOOL = (
    {"type": "integer"},
    {"type": "number"},
    {"type": "string"},
    {"type": "boolean"},
)
_EVENT = _object({"type": _STR, "time": _STR, "text": _STR})
_QUEUE = _object(
    {
        "name": _STR,
        "domain": _STR,
        "vmta": _STR,
        "rcp": _INT,
        "msg": _INT,
        "kb": _KB,
        "conn": _INT,
        "paused": _BOOL,
        "mode": _STR,
        "retryTime": _STR,
        "oldest": _STR,
        "lastError": _STR,
        "event": {"type": "array", "items": _EVENT},
    },
    ("name", "rcp", "kb", "conn", "paused", "mode", "lastError"),
)
_ROLLUP = _object(
    {
        "name": _STR,
        "rcp": _INT,
        "msg": _INT,
        "kb": _KB,
        "conn": _INT,
        "queues": _INT,
        "paused": _INT,
        "lastError": _STR,
        "dom": _INT,
        "pct": _INT,
        "event": {"type": "array", "items": _EVENT},
        "queue": {"type": "array", "items": _QUEUE},
    },
    ("name", "rcp", "kb", "conn", "lastError"),
)
_JOB = _object(
    {"name": _STR, "rcp": _INT, "msg": _INT, "kb": _KB, "paused": _BOOL},
    ("name", "rcp", "kb"),
)
_RECIPIENT = _object(
    {
        "queue": _STR,
        "rcpt": _STR,
        "orig": _STR,
        "jobId": _STR,
        "envId": _STR,
        "msgId": _STR,
        "state": {"type": "string", "enum": ["ready", "retry", "paused"]},
        "attempts": _INT,
        "retryTime": _STR,
        "timeQueued": _STR,
        "kb": _KB,
    },
    ("queue", "rcpt", "state"),
)
_COUNTS = _object({"rcp": _INT, "msg": _INT, "kb": _KB}, ("rcp", "msg", "kb"))
_WINDOW = _object(
    {"out": _COUNTS, "in": _COUNTS, "bounceProcessed": _INT, "feedbackLoopProcessed": _INT},
    ("out", "in"),
)
_CONN = _object({"cur": _INT, "max": _INT, "top": _INT}, ("cur", "max", "top"))
_STATUS = _object(
    {
        "mta": _object({"product": {"type": "object"}, "fullHostName": _STR}, ("product",)),
        "status": _object(
            {
                "timeNow": _STR,
                "startupTime": _STR,
                "traffic": _object(
                    {w: _WINDOW for w in ("total", "lastHr", "lastMin", "topPerHr", "topPerMin")},
                    ("total", "lastHr", "lastMin", "topPerHr", "topPerMin"),
                ),
                "conn": _object({"smtpIn": _CONN, "smtpOut": _CONN}, ("smtpIn", "smtpOut")),
                "queue": {"type": "object", "additionalProperties": {"type": "object"}},
                "spool": {"type": "object"},
                "status": _STR,
            },
            ("timeNow", "traffic", "conn", "queue", "spool", "status"),
        ),
    },
    ("mta", "status"),
)
_LIST_QUEUE = _object(
    {
        "total": _INT,
        "offset": _INT,
        "maxitems": _INT,
        "next": {"type": "integer", "nullable": True},
        "recipient": {"type": "array", "items": _RECIPIENT},
    },
    ("total", "offset", "maxitems", "next", "recipient"),
)

_SHAPES: dict[str, dict[str, Any]] = {
    "Status": _STATUS,
    "Queues": _object({"queue": {"type": "array", "items": _QUEUE}}, ("queue",)),
    "Domains": _object({"domain": {"type": "array", "items": _ROLLUP}}, ("domain",)),
    "Vmtas": _object({"vmta": {"type": "array", "items": _ROLLUP}}, ("vmta",)),
    "Jobs": _object({"job": {"type": "array", "items": _JOB}}, ("job",)),
    "QueueDetail": _object({"queue": _QUEUE}, ("queue",)),
    "DomainDetail": _object({"domain": _ROLLUP}, ("domain",)),
    "VmtaDetail": _object({"vmta": _ROLLUP}, ("vmta",)),
    "JobDetail": _object({"job": _JOB}, ("job",)),
    "ListQueue": _LIST_QUEUE,
    "Home": _object({"mta": _STATUS["properties"]["mta"]}, ("mta",)),
}


def _monitor_reply(description: str, shape: str | None = None) -> dict[str, Any]:
    """A monitoring reply: PowerMTA's JSON envelope (data in `shape`), or its XML."""
    json_schema: dict[str, Any] = {"$ref": "#/components/schemas/Envelope"}
    if shape is not None:
        json_schema = {
            "allOf": [
                json_schema,
                {
                    "properties": {
                        "data": {
                            "anyOf": [
                                {"$ref": f"#/components/schemas/{shape}"},
                                {"type": "string"},  # json-text
                                {"type": "array"},  # mtaserver: the show command's rows
                                {"type": "object"},  # mtaserver: show status
                            ]
                        }
                    }
                },
            ]
        }
    return {
        "description": description,
        "content": {
            "application/json": {"schema": json_schema},
            "application/xml": {"schema": {"type": "string"}},
        },
    }


_MONITOR_ERRORS = {
    "400": _monitor_reply("Bad parameter: unknown, repeated, a control character, out of range"),
    "401": _reply("The X-API-Key header matches no http-api-key"),
    "403": _reply("Access denied (http-access level below monitor)"),
}


def _monitor(
    summary: str,
    description: str,
    shape: str,
    params: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
    found: bool = False,
) -> dict[str, Any]:
    parameters = [_MONITOR_FORMAT]
    for name in params:
        parameter = dict(_PARAMS[name])
        if name in required:
            parameter["required"] = True
        parameters.append(parameter)
    responses = {"200": _monitor_reply("Success", shape), **_MONITOR_ERRORS}
    if found:
        responses["404"] = _monitor_reply("No such queue, domain, virtual MTA or job")
    return {
        "get": {
            "tags": ["monitoring"],
            "summary": summary,
            "description": description,
            "parameters": parameters,
            "responses": responses,
        }
    }


_FORM_COMMAND = {
    "type": "object",
    "required": ["command"],
    "properties": {
        "command": {"type": "string", "description": "One mtactl command line"},
        "format": {"type": "string", "enum": ["json", "json-text", "xml", "xml-text"]},
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
                **_SHAPES,
                **openapi_transmissions.schemas(),
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
                        "200": _monitor_reply("The command ran (JSON, or XML for format=xml*)"),
                        **_ERRORS,
                        "400": _monitor_reply("Unknown command, bad argument, bad format"),
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
            "/": {
                "get": {
                    "tags": ["monitoring"],
                    "summary": "PowerMTA's home page as data (with format); else the console",
                    "description": "Without `format`, a 302 to the web console at `/ui/`.",
                    "parameters": [{**_MONITOR_FORMAT, "required": True}],
                    "responses": {
                        "200": _monitor_reply("What this server is: `mta`", "Home"),
                        "302": {"description": "To the web console (no `format`)"},
                        **_MONITOR_ERRORS,
                    },
                }
            },
            "/status": _monitor(
                "Traffic, connections, queue and spool totals",
                "PowerMTA's `/status` (User's Guide 5.3): `mta` and `status`.",
                "Status",
            ),
            "/queues": _monitor(
                "Queues: rcp, kb, conn, mode, retry time, last error",
                "PowerMTA's top queues, most recipients first unless `sort` says otherwise.",
                "Queues",
                ("queue", "domain", "vmta", "paused", "connected", "mode", "errors")
                + ("sort", "maxitems"),
            ),
            "/domains": _monitor(
                "Queues summed by destination domain",
                "PowerMTA's top domains (`show domains`).",
                "Domains",
                ("domain", "vmta", "connected", "errors", "sort", "maxitems"),
            ),
            "/vmtas": _monitor(
                "Queues summed by virtual MTA",
                "Every vmta in use or configured: `dom`, `rcp`, `pct` (% of all), `kb`, `conn`.",
                "Vmtas",
                ("vmta", "sort", "maxitems"),
            ),
            "/jobs": _monitor(
                "Queued messages by job id",
                "Jobs with mail queued, and paused jobs.",
                "Jobs",
                ("job", "jobid", "maxitems"),
            ),
            "/queueDetail": _monitor(
                "One queue, its counters, last errors and last 50 recipient events",
                "`queue` is `domain/vmta`; a bare domain is its `{default}` queue.",
                "QueueDetail",
                ("queue",),
                required=("queue",),
                found=True,
            ),
            "/domainDetail": _monitor(
                "One domain, its queues and last errors",
                "The domain's queues over every vmta (or `vmta`'s only).",
                "DomainDetail",
                ("domain", "vmta"),
                required=("domain",),
                found=True,
            ),
            "/vmtaDetail": _monitor(
                "One virtual MTA and its queues",
                "As `/queues?queue=*/VMTA`, summed.",
                "VmtaDetail",
                ("vmta",),
                required=("vmta",),
                found=True,
            ),
            "/jobDetail": _monitor(
                "One job and the queues holding its recipients",
                "`jobid` (or `job`) is required.",
                "JobDetail",
                ("jobid",),
                found=True,
            ),
            "/listQueue": _monitor(
                "A page of the recipients waiting in the matching queues",
                "`offset` and `maxitems` page; `next` is the next page's offset (null: last).",
                "ListQueue",
                ("queue", "domain", "vmta", "jobid", "envid", "rcpt", "orig", "offset", "page"),
            ),
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
            **openapi_transmissions.paths(),
        },
    }
