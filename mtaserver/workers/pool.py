"""The master's side of reception workers: sockets, spawning, supervision, the hand-off.

With `reception-workers N` (N > 0) the master opens every `smtp-listener` socket
itself and hands the listening descriptors to N worker processes at spawn
(`reactor.spawnProcess(childFDs=...)`); each worker adopts them
(`IReactorSocket.adoptStreamPort`) and runs SMTP reception. Why handed-over sockets
rather than `SO_REUSEPORT`: the master binds once, so a port that is taken or not
permitted fails the start before any worker exists; nothing else on the host can
bind the same port next to us; and all workers share one accept queue, so a busy or
dead worker's share of new connections is not stranded in its own queue (with
`SO_REUSEPORT` the kernel hashes each connection to one socket, and connections
queued on a socket whose worker dies are reset).

The master journals what workers commit (see `mtaserver.workers.handoff`), tracks the
message for segment pruning, counts it in the reception statistics and enqueues it,
exactly as in one process; so queue state, scheduling, delivery and accounting stay
with one owner.

Supervision: a worker that exits while the server runs is started again after a
back-off (0.5 s, doubling up to 30 s; reset once a worker has lived 30 s). A worker
exits when the master dies: it asks the kernel for SIGKILL on its parent's death
(`PR_SET_PDEATHSIG`) and also stops when its pipe from the master reaches end of
file. Each worker's log events come over its stdout as JSON and are published in
the master's log with `[worker N]` in front. A successful `reload` (SIGHUP, `mtactl
reload config`) is forwarded; a reload that changes the `smtp-listener` addresses
opens and closes sockets in the master and restarts the workers on the new set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.events import Envelope, Received, event_from_json
from mtaserver.message.intake import OnAccepted, ReceptionStats
from mtaserver.smtp.listeners import check_listener_certificates
from mtaserver.spool.journal import Journal, JournalPosition
from mtaserver.spool.store import MessageStore
from mtaserver.suppression.service import SuppressionCounters
from mtaserver.workers.wire import (
    HANDOFF_FD,
    STATS_FIELDS,
    SUPPRESSION_FIELDS,
    FrameDecoder,
    WireError,
    encode,
)

log = Logger()

#: The first descriptor number a worker finds its listening sockets at.
FIRST_LISTEN_FD = 10
#: Seconds a stopping worker gets to finish its sessions before it is killed.
STOP_GRACE = 20.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Seconds a start waits for a port still held by the dying workers of a crashed master.
BIND_PATIENCE = 3.0
#: A worker that lived this long had a fair run: its next restart starts the back-off over.
STABLE_AFTER = 30.0


def workers_for(setting: int | None, cpus: int | None = None) -> int:
    """The number of reception workers: `auto` (None) is one per core but one (0 on one core)."""
    if setting is not None:
        return setting
    if cpus is None:  # the cores this process may run on (a container's or taskset's)
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    count = cpus
    return max(0, count - 1)


def open_listening_socket(address: HostPort, backlog: int = 1024) -> socket.socket:
    """A bound, listening, inheritable socket for `address` (OSError if it cannot bind)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class Handoff:
    """Journals what the workers commit, then tracks, counts and enqueues it."""

    def __init__(
        self,
        journal: Journal,
        store: MessageStore,
        on_accepted: OnAccepted,
        stats: ReceptionStats,
        suppression_counters: SuppressionCounters | None = None,
    ) -> None:
        self.journal = journal
        self.store = store
        self.on_accepted = on_accepted
        self.stats = stats
        self.suppression_counters = suppression_counters

    def append(self, raw_events: Iterable[Any]) -> Deferred[JournalPosition]:
        """Journal a worker's events; fires once they are fsync'd and their messages queued."""
        events = [event_from_json(e) for e in raw_events]
        d = self.journal.append(events)

        def committed(position: JournalPosition) -> JournalPosition:
            for event in events:
                if isinstance(event, Received):
                    self._accepted(event.envelope, position)
            return position

        return d.addCallback(committed)

    def add_stats(self, delta: dict[str, Any], suppression: dict[str, Any] | None = None) -> None:
        """A worker's counters changed by `delta` and `suppression` (unknown fields ignored)."""
        _add(self.stats, STATS_FIELDS, delta)
        if self.suppression_counters is not None and isinstance(suppression, dict):
            _add(self.suppression_counters, SUPPRESSION_FIELDS, suppression)

    def _accepted(self, envelope: Envelope, position: JournalPosition) -> None:
        self.store.track_committed(envelope.msg_id, position.segment)
        self.stats.messages_received += 1
        self.stats.recipients_received += len(envelope.recipients)
        self.stats.bytes_received += envelope.size
        try:
            self.on_accepted(envelope)
        except Exception:
            log.failure("on_accepted failed for {msg_id}", msg_id=envelope.msg_id)


