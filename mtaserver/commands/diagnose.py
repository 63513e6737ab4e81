"""The operator's diagnostics: `resolve`, `check mfrom`, `check rcpt`, `clear dnscache`, `trace`.

They answer "what would the server do?" without sending mail:

* `resolve DOMAIN`: the MX hosts and addresses as the server's own resolver (its
  `name-server`s, its cache) sees them, and the route a delivery would take under the
  domain's settings (`smtp-hosts`, private addresses refused...), or the error that
  delivery would meet. PowerMTA's `resolve` without `--connect`.
* `check mfrom SENDER IP` / `check rcpt RCPT IP`: what reception would answer a client
  at IP (its `<source>`; `--source=NAME` for a `source=NAME` listener) for this sender
  or recipient: the MAIL/RCPT reply, relaying, the suppression entry that refuses it,
  the sender's `<rewrite-list>` result, the virtual MTA the `<pattern-list>` (or
  `default-virtual-mta`) chooses, and the queue the recipient would wait in.
* `clear dnscache DOMAIN|*`: forget cached DNS answers.
* `trace DOMAIN[/VMTA]`: schedule the queue and return the transcript of its next
  delivery session when it ends (or what was seen when `--timeout` passes).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mtaserver.commands.grammar import Command, CommandError
from mtaserver.config.model import Config, SourceSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.queue.control import QueueControl, TraceRequest
from mtaserver.queue.routing import DEFAULT_VMTA, queue_name, recipient_domain
from mtaserver.smtp.mx import FOUND, MxResolver, RouteError
from mtaserver.suppression.service import SuppressionService

#: `trace`'s default wait for its session to end.
TRACE_TIMEOUT = 25


def source_name(config: Config, ip: str, named: str | None) -> str:
    """The `<source>` a client at `ip` gets: `NAME` or the most specific CIDR (or none)."""
    if named:
        return named
    address = ipaddress.ip_address(ip)
    best = None
    for network, _layer in config.sources:
        inside = address.version == network.version and address in network
        if inside and (best is None or network.prefixlen > best.prefixlen):
            best = network
    return str(best) if best is not None else "(none: the defaults)"


class Diagnostics:
    """Runs the diagnostic commands against the server's resolver, policy and queues."""

    def __init__(
        self,
        holder: ConfigHolder,
        control: QueueControl,
        clock: IReactorTime,
        mx_resolver: MxResolver | None = None,
        suppression: SuppressionService | None = None,
    ) -> None:
        self.holder = holder
        self.control = control
        self.clock = clock
        self.mx_resolver = mx_resolver
        self.suppression = suppression

    def _resolver(self, command: Command) -> MxResolver:
        if self.mx_resolver is None:
            raise CommandError(f"{command.name}: no resolver in this server")
        return self.mx_resolver

    # -- DNS -------------------------------------------------------------------------

    async def resolve(self, command: Command) -> tuple[Any, str]:
        resolver = self._resolver(command)
        domain = command.args[0].rstrip(".").lower()
        data: dict[str, Any] = {"domain": domain, "status": "StatusOk", "hosts": []}
        try:
            found = await resolver.records(domain)
        except RouteError as error:
            data["status"] = f"{error.status} {error.diag}"
            found = []
        for hop, addresses in found:
            data["hosts"].append(
                {
                    "pref": hop.preference,
                    "name": hop.name,
                    "implicit": hop.implicit,
                    "ip": [*addresses.ipv4, *addresses.ipv6],
                    "status": "StatusOk" if addresses.status == FOUND else addresses.reason,
                }
            )
        settings = self.holder.config.domain_settings(domain)
        try:
            levels = await resolver.route(domain, settings)
            data["route"] = [
                {"pref": t.preference, "host": t.host, "ip": t.ip, "port": t.port}
                for level in levels
                for t in level
            ]
            data["routeError"] = ""
        except RouteError as error:
            data["route"] = []
            data["routeError"] = f"{error.status} {error.diag}"
        message = f"{domain}: {len(data['hosts'])} host(s), {len(data['route'])} route target(s)"
        return data, message

    async def clear_dnscache(self, command: Command) -> tuple[Any, str]:
        resolver = self._resolver(command)
        name = command.args[0]
        if name == "*":
            count = resolver.clear_cache()
            return {"cleared": count, "domain": "*"}, "DNS cache cleared."
        count = resolver.clear_cache(name.rstrip("."))
        return {"cleared": count, "domain": name}, f"Cleared {name} from DNS cache."

    # -- policy ----------------------------------------------------------------------

    def _source(self, command: Command, ip: str) -> tuple[str, SourceSettings]:
        config = self.holder.config
        named = command.options.get("source")
        if named is not None and named not in config.named_sources:
            raise CommandError(f"{command.name}: no <source {named}> in the configuration")
        settings = config.listener_source_settings(named) if named else config.source_settings(ip)
        return source_name(config, ip, named), settings

    def _mail_reply(self, settings: SourceSettings) -> str:
        if not settings.smtp_service:
            return "554 5.7.1 No SMTP service for you (smtp-service no)"
        if settings.require_auth:
            return "530 5.7.0 Authentication required (require-auth yes)"
        return "250 2.1.0 Sender ok"

    def _vmta_for(
        self, settings: SourceSettings, sender: str, rcpts: list[str]
    ) -> tuple[str, str]:
        """(virtual MTA or pool, why) as reception would choose without an X-Virtual-MTA."""
        config = self.holder.config
        patterns = config.routing_patterns.get(settings.pattern_list or "")
        if patterns is not None:
            chosen = patterns.virtual_mta_for(sender, rcpts, {})
            if chosen:
                return chosen, f"pattern-list {settings.pattern_list}"
        if settings.default_virtual_mta:
            return settings.default_virtual_mta, "default-virtual-mta"
        return "", "none (the {default} queue)"

    def _rewritten(self, settings: SourceSettings, sender: str) -> str:
        rewrites = self.holder.config.rewrite_lists.get(settings.rewrite_list or "")
        return sender if rewrites is None else rewrites.rewrite_mail_from(sender)

    async def check_mfrom(self, command: Command) -> tuple[Any, str]:
        sender, ip = command.args
        source, settings = self._source(command, ip)
        vmta, why = self._vmta_for(settings, sender, [])
        data = {
            "mailFrom": sender,
            "ip": ip,
            "source": source,
            "reply": self._mail_reply(settings),
            "rewrittenTo": self._rewritten(settings, sender),
            "virtualMta": vmta,
            "virtualMtaFrom": why,
            "processXVirtualMta": settings.process_x_virtual_mta,
            "processXJob": settings.process_x_job,
            "verp": settings.verp_default and bool(sender),
        }
        return data, f"{sender or '<>'} from {ip} (source {source}): {data['reply']}"

    async def check_rcpt(self, command: Command) -> tuple[Any, str]:
        rcpt, ip = command.args
        sender = command.options.get("from", "")
        config = self.holder.config
        source, settings = self._source(command, ip)
        domain = recipient_domain(rcpt)
        relaying = settings.always_allow_relaying or config.is_relay_domain(domain)
        reply = self._mail_reply(settings)
        suppressed: dict[str, Any] | None = None
        if reply.startswith("250") and not relaying:
            reply = "550 5.7.1 Relaying denied"
        if reply.startswith("250") and self.suppression is not None:
            entry = self.suppression.check(rcpt, sender or "", settings.suppression_lists)
            if entry is not None:
                suppressed = {"scope": entry.scope, "type": ",".join(entry.type.words)}
                if settings.suppressed_recipient_action == "drop":
                    reply = "250 2.1.5 Recipient ok (suppressed: dropped, a b record)"
                else:
                    reply = "550 5.7.1 Recipient suppressed"
        if reply.startswith("250") and suppressed is None:
            reply = "250 2.1.5 Recipient ok"
        vmta_name, why = self._vmta_for(settings, sender, [rcpt])
        vmta, pool = vmta_name or DEFAULT_VMTA, None
        if vmta_name in config.vmta_pools:
            pool = vmta_name
            members = config.vmta_pools[vmta_name].virtual_mta
            vmta = members[0] if members else DEFAULT_VMTA
        domain_settings = config.domain_settings(domain, vmta, pool)
        queue_domain = domain_settings.queue_to.lower() if domain_settings.queue_to else domain
        data = {
            "rcpt": rcpt,
            "mailFrom": sender,
            "ip": ip,
            "source": source,
            "reply": reply,
            "relaying": "allowed" if relaying else "denied",
            "suppressed": suppressed,
            "virtualMta": vmta_name,
            "virtualMtaFrom": why,
            "pool": pool or "",
            "queue": queue_name(queue_domain, vmta),
            "mxRollup": domain_settings.mx_rollup,
            "type": domain_settings.type,
        }
        if pool:
            data["queueNote"] = f"the pool's members take turns: {', '.join(members)}"
        if domain_settings.mx_rollup:
            data["queueNote"] = "mx-rollup: the queue is named after the best MX host"
        return data, f"{rcpt}: {reply}; queue {data['queue']}"

    # -- trace -----------------------------------------------------------------------

    async def trace(self, command: Command) -> tuple[Any, str]:
        pattern = command.args[0]
        queues = self.control.queues(pattern)
        if not queues:
            raise CommandError(f"trace: no queue matches {pattern!r}")
        if all(view.paused for view in queues):
            raise CommandError(f"trace: {pattern} is paused (resume queue first)")
        source_ip = command.options.get("source-ip")
        if source_ip is not None and not any(
            key.split(" ", 1)[0] == source_ip
            for view in queues
            for key in self.control.vmta_sources(view.vmta)
        ):
            raise CommandError(
                f"trace: {source_ip} is not a source (smtp-source-host) of the queues of "
                f"{pattern!r}"
            )
        timeout = int(command.options.get("timeout", TRACE_TIMEOUT))
        request = TraceRequest(pattern, command.options.get("source-ip"), clock=self.clock)
        self.control.trace(request)
        # a queue with mail waiting for its retry time tries now (--retry-recipients
        # included: one retry bucket here), and its next session is the traced one
        self.control.schedule(pattern)
        timer = self.clock.callLater(timeout, request.finished.cancel)
        try:
            await request.finished
        except defer.CancelledError:
            self.control.cancel_trace(request)
            if not request.lines:
                raise CommandError(
                    f"trace: no delivery session of {pattern} started within {timeout}s "
                    "(no mail ready, the queue paused, or its limits reached)",
                    data={"queue": pattern, "transcript": []},
                ) from None
            request.line(f"trace timed out after {timeout}s; the session goes on")
        finally:
            if timer.active():
                timer.cancel()
        data = {
            "queue": request.queue or pattern,
            "transcript": request.lines,
            "linesDropped": request.dropped,
        }
        return data, "\n".join(request.lines)
