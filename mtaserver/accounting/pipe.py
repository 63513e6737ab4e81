"""`<acct-file |command args>`: acct records fed to a program's standard input.

PowerMTA lets an acct file be a pipe: the command is started once, receives a CSV
header row and then one record a line on its stdin, for as long as it runs. Here the
pipe is a journal consumer like a file writer (`acct:|command args`), so records are
never lost while the program is down: the journal keeps them until they have been
written to the pipe, and a program that dies is started again, with a growing delay
(`restart_delays`, reset once it has run for a minute), and fed from where its
predecessor stopped.

What a dead program had read cannot be known exactly, so records are delivered at
least once, by this rule: a record is *acknowledged* once the pipe has been seen empty
(the kernel buffer and Twisted's write buffer hold nothing) with the record written,
and the program is still running `ACK_AFTER` seconds later. A program that dies gets
every record after the last acknowledged one written again to its successor, however
many batches that spans (the journal keeps them: the acknowledged position is the
consumer position it keeps segments from). A consumer may see a record twice after a
crash; it misses one only if it read a record and then neither handled it nor died
within `ACK_AFTER` (a program that stalls holding unread input for that long).

The command line is split like a shell would split words (`shlex`), without a shell.
Formatting and journal reading run in a thread; writing to the pipe is Twisted's
(non-blocking) process transport on the reactor.
"""

from __future__ import annotations

import fcntl
import shlex
import struct
import termios
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.accounting.privacy import Policy
from mtaserver.accounting.records import (
    RECORD_TYPES,
    csv_header,
    csv_line,
    fields_for,
    records_from_event,
)
from mtaserver.accounting.writer import csv_columns, position_pair
from mtaserver.events import Event
from mtaserver.runtime import Clock, DelayedCall, RunInThread

P = TypeVar("P")

#: Seconds before each restart of a program that died; the last repeats.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: A program that ran this long before dying starts again after the first delay.
STABLE_AFTER = 60.0
#: Seconds a program must outlive the moment the pipe was seen empty for what it had
#: been given by then to count as handled (see the module docstring); also how often
#: the pipe is looked at.
ACK_AFTER = 1.0


