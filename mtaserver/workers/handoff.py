"""A reception worker's journal: its events are journaled by the master, over a pipe.

A worker writes message files itself (temporary name, fdatasync, rename, directory
fsync, exactly as in one process: `mtaserver.spool.MessageStore`), but the journal
keeps one writer, the master. So the worker's store is given a `HandoffJournal`
that sends the events (the message's `Received`) to the master, which answers
`appended` once they are fsync'd in its journal. The SMTP `250` waits only until the
request is in the kernel's pipe buffer (`PipeSender`; the store's `hand_over`): bytes
in a pipe outlive the process that wrote them, so from then on the master reads the
record even if the worker is killed at once, and if the master dies instead, its
next recovery adopts the durable file. Waiting for the bytes to leave this process
and not less matters: a request still in a user-space buffer dies with the worker,
leaving a message the running master never heard of until its next start. (An
answer from the master first cost a turn of its busy reactor per message: P6's p99
went from 145 to 78 ms without it.)

Why a hand-off and not a journal segment per worker that the master follows from a
persisted offset: the master must journal `Received` itself anyway (its recovery,
acct writers, webhooks and segment pruning all read its journal), so a worker
journal would be a second fsync stream and a second copy of every envelope, plus
offset files and de-duplication after a crash between the two. With the hand-off,
"exactly one `Received` per acknowledged message" holds by construction, and a kill
-9 of either side at any moment leaves only the windows one process already has: a
file renamed whose `Received` was not journaled is adopted by the master's next
recovery, as it always was. When the master goes away with an append unanswered, the
worker cannot know whether the `Received` made it, so that message's file is left in
place (`JournalOutcomeUnknown`) for recovery to match to its record or adopt;
removing it could leave a journaled message without its file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mtaserver.events import Event
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.spool.journal import HandOver, JournalPosition
from mtaserver.workers.wire import FrameDecoder, WireError, encode

log = Logger()


@implementer(IWriteDescriptor)
class PipeSender:
    """Writes frames to the pipe to the master and says when each is in the kernel.

    Twisted's transports buffer in this process and say nothing of when bytes leave
    it; a `250` must not go out before its request has (see the module docstring).
    A frame written whole at once is done at once; what the pipe cannot take yet
    waits here, in order, until the reactor says the pipe is writable.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd
        os.set_blocking(fd, False)
        self._pending = bytearray()
        self._sent = 0  # bytes the kernel has taken, ever
        self._queued = 0  # bytes given to `send`, ever
        self._waiting: list[tuple[int, Deferred[None]]] = []  # (end of a frame, its Deferred)
        self.broken: Exception | None = None

    def send(self, data: bytes) -> Deferred[None]:
        """Fires once `data` is in the pipe; fails if the pipe broke first."""
        if self.broken is not None:
            return fail(SpoolIOError(f"the pipe to the master is broken: {self.broken}"))
        self._queued += len(data)
        if not self._pending:
            written = self._write(data)
            if written == len(data):
                return succeed(None)
            if self.broken is not None:  # perhaps partly written: the master may have it
                return fail(JournalOutcomeUnknown(f"the pipe to the master broke: {self.broken}"))
            data = data[written:]
        self._pending += data
        done: Deferred[None] = Deferred()
        self._waiting.append((self._queued, done))
        self.reactor.addWriter(self)
        return done

    def _write(self, data: bytes | bytearray) -> int:
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._break(exc)
            return 0
        self._sent += written
        return written

    def doWrite(self) -> None:  # noqa: N802 - Twisted's name
        written = self._write(self._pending)
        del self._pending[:written]
        while self._waiting and self._waiting[0][0] <= self._sent:
            self._waiting.pop(0)[1].callback(None)
        if not self._pending:
            self.reactor.removeWriter(self)

    def _break(self, exc: Exception) -> None:
        self.broken = exc
        self._pending.clear()
        self.reactor.removeWriter(self)
        waiting, self._waiting = self._waiting, []
        for _, done in waiting:
            done.errback(Failure(JournalOutcomeUnknown(f"the pipe to the master broke: {exc}")))

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:  # noqa: N802 - Twisted's name
        return "pipe to the master"

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 - Twisted's name
        self._break(ConnectionError(str(reason.value)))


