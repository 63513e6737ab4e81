"""The pieces of reception workers without processes: the pipe's framing, the worker
count, the read-only suppression copy a worker checks RCPT against, and the master's
hand-off over a real journal and message store."""

from __future__ import annotations

import os
import signal
import struct
from pathlib import Path

import pytest
from twisted.internet import defer, task

from mtaserver.events import Envelope, Received, Recipient
from mtaserver.message.intake import ReceptionStats
from mtaserver.spool import MessageStore, open_spool
from mtaserver.spool.errors import JournalOutcomeUnknown, SpoolIOError
from mtaserver.suppression.model import Entry
from mtaserver.suppression.store import SuppressionStore, SuppressionStoreError
from mtaserver.workers import Handoff, workers_for
from mtaserver.workers.wire import FrameDecoder, WireError, encode


def test_frames_round_trip_in_any_split() -> None:
    """Messages split at every byte boundary come out whole and in order."""
    data = encode({"op": "append", "id": 1}) + encode({"op": "reload"})
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        got = list(decoder.feed(data[:cut])) + list(decoder.feed(data[cut:]))
        assert got == [{"op": "append", "id": 1}, {"op": "reload"}]


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack(">I", 2**31) + b"{}",  # absurd length
        struct.pack(">I", 3) + b"{x}",  # not JSON
        struct.pack(">I", 2) + b"[]",  # not an object
        struct.pack(">I", 12) + b'{"op": null}',  # no op
    ],
)
def test_malformed_frames_are_refused(frame: bytes) -> None:
    """A frame that is not one of ours is a WireError, not a guess."""
    with pytest.raises(WireError):
        list(FrameDecoder().feed(frame))


@pytest.mark.parametrize(
    ("setting", "cpus", "count"), [(None, 2, 1), (None, 8, 7), (None, 1, 0), (0, 8, 0), (3, 1, 3)]
)
def test_workers_for(setting: int | None, cpus: int, count: int) -> None:
    """`auto` is one worker per core but one; a number is taken as given."""
    assert workers_for(setting, cpus) == count


def test_readonly_copy_follows_the_writer(tmp_path: Path) -> None:
    """A read-only copy sees each committed add and removal after catch_up, writes nothing."""
    directory = str(tmp_path)
    writer = SuppressionStore.open(directory)
    writer.add([Entry.make("a@example.com", now=1)])
    copy = SuppressionStore.open(directory, readonly=True)
    assert copy.lookup("a@example.com") is not None
    writer.add([Entry.make("b@example.com", now=2)])
    assert copy.lookup("b@example.com") is None  # not yet read
    assert copy.catch_up() is True
    assert copy.lookup("b@example.com") is not None
    writer.remove("global", "a@example.com")
    assert copy.catch_up() is True
    assert copy.lookup("a@example.com") is None
    assert copy.count() == writer.count() == 1
    with pytest.raises(SuppressionStoreError):
        copy.add([Entry.make("c@example.com", now=3)])
    copy.close()
    writer.close()


def test_readonly_copy_skips_an_unfinished_batch_without_cutting_it(tmp_path: Path) -> None:
    """A half-written batch at the log's end is left for the writer; the copy reads on later."""
    directory = str(tmp_path)
    writer = SuppressionStore.open(directory)
    writer.add([Entry.make("a@example.com", now=1)])
    [log] = [n for n in os.listdir(directory) if n.startswith("log")]
    path = os.path.join(directory, log)
    size = os.path.getsize(path)
    with open(path, "ab") as stream:
        stream.write(b"MSL1 torn")  # a batch being written: no end frame yet
    copy = SuppressionStore.open(directory, readonly=True)
    assert copy.catch_up() is True
    assert os.path.getsize(path) == size + 9  # nothing cut: the log is the writer's
    assert copy.lookup("a@example.com") is not None
    copy.close()
    writer.close()


def test_readonly_copy_asks_to_reopen_after_compaction(tmp_path: Path) -> None:
    """After the writer compacts, catch_up is False; a copy opened again sees everything."""
    directory = str(tmp_path)
    writer = SuppressionStore.open(directory, compact_after=1)
    writer.add([Entry.make("a@example.com", now=1)])
    copy = SuppressionStore.open(directory, readonly=True)
    writer.compact()
    writer.add([Entry.make("b@example.com", now=2)])
    assert copy.catch_up() is False
    copy.close()
    again = SuppressionStore.open(directory, readonly=True)
    assert again.lookup("a@example.com") is not None
    assert again.lookup("b@example.com") is not None
    again.close()
    writer.close()


