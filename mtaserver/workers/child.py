"""A reception worker process: `python -m mtaserver.workers.child` (spawned by the master).

It loads the same config file as the master, adopts the listening sockets the
master opened (`--listen FD=HOST:PORT`), and runs SMTP reception on them with the
same `SmtpListeners`, reception handler and message store as one-process mode; only
the store's journal is the master's, over the hand-off pipe
(`mtaserver.workers.handoff`). It never delivers, schedules or writes acct files.

Its log events go to stdout as JSON for the master to publish. It dies with the
master (`PR_SET_PDEATHSIG` SIGKILL, and end of file on the pipe from the master),
stops gracefully on SIGTERM (sessions get `421` as in one process), and reloads
its config when the master says so. What a worker shares with the others is
documented in docs/workers.rst: `total-max-smtp-in` is split evenly among the
workers; `max-smtp-in` (per client IP) is counted per worker.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet import ssl, task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.stdio import StandardIO
from twisted.internet.threads import deferToThreadPool
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python.threadpool import ThreadPool

from mtaserver.auth.checkers import CheckerChoice
from mtaserver.auth.ldap import LdapCheckers
from mtaserver.auth.users import LocalUserChecker
from mtaserver.config import ConfigError
from mtaserver.config.model import Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort, parse_host_port
from mtaserver.events import Envelope
from mtaserver.maillog import MailLogService
from mtaserver.message.intake import ReceptionStats
from mtaserver.runtime import ThreadPoolService
from mtaserver.smtp.connections import InboundConnections
from mtaserver.smtp.listeners import SmtpListeners
from mtaserver.smtp.server import SmtpListenerService, SmtpServerFactory
from mtaserver.spool.store import MessageStore
from mtaserver.suppression import suppression_directory
from mtaserver.workers.handoff import HandoffJournal, MasterLink, PipeSender
from mtaserver.workers.suppression import WorkerSuppression
from mtaserver.workers.wire import HANDOFF_FD, STATS_FIELDS, SUPPRESSION_FIELDS

log = Logger()

PR_SET_PDEATHSIG = 1
#: Seconds between looks at the session counters; a report goes to the master only when
#: they changed (at most ten small messages a second, however busy), and before every
#: hand-off, so a session is counted before its message shows in the master.
STATS_INTERVAL = 0.1


def die_with_parent(parent: int) -> None:
    """Ask Linux for SIGKILL when the master dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: end of file on the pipe from the master still stops us
    if os.getppid() != parent:
        os._exit(0)


@attrs.define
class SharedConnections(InboundConnections):
    """`total-max-smtp-in` split evenly among the workers; `max-smtp-in` per worker."""

    workers: int = 1

    def admit(self, client_ip: str, max_per_ip: int, max_total: int) -> Any:
        return super().admit(client_ip, max_per_ip, math.ceil(max_total / self.workers))


@attrs.frozen
class AdoptedPort:
    """An `IStreamServerEndpoint` over a listening descriptor inherited from the master."""

    reactor: Any
    fd: int
    family: int

    def listen(self, factory: Any) -> Deferred[Any]:
        """Adopt (Twisted keeps a duplicate) and close the inherited descriptor, so the
        port's own close is the worker's last reference to the socket."""
        try:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        except OSError as exc:
            return fail(exc)
        os.close(self.fd)
        return succeed(port)


@attrs.frozen
class NoSocket:
    """An address the master has no socket for (yet): listening fails, and says why."""

    address: HostPort

    def listen(self, factory: Any) -> Deferred[Any]:
        error = OSError(f"no socket for {self.address} yet (the master reloads, then restarts us)")
        return fail(error)


def compose(
    holder: ConfigHolder,
    reactor: Any,
    link: MasterLink,
    fds: dict[HostPort, int],
    workers: int,
    slot: int = 0,
    spool: str | None = None,
) -> tuple[MultiService, SmtpListeners, StatsReporter]:
    """The worker's services: the pool, then the SMTP listeners on adopted sockets.

    `spool` is the master's (a restart-only directive: the file may name another by now).
    """
    config = holder.config
    root = MultiService()
    pool = ThreadPool(minthreads=2, maxthreads=16, name="mtaserver-worker")
    ThreadPoolService(pool, reactor).setServiceParent(root)

    def run_in_thread(work: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool, work)

    # the mail log: appended to beside the master, which alone rotates it
    maillog = MailLogService(holder, reactor, run_in_thread, owner=False, process=f"w{slot}")
    maillog.setServiceParent(root)
    spool = spool or config.settings.spool
    journal = HandoffJournal(link, os.path.join(spool, "journal"))
    store = MessageStore(
        spool,
        journal,
        run_in_thread,
        config.settings.spool_min_free_space,
        track_live=False,
    )
    holder.on_reload(lambda old, new: store.set_min_free_space(new.settings.spool_min_free_space))
    suppression = WorkerSuppression(
        holder, suppression_directory(spool), run_in_thread, reactor, journal
    )
    suppression.setServiceParent(root)
    checkers = CheckerChoice(
        LocalUserChecker(holder, run_in_thread), LdapCheckers(holder, run_in_thread, reactor)
    )
    stats = ReceptionStats()
    connections = SharedConnections(workers=max(1, workers))

    def queued_by_master(envelope: Envelope) -> None:
        """The master enqueues what it journals for us; nothing to do here."""

    def smtp_listener(
        listener: Listener, tls_options: ssl.CertificateOptions | None
    ) -> SmtpListenerService:
        factory = SmtpServerFactory(
            holder,
            store,
            queued_by_master,
            reactor,
            listener,
            stats=stats,
            checkers=checkers,
            run_in_thread=run_in_thread,
            tls_options=tls_options,
            connections=connections,
            maillog=maillog.maillog,
            suppression=suppression,
        )
        fd = fds.get(listener.address)
        endpoint: Any = NoSocket(listener.address)
        if fd is not None:
            family = socket.AF_INET6 if ":" in listener.address.host else socket.AF_INET
            endpoint = AdoptedPort(reactor, fd, family)
        service = SmtpListenerService(endpoint, factory)
        service.setName(f"smtp-listener {listener.address}")
        return service

    listeners = SmtpListeners(holder, smtp_listener, run_in_thread)
    listeners.setServiceParent(root)
    reporter = StatsReporter(stats, suppression, link)
    timer = TimerService(STATS_INTERVAL, reporter)
    timer.clock = reactor
    timer.setServiceParent(root)
    return root, listeners, reporter


