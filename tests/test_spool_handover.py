"""When a message may be acknowledged: the store's `acknowledge` against its journal's
`hand_over`, the worker's two answers from the master (`got`, then `appended`), and
what a crash between them leaves for recovery.

A reception worker answers `250` once its file is durable and the master has the
`Received` (`got`), not after the master's journal fsync; the process that owns the
journal answers only after its fsync, because it queues the message at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from mtaserver.events import Received
from mtaserver.message.intake import ReceptionStats
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.spool.journal import Journal, JournalPosition, list_segments, read_events
from mtaserver.spool.recovery import recover
from mtaserver.spool.store import MessageStore
from mtaserver.spool.testing import ManualThreads, make_envelope, run_now
from mtaserver.workers.handoff import HandoffJournal, MasterLink
from mtaserver.workers.pool import Handoff, WorkerProcess
from mtaserver.workers.wire import HANDOFF_FD, FrameDecoder, encode


class Pipe:
    """The worker's end of the pipe to the master, as a transport: what was written."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's name
        pass

    def requests(self) -> list[dict[str, Any]]:
        return list(FrameDecoder().feed(self.written))


def worker_store(tmp_path: Path) -> tuple[MessageStore, MasterLink, Pipe]:
    link = MasterLink(on_reload=lambda: None, on_lost=lambda: None)
    pipe = Pipe()
    link.makeConnection(pipe)
    spool = str(tmp_path / "spool")
    journal = HandoffJournal(link, os.path.join(spool, "journal"))
    return MessageStore(spool, journal, run_now, track_live=False), link, pipe


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_a_worker_acknowledges_when_the_master_has_the_record(tmp_path: Path) -> None:
    """`got` lets the 250 go; `appended` (the master's fsync) comes later."""
    store, link, pipe = worker_store(tmp_path)
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    [request] = pipe.requests()
    assert request["op"] == "append" and acknowledged == []  # the master has said nothing
    link.dataReceived(encode({"op": "got", "id": request["id"]}))
    assert acknowledged == [None]
    recorded = outcome(writer.when_recorded())
    assert recorded == []
    link.dataReceived(encode({"op": "appended", "id": request["id"], "segment": 1, "offset": 9}))
    assert recorded == [None]
    assert os.path.exists(writer.final_path)


def test_a_worker_keeps_the_file_when_the_master_dies_after_got(tmp_path: Path) -> None:
    """Acknowledged, then the master went away before its fsync: the file stays, and the
    master's next recovery adopts it (journals its `Received`)."""
    store, link, pipe = worker_store(tmp_path)
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    [request] = pipe.requests()
    link.dataReceived(encode({"op": "got", "id": request["id"]}))
    recorded = outcome(writer.when_recorded())
    link.connectionLost(Failure(ConnectionError("master killed")))
    assert acknowledged == [None]
    assert [f.check(JournalOutcomeUnknown) for f in recorded] == [JournalOutcomeUnknown]
    assert os.path.exists(writer.final_path)
    found = recover(str(tmp_path / "spool"))
    assert found.adopted == (writer.msg_id,)
    assert list(found.messages) == [writer.msg_id]


def test_a_worker_refused_before_got_answers_no_250_and_leaves_no_file(tmp_path: Path) -> None:
    """`failed` instead of `got`: the commit fails and the file is removed."""
    store, link, pipe = worker_store(tmp_path)
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    [request] = pipe.requests()
    link.dataReceived(encode({"op": "failed", "id": request["id"], "error": "disk full"}))
    [failure] = acknowledged
    assert failure.check(SpoolIOError) and "disk full" in str(failure.value)
    assert not os.path.exists(writer.final_path) and not os.path.exists(writer.tmp_path)


def test_a_worker_whose_master_is_gone_before_got_keeps_the_file(tmp_path: Path) -> None:
    """No answer at all: no 250, and the file stays (the master may have journaled it)."""
    store, link, pipe = worker_store(tmp_path)
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    link.connectionLost(Failure(ConnectionError("master killed")))
    [failure] = acknowledged
    assert failure.check(JournalOutcomeUnknown)
    assert os.path.exists(writer.final_path)


def test_the_journals_own_process_acknowledges_only_after_the_fsync(tmp_path: Path) -> None:
    """In one process the 250 waits for the journal: that process queues the message."""
    threads = ManualThreads()
    spool = str(tmp_path / "spool")
    journal = Journal(os.path.join(spool, "journal"), threads)
    store = MessageStore(spool, journal, threads)
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    threads.run_one()  # the file's write and fdatasync
    threads.run_one()  # the rename and the directory fsync
    assert acknowledged == [] and os.path.exists(writer.final_path)
    threads.run_all()  # the journal's write and fsync
    assert acknowledged == [None]
    directory = os.path.join(spool, "journal")
    start = JournalPosition(list_segments(directory)[0], 0)
    [(_, event)] = list(read_events(directory, start))
    assert isinstance(event, Received) and event.envelope.msg_id == writer.msg_id
    assert store._live == {writer.msg_id: journal.end().segment}
    journal.close()


def test_a_worker_stores_messages_the_master_tracks_only_once_journaled(tmp_path: Path) -> None:
    """`when_recorded` of a message already recorded fires at once with the position's
    end kept by the worker's journal."""
    store, link, pipe = worker_store(tmp_path)
    writer = store.begin()
    writer.write(b"body")
    writer.acknowledge(make_envelope(writer.msg_id))
    [request] = pipe.requests()
    position = {"segment": 3, "offset": 77}
    link.dataReceived(encode({"op": "appended", "id": request["id"], **position}))
    assert outcome(writer.when_recorded()) == [None]
    assert store.journal.end() == JournalPosition(3, 77)  # type: ignore[attr-defined]


class ChildPipes:
    """The master's side of a worker's pipes, as a process transport: what it wrote."""

    pid = 4242

    def __init__(self) -> None:
        self.written = b""

    def writeToChild(self, fd: int, data: bytes) -> None:  # noqa: N802 - Twisted's name
        assert fd == 0
        self.written += data

    def answers(self) -> list[dict[str, Any]]:
        return list(FrameDecoder().feed(self.written))


def test_the_master_says_got_at_once_and_appended_after_its_fsync(tmp_path: Path) -> None:
    """The master's two answers to a worker's append, in that order."""
    threads = ManualThreads()
    spool = str(tmp_path / "spool")
    journal = Journal(os.path.join(spool, "journal"), threads)
    store = MessageStore(spool, journal, threads)
    queued: list[str] = []
    handoff = Handoff(journal, store, lambda e: queued.append(e.msg_id), ReceptionStats())
    worker = WorkerProcess(1, handoff, lambda w: None)
    pipes = ChildPipes()
    worker.makeConnection(pipes)
    envelope = make_envelope("0" * 26)
    request = {"op": "append", "id": 7, "events": [Received(envelope, 0.0).to_json()]}
    worker.childDataReceived(HANDOFF_FD, encode(request))
    assert pipes.answers() == [{"op": "got", "id": 7}] and queued == []
    threads.run_all()
    got, appended = pipes.answers()
    assert appended["op"] == "appended" and appended["id"] == 7
    assert queued == [envelope.msg_id]  # queued once journaled, not before
    journal.close()
