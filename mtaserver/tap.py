"""twistd's entry point: `Options` and `makeService`, the one place that composes services.

Only this module reads command-line options, builds endpoints and thread pools and
touches the global reactor; everything else receives what it needs. A config that
does not load stops the process before anything listens, with every `FILE:LINE:
message` on stderr and a non-zero exit status.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn, cast

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from mtaserver import __version__
from mtaserver.accounting.service import AcctService
from mtaserver.auth.checkers import CheckerChoice
from mtaserver.auth.ldap import LdapCheckers
from mtaserver.auth.users import LocalUserChecker
from mtaserver.config import ConfigError
from mtaserver.config.model import Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope
from mtaserver.http.listen import InsecureListenerError, check_http_certificates
from mtaserver.http.mgmt import make_mgmt_service
from mtaserver.http.transmissions import make_transmissions_services
from mtaserver.maillog import MailLogService
from mtaserver.message.intake import ReceptionStats
from mtaserver.processors import ReportProcessor
from mtaserver.queue.bounces import DsnSender
from mtaserver.queue.control import QueueControl
from mtaserver.queue.delay_notices import DelayNotices
from mtaserver.queue.delivery import DiscardDeliverer, FileDeliverer, IDeliverer
from mtaserver.queue.notices import QueueNotices
from mtaserver.queue.scheduler import Scheduler
from mtaserver.queue.service import SchedulerService
from mtaserver.runtime import RunInThread, ThreadPoolService
from mtaserver.smtp.connections import InboundConnections, raise_nofile_limit
from mtaserver.smtp.deliverer import SmtpDeliverer
from mtaserver.smtp.dkim import DkimError, DkimSigner
from mtaserver.smtp.listeners import SmtpListeners, check_listener_certificates
from mtaserver.smtp.mx import MxResolver
from mtaserver.smtp.nameservers import NameServerResolver
from mtaserver.smtp.server import SmtpListenerService, make_smtp_service
from mtaserver.smtp.signing import DkimTransform
from mtaserver.spool import Journal, open_spool
from mtaserver.stats import TrafficStats
from mtaserver.suppression import suppression_directory
from mtaserver.suppression.service import SuppressionService
from mtaserver.webhooks import HttpDeliverer, PooledClient, WebhookService, holder_targets
from mtaserver.workers import Handoff, ReceptionWorkers, workers_for

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run mtaserver, a mail transfer agent, on a PowerMTA-style config file."
    optParameters = [
        ["config", "c", "etc/mtaserver.conf", "The configuration file."],
    ]

    def opt_version(self) -> NoReturn:
        """Print the version and exit."""
        print(f"mtaserver {__version__}")
        raise SystemExit(0)


def load_or_exit(path: str) -> ConfigHolder:
    """Load the config; on error print every problem and exit with status 1."""
    try:
        return ConfigHolder.from_file(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"mtaserver: {len(exc.problems)} error(s) in {path}; not started", file=sys.stderr)
        raise SystemExit(1) from None


def install_sighup(holder: ConfigHolder, reactor: Any, run_in_thread: RunInThread) -> None:
    """SIGHUP reloads the config (the usual Unix daemon habit), parsing in a thread."""

    def reload() -> None:
        Deferred.fromCoroutine(holder.reload_in_thread(run_in_thread))

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


class JournalService(Service):
    """Closes the journal after shutdown, when the pool's last batch has finished."""

    def __init__(self, journal: Journal, reactor: Any) -> None:
        self.journal = journal
        self.reactor = reactor

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.reactor.addSystemEventTrigger("after", "shutdown", self.journal.close)


def refuse_to_start(message: str) -> NoReturn:
    """A setting that cannot run (an insecure listener, a bad CA file): exit status 1."""
    print(f"mtaserver: {message}; not started", file=sys.stderr)
    raise SystemExit(1)


def raise_descriptor_limit() -> None:
    """Lift RLIMIT_NOFILE's soft limit to the hard one: every SMTP session holds a descriptor."""
    old, new, hard = raise_nofile_limit()
    log.info(
        "file descriptor limit (RLIMIT_NOFILE): {soft} (was {old}, hard limit {hard})",
        soft=new,
        old=old,
        hard=hard,
    )


def makeService(options: Options, reactor: Any = None) -> IService:  # noqa: N802 - twistd's name
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    holder = load_or_exit(options["config"])
    holder.log_warnings(holder.config)
    raise_descriptor_limit()
    try:
        root = compose(holder, reactor)
    except (InsecureListenerError, DkimError, ValueError) as exc:
        refuse_to_start(str(exc))
    problems = holder.start_problems(holder.config)  # the checks `test config` runs
    if problems:
        refuse_to_start("; ".join(str(p) for p in problems))
    log.info("mtaserver configured from {path}", path=holder.config.path)
    return root