def test_handoff_journals_tracks_counts_and_queues(tmp_path: Path) -> None:
    """A worker's Received is journaled, tracked by the store, counted and enqueued once."""
    clock = task.Clock()

    def run_now(work):  # type: ignore[no-untyped-def]
        return defer.maybeDeferred(work)

    recovered, journal, store = open_spool(str(tmp_path / "spool"), run_now)
    queued: list[Envelope] = []
    stats = ReceptionStats()
    handoff = Handoff(journal, store, queued.append, stats)
    envelope = Envelope(
        msg_id="0" * 26,
        sender="s@x.test",
        recipients=(Recipient("r@y.test"),),
        time_queued=0.0,
        size=10,
    )
    positions = []
    handoff.append([Received(envelope, clock.seconds()).to_json()]).addCallback(positions.append)
    assert positions == [journal.end()]
    assert [e.msg_id for e in queued] == [envelope.msg_id]
    assert (stats.messages_received, stats.recipients_received, stats.bytes_received) == (1, 1, 10)
    assert store._live == {envelope.msg_id: journal.end().segment}  # kept for pruning
    journal.close()


def test_compose_with_workers_holds_them_and_binds_nothing_yet(tmp_path: Path) -> None:
    """With `reception-workers 2` the tree holds the workers' service; nothing is bound
    until it starts, and no SMTP listener runs in the master."""
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.testing import MemoryReactorClock

    from mtaserver.tap import Options, makeService
    from mtaserver.workers import ReceptionWorkers

    conf = tmp_path / "mtaserver.conf"
    conf.write_text(
        f"host-name compose.test\nreception-workers 2\nspool {tmp_path}/spool\n"
        "smtp-listener 127.0.0.1:2525\n"
    )
    options = Options()
    options.parseOptions(["--config", str(conf)])
    before = signal.getsignal(signal.SIGHUP)
    try:
        root = makeService(options, reactor=MemoryReactorClock())
    finally:
        signal.signal(signal.SIGHUP, before)
    [workers] = [s for s in root if isinstance(s, ReceptionWorkers)]  # type: ignore[attr-defined]
    assert (workers.count, workers.sockets) == (2, {})
    names = [getattr(s, "name", None) for s in root]  # type: ignore[attr-defined]
    assert not any(isinstance(s, StreamServerEndpointService) for s in root)  # type: ignore[attr-defined]
    assert "smtp-listener 127.0.0.1:2525" not in names


class _Journal:
    """A journal neighbour whose appends fail with `error` (the store is under test)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def append(self, events: object) -> defer.Deferred[object]:
        return defer.fail(self.error)

    def hand_over(self, events: object) -> tuple[defer.Deferred[None], defer.Deferred[object]]:
        return defer.fail(self.error), defer.fail(self.error)

    def set_oldest_live_segment(self, segment: int | None) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "kept"),
    [(JournalOutcomeUnknown("master gone mid-append"), True), (SpoolIOError("refused"), False)],
)
def test_file_stays_when_the_journal_outcome_is_unknown(
    tmp_path: Path, error: Exception, kept: bool
) -> None:
    """A commit whose journal append ended unanswered keeps its file for recovery; one the
    journal refused removes it (no 250 either way)."""
    store = MessageStore(
        str(tmp_path), _Journal(error), lambda work: defer.maybeDeferred(work), track_live=False
    )
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nbody\r\n")
    envelope = Envelope(
        msg_id=writer.msg_id,
        sender="s@x.test",
        recipients=(Recipient("r@y.test"),),
        time_queued=0.0,
    )
    failures: list[BaseException] = []
    writer.commit(envelope).addErrback(lambda f: failures.append(f.value))
    assert [type(e) for e in failures] == [type(error)]
    assert os.path.exists(writer.final_path) is kept
    assert not os.path.exists(writer.tmp_path)


def test_a_port_held_by_dying_workers_is_waited_for_at_start(tmp_path: Path) -> None:
    """At start, an smtp-listener port still in use is tried again until it frees up."""
    import socket
    import threading

    from mtaserver.config.reload import ConfigHolder
    from mtaserver.config.values import HostPort
    from mtaserver.workers import ReceptionWorkers

    holder_sock = socket.socket()
    holder_sock.bind(("127.0.0.1", 0))
    holder_sock.listen(1)  # the old socket a dying worker still holds
    port = holder_sock.getsockname()[1]
    conf = tmp_path / "mtaserver.conf"
    conf.write_text(f"spool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{port}\n")
    holder = ConfigHolder.from_file(str(conf))
    workers = ReceptionWorkers(holder, None, 1, task.Clock())  # type: ignore[arg-type]
    threading.Timer(0.5, holder_sock.close).start()
    workers.privilegedStartService()
    try:
        assert set(workers.sockets) == {HostPort("127.0.0.1", port)}
    finally:
        for sock in workers.sockets.values():
            sock.close()
