"""When a message may be acknowledged: the store's `acknowledge` against its journal's
`hand_over`, the worker's pipe to the master and the master's answer, and what a
crash between them leaves for recovery.

A reception worker answers `250` once its file is durable and its request is in the
pipe to the master (bytes in a pipe outlive their writer), not after the master's
journal fsync; the process that owns the journal answers only after its fsync,
because it queues the message at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from watched_reactor import WatchedReactor

from mtaserver.events import Received
from mtaserver.message.intake import ReceptionStats
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.spool.journal import Journal, JournalPosition, list_segments, read_events
from mtaserver.spool.recovery import recover
from mtaserver.spool.store import MessageStore
from mtaserver.spool.testing import ManualThreads, make_envelope, run_now
from mtaserver.workers.handoff import HandoffJournal, MasterLink, PipeSender
from mtaserver.workers.pool import Handoff, WorkerProcess
from mtaserver.workers.wire import HANDOFF_FD, FrameDecoder, encode


class Master:
    """The master's end of a real pipe: reads the worker's requests."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.decoder = FrameDecoder()

    def requests(self) -> list[dict[str, Any]]:
        found = []
        while True:
            try:
                data = os.read(self.read_fd, 1 << 20)
            except BlockingIOError:
                return found
            found += list(self.decoder.feed(data))

    def close(self) -> None:
        os.close(self.read_fd)


def worker_store(tmp_path: Path) -> tuple[MessageStore, MasterLink, Master, WatchedReactor]:
    master, reactor = Master(), WatchedReactor()
    link = MasterLink(PipeSender(reactor, master.write_fd), lambda: None, lambda: None)
    spool = str(tmp_path / "spool")
    journal = HandoffJournal(link, os.path.join(spool, "journal"))
    return MessageStore(spool, journal, run_now, track_live=False), link, master, reactor


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def new_message(store: MessageStore) -> Any:
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    return writer


def test_a_worker_acknowledges_once_its_request_is_in_the_pipe(tmp_path: Path) -> None:
    """The 250 needs the request in the kernel's pipe, not the master's answer; the
    master's `appended` (after its fsync) comes later."""
    store, link, master, _ = worker_store(tmp_path)
    writer = new_message(store)
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    assert acknowledged == [None]
    [request] = master.requests()  # already there, whatever happens to the worker now
    assert request["op"] == "append"
    assert request["events"][0]["envelope"]["msg_id"] == writer.msg_id
    recorded = outcome(writer.when_recorded())
    assert recorded == []
    link.dataReceived(encode({"op": "appended", "id": request["id"], "segment": 1, "offset": 9}))
    assert recorded == [None]
    assert os.path.exists(writer.final_path)


def test_a_full_pipe_holds_the_250_until_the_request_is_through(tmp_path: Path) -> None:
    """What the pipe cannot take at once waits, in order; the 250 waits with it."""
    store, link, master, reactor = worker_store(tmp_path)
    sender = link._sender
    filler = b"x" * 4096
    while sender.send(filler).called and not reactor.writers:
        pass  # the pipe is full once a frame has to wait
    writer = new_message(store)
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    assert acknowledged == [] and reactor.writers == {sender}
    while reactor.writers:  # the master reads, the reactor says the pipe is writable
        os.read(master.read_fd, 1 << 20)
        sender.doWrite()
    assert acknowledged == [None]


def test_a_worker_keeps_the_file_when_the_master_dies_after_the_250(tmp_path: Path) -> None:
    """Acknowledged, then the master went away before its fsync: the file stays, and the
    master's next recovery adopts it (journals its `Received`)."""
    store, link, master, _ = worker_store(tmp_path)
    writer = new_message(store)
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    recorded = outcome(writer.when_recorded())
    link.connectionLost(Failure(ConnectionError("master killed")))
    assert acknowledged == [None]
    assert [f.check(JournalOutcomeUnknown) for f in recorded] == [JournalOutcomeUnknown]
    assert os.path.exists(writer.final_path)
    found = recover(str(tmp_path / "spool"))
    assert found.adopted == (writer.msg_id,)
    assert list(found.messages) == [writer.msg_id]


def test_a_refusal_after_the_250_keeps_the_file_for_recovery(tmp_path: Path) -> None:
    """The master could not journal it (`failed`): the sender has its 250, so the file
    stays and the next start adopts it."""
    store, link, master, _ = worker_store(tmp_path)
    writer = new_message(store)
    acknowledged = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    [request] = master.requests()
    recorded = outcome(writer.when_recorded())
    link.dataReceived(encode({"op": "failed", "id": request["id"], "error": "disk full"}))
    assert acknowledged == [None]
    [failure] = recorded
    assert failure.check(SpoolIOError) and "disk full" in str(failure.value)
    assert os.path.exists(writer.final_path)


def test_a_worker_whose_master_is_gone_answers_no_250_and_leaves_no_file(tmp_path: Path) -> None:
    """The master's end closed before the request: nothing was sent, so no 250 and no file."""
    store, link, master, _ = worker_store(tmp_path)
    link.connectionLost(Failure(ConnectionError("master killed")))
    writer = new_message(store)
    [failure] = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    assert failure.check(SpoolIOError)
    assert not os.path.exists(writer.final_path) and not os.path.exists(writer.tmp_path)


def test_a_broken_pipe_answers_no_250_and_keeps_the_file(tmp_path: Path) -> None:
    """The pipe broke under the request (EPIPE): no 250; the file stays, since part of
    the request may have reached the master."""
    store, link, master, _ = worker_store(tmp_path)
    master.close()
    writer = new_message(store)
    [failure] = outcome(writer.acknowledge(make_envelope(writer.msg_id)))
    assert failure.check(JournalOutcomeUnknown)
    assert os.path.exists(writer.final_path)
    assert link._waiting == {}  # no answer will come: nothing is left waiting for one


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


def test_when_recorded_after_the_record_fires_at_once(tmp_path: Path) -> None:
    """`when_recorded` asked after `appended` fires at once; the worker's journal keeps
    the master's end."""
    store, link, master, _ = worker_store(tmp_path)
    writer = new_message(store)
    writer.acknowledge(make_envelope(writer.msg_id))
    [request] = master.requests()
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


def test_the_master_answers_and_queues_only_after_its_fsync(tmp_path: Path) -> None:
    """A worker's append: `appended` and the message queued once the journal has it."""
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
    assert pipes.answers() == [] and queued == []
    threads.run_all()
    [appended] = pipes.answers()
    assert appended["op"] == "appended" and appended["id"] == 7
    assert queued == [envelope.msg_id]
    journal.close()