def _add(counters: Any, fields: tuple[str, ...], delta: dict[str, Any]) -> None:
    for field in fields:
        value = delta.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(counters, field, getattr(counters, field) + value)


class WorkerProcess(ProcessProtocol):
    """One worker as the master sees it: its hand-off pipe, its log, its end."""

    def __init__(
        self,
        slot: int,
        handoff: Handoff,
        ended: Callable[[WorkerProcess], None],
        report_top: Callable[[], None] = lambda: None,
    ):
        self.slot = slot
        self.handoff = handoff
        self._ended = ended
        self._decoder = FrameDecoder()
        self._log_tail = b""
        self._err_tail = b""
        self.started_at = 0.0
        self.sessions_current = 0  # what this worker has added to the master's counter
        self.sessions_top = 0  # the worker's own most sessions at once
        self.report_top = report_top  # the pool sums the workers' peaks
        self.done: Deferred[None] = Deferred()
        self.exited = False

    @property
    def pid(self) -> int | None:
        return None if self.transport is None else self.transport.pid

    def send(self, message: dict[str, Any]) -> None:
        if self.exited or self.transport is None:
            return
        with contextlib.suppress(OSError, KeyError):  # going: processEnded handles its end
            self.transport.writeToChild(0, encode(message))

    def signal(self, name: str) -> None:
        if self.exited or self.transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready, OSError):
            self.transport.signalProcess(name)

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        if childFD == HANDOFF_FD:
            self._handoff_data(data)
        elif childFD == 1:
            self._log_tail = self._lines(self._log_tail + data, self._relay_event)
        else:
            self._err_tail = self._lines(self._err_tail + data, self._relay_text)

    def _handoff_data(self, data: bytes) -> None:
        try:
            messages = list(self._decoder.feed(data))
        except WireError as exc:
            log.error("reception worker {slot}: {error}; stopping it", slot=self.slot, error=exc)
            self.signal("KILL")
            return
        for message in messages:
            if message["op"] == "append":
                self._append(message)
            elif message["op"] == "stats" and isinstance(message.get("delta"), dict):
                delta = message["delta"]
                current = delta.get("sessions_current")
                if isinstance(current, int):
                    self.sessions_current += current
                top = message.get("top")
                if isinstance(top, int):
                    self.sessions_top = top
                self.handoff.add_stats(delta, message.get("suppression"))
                self.report_top()
            else:
                log.error("reception worker {slot}: unknown op", slot=self.slot)

    def _append(self, message: dict[str, Any]) -> None:
        """Journal a worker's events; answer `appended` once they are fsync'd, or `failed`."""
        request = message.get("id")
        try:
            d = self.handoff.append(message.get("events") or ())
        except (KeyError, TypeError, ValueError) as exc:
            self.send({"op": "failed", "id": request, "error": f"bad events: {exc}"})
            return

        def done(position: JournalPosition) -> None:
            segment, offset = position.segment, position.offset
            self.send({"op": "appended", "id": request, "segment": segment, "offset": offset})

        def failed(failure: Failure) -> None:
            log.error(
                "journal append for reception worker {slot} failed: {error}",
                slot=self.slot,
                error=str(failure.value),
            )
            self.send({"op": "failed", "id": request, "error": str(failure.value)})

        d.addCallbacks(done, failed)

    @staticmethod
    def _lines(buffer: bytes, each: Callable[[bytes], None]) -> bytes:
        *lines, rest = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                each(line)
        return rest[-65536:]

    def _relay_event(self, line: bytes) -> None:
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            self._relay_text(line)
            return
        # The slot goes into the format as text: a relayed event's fields are flattened,
        # so a new `{field}` in its format would not resolve.
        event["log_worker"] = self.slot
        event["log_format"] = f"[worker {self.slot}] " + str(event.get("log_format") or "")
        globalLogPublisher(event)

    def _relay_text(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        printable = "".join(c if c.isprintable() else "?" for c in text)
        log.emit(
            LogLevel.error, "[worker {log_worker}] {text}", log_worker=self.slot, text=printable
        )

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self.exited = True
        # its sessions ended with it (a killed worker never reported them closed)
        self.handoff.add_stats({"sessions_current": -self.sessions_current})
        self.sessions_current = 0
        status = reason.value
        if not isinstance(status, ProcessDone):
            log.error(
                "reception worker {slot} (pid {pid}) ended: {status}",
                slot=self.slot,
                pid=self.pid,
                status=str(status),
            )
        self._ended(self)
        self.done.callback(None)


class ReceptionWorkers(Service):
    """Starts, supervises and stops the reception workers; owns their listening sockets.

    ValueError when a listener's STARTTLS certificate does not load (the server refuses
    to start, as `SmtpListeners` makes it in one process).
    """

    def __init__(
        self,
        holder: ConfigHolder,
        handoff: Handoff,
        count: int,
        reactor: Any,
        *,
        executable: str = sys.executable,
    ) -> None:
        self.holder = holder
        self.spool = holder.config.settings.spool  # restart-only: the one we run on
        self.handoff = handoff
        self.count = count
        self.reactor = reactor
        self.executable = executable
        self.sockets: dict[HostPort, socket.socket] = {}
        self.workers: dict[int, WorkerProcess] = {}
        self._failures: dict[int, int] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._retiring: list[WorkerProcess] = []
        self._bound = False
        # The workers load the STARTTLS certificates; a start (and `test config`) is
        # refused here when one does not load, as in one process.
        problems = check_listener_certificates(holder.config)
        if problems:
            raise ValueError("; ".join(str(problem) for problem in problems))
        holder.check_at_start(check_listener_certificates)
        holder.on_reload(self.reloaded)

    # -- lifetime ---------------------------------------------------------------------

    def privilegedStartService(self) -> None:  # noqa: N802 - Twisted's name
        """Bind the listeners (before twistd gives up root, as an endpoint service does).

        An address that cannot be bound is logged and left out, as in one process.
        """
        super().privilegedStartService()
        self._bound = True
        for listener in self.holder.config.settings.smtp_listener:
            self._open(listener.address, BIND_PATIENCE)

    def _open(self, address: HostPort, patience: float = 0.0) -> None:
        """Bind `address`; at start, an address in use is tried again for `patience` s.

        After a crash of the master its workers die a moment later than it does (the
        kernel's SIGKILL), and until then their copy of the old socket holds the port: a
        supervisor restarting the server at once must not start it without a listener.
        """
        if address in self.sockets:
            return
        deadline = time.monotonic() + patience
        while True:
            try:
                self.sockets[address] = open_listening_socket(address)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    log.error(
                        "smtp-listener {address}: Couldn't listen: {error}",
                        address=address,
                        error=exc,
                    )
                    return
            time.sleep(0.1)  # at start, before the reactor runs: nothing else waits

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        if not self._bound:
            self.privilegedStartService()  # started without twistd's privileged step
        super().startService()
        self._stopping = False
        for slot in range(1, self.count + 1):
            self._spawn(slot)

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ending = self._stop_all()

        def close(_: object) -> None:
            for sock in self.sockets.values():
                sock.close()
            self.sockets.clear()
            self._bound = False

        return ending.addCallback(close)

    def _stop_all(self) -> Deferred[None]:
        """SIGTERM every worker (they finish their sessions), SIGKILL what is left later."""
        running = [w for w in [*self.workers.values(), *self._retiring] if not w.exited]
        if not running:
            return succeed(None)
        for worker in running:
            worker.signal("TERM")

        def kill_left() -> None:
            for worker in running:
                worker.signal("KILL")

        kill = self.reactor.callLater(STOP_GRACE, kill_left)
        done = DeferredList([w.done for w in running])

        def finished(_: object) -> None:
            if kill.active():
                kill.cancel()

        return done.addCallback(finished)

    # -- workers ----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        self._restarts.pop(slot, None)
        worker = WorkerProcess(slot, self.handoff, self._worker_ended, self._sessions_top)
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", HANDOFF_FD: "r"}
        args = [
            self.executable,
            "-m",
            "mtaserver.workers.child",
            "--config",
            self.holder.config.path,
            "--slot",
            str(slot),
            "--workers",
            str(self.count),
            "--master-pid",
            str(os.getpid()),
            "--spool",
            self.spool,
        ]
        for i, (address, sock) in enumerate(sorted(self.sockets.items(), key=str)):
            fd = FIRST_LISTEN_FD + i
            child_fds[fd] = sock.fileno()
            args += ["--listen", f"{fd}={address}"]
        worker.started_at = self.reactor.seconds()
        self.reactor.spawnProcess(
            worker, self.executable, args, env=dict(os.environ), childFDs=child_fds
        )
        self.workers[slot] = worker
        log.info("reception worker {slot} started (pid {pid})", slot=slot, pid=worker.pid)

    def _worker_ended(self, worker: WorkerProcess) -> None:
        if self.workers.get(worker.slot) is not worker or self._stopping:
            return
        lived = self.reactor.seconds() - worker.started_at
        failures = 1 if lived >= STABLE_AFTER else self._failures.get(worker.slot, 0) + 1
        self._failures[worker.slot] = failures
        delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
        log.warn(
            "reception worker {slot} exited; restarting it in {delay} s",
            slot=worker.slot,
            delay=delay,
        )
        self._restarts[worker.slot] = self.reactor.callLater(delay, self._spawn, worker.slot)

    def _sessions_top(self) -> None:
        """The most sessions open at once: exact with one worker; with several, the sum
        of their own peaks (which may not have coincided) bounds it from above."""
        stats = self.handoff.stats
        peaks = sum(w.sessions_top for w in self.workers.values())
        stats.sessions_top = max(stats.sessions_top, stats.sessions_current, peaks)

    @property
    def pids(self) -> list[int]:
        """The process ids of the running workers (for `show status` and tests)."""
        return [w.pid for w in self.workers.values() if not w.exited and w.pid is not None]

    # -- reload -----------------------------------------------------------------------

    def reloaded(self, old: Config, new: Config) -> None:
        """Forward the reload; on a new set of listener addresses, restart on new sockets."""
        wanted = {listener.address for listener in new.settings.smtp_listener}
        if wanted == set(self.sockets):
            for worker in self.workers.values():
                worker.send({"op": "reload"})
            return
        for address in wanted - set(self.sockets):
            self._open(address)
        for address in set(self.sockets) - wanted:
            # Closed here at once: a worker holds its own descriptor for as long as its
            # port is open, so the address refuses connections once the old workers stop
            # accepting.
            self.sockets.pop(address).close()
        log.info("smtp-listener addresses changed: restarting the reception workers")
        old_workers = [w for w in self.workers.values() if not w.exited]
        self.workers = {}
        for slot in range(1, self.count + 1):
            self._spawn(slot)
        # The old ones stop accepting and exit when their sessions end (a session in
        # progress finishes, as after a listener change in one process).
        self._retiring += old_workers
        for worker in old_workers:
            worker.send({"op": "retire"})

        def forget(_: object) -> None:
            self._retiring = [w for w in self._retiring if not w.exited]

        DeferredList([w.done for w in old_workers]).addCallback(forget)
