"""The journal: framing, torn tails, group commit, subscribers and segment deletion."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mtaserver.events import Event, Outcome, QueueFailure, Received, Removed
from mtaserver.spool.errors import SpoolFullError, SpoolIOError
from mtaserver.spool.fileops import FileOps
from mtaserver.spool.journal import (
    Journal,
    JournalPosition,
    list_segments,
    read_events,
    segment_path,
)
from mtaserver.spool.testing import ManualThreads, make_envelope, result_of, run_now


def sample_events() -> list[Event]:
    env = make_envelope("a" * 26, 3)
    return [
        Received(env, 1.0),
        Outcome("t", env.msg_id, (1,), 2.0, env.only((1,)), dsn_status="4.0.0"),
        QueueFailure("example.com/default", 3.0, dsn_diag="no MX"),
        Removed(env.msg_id, 4.0),
    ]


def read_all(directory: str, end: JournalPosition | None = None) -> list[Event]:
    return [e for _, e in read_events(directory, JournalPosition(0, 0), end)]


def test_append_then_read_back(tmp_path):
    """Appended events come back in order, each with the position just after it."""
    journal = Journal(str(tmp_path), run_now)
    events = sample_events()
    position = result_of(journal.append(events[:2]))
    assert result_of(journal.append(events[2:])) == journal.end()
    read = list(read_events(str(tmp_path), JournalPosition(0, 0)))
    assert [e for _, e in read] == events
    assert read[1][0] == position
    assert [e for _, e in read_events(str(tmp_path), position)] == events[2:]


def test_read_stops_at_end(tmp_path):
    """read_events stops at the given end position."""
    journal = Journal(str(tmp_path), run_now)
    first = result_of(journal.append(sample_events()[:1]))
    journal.append(sample_events()[1:])
    assert read_all(str(tmp_path), first) == sample_events()[:1]


def test_torn_tail_is_cut_and_later_appends_readable(tmp_path):
    """A torn last record is cut off on open; what is appended after it reads back."""
    journal = Journal(str(tmp_path), run_now)
    journal.append(sample_events()[:2])
    good_end = journal.end().offset
    journal.append(sample_events()[2:3])
    journal.close()
    path = segment_path(str(tmp_path), 0)
    size = os.path.getsize(path)
    for cut in range(good_end + 1, size):
        os.truncate(path, cut)
        reopened = Journal(str(tmp_path), run_now)
        assert reopened.end() == JournalPosition(0, good_end)
        assert os.path.getsize(path) == good_end
        reopened.append(sample_events()[2:3])
        reopened.close()
        assert read_all(str(tmp_path)) == sample_events()[:3]


def test_bad_checksum_cut(tmp_path):
    """A last record with a flipped byte is treated as torn and cut off."""
    journal = Journal(str(tmp_path), run_now)
    good = result_of(journal.append(sample_events()[:1]))
    journal.append(sample_events()[1:2])
    journal.close()
    path = segment_path(str(tmp_path), 0)
    data = bytearray(Path(path).read_bytes())
    data[-3] ^= 0x40
    Path(path).write_bytes(bytes(data))
    assert read_all(str(tmp_path)) == sample_events()[:1]
    assert Journal(str(tmp_path), run_now).end() == good


def test_group_commit_shares_fsyncs(tmp_path):
    """Appends made while a write+fsync is in flight share the next one."""
    threads = ManualThreads()
    journal = Journal(str(tmp_path), threads)
    results = [journal.append([e]) for e in sample_events() * 5]
    assert len(threads.queued) == 1  # one write in flight, the rest wait
    threads.run_all()
    assert journal.commits == 2
    positions = [result_of(d) for d in results]
    assert positions == sorted(positions) and positions[-1] == journal.end()
    assert read_all(str(tmp_path)) == sample_events() * 5


def test_subscribers_called_after_commit(tmp_path):
    """Subscribers are called after each commit, when the events are readable."""
    journal = Journal(str(tmp_path), run_now)
    seen: list[int] = []
    journal.subscribe(lambda: seen.append(len(read_all(str(tmp_path), journal.end()))))
    journal.append(sample_events()[:1])
    journal.append(sample_events()[1:])
    assert seen == [1, 4]


def test_enospc_fails_batch_and_journal_recovers(tmp_path):
    """A write hitting ENOSPC fails with SpoolFullError and leaves no partial record."""
    fail = {"on": False}

    def write(fd: int, data: memoryview) -> int:
        if fail["on"]:
            os.write(fd, bytes(data[:5]))  # a short write before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    journal = Journal(str(tmp_path), run_now, file_ops=FileOps(write=write))
    journal.append(sample_events()[:1])
    fail["on"] = True
    with pytest.raises(SpoolFullError):
        result_of(journal.append(sample_events()[1:2]))
    fail["on"] = False
    journal.append(sample_events()[2:3])
    assert read_all(str(tmp_path)) == [sample_events()[0], sample_events()[2]]


def test_fsync_eio_is_spool_io_error(tmp_path):
    """An fsync failing with EIO is a SpoolIOError, and the journal refuses further appends."""
    broken = {"on": False}

    def fsync(fd: int) -> None:
        if broken["on"]:
            raise OSError(errno.EIO, "I/O error")
        os.fsync(fd)

    journal = Journal(str(tmp_path), run_now, file_ops=FileOps(fsync=fsync))
    broken["on"] = True
    with pytest.raises(SpoolIOError) as info:
        result_of(journal.append(sample_events()))
    assert not isinstance(info.value, SpoolFullError)
    broken["on"] = False  # the undo could not be synced: no guessing after that
    with pytest.raises(SpoolIOError):
        result_of(journal.append(sample_events()))


def test_segments_rotate_and_read_across(tmp_path):
    """Segments rotate at the size limit and read_events follows them in order."""
    journal = Journal(str(tmp_path), run_now, segment_bytes=300)
    for event in sample_events() * 3:
        journal.append([event])
    assert len(list_segments(str(tmp_path))) > 3
    assert read_all(str(tmp_path)) == sample_events() * 3
    reopened = Journal(str(tmp_path), run_now, segment_bytes=300)
    assert reopened.end() == journal.end()


def test_segments_deleted_only_after_every_consumer(tmp_path):
    """A segment is deleted only once every consumer and every live message passed it."""
    journal = Journal(str(tmp_path), run_now, segment_bytes=300)
    journal.add_consumer("acct")
    journal.add_consumer("webhook")
    for event in sample_events() * 3:
        journal.append([event])
    last = journal.end().segment
    assert list_segments(str(tmp_path))[0] == 0
    journal.set_oldest_live_segment(None)
    journal.set_consumer_position("acct", journal.end())
    assert list_segments(str(tmp_path))[0] == 0  # webhook has not reported
    journal.set_consumer_position("webhook", JournalPosition(2, 0))
    assert list_segments(str(tmp_path))[0] == 2
    journal.set_consumer_position("webhook", journal.end())
    assert list_segments(str(tmp_path)) == [last]


def test_held_pruning_waits_for_the_consumers_of_this_run(tmp_path):
    """Reopened with pruning held, no segment goes before the consumers have registered."""
    journal = Journal(str(tmp_path), run_now, segment_bytes=300)
    for event in sample_events() * 3:
        journal.append([event])
    journal.close()
    reopened = Journal(str(tmp_path), run_now, segment_bytes=300, hold_pruning=True)
    reopened.set_oldest_live_segment(None)  # what the store says at resume
    assert list_segments(str(tmp_path))[0] == 0
    reopened.add_consumer("acct", JournalPosition(1, 0))  # its saved checkpoint
    reopened.release_pruning()
    assert list_segments(str(tmp_path))[0] == 1


def test_live_messages_keep_their_segments(tmp_path):
    """Segments a live message needs survive even when all consumers passed them."""
    journal = Journal(str(tmp_path), run_now, segment_bytes=300)
    for event in sample_events() * 3:
        journal.append([event])
    journal.set_consumer_position("acct", journal.end())
    assert list_segments(str(tmp_path))[0] == 0  # the spool has not said yet
    journal.set_oldest_live_segment(1)
    assert list_segments(str(tmp_path))[0] == 1
    with pytest.raises(SpoolIOError):
        read_all(str(tmp_path))
