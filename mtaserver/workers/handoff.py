"""A reception worker's journal: its events are journaled by the master, over a pipe.

A worker writes message files itself (temporary name, fdatasync, rename, directory
fsync, exactly as in one process: `mtaserver.spool.MessageStore`), but the journal
keeps one writer, the master. So the worker's store is given a `HandoffJournal`
whose `append` sends the events (the message's `Received`) to the master and fires
only when the master answers that they are fsync'd in its journal. The SMTP `250`
waits for that answer, so an acknowledged message is always in the one journal the
master recovers, delivers and accounts from.

Why a hand-off and not a journal segment per worker that the master follows from a
persisted offset: the master must journal `Received` itself anyway (its recovery,
acct writers, webhooks and segment pruning all read its journal), so a worker
journal would be a second fsync stream and a second copy of every envelope, plus
offset files and de-duplication after a crash between the two. With the hand-off,
"exactly one `Received` per acknowledged message" holds by construction, and a kill
-9 of either side at any moment leaves only the windows one process already has: a
file renamed whose `Received` was not journaled (no `250` was sent) is adopted by
the master's next recovery, as it always was. When the master goes away with an
append unanswered, the worker cannot know whether the `Received` made it, so that
message's file is left in place (`JournalOutcomeUnknown`) for recovery to match to its
record or adopt; removing it could leave a journaled message without its file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.events import Event
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.spool.journal import JournalPosition
from mtaserver.workers.wire import FrameDecoder, WireError, encode

log = Logger()


class MasterLink(Protocol):
    """The worker's end of the pipes to the master: answers in, requests out.

    `on_lost` runs when the master's end closes (the master died or stopped): every
    append still waiting fails, so no session answers `250` for it.
    """

    def __init__(
        self,
        on_reload: Callable[[], None],
        on_lost: Callable[[], None],
        on_retire: Callable[[], None] = lambda: None,
        before_append: Callable[[], None] = lambda: None,
    ) -> None:
        self._decoder = FrameDecoder()
        self._waiting: dict[int, Deferred[JournalPosition]] = {}
        self._next_id = 0
        self._on_reload = on_reload
        self._on_lost = on_lost
        self._on_retire = on_retire
        # sends the session counters first, so the master has counted a session before
        # it makes the session's message visible
        self._before_append = before_append
        self.lost = False

    def send(self, message: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(encode(message))

    def request_append(self, events: Sequence[Event]) -> Deferred[JournalPosition]:
        """Ask the master to journal `events`; fires with its journal position."""
        if self.lost:
            return fail(SpoolIOError("the master process is gone"))  # nothing was sent
        self._before_append()
        self._next_id += 1
        waiting: Deferred[JournalPosition] = Deferred()
        self._waiting[self._next_id] = waiting
        self.send({"op": "append", "id": self._next_id, "events": [e.to_json() for e in events]})
        return waiting

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
        waiting = self._waiting.pop(message.get("id", -1), None)
        if waiting is None:
            log.error("answer from the master to no request: {op}", op=op)
        elif op == "appended":
            waiting.callback(JournalPosition(int(message["segment"]), int(message["offset"])))
        else:
            error = str(message.get("error", "journal append failed"))
            waiting.errback(Failure(SpoolIOError(f"master: {error}")))

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        if self.lost:
            return
        self.lost = True
        waiting, self._waiting = self._waiting, {}
        for d in waiting.values():
            d.errback(Failure(JournalOutcomeUnknown("the master went away mid-append")))
        self._on_lost()


class HandoffJournal:
    """What `MessageStore` and the suppression drop records need of a journal."""

    def __init__(self, link: MasterLink, directory: str) -> None:
        self._link = link
        self.directory = directory
        self._end = JournalPosition(0, 0)

    def append(self, events: Sequence[Event]) -> Deferred[JournalPosition]:
        d = self._link.request_append(events)

        def note(position: JournalPosition) -> JournalPosition:
            self._end = max(self._end, position)
            return position

        return d.addCallback(note)

    def end(self) -> JournalPosition:
        return self._end

    def set_oldest_live_segment(self, segment: int | None) -> None:
        """Segment pruning is the master's; a worker tracks no live messages."""
