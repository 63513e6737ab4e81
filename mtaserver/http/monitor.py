"""The Monitoring API: `GET /status`, `/queues`, `/domains`, `/vmtas`, `/jobs`, `/metrics`.

The JSON endpoints answer with the same data as the matching `show` command
(`{"status":"success","data":...}`; `format=json-text` gives mtactl's table), so the
two never disagree. `/metrics` is Prometheus text from a private registry. All of
them need `monitor` access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.web.iweb import IRequest

from mtaserver.commands import Commands, render_text
from mtaserver.http import metrics
from mtaserver.http.access import (
    Access,
    form_field,
    handle_mgmt_errors,
    require_level,
    response_format,
)
from mtaserver.http.errors import json_response


class MonitorAPI:
    """Read-only views of the running server."""

    app = Klein()

    def __init__(self, commands: Commands, access: Access, registry: CollectorRegistry) -> None:
        self.commands = commands
        self.access = access
        self.registry = registry

    async def _answer(self, request: IRequest, command: str, produce: Callable[[], Any]) -> bytes:
        await require_level(self.access, request, "monitor")
        fmt = response_format(request)
        data = produce()
        if fmt == "json-text":
            data = render_text(command, data)
        return json_response(request, {"status": "success", "data": data, "message": ""})

    @app.route("/status", methods=["GET"])
    @handle_mgmt_errors
    async def status(self, request: IRequest) -> bytes:
        return await self._answer(request, "show status", self.commands.status)

    @app.route("/queues", methods=["GET"])
    @handle_mgmt_errors
    async def queues(self, request: IRequest) -> bytes:
        paused = (form_field(request, "paused") or "").lower() in ("1", "yes", "true")
        return await self._answer(request, "show queues", lambda: self.commands.queues(paused))

    @app.route("/domains", methods=["GET"])
    @handle_mgmt_errors
    async def domains(self, request: IRequest) -> bytes:
        return await self._answer(request, "show domains", self.commands.domains)

    @app.route("/vmtas", methods=["GET"])
    @handle_mgmt_errors
    async def vmtas(self, request: IRequest) -> bytes:
        return await self._answer(request, "show vmtas", self.commands.vmtas)

    @app.route("/jobs", methods=["GET"])
    @handle_mgmt_errors
    async def jobs(self, request: IRequest) -> bytes:
        return await self._answer(request, "show jobs", self.commands.jobs)

    @app.route("/metrics", methods=["GET"])
    @handle_mgmt_errors
    async def metrics(self, request: IRequest) -> bytes:
        await require_level(self.access, request, "monitor")
        self.commands.sample_traffic()
        request.setHeader(b"Content-Type", metrics.CONTENT_TYPE.encode())
        return metrics.render(self.registry)
