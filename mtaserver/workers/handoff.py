"""A reception worker's journal: its events are journaled by the master, over a pipe.

A worker writes message files itself (temporary name, fdatasync, rename, directory
fsync, exactly as in one process: `mtaserver.spool.MessageStore`), but the journal
keeps one writer, the master. So the worker's store is given a `HandoffJournal`
that sends the events (the message's `Received`) to the master. The master answers
twice: `got` as soon as it has read them, `appended` once they are fsync'd in its
journal. The SMTP `250` waits for `got` (the store's `hand_over`): from then on the
message is the master's, and whatever crashes, its durable file is either matched to
its record or adopted by the master's next recovery. Waiting for `got` and not less
matters: a worker killed right after its `250` would otherwise leave a message that
the running master never heard of until its next start.

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

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.events import Event
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.spool.journal import HandOver, JournalPosition
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
        self._waiting: dict[int, _Request] = {}
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
        taken, journaled = self.request_hand_over(events)
        taken.addErrback(lambda _: None)  # the same failure reaches `journaled`
        return journaled

    def request_hand_over(self, events: Sequence[Event]) -> HandOver:
        """Ask the master to journal `events`: the first Deferred fires when the master
        has them (`got`), the second when they are fsync'd in its journal (`appended`)."""
        if self.lost:  # nothing was sent
            error = SpoolIOError("the master process is gone")
            return fail(error), fail(error)
        self._before_append()
        self._next_id += 1
        request = _Request()
        self._waiting[self._next_id] = request
        self.send({"op": "append", "id": self._next_id, "events": [e.to_json() for e in events]})
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
        elif op == "got":
            request.took()
        elif op == "appended":
            del self._waiting[request_id]
            request.took()
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
        """The master has the events once it says `got`: from then on a crash of either
        process leaves their message file to the master's recovery (see the store)."""
        taken, journaled = self._link.request_hand_over(events)

        def note(position: JournalPosition) -> JournalPosition:
            self._end = max(self._end, position)
            return position

        return taken, journaled.addCallback(note)

    def end(self) -> JournalPosition:
        return self._end

    def set_oldest_live_segment(self, segment: int | None) -> None:
        """Segment pruning is the master's; a worker tracks no live messages."""