class Retirement:
    """The master moved to new sockets: stop accepting, exit once the last session ends.

    A session in progress finishes its messages as after a reload in one process; only
    the listening ports close (their sockets stay open in the master until we exit).
    """

    def __init__(self, listeners: SmtpListeners, reactor: Any) -> None:
        self.listeners = listeners
        self.reactor = reactor
        self._check = task.LoopingCall(self._exit_when_idle)
        self._check.clock = reactor

    def __call__(self) -> None:
        if self._check.running:
            return
        log.info("listeners moved: this worker takes no new sessions and exits when idle")
        for service in self.listeners.listening:
            if service.running:
                StreamServerEndpointService.stopService(service)
        self._check.start(0.5)

    def _exit_when_idle(self) -> None:
        if any(s.smtp_factory.live.sessions for s in self.listeners.listening):
            return
        self._check.stop()
        if self.reactor.running:
            self.reactor.stop()


class StatsReporter:
    """Sends the changes of the worker's session counters to the master (`wire.STATS_FIELDS`)."""

    def __init__(
        self, stats: ReceptionStats, suppression: WorkerSuppression, link: MasterLink
    ) -> None:
        self.stats = stats
        self.suppression = suppression
        self.link = link
        self.sent = dict.fromkeys(STATS_FIELDS, 0)
        self.sent_suppression = dict.fromkeys(SUPPRESSION_FIELDS, 0)
        self.sent_top = 0

    def __call__(self) -> None:
        now = {field: getattr(self.stats, field) for field in STATS_FIELDS}
        delta = {field: now[field] - self.sent[field] for field in STATS_FIELDS}
        counters = self.suppression.counters
        now_s = {field: getattr(counters, field) for field in SUPPRESSION_FIELDS}
        delta_s = {f: now_s[f] - self.sent_suppression[f] for f in SUPPRESSION_FIELDS}
        top = self.stats.sessions_top
        changed = any(delta.values()) or any(delta_s.values()) or top != self.sent_top
        if changed and not self.link.lost:
            message = {"op": "stats", "delta": delta, "suppression": delta_s, "top": top}
            self.link.send(message).addErrback(lambda _: None)  # the link reports a broken pipe
            self.sent, self.sent_suppression, self.sent_top = now, now_s, top


def _listen_arg(text: str) -> tuple[HostPort, int]:
    fd, _, address = text.partition("=")
    return parse_host_port(address), int(fd)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mtaserver.workers.child")
    parser.add_argument("--config", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--master-pid", type=int, default=os.getppid())
    parser.add_argument("--listen", type=_listen_arg, action="append", default=[])
    parser.add_argument("--spool", help="the master's spool (the config may name another)")
    args = parser.parse_args(argv)
    die_with_parent(args.master_pid)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the master
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the master's to handle

    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    observer = jsonFileLogObserver(sys.stdout, recordSeparator="")
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(observer, [predicate])], redirectStandardIO=False
    )
    try:
        holder = ConfigHolder.from_file(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(1) from None

    def reload() -> None:
        Deferred.fromCoroutine(holder.reload_in_thread(run_reload))

    def run_reload(work: Callable[[], Any]) -> Deferred[Any]:
        from twisted.internet.threads import deferToThread

        return deferToThread(work)

    def master_gone() -> None:
        log.info("the master closed the pipe: worker {slot} stops", slot=args.slot)
        if reactor.running:
            reactor.stop()

    def retire() -> None:
        retirement()

    def report_counters() -> None:
        reporter()

    # Requests go out through our own sender, which knows when they are in the pipe.
    # The StandardIO only reads the master's answers: its writer gets /dev/null, since
    # Twisted's writer on a pipe also watches it for reading, and the reactor takes one
    # reader or writer per descriptor.
    link = MasterLink(PipeSender(reactor, HANDOFF_FD), reload, master_gone, retire, report_counters)
    nowhere = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    StandardIO(link, stdin=0, stdout=nowhere, reactor=reactor)  # type: ignore[call-arg]
    root, listeners, reporter = compose(
        holder, reactor, link, dict(args.listen), args.workers, args.slot, args.spool
    )
    retirement = Retirement(listeners, reactor)
    reactor.callWhenRunning(root.startService)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    log.info("reception worker {slot} running (pid {pid})", slot=args.slot, pid=os.getpid())
    reactor.run()


if __name__ == "__main__":
    main()
