"""The web console: PowerMTA's browser console on the management port.

    GET  /                      302 to /ui/
    GET  /ui/                   the page (one HTML document; views are #fragments)
    GET  /ui/static/NAME        its script and style sheet, from the package
    GET  /ui/api/VIEW           JSON for the views (session, status, queues, domains,
                                vmtas, jobs, queue, domain, job, history)
    POST /ui/action             an operator action (admin only, CSRF token)

Everything reads through the same `Commands` object as `/command` and the Monitoring
API, so the console shows what `mtactl` shows; the per-minute charts come from the
server's `History` ring buffer. Access is the management port's: `monitor` sees
everything, only `admin` may act, and the server refuses a `monitor` POST whatever
the page shows.

Browser safety, since the console shows text that came in mail (domains, error
texts, job ids): every response carries a strict Content-Security-Policy (no inline
script or style, nothing from another origin), the script builds the page with
`textContent` only, and a state change needs a POST with a JSON body, the per-process
token from `/ui/api/session` in `X-CSRF-Token`, and, when the browser says where the
request comes from (`Origin`, `Sec-Fetch-Site`), this same origin. A GET never
changes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import secrets
import shlex
from importlib import resources
from typing import Any

import attrs
from klein import Klein
from twisted.web.iweb import IRequest

from mtaserver.commands import CommandError, Commands, parse, version
from mtaserver.http.access import Access, error_body, handle_mgmt_errors, same_origin
from mtaserver.http.console.history import History
from mtaserver.http.errors import APIError, json_response, read_body

#: The Content-Security-Policy of every console response.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
#: Seconds browsers may reuse an asset before revalidating it (ETag answers 304).
ASSET_MAX_AGE = 300
ASSET_TYPES = {
    "index.html": b"text/html; charset=utf-8",
    "console.js": b"text/javascript; charset=utf-8",
    "console.css": b"text/css; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}
#: Largest page of recipients the queue and job views return.
MAX_PAGE = 500
MAX_ACTION_BYTES = 4096
#: Action name -> (command template, fields it needs). Values are shell-quoted
#: into the command line and checked by the command parser (queue names).
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pause": ("pause queue {queue}", ("queue",)),
    "resume": ("resume queue {queue}", ("queue",)),
    "schedule": ("schedule {queue}", ("queue",)),
    "backoff": ("set queue --mode=backoff {queue}", ("queue",)),
    "normal": ("set queue --mode=normal {queue}", ("queue",)),
    "delete": ("delete --queue={queue}", ("queue",)),
    "delete-job": ("delete --queue={queue} --jobId={job}", ("queue", "job")),
    "pause-job": ("pause job {job}", ("job",)),
    "resume-job": ("resume job {job}", ("job",)),
    "reload": ("reload", ()),
    "rotate-acct": ("rotate acct", ()),
}


@attrs.frozen
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def load_assets() -> dict[str, Asset]:
    """The console's files, read once from the installed package."""
    folder = resources.files("mtaserver.http.console") / "static"
    assets = {}
    for name, content_type in ASSET_TYPES.items():
        body = (folder / name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"'
        assets[name] = Asset(body, content_type, etag)
    return assets


def security_headers(request: IRequest) -> None:
    """The headers every console response carries."""
    request.setHeader(b"Content-Security-Policy", CSP.encode())
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Frame-Options", b"DENY")


def query(request: IRequest, name: str, default: str = "") -> str:
    values = request.args.get(name.encode())
    if not values:
        return default
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, "Invalid encoding", f"{name} is not UTF-8") from None


def page_bounds(request: IRequest) -> tuple[int, int]:
    """`offset` and `limit` of a paged view, checked."""
    try:
        offset = int(query(request, "offset", "0"))
        limit = int(query(request, "limit", "100"))
    except ValueError:
        raise APIError(400, "Invalid page", "offset and limit must be numbers") from None
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise APIError(400, "Invalid page", f"offset >= 0 and 1 <= limit <= {MAX_PAGE}")
    return offset, limit


