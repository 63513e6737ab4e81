"""The Monitoring API: PowerMTA's web monitor endpoints, as JSON or XML, and `/metrics`.

    GET /?format=json|xml                     (the home page: `mta`, what this server is)
    GET /status        /queues        /domains        /vmtas        /jobs
    GET /queueDetail?queue=D/V   /domainDetail?domain=D   /vmtaDetail?vmta=V
    GET /jobDetail?jobid=J       /listQueue?queue=D/V&maxitems=N&offset=K
    GET /metrics       Prometheus text

Each answers PowerMTA's envelope with PowerMTA's field names (`shapes.py`):
`?format=json` (the default) `{"data":...,"status":"success","message":""}`,
`?format=xml` `<rsp><data>...</data><succ/></rsp>` (`xmlout.py`), and
`json-text`/`xml-text` with `data` the text an operator reads (mtactl's table for
the five lists, PowerMTA's DOM-style `name="value"` lines for the detail views and
`/listQueue`). `?format=mtaserver` keeps the JSON these endpoints gave before they
took PowerMTA's shapes: the data of the matching `mtactl show` command.

Every query parameter is checked before anything is read: an unknown one, one given
twice, a value with a control character, a number out of range or a word not in its
list is a 400 naming the parameter (in XML when XML was asked for). All of it needs
`monitor` access; nothing here changes state.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mtaserver.commands import Commands, render_text
from mtaserver.events import Envelope
from mtaserver.http import metrics, shapes, xmlout
from mtaserver.http.access import Access, error_body, handle_mgmt_errors, require_level
from mtaserver.http.errors import APIError, json_response
from mtaserver.queue.control import QueueView
from mtaserver.queue.routing import DEFAULT_VMTA, queue_matches

log = Logger()

FORMATS = ("json", "xml", "json-text", "xml-text", "mtaserver")
BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
MAX_VALUE = 1024  # characters in one parameter value
MAX_ITEMS = 100_000  # `maxitems` of the lists
MAX_PAGE = 10_000  # `maxitems` of /listQueue
LIST_DEFAULT = 100  # `pmta list`'s default
MAX_OFFSET = 2**31

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_PLAIN = re.compile(r"[A-Za-z0-9_.\-]{1,40}\Z")
_PATTERN_CHARS = re.compile(r"[*?\[\]]")


@attrs.frozen
class View:
    """One endpoint: its query parameters and the `mtactl` command of its text form."""

    params: frozenset[str]
    command: str = ""  # "" -> text is DOM-style lines of the PowerMTA data


_LIST = frozenset({"maxitems", "sort"})
VIEWS: dict[str, View] = {
    "home": View(frozenset()),
    "status": View(frozenset(), "show status"),
    "queues": View(
        _LIST | {"queue", "domain", "vmta", "paused", "mode", "connected", "errors"},
        "show queues",
    ),
    "domains": View(_LIST | {"domain", "vmta", "connected", "errors"}, "show domains"),
    "vmtas": View(_LIST | {"vmta"}, "show vmtas"),
    "jobs": View(frozenset({"maxitems", "job", "jobid"}), "show jobs"),
    "queueDetail": View(frozenset({"queue"})),
    "domainDetail": View(frozenset({"domain", "vmta"})),
    "vmtaDetail": View(frozenset({"vmta"})),
    "jobDetail": View(frozenset({"job", "jobid"})),
    "listQueue": View(
        frozenset({"queue", "domain", "vmta", "job", "jobid", "envid", "rcpt", "orig"})
        | {"maxitems", "offset"}
    ),
}


def shown(name: str) -> str:
    """A parameter name fit for an error message (it came from the client)."""
    if _PLAIN.match(name):
        return name
    return repr(_CONTROL.sub("?", name[:40]))


class Query:
    """The checked query parameters of one request (names are case-insensitive)."""

    def __init__(self, request: IRequest, allowed: frozenset[str]) -> None:
        self.values: dict[str, str] = {}
        for raw_name, raw_values in request.args.items():
            try:
                name = bytes(raw_name).decode("utf-8")
                values = [bytes(v).decode("utf-8") for v in raw_values]
            except UnicodeDecodeError:
                raise APIError(400, "Invalid parameter", "a parameter is not UTF-8") from None
            key = name.lower()
            if key != "format" and key not in allowed:
                known = ", ".join(sorted(allowed)) or "none but format"
                raise APIError(
                    400, "Unknown parameter", f"{shown(name)} is not a parameter here ({known})"
                )
            if len(values) > 1 or key in self.values:
                raise APIError(400, "Invalid parameter", f"{shown(name)} is given more than once")
            value = values[0]
            if len(value) > MAX_VALUE:
                raise APIError(400, "Invalid parameter", f"{key} is longer than {MAX_VALUE}")
            if _CONTROL.search(value):
                raise APIError(400, "Invalid parameter", f"{key} contains a control character")
            self.values[key] = value

    def text(self, name: str) -> str | None:
        return self.values.get(name)

    def job(self) -> str | None:
        job, jobid = self.values.get("job"), self.values.get("jobid")
        if job is not None and jobid is not None:
            raise APIError(400, "Invalid parameter", "give job or jobid, not both")
        return job if job is not None else jobid

    def boolean(self, name: str, flag: bool = False) -> bool | None:
        """yes/no/true/false/1/0; with `flag`, an empty value (`?errors`) is yes."""
        value = self.values.get(name)
        if value is None:
            return None
        if flag and value == "":
            return True
        if value.lower() not in BOOLEANS:
            raise APIError(400, "Invalid parameter", f"{name} must be yes or no")
        return BOOLEANS[value.lower()]

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.values.get(name)
        if value is not None and value.lower() not in choices:
            raise APIError(400, "Invalid parameter", f"{name} must be one of {', '.join(choices)}")
        return value.lower() if value is not None else None

    def number(self, name: str, low: int, high: int, default: int | None) -> int | None:
        value = self.values.get(name)
        if value is None:
            return default
        if (
            not value.isascii()
            or not value.isdigit()
            or len(value) > 10
            or not (low <= int(value) <= high)
        ):
            raise APIError(
                400, "Invalid parameter", f"{name} must be a whole number from {low} to {high}"
            )
        return int(value)

    def name(self, name: str, required: bool = True) -> str | None:
        """An exact name (a detail view's queue, domain or vmta), not a pattern."""
        value = self.values.get(name)
        if value is None or value == "":
            if required:
                raise APIError(400, "Missing parameter", f"{name} is required")
            return None
        if _PATTERN_CHARS.search(value):
            raise APIError(400, "Invalid parameter", f"{name} must be a name, not a pattern")
        return value

    def pattern(self) -> str:
        """`queue`, `domain` and `vmta` together as one `domain/vmta` pattern."""
        domain = self.values.get("domain") or "*"
        vmta = self.values.get("vmta") or "*"
        return f"{domain}/{vmta}"


def _format_values(request: IRequest) -> list[bytes]:
    """The values of `format` (its name in any case, like every parameter's)."""
    return [
        bytes(value)
        for name, values in request.args.items()
        if bytes(name).lower() == b"format"
        for value in values
    ]


def requested_format(request: IRequest) -> str:
    values = _format_values(request) or [b"json"]
    fmt = values[0].decode("utf-8", "replace").lower()
    if len(values) > 1 or fmt not in FORMATS:
        raise APIError(400, "Invalid format", f"format must be one of {', '.join(FORMATS)}")
    return fmt


def _wants_xml(request: IRequest) -> bool:
    values = _format_values(request) or [b""]
    return values[0].lower() in (b"xml", b"xml-text")


def handle_monitor_errors(
    handler: Callable[..., Awaitable[bytes]],
) -> Callable[..., Awaitable[bytes]]:
    """Errors as the management envelope, or as `<rsp><error>...` when XML was asked for."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: IRequest, *args: Any) -> bytes:
        try:
            return await handler(self, request, *args)
        except APIError as error:
            if not _wants_xml(request):
                return json_response(request, error_body(error), error.code)
            return xmlout.error_reply(request, error.code, error.message, error.description)
        except Exception:
            log.failure("unhandled error in {path}", path=request.uri)
            internal = APIError(500, "Internal server error", "see the server log")
            return json_response(request, error_body(internal), 500)

    return wrapper


def dom_text(data: Any, prefix: str = "") -> str:
    """PowerMTA's DOM-style listing (`pmta --dom`): `queue[0].name="example.com/v"` lines."""
    lines: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        else:
            text = xmlout.text_of(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'{path}="{text}"')

    walk(data, prefix)
    return "\n".join(lines)


#: A view's mtactl rows, built on demand (None: the view has no mtactl equivalent).
Old = Callable[[], Any] | None


class MonitorAPI:
    """Read-only views of the running server, in PowerMTA's shapes."""

    app = Klein()

    def __init__(
        self,
        commands: Commands,
        access: Access,
        registry: CollectorRegistry,
        names_cached: Callable[[], int] | None = None,
    ) -> None:
        self.commands = commands
        self.access = access
        self.registry = registry
        self.names_cached = names_cached

    # -- serving -------------------------------------------------------------------

    @app.route(
        "/<any(status, queues, domains, vmtas, jobs, queueDetail, domainDetail, "
        "vmtaDetail, jobDetail, listQueue, listqueue):name>",
        methods=["GET"],
    )
    @handle_monitor_errors
    async def view(self, request: IRequest, name: str) -> bytes:
        """Any of the PowerMTA-shaped views (`/listqueue` as the guide spells it, too)."""
        name = "listQueue" if name == "listqueue" else name
        fmt = requested_format(request)
        await require_level(self.access, request, "monitor")
        view = VIEWS[name]
        query = Query(request, view.params)
        produce = getattr(self, "_" + name)
        data, old = produce(query)
        if fmt == "mtaserver":
            if old is None:
                raise APIError(400, "Invalid format", f"format mtaserver is not offered by /{name}")
            data = old()
        elif fmt.endswith("-text"):
            if view.command and old is not None:
                data = render_text(view.command, old())
            else:
                data = dom_text(data)
        if fmt.startswith("xml"):
            return xmlout.reply(request, data)
        return json_response(request, {"data": data, "status": "success", "message": ""})

    @app.route("/metrics", methods=["GET"])
    @handle_mgmt_errors
    async def metrics(self, request: IRequest) -> bytes:
        await require_level(self.access, request, "monitor")
        self.commands.sample_traffic()
        request.setHeader(b"Content-Type", metrics.CONTENT_TYPE.encode())
        return metrics.render(self.registry)

    # -- the views: (PowerMTA's data, a function giving mtactl's rows, or None) --------
    # mtactl's rows are built only when asked for (format=mtaserver or *-text): each
    # read walks the queues, and a million queued recipients make that a visible cost.

    def _queue_views(self, pattern: str = "*") -> list[QueueView]:
        return self.commands.control.queues(pattern)

    def _home(self, query: Query) -> tuple[Any, Old]:
        """`/?format=...`: PowerMTA's home page as data, what this server is (`mta`)."""
        return {"mta": shapes.mta(self.commands.holder.config.settings.host_name)}, None

    def _status(self, query: Query) -> tuple[Any, Old]:
        commands = self.commands
        commands.sample_traffic()
        traffic = commands.traffic
        now = traffic.now()
        config = commands.holder.config
        queues = self._queue_views()
        outbound, outbound_top = commands.control.connections()
        inbound = int(getattr(commands.reception, "sessions_current", 0))
        traffic.sample_connections(outbound, outbound_top)
        connections = shapes.Connections(
            inbound,
            outbound,
            config.settings.total_max_smtp_in,
            config.settings.total_max_smtp_out,
        )
        data = {
            "mta": shapes.mta(config.settings.host_name),
            "status": shapes.status(
                traffic,
                queues,
                lambda q: config.domain_settings(q.domain, q.vmta, q.pool).type,
                connections,
                self.names_cached() if self.names_cached is not None else 0,
                now,
            ),
        }
        return data, commands.status

    def _selected_queues(self, query: Query) -> list[QueueView]:
        queues = self._queue_views(query.text("queue") or "*")
        pattern = query.pattern()
        paused = query.boolean("paused")
        connected = query.boolean("connected")
        mode = query.choice("mode", ("normal", "backoff"))
        return [
            q
            for q in queues
            if queue_matches(pattern, q.name)
            and (paused is None or q.paused == paused)
            and (connected is None or (q.connections > 0) == connected)
            and (mode is None or q.mode == mode)
        ]

    def _listed(
        self, query: Query, items: list[dict[str, Any]], default_sort: str = "rcpt"
    ) -> list[dict[str, Any]]:
        sort = query.choice("sort", tuple(shapes.SORT_KEYS)) or default_sort
        maxitems = query.number("maxitems", 1, MAX_ITEMS, None)
        items.sort(key=shapes.SORT_KEYS[sort])
        return items[:maxitems] if maxitems is not None else items

    @staticmethod
    def _same(old: list[dict[str, Any]], items: list[dict[str, Any]], key: str) -> list[Any]:
        """The mtactl rows of the items listed, in their order."""
        rows = {str(row.get(key, row.get("name"))): row for row in old}
        return [rows[item["name"]] for item in items if item["name"] in rows]

    def _queues(self, query: Query) -> tuple[Any, Old]:
        recent = self.commands.traffic.recent
        errors = bool(query.boolean("errors", flag=True))
        items = self._listed(
            query,
            [
                shapes.queue_item(q, recent.get(q.name), errors)
                for q in self._selected_queues(query)
            ],
        )
        return {"queue": items}, lambda: self._same(self.commands.queues(), items, "name")

    def _domains(self, query: Query) -> tuple[Any, Old]:
        connected = query.boolean("connected")
        errors = bool(query.boolean("errors", flag=True))
        queues = [q for q in self._queue_views() if queue_matches(query.pattern(), q.name)]
        items = shapes.domain_items(queues, self.commands.traffic.recent, errors)
        if connected is not None:
            items = [item for item in items if (item["conn"] > 0) == connected]
        items = self._listed(query, items)
        return {"domain": items}, lambda: self._same(self.commands.domains(), items, "domain")

    def _vmtas(self, query: Query) -> tuple[Any, Old]:
        vmta = query.text("vmta") or "*"
        queues = [q for q in self._queue_views() if queue_matches(f"*/{vmta}", q.name)]
        configured = [
            name
            for name in self.commands.holder.config.vmtas
            if queue_matches(f"*/{vmta}", f"x/{name}")
        ]
        items = self._listed(
            query, shapes.vmta_items(queues, configured, self.commands.traffic.recent)
        )
        return {"vmta": items}, lambda: self._same(self.commands.vmtas(), items, "vmta")

    def _jobs(self, query: Query) -> tuple[Any, Old]:
        job = query.job()
        maxitems = query.number("maxitems", 1, MAX_ITEMS, None)
        jobs = [
            j
            for j in self.commands.control.jobs()
            if job is None or fnmatch.fnmatchcase(j.job, job)
        ]
        jobs.sort(key=lambda j: (-j.recipients, j.job))
        items = [shapes.job_item(j) for j in jobs[:maxitems]]
        return {"job": items}, lambda: self._same(self.commands.jobs(), items, "job")

    def _queue_detail(self, name: str) -> QueueView:
        domain, _, vmta = name.partition("/")
        wanted = f"{domain.lower()}/{vmta or DEFAULT_VMTA}"
        for queue in self._queue_views(wanted):
            if queue.name == wanted:
                return queue
        raise APIError(404, "No such queue", f"no queue is named {wanted}")

    def _queueDetail(self, query: Query) -> tuple[Any, Old]:  # noqa: N802 - the path's name
        queue = self._queue_detail(query.name("queue") or "")
        events = self.commands.traffic.recent.get(queue.name)
        return {"queue": shapes.queue_detail(queue, events)}, None

    def _domainDetail(self, query: Query) -> tuple[Any, Old]:  # noqa: N802
        domain = (query.name("domain") or "").lower()
        vmta = query.name("vmta", required=False)
        queues = [
            q
            for q in self._queue_views(f"{domain}/*")
            if q.domain == domain and (vmta is None or q.vmta == vmta)
        ]
        if not queues:
            raise APIError(404, "No such domain", f"no queue holds mail for {domain}")
        recent = self.commands.traffic.recent
        (item,) = shapes.domain_items(queues, recent, errors=True)
        item["queue"] = [shapes.queue_item(q, recent.get(q.name)) for q in queues]
        return {"domain": item}, None

    def _vmtaDetail(self, query: Query) -> tuple[Any, Old]:  # noqa: N802
        vmta = query.name("vmta") or ""
        queues = [q for q in self._queue_views() if q.vmta == vmta]
        if not queues and vmta not in self.commands.holder.config.vmtas:
            raise APIError(404, "No such virtual MTA", f"{vmta} is not configured or in use")
        recent = self.commands.traffic.recent
        (item,) = shapes.vmta_items(queues, [vmta], recent)
        item["queue"] = [shapes.queue_item(q, recent.get(q.name)) for q in queues]
        return {"vmta": item}, None

    def _jobDetail(self, query: Query) -> tuple[Any, Old]:  # noqa: N802
        job = query.job()
        if not job:
            raise APIError(400, "Missing parameter", "jobid is required")
        found = next((j for j in self.commands.control.jobs() if j.job == job), None)
        if found is None:
            raise APIError(404, "No such job", "no queued message and no pause has this job id")
        _, _, per_queue = self.commands.control.listing(
            "*", lambda envelope, rcpt: envelope.job_id == job, 0, 0
        )
        item = shapes.job_item(found)
        item["queue"] = [{"name": name, "rcp": count} for name, count in sorted(per_queue.items())]
        return {"job": item}, None

    def _listQueue(self, query: Query) -> tuple[Any, Old]:  # noqa: N802
        queue = query.text("queue")
        if queue is not None and ("domain" in query.values or "vmta" in query.values):
            raise APIError(400, "Invalid parameter", "give queue, or domain and vmta, not both")
        queue = queue or query.pattern()
        job, env_id = query.job(), query.text("envid")
        rcpt, orig = query.text("rcpt"), query.text("orig")
        maxitems = query.number("maxitems", 1, MAX_PAGE, LIST_DEFAULT) or LIST_DEFAULT
        offset = query.number("offset", 0, MAX_OFFSET, 0) or 0

        def select(envelope: Envelope, address: str) -> bool:
            return (
                (job is None or envelope.job_id == job)
                and (env_id is None or envelope.env_id == env_id)
                and (rcpt is None or address.lower() == rcpt.lower())
                and (orig is None or envelope.sender.lower() == orig.lower())
            )

        rows, total, _ = self.commands.control.listing(queue, select, offset, maxitems)
        end = offset + len(rows)
        data = {
            "total": total,
            "offset": offset,
            "maxitems": maxitems,
            "next": end if end < total else None,
            "recipient": [shapes.recipient_item(row) for row in rows],
        }
        return data, None
