"""`type smtp`: one delivery session of a queue, from MX routing to the last transaction.

Routes the queue's domain (`MxResolver`), picks the vmta's source address and EHLO
name (several `smtp-source-host` lines: round robin), and tries the targets in
preference order until one session runs. When every target fails before a session
could run, the queue as a whole failed: `QueueLevelFailure` (a `tq` record and a
queue retry); a permanent routing answer (NXDOMAIN, null MX) bounces the queue.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from twisted.logger import Logger

from mtaserver.config.model import DomainSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import SourceHost
from mtaserver.maillog import MailLog
from mtaserver.maillog.log import OutboundTrace
from mtaserver.queue.delivery import (
    LOCAL_INFO,
    QueueLevelFailure,
    SessionJob,
    Transaction,
    TransactionResult,
)
from mtaserver.smtp.client import run_session
from mtaserver.smtp.client_session import SessionFailure
from mtaserver.smtp.mx import MxResolver, RouteError
from mtaserver.smtp_reply import Reply

log = Logger()


class _Transcript:
    """A mail log sink that also hands each line to a `trace` command's transcript."""

    def __init__(self, maillog: MailLog, transcript: Callable[[str], None]) -> None:
        self.maillog = maillog
        self.transcript = transcript

    def emit(self, tag: str, text: str) -> None:
        self.maillog.emit(tag, text)
        self.transcript(text)


def traced(
    maillog: MailLog, queue: str, settings: DomainSettings, transcript: Callable[[str], None]
) -> OutboundTrace:
    """A traced session (PowerMTA's `trace`): connections, commands, TLS, routing and
    failures are logged whatever the domain's `log-*` switches say (message data is not),
    to the mail log and to `transcript`."""
    loud = attrs.evolve(
        settings,
        log_connections=True,
        log_commands=True,
        log_tls=True,
        log_resolution=True,
        log_transfer_failures=True,
        log_data=False,
    )
    return OutboundTrace(_Transcript(maillog, transcript), "trace", queue, loud)


#: Targets tried in one session attempt before the queue is declared failed.
MAX_TARGETS_PER_ATTEMPT = 5


class SmtpDeliverer:
    """Runs SMTP sessions for queues; the scheduler decides when and how many."""

    def __init__(
        self,
        holder: ConfigHolder,
        resolver: MxResolver,
        reactor: Any,
        trust_root: Any = None,
        maillog: MailLog | None = None,
    ) -> None:
        self.holder = holder
        self.maillog = maillog if maillog is not None else MailLog.service_log()
        self.resolver = resolver
        self.reactor = reactor
        self.trust_root = trust_root
        self._source_cycles: dict[tuple[str, tuple[SourceHost, ...]], Iterator[SourceHost]] = {}

    def source_for(self, vmta_name: str) -> tuple[str | None, str]:
        """(source IP or None, EHLO name) for a vmta, rotating over its source hosts."""
        config = self.holder.config
        vmta = config.vmtas.get(vmta_name)
        default_name = (vmta.host_name if vmta and vmta.host_name else None) or (
            config.settings.host_name
        )
        hosts = config.source_hosts(vmta_name)  # its own, else the global smtp-source-host
        if not hosts:
            return None, default_name
        key = (vmta_name, hosts)
        if key not in self._source_cycles:
            self._source_cycles[key] = itertools.cycle(hosts)
        source = next(self._source_cycles[key])
        return source.ip, source.host_name

    async def _bounce_old_without_mx(self, job: SessionJob, after: float) -> SessionJob | None:
        """`bounce-upon-no-mx INTERVAL` for a domain without MX: messages queued at least
        that long bounce (5.4.4) before any connection; the rest go to its A/AAAA address.

        The first younger message is taken now and handed to the session first; None when
        there is none (the session then ends without connecting).
        """
        reply = Reply(550, "5.4.4", f"no MX record for {job.domain} (bounce-upon-no-mx)")
        info = attrs.evolve(LOCAL_INFO, destination_host=job.domain)

        async def next_young() -> Transaction | None:
            while (tx := await job.next_transaction()) is not None:
                if self.reactor.seconds() - tx.envelope.time_queued < after:
                    return tx
                job.report(TransactionResult(tx, (reply,) * len(tx.rcpt_indexes), info))
            return None

        first = await next_young()
        if first is None:
            return None
        held: list[Transaction] = [first]

        async def next_transaction() -> Transaction | None:
            return held.pop() if held else await next_young()

        return attrs.evolve(job, next_transaction=next_transaction)

    async def run(self, job: SessionJob) -> None:
        trace = self.maillog.outbound(job.queue, job.settings)
        if job.transcript is not None:  # `trace`: this session in full, to the log and the caller
            trace = traced(self.maillog, job.queue, job.settings, job.transcript)
        try:
            levels = await self.resolver.route(job.domain, job.settings)
        except RouteError as error:
            trace.resolution_failed(job.domain, error.status, error.diag)
            raise QueueLevelFailure(
                error.status, error.diag, permanent=error.permanent, bounce_cat=error.bounce_cat
            ) from None
        trace.resolved(job.domain, levels)
        # the scheduler chose the source (it skips sources disable-source-ip disabled)
        source_ip: str | None
        if job.source is not None:
            source_ip, helo_name = job.source.ip, job.source.host_name
        else:
            source_ip, helo_name = self.source_for(job.vmta)
        targets = [target for level in levels for target in level][:MAX_TARGETS_PER_ATTEMPT]
        after = job.settings.bounce_upon_no_mx
        if targets and targets[0].no_mx and not isinstance(after, bool) and after is not None:
            young = await self._bounce_old_without_mx(job, after)
            if young is None:
                return  # every message was old enough to bounce: no connection needed
            job = young
        last: SessionFailure | None = None
        for target in targets:
            try:
                await run_session(
                    self.reactor,
                    target,
                    helo_name=helo_name,
                    source_ip=source_ip,
                    settings=job.settings,
                    next_transaction=job.next_transaction,
                    report=trace.wrap_report(job.report),
                    trust_root=self.trust_root,
                    trace=trace,
                )
                return
            except SessionFailure as failure:
                trace.session_failed(target.host, target.ip, target.port, failure.reply)
                log.info(
                    "{queue}: {host} [{ip}]:{port} failed: {reply}",
                    queue=job.queue,
                    host=target.host,
                    ip=target.ip,
                    port=target.port,
                    reply=failure.reply,
                )
                last = failure
        reply = last.reply if last else None
        raise QueueLevelFailure(
            reply.status if reply else "4.4.4",
            reply.text if reply else "no delivery target",
            dsn_mta=targets[-1].host if targets else "",
            destination_ip=targets[-1].ip if targets else "",
        )