class ConsoleUI:
    """The console's page, assets, JSON views and actions."""

    app = Klein()

    def __init__(
        self, commands: Commands, access: Access, history: History, webhooks: Any = None
    ) -> None:
        self.commands = commands
        self.access = access
        self.history = history
        self.webhooks = webhooks
        self.assets = load_assets()
        #: The CSRF token: per process; only a page of this origin can read it.
        self.csrf_token = secrets.token_urlsafe(32)

    async def _require(self, request: IRequest, needed: str) -> str:
        level: Any = self.access.require(request, needed)
        if inspect.isawaitable(level):
            level = await level
        return str(level)

    # -- the page and its files ---------------------------------------------------

    @app.route("/", methods=["GET"])
    def root(self, request: IRequest) -> bytes:
        security_headers(request)
        request.redirect(b"/ui/")
        return b""

    @app.route("/ui/", methods=["GET"])
    @handle_mgmt_errors
    async def page(self, request: IRequest) -> bytes:
        security_headers(request)
        # Without a login, the guard already answered 401 with a Basic challenge when
        # `http-auth-ldap` is set (`guard.is_console`), so the browser asked for one.
        await self._require(request, "monitor")
        return self._asset(request, "index.html", cache=False)

    @app.route("/ui/static/<name>", methods=["GET"])
    @handle_mgmt_errors
    async def static(self, request: IRequest, name: str) -> bytes:
        security_headers(request)
        await self._require(request, "monitor")
        if name not in self.assets or name == "index.html":
            raise APIError(404, "Not found", "no such console file")
        return self._asset(request, name, cache=True)

    def _asset(self, request: IRequest, name: str, cache: bool) -> bytes:
        asset = self.assets[name]
        request.setHeader(b"Content-Type", asset.content_type)
        request.setHeader(b"ETag", asset.etag)
        if cache:
            request.setHeader(b"Cache-Control", f"private, max-age={ASSET_MAX_AGE}".encode())
        else:
            request.setHeader(b"Cache-Control", b"no-cache")
        if request.getHeader(b"if-none-match") == asset.etag:
            request.setResponseCode(304)
            return b""
        return asset.body

    # -- JSON views -----------------------------------------------------------------

    @app.route("/ui/api/<view>", methods=["GET"])
    @handle_mgmt_errors
    async def api(self, request: IRequest, view: str) -> bytes:
        security_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        level = await self._require(request, "monitor")
        producer = getattr(self, "_view_" + view, None)
        if producer is None:
            raise APIError(404, "Not found", f"no console view {view!r}")
        data = producer(request, level)
        return json_response(request, {"status": "success", "data": data, "message": ""})

    def _view_session(self, request: IRequest, level: str) -> dict[str, Any]:
        return {
            "level": level,
            "canAct": level == "admin",
            "csrfToken": self.csrf_token,
            "version": version(),
            "hostName": self.commands.holder.config.settings.host_name,
        }

    def _view_status(self, request: IRequest, level: str) -> dict[str, Any]:
        status = self.commands.status()
        status["webhooks"] = list(self.webhooks.status()) if self.webhooks is not None else []
        status["queue"]["bytes"] = sum(view.bytes for view in self.commands.control.queues())
        now = self.commands.traffic.now()
        status["history"] = self.history.series(now)
        status["lastDay"] = self.history.totals(now)
        return status

    def _view_history(self, request: IRequest, level: str) -> list[dict[str, Any]]:
        return self.history.series(self.commands.traffic.now())

    def _view_queues(self, request: IRequest, level: str) -> list[dict[str, Any]]:
        return self.queue_rows()

    def _view_domains(self, request: IRequest, level: str) -> list[dict[str, Any]]:
        return list(self.commands.domains())

    def _view_vmtas(self, request: IRequest, level: str) -> dict[str, Any]:
        pools = self.commands.holder.config.vmta_pools
        return {
            "vmtas": list(self.commands.vmtas()),
            "pools": [
                {"pool": name, "vmtas": list(pools[name].virtual_mta)} for name in sorted(pools)
            ],
        }

    def _view_jobs(self, request: IRequest, level: str) -> list[dict[str, Any]]:
        return list(self.commands.jobs())

    def _view_queue(self, request: IRequest, level: str) -> dict[str, Any]:
        name = query(request, "name")
        row = next((r for r in self.queue_rows() if r["name"] == name), None)
        if row is None:
            raise APIError(404, "No such queue", "the queue is empty or does not exist")
        offset, limit = page_bounds(request)
        waiting = self.commands.waiting(name, offset + limit)
        recipients = waiting["recipients"][offset:]
        for rcpt in recipients:
            rcpt["lastError"] = row["lastError"] if rcpt["attempts"] else ""
        return {"queue": row, "recipients": recipients, "total": waiting["total"],
                "offset": offset, "limit": limit}  # fmt: skip

    def _view_domain(self, request: IRequest, level: str) -> dict[str, Any]:
        name = query(request, "name")
        queues = [r for r in self.queue_rows() if r["domain"] == name]
        domain = next((d for d in self.commands.domains() if d["domain"] == name), None)
        if domain is None:
            raise APIError(404, "No such domain", "no queue of this domain holds mail")
        return {"domain": domain, "queues": queues}

    def _view_job(self, request: IRequest, level: str) -> dict[str, Any]:
        name = query(request, "name")
        job = next((j for j in self.commands.jobs() if j["job"] == name), None)
        if job is None:
            raise APIError(404, "No such job", "no queued message carries this job id")
        offset, limit = page_bounds(request)
        waiting = self.commands.waiting("*", 1_000_000)
        mine = [r for r in waiting["recipients"] if r["job"] == name]
        queues = sorted({r["queue"] for r in mine})
        return {"job": job, "queues": queues, "recipients": mine[offset : offset + limit],
                "total": len(mine), "offset": offset, "limit": limit}  # fmt: skip

    def queue_rows(self) -> list[dict[str, Any]]:
        """`show queues` rows with the console's extra columns: bytes and oldest."""
        views = {view.name: view for view in self.commands.control.queues()}
        rows = []
        for row in self.commands.queues():
            view = views.get(row["name"])
            size = view.bytes if view is not None else 0
            oldest = view.oldest if view is not None else None
            rows.append({**row, "bytes": size, "oldest": oldest})
        return rows

    # -- actions ----------------------------------------------------------------------

    @app.route("/ui/action", methods=["POST"])
    @handle_mgmt_errors
    async def action(self, request: IRequest) -> bytes:
        security_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        await self._require(request, "admin")
        token = request.getHeader(b"x-csrf-token") or b""
        if not same_origin(request) or not hmac.compare_digest(token, self.csrf_token.encode()):
            raise APIError(403, "Forbidden", "a console action needs this page's token")
        content_type = request.getHeader(b"content-type") or b""
        if not content_type.startswith(b"application/json"):
            raise APIError(415, "Unsupported media type", "send application/json")
        try:
            fields = json.loads(read_body(request, MAX_ACTION_BYTES))
        except ValueError:
            raise APIError(400, "Invalid JSON", "the body is not JSON") from None
        if not isinstance(fields, dict):
            raise APIError(400, "Invalid action", "the body must be a JSON object")
        line = action_command(fields)
        try:
            result = await self.commands.run(parse(line))
        except CommandError as exc:
            return json_response(
                request, error_body(APIError(400, exc.message), data=exc.data), 400
            )
        return json_response(
            request,
            {"status": "success", "data": result.data, "message": result.message},
        )


def action_command(fields: dict[str, Any]) -> str:
    """The operator command a console action runs; a 400 `APIError` when it is wrong."""
    name = fields.get("action")
    if not isinstance(name, str) or name not in ACTIONS:
        raise APIError(400, "Invalid action", f"action must be one of {', '.join(ACTIONS)}")
    template, needed = ACTIONS[name]
    values = {}
    for field in needed:
        value = fields.get(field)
        if not isinstance(value, str) or not value:
            raise APIError(400, "Invalid action", f"{name} needs {field}")
        values[field] = shlex.quote(value)
    if name.startswith("delete") and fields.get("confirm") is not True:
        raise APIError(400, "Not confirmed", "a delete needs confirm: true")
    return template.format(**values)
