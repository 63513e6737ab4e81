"""The management port (`http-mgmt-port`): one Klein root over the three APIs.

Each API class has its own Klein `app` with its own paths (usable alone, e.g. in a
test); the root routes each path to the owning API's handler.

    /command               CommandAPI    (command.py)
    /configFile            ConfigFileAPI (configfile.py)
    /status /queues /domains /vmtas /jobs /metrics   MonitorAPI (monitor.py)
    /queueDetail /domainDetail /vmtaDetail /jobDetail /listQueue
    /api/v1/openapi.json   the OpenAPI document (openapi.py)
    /  /ui/...             ConsoleUI, the web console (console/)

`make_mgmt_service` builds the APIs around the server's parts and returns one
service: the HTTP listener (plain HTTP on loopback, HTTPS with
`http-mgmt-tls-certificate`, refused off loopback without it; request deadlines, rate
limit, size limit and the access check before the body: `guard.py`) and a timer that
samples the reception counters for the traffic windows every few seconds. The
listener follows reloads (`listen.HttpListeners`): setting, moving or removing
`http-mgmt-port` binds or closes it, and the certificate is read again each reload.
"""

from __future__ import annotations

import json
from typing import Any

from klein import Klein
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mtaserver.commands import Commands
from mtaserver.config.model import Config, Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.http import openapi
from mtaserver.http.access import Access
from mtaserver.http.command import CommandAPI
from mtaserver.http.configfile import ConfigFileAPI
from mtaserver.http.console import ConsoleUI, History, history_service
from mtaserver.http.guard import management_guard
from mtaserver.http.listen import HttpListeners
from mtaserver.http.metrics import make_registry
from mtaserver.http.monitor import MonitorAPI
from mtaserver.runtime import RunInThread
from mtaserver.stats import TrafficStats
from mtaserver.suppression.service import SuppressionService

log = Logger()

#: How often the reception counters are sampled into the traffic windows (seconds).
SAMPLE_INTERVAL = 5.0


class ManagementAPI:
    """The root of the management port, composing the three APIs by path."""

    app = Klein()

    def __init__(
        self,
        command: CommandAPI,
        config_file: ConfigFileAPI,
        monitor: MonitorAPI,
        console: ConsoleUI,
    ) -> None:
        self.command = command
        self.config_file = config_file
        self.monitor = monitor
        self.console = console
        self._document = json.dumps(openapi.document()).encode()

    @app.route("/command", methods=["POST"])
    def command_route(self, request: IRequest) -> Any:
        return self.command.command(request)

    @app.route("/configFile", methods=["GET"])
    def config_file_get(self, request: IRequest) -> Any:
        return self.config_file.get(request)

    @app.route("/configFile", methods=["POST"])
    def config_file_post(self, request: IRequest) -> Any:
        return self.config_file.post(request)

    @app.route("/api/v1/openapi.json", methods=["GET"])
    def openapi_document(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        return self._document

    @app.route(
        "/<any(status, queues, domains, vmtas, jobs, queueDetail, domainDetail, vmtaDetail, "
        "jobDetail, listQueue, listqueue):view>",
        methods=["GET"],
    )
    def monitor_route(self, request: IRequest, view: str) -> Any:
        return self.monitor.view(request, view)

    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request: IRequest) -> Any:
        return self.monitor.metrics(request)

    # The web console (mtaserver/http/console): `/` redirects to its page at `/ui/`;
    # `/?format=json|xml` is PowerMTA's home page as data (monitor.py).
    @app.route("/", methods=["GET"])
    def console_root(self, request: IRequest) -> Any:
        if b"format" in request.args:
            return self.monitor.view(request, "home")
        return self.console.root(request)

    @app.route("/ui/", methods=["GET"])
    def console_page(self, request: IRequest) -> Any:
        return self.console.page(request)

    @app.route("/ui/static/<name>", methods=["GET"])
    def console_static(self, request: IRequest, name: str) -> Any:
        return self.console.static(request, name)

    @app.route("/ui/api/<view>", methods=["GET"])
    def console_api(self, request: IRequest, view: str) -> Any:
        return self.console.api(request, view)

    @app.route("/ui/action", methods=["POST"])
    def console_action(self, request: IRequest) -> Any:
        return self.console.action(request)


def make_management_api(
    holder: ConfigHolder,
    scheduler: Any,
    acct: Any,
    reception: Any,
    traffic: TrafficStats,
    run_in_thread: RunInThread,
    ldap: Any = None,
    webhooks: Any = None,
    suppression: SuppressionService | None = None,
    maillog: Any = None,
    mx_resolver: Any = None,
    clock: Any = None,
) -> ManagementAPI:
    access = Access(holder, ldap)
    commands = Commands(
        holder,
        scheduler.control,
        acct,
        reception,
        traffic,
        run_in_thread,
        suppression,
        maillog=maillog,
        mx_resolver=mx_resolver,
        clock=clock,
    )
    return ManagementAPI(
        CommandAPI(commands, access),
        ConfigFileAPI(holder, access, run_in_thread),
        MonitorAPI(
            commands,
            access,
            make_registry(scheduler.control, reception, traffic, webhooks, acct, suppression),
            names_cached=getattr(mx_resolver, "names_cached", None),
        ),
        ConsoleUI(commands, access, History(), webhooks),  # History: memory only, kept by reload
    )


def mgmt_listeners(config: Config) -> tuple[Listener, ...]:
    """The management port's listener: none, or `http-mgmt-port` with its certificate."""
    settings = config.settings
    if settings.http_mgmt_port is None:
        return ()
    return (Listener(settings.http_mgmt_port, settings.http_mgmt_tls_certificate),)


def make_mgmt_service(
    holder: ConfigHolder,
    scheduler: Any,
    acct: Any,
    reception: Any,
    traffic: TrafficStats,
    reactor: Any,
    run_in_thread: RunInThread,
    ldap: Any = None,
    webhooks: Any = None,
    suppression: SuppressionService | None = None,
    maillog: Any = None,
    mx_resolver: Any = None,
) -> IService:
    """The management port's service; it listens while `http-mgmt-port` is set.

    Raises `listen.InsecureListenerError` for a non-loopback address without
    `http-mgmt-tls-certificate`. `ldap` (`auth.ldap.LdapCheckers`) enables
    `http-auth-ldap` logins.
    """
    api = make_management_api(
        holder,
        scheduler,
        acct,
        reception,
        traffic,
        run_in_thread,
        ldap,
        webhooks,
        suppression,
        maillog,
        mx_resolver=mx_resolver,
        clock=reactor,
    )
    service = MultiService()
    service.setName("http-mgmt")
    HttpListeners(
        holder,
        mgmt_listeners,
        api.app.resource(),
        reactor,
        "http-mgmt-port",
        management_guard(holder, reactor),
        run_in_thread,
    ).setServiceParent(service)
    history_service(api.console.history, api.console.commands, reactor).setServiceParent(service)
    if reception is not None:

        def sample() -> None:
            try:
                traffic.sample_reception(reception)
                # O(1): this runs every few seconds on the reactor, whatever the queue size
                traffic.sample_connections(*scheduler.control.connections())
            except Exception:
                log.failure("sampling reception counters failed")

        timer = TimerService(SAMPLE_INTERVAL, sample)
        timer.clock = reactor
        timer.setServiceParent(service)
    return service