def unread_bytes(transport: Any) -> int | None:
    """Bytes written to the program's stdin it has not read yet; None if unknown.

    Twisted's own write buffer (of the stdin `ProcessWriter`) plus the kernel's pipe
    buffer (`FIONREAD`, which Linux answers for either end of a pipe). Unknown counts
    as "not empty": records are then acknowledged only by a clean stop, never early.
    """
    writer = getattr(transport, "pipes", {}).get(0)
    if writer is None:
        return None
    try:
        buffered = len(writer.dataBuffer) - writer.offset + writer._tempDataLen
        raw = fcntl.ioctl(writer.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (AttributeError, OSError, ValueError):
        return None
    return int(buffered) + int(struct.unpack("i", raw)[0])


def pipe_command(path: str) -> list[str]:
    """`|/usr/bin/etl --log x.log` -> ["/usr/bin/etl", "--log", "x.log"]."""
    words = shlex.split(path.removeprefix("|"))
    if not words:
        raise ValueError("an acct pipe needs a command after |")
    return words


class _Child(protocol.ProcessProtocol):
    """The running program: tells its owner when it has gone."""

    def __init__(self, on_ended: Callable[[_Child, str], None]) -> None:
        self.on_ended = on_ended
        self.alive = False

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's name
        self.alive = True

    def processEnded(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self.alive = False
        self.on_ended(self, str(reason.value))


class AcctPipeWriter(Generic[P]):
    """Feeds the records of one `<acct-file |command>` to the command's stdin."""

    log = Logger()
    restart_delays = RESTART_DELAYS

    def __init__(
        self,
        path: str,
        *,
        reactor: Any,
        read_events: Callable[[P, P | None], Iterable[tuple[P, Event]]],
        start_position: P,
        run_in_thread: RunInThread,
        clock: Clock,
        journal_end: Callable[[], P] | None = None,
        on_position: Callable[[P], object] | None = None,
        records: frozenset[str] = frozenset({"d", "b"}),
        record_fields: Mapping[str, tuple[str, ...]] | None = None,
        header_fields: tuple[str, ...] = (),
        policy: Policy | None = None,
    ) -> None:
        self.path = path
        self.command = pipe_command(path)
        self._policy = policy  # `user-string` and `privacy-policy`
        self._fields_by_type = {
            t: fields_for(t, record_fields, header_fields) for t in RECORD_TYPES if t in records
        }
        self._columns = csv_columns(self._fields_by_type)
        self._header_names = tuple(c for c in self._columns if c.startswith("header_"))
        self._reactor = reactor
        self._read_events = read_events
        self._position = start_position
        self._acked = start_position  # what a program that dies need not be given again
        self._candidate: tuple[P, float] | None = None  # (written, when the pipe was empty)
        self._ack_timer: DelayedCall | None = None
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._journal_end = journal_end
        self._on_position = on_position
        self._child: _Child | None = None
        self._transport: Any = None
        self._started_at = 0.0
        self._failures = 0
        self._restart: DelayedCall | None = None
        self._running = False
        self._lock = defer.DeferredLock()
        self.min_interval = 0.0  # AcctService sets it to 0 for the last catch-up
        self.errors = 0
        self.last_error = ""
        self.restarts = 0

    def status(self) -> dict[str, Any]:
        """The pipe's health, in the shape of a file writer's `status()`."""
        segment, offset = position_pair(self._position)
        return {
            "acct_file": self.path,
            "position": f"{segment}:{offset}",
            "failing": self._child is None or not self._child.alive,
            "errors": self.errors,
            "last_error": self.last_error,
            "restarts": self.restarts,
            "journal_truncations": 0,
            "journal_lost_bytes": 0,
        }

    def start(self) -> defer.Deferred[None]:
        """Start the program and feed it what the journal holds for it."""
        self._running = True
        if self._on_position is not None:
            self._on_position(self._acked)
        self._spawn()
        self._check_read()
        return self.catch_up()

    def _spawn(self) -> None:
        self._restart = None
        if not self._running:
            return
        child = _Child(self._ended)
        try:
            self._transport = self._reactor.spawnProcess(
                child, self.command[0], self.command, env=None, childFDs={0: "w", 1: 1, 2: 2}
            )
        except OSError as exc:
            self._child = None
            self._ended(child, f"cannot start: {exc}")
            return
        self._child = child
        self._started_at = self._clock.seconds()
        self.log.info("acct pipe {path}: started", path=self.path)
        if self._columns:
            self._transport.write(csv_header(self._columns).encode("utf-8"))
        self.catch_up()

    def _check_read(self) -> None:
        """Every `ACK_AFTER`: acknowledge what the running program has surely handled."""
        self._ack_timer = None
        if not self._running:
            return
        if self._transport is not None and self._child is not None and self._child.alive:
            now = self._clock.seconds()
            if self._candidate is not None and now - self._candidate[1] >= ACK_AFTER:
                self._acknowledge(self._candidate[0])
                self._candidate = None
            if self._candidate is None and unread_bytes(self._transport) == 0:
                self._candidate = (self._position, now)
        self._ack_timer = self._clock.callLater(ACK_AFTER, self._check_read)

    def _acknowledge(self, position: P) -> None:
        self._acked = position
        if self._on_position is not None:
            self._on_position(position)  # the journal keeps everything after it

    def _ended(self, child: _Child, why: str) -> None:
        """The program went: rewind to what it surely handled, start it again later."""
        if child is not self._child and self._child is not None:
            return
        self._child, self._transport = None, None
        self._position = self._acked  # what it may not have handled goes again
        self._candidate = None
        if not self._running:
            return
        self.errors += 1
        self.last_error = why[:300]
        ran = self._clock.seconds() - self._started_at
        self._failures = 0 if ran >= STABLE_AFTER else self._failures + 1
        delay = self.restart_delays[min(self._failures, len(self.restart_delays) - 1)]
        self.log.error("acct pipe {path} ended ({why}); restarting in {delay}s",
                       path=self.path, why=why, delay=delay)  # fmt: skip
        self.restarts += 1
        self._restart = self._clock.callLater(delay, self._spawn)

    def catch_up(self) -> defer.Deferred[None]:
        """Write the records after our position to the program; a no-op while it is down."""
        return self._lock.run(self._catch_up)

    async def _catch_up(self) -> None:
        if self._transport is None or self._child is None or not self._child.alive:
            return
        end = self._journal_end() if self._journal_end is not None else None
        start = self._position
        try:
            data, reached = await self._run_in_thread(lambda: self._lines(start, end))
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.log.failure("acct pipe {path}: reading the journal failed", path=self.path)
            return
        if reached is None or self._transport is None:
            return
        if data:
            self._transport.write(data)
        self._position = reached

    def _lines(self, start: P, end: P | None) -> tuple[bytes, P | None]:
        out: list[str] = []
        reached: P | None = None
        for position, event in self._read_events(start, end):
            reached = position
            for record in records_from_event(event, self._header_names):
                fields = self._fields_by_type.get(record["type"])
                if fields is None:
                    continue
                if self._policy is not None:
                    record = self._policy(record)
                out.append(csv_line({f: record[f] for f in fields}, self._columns))
        return "".join(out).encode("utf-8", "surrogateescape"), reached

    def rotate(self) -> defer.Deferred[None]:
        """`rotate acct`: nothing to rotate on a pipe."""
        return defer.succeed(None)

    def stop(self) -> defer.Deferred[None]:
        """Close the program's stdin (it sees end of file) and stop restarting it."""
        self._running = False
        for timer in (self._restart, self._ack_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._transport is not None:
            self._transport.closeStdin()
        return self._lock.run(lambda: defer.succeed(None))