class MasterLink(Protocol):
    """The worker's end of the pipes to the master: answers in, requests out.

    `on_lost` runs when the master's end closes (the master died or stopped): every
    append still waiting fails, so no session answers `250` for it.
    """

    def __init__(
        self,
        sender: PipeSender,
        on_reload: Callable[[], None],
        on_lost: Callable[[], None],
        on_retire: Callable[[], None] = lambda: None,
        before_append: Callable[[], None] = lambda: None,
    ) -> None:
        self._sender = sender
        self._decoder = FrameDecoder()
        self._waiting: dict[int, _Request] = {}
        self._next_id = 0
        self._on_reload = on_reload
        self._on_lost = on_lost
        self._on_retire = on_retire
        # sends the session counters first, so the master has counted a session before
        # it makes the session's message visible
        self._before_append = before_append
        self.lost = False

    def send(self, message: dict[str, Any]) -> Deferred[None]:
        """Send `message`; fires once it is in the pipe (failures are the caller's)."""
        return self._sender.send(encode(message))

    def request_hand_over(self, events: Sequence[Event]) -> HandOver:
        """Ask the master to journal `events`: the first Deferred fires once the request
        is in the pipe (the master will read it whatever happens to us), the second
        once the master has fsync'd them in its journal (`appended`)."""
        if self.lost:  # nothing was sent
            error = SpoolIOError("the master process is gone")
            return fail(error), fail(error)
        self._before_append()
        self._next_id += 1
        request_id, request = self._next_id, _Request()
        self._waiting[request_id] = request

        def unsent(failure: Failure) -> None:  # the pipe broke: no answer will come
            self._waiting.pop(request_id, None)
            request.fail(failure)

        message = {"op": "append", "id": request_id, "events": [e.to_json() for e in events]}
        self.send(message).addCallbacks(lambda _: request.took(), unsent)
        return request.taken, request.journaled

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        try:
            for message in self._decoder.feed(data):
                self._dispatch(message)
        except WireError as exc:
            log.critical("bad message from the master: {error}", error=str(exc))
            assert self.transport is not None
            self.transport.loseConnection()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "reload":
            self._on_reload()
            return
        if op == "retire":
            self._on_retire()
            return
        request_id = message.get("id", -1)
        request = self._waiting.get(request_id)
        if request is None:
            log.error("answer from the master to no request: {op}", op=op)
        elif op == "appended":
            del self._waiting[request_id]  # `taken` fired: the master read the request
            request.journaled.callback(
                JournalPosition(int(message["segment"]), int(message["offset"]))
            )
        else:
            del self._waiting[request_id]
            error = str(message.get("error", "journal append failed"))
            request.fail(Failure(SpoolIOError(f"master: {error}")))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        if self.lost:
            return
        self.lost = True
        waiting, self._waiting = self._waiting, {}
        for request in waiting.values():
            request.fail(Failure(JournalOutcomeUnknown("the master went away mid-append")))
        self._on_lost()


class _Request:
    """One append asked of the master: taken by it, then fsync'd (or failed)."""

    def __init__(self) -> None:
        self.taken: Deferred[None] = Deferred()
        self.journaled: Deferred[JournalPosition] = Deferred()

    def took(self) -> None:
        if not self.taken.called:
            self.taken.callback(None)

    def fail(self, failure: Failure) -> None:
        """The journal's outcome first: a store learns why before it learns `taken` failed."""
        if not self.journaled.called:
            self.journaled.errback(failure)
        if not self.taken.called:
            self.taken.errback(failure)


class HandoffJournal:
    """What `MessageStore` and the suppression drop records need of a journal."""

    def __init__(self, link: MasterLink, directory: str) -> None:
        self._link = link
        self.directory = directory
        self._end = JournalPosition(0, 0)

    def append(self, events: Sequence[Event]) -> Deferred[JournalPosition]:
        taken, journaled = self.hand_over(events)
        taken.addErrback(lambda _: None)  # the same failure reaches `journaled`
        return journaled

    def hand_over(self, events: Sequence[Event]) -> HandOver:
        """The master has the events once they are in the pipe: from then on a crash of
        either process leaves their message file to the master's recovery (see the store)."""
        taken, journaled = self._link.request_hand_over(events)

        def note(position: JournalPosition) -> JournalPosition:
            self._end = max(self._end, position)
            return position

        return taken, journaled.addCallback(note)

    def end(self) -> JournalPosition:
        return self._end

    def set_oldest_live_segment(self, segment: int | None) -> None:
        """Segment pruning is the master's; a worker tracks no live messages."""