def compose(holder: ConfigHolder, reactor: Any) -> MultiService:
    """Build every service in start order; MultiService stops them in reverse."""
    config = holder.config
    root = MultiService()
    pool = ThreadPool(minthreads=4, maxthreads=32, name="mtaserver-blocking")
    ThreadPoolService(pool, reactor).setServiceParent(root)

    def run_in_thread(work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool, work)

    install_sighup(holder, reactor, run_in_thread)
    # `test config` refuses what a start refuses (in one process or with reception workers)
    holder.check_at_start(check_http_certificates)
    holder.check_at_start(check_listener_certificates)

    # The operator's mail log (`log-file`) first: everything after may write to it.
    maillog_service = MailLogService(holder, reactor, run_in_thread)
    maillog_service.setServiceParent(root)
    maillog = maillog_service.maillog

    # The spool, then what reads the journal: acct files, then their webhooks.
    recovered, journal, store = open_spool(
        config.settings.spool,
        run_in_thread,
        min_free_space=config.settings.spool_min_free_space,
        hold_pruning=True,
    )
    JournalService(journal, reactor).setServiceParent(root)
    holder.on_reload(lambda old, new: store.set_min_free_space(new.settings.spool_min_free_space))
    # The suppression list beside the spool: opened before anything listens, so the first
    # RCPT is already checked; it follows the journal for automatic adds.
    suppression = SuppressionService.open(
        holder, suppression_directory(config.settings.spool), run_in_thread, reactor, journal
    )
    suppression.setServiceParent(root)
    acct = AcctService.from_holder(holder, journal, run_in_thread, reactor)
    acct.setServiceParent(root)
    journal.release_pruning()  # every consumer of the journal is registered now
    targets = holder_targets(holder)  # http-webhook-allow-addresses, checked per connection
    http_delivery_client = PooledClient(reactor, targets=targets)
    webhooks = WebhookService(
        holder, reactor, run_in_thread, targets, shared_clients=(http_delivery_client,)
    )
    webhooks.setServiceParent(root)

    # Delivery: one deliverer per `<domain> type`, and the scheduler that owns the queues.
    mx_resolver = MxResolver(NameServerResolver(holder, reactor))
    deliverers: dict[str, IDeliverer] = {
        "smtp": SmtpDeliverer(holder, mx_resolver, reactor, maillog=maillog),
        "discard": DiscardDeliverer(),
        "file": FileDeliverer(run_in_thread),
        "http-delivery": HttpDeliverer(http_delivery_client, reactor, run_in_thread),
    }
    signer = DkimSigner.from_settings(config.settings)
    traffic = TrafficStats(reactor.seconds)

    def enqueue_dsn(envelope: Envelope) -> None:
        scheduler.enqueue(envelope)  # bound once the scheduler below exists

    dsn_sender = DsnSender(holder, store, enqueue_dsn, reactor, run_in_thread)
    scheduler = Scheduler(
        holder,
        store,
        traffic.observe(journal),
        deliverers,
        reactor,
        notify_bounce=dsn_sender,
        transform_body=DkimTransform(holder, run_in_thread, signer),
        rollup=mx_resolver.rollup_name,
        delay_notices=DelayNotices(dsn_sender.send, dsn_sender.may_send, reactor),
        maillog=maillog,
    )
    # <bounce-processor>, <feedback-loop-processor>: the filter between intake and the
    # queues; it takes the recovered messages it never got to process.
    processor = ReportProcessor(  # its journal counts bounceProcessed/feedbackLoopProcessed
        holder, store, traffic.observe(journal), scheduler.enqueue, run_in_thread, reactor.seconds
    )
    if recovered is not None:
        taken = processor.take_recovered(recovered.messages.values())
        recovered = attrs.evolve(
            recovered, messages={k: m for k, m in recovered.messages.items() if k not in taken}
        )
    SchedulerService(scheduler, recovered).setServiceParent(root)
    QueueNotices(
        holder, QueueControl(scheduler), store, scheduler.enqueue, reactor
    ).setServiceParent(root)
    processor.setServiceParent(root)

    # Reception: SMTP listeners and the Transmissions API, sharing the password
    # checkers (local <smtp-user>s, <ldap> directories) with the management port.
    ldap_checkers = LdapCheckers(holder, run_in_thread, reactor)
    checkers = CheckerChoice(LocalUserChecker(holder, run_in_thread), ldap_checkers)
    stats = ReceptionStats()
    connections = InboundConnections()  # total-max-smtp-in spans every listener
    workers = workers_for(config.settings.reception_workers)

    def smtp_listener(
        listener: Listener, tls_options: ssl.CertificateOptions | None
    ) -> SmtpListenerService:
        service = make_smtp_service(
            holder,
            store,
            processor.enqueue,
            listener,
            reactor,
            stats=stats,
            run_in_thread=run_in_thread,
            checkers=checkers,
            connections=connections,
            tls_options=tls_options,
            suppression=suppression,
            maillog=maillog,
        )
        return cast(SmtpListenerService, service)

    if workers:
        # SMTP reception in worker processes on sockets opened here (mtaserver.workers);
        # they commit message files and hand the journal records to this process.
        handoff = Handoff(journal, store, processor.enqueue, stats, suppression.counters)
        ReceptionWorkers(holder, handoff, workers, reactor).setServiceParent(root)
        log.info("SMTP reception in {count} worker process(es)", count=workers)
    else:
        SmtpListeners(holder, smtp_listener, run_in_thread).setServiceParent(root)
    for api_service in make_transmissions_services(
        holder, store, processor.enqueue, reactor, stats, run_in_thread, suppression, maillog
    ):
        api_service.setServiceParent(root)

    make_mgmt_service(  # listens while http-mgmt-port is set, reloads included
        holder,
        scheduler,
        acct,
        stats,
        traffic,
        reactor,
        run_in_thread,
        ldap=ldap_checkers,
        webhooks=webhooks,
        suppression=suppression,
        maillog=maillog,
        mx_resolver=mx_resolver,  # resolve, clear dnscache
    ).setServiceParent(root)
    return root
