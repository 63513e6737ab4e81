"""The message store: round trips, group commit, disk full and other I/O errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtaserver.events import Received, Removed
from mtaserver.spool.errors import CorruptMessageError, SpoolFullError, SpoolIOError
from mtaserver.spool.fileops import REAL_FILE_OPS, FileOps
from mtaserver.spool.journal import Journal, JournalPosition, read_events
from mtaserver.spool.recovery import recover
from mtaserver.spool.store import FLUSH_BYTES, MessageStore
from mtaserver.spool.testing import (
    ManualThreads,
    ThreadLoop,
    make_envelope,
    result_of,
    run_now,
)


def open_store(spool: str, run=run_now, file_ops: FileOps = REAL_FILE_OPS, **kw) -> MessageStore:
    journal = Journal(os.path.join(spool, "journal"), run, file_ops=file_ops)
    return MessageStore(spool, journal, run, file_ops=file_ops, **kw)


def files_in(spool: str) -> list[str]:
    found = []
    for root, _, names in os.walk(os.path.join(spool, "msg")):
        found += [os.path.join(root, n) for n in names]
    return found


def journaled(spool: str) -> list:
    return [e for _, e in read_events(os.path.join(spool, "journal"), JournalPosition(0, 0))]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.binary(max_size=3000), max_size=8))
def test_body_round_trip(tmp_path_factory, chunks):
    """Any bytes written in any chunks read back the same, and the envelope too."""
    spool = str(tmp_path_factory.mktemp("spool"))
    store = open_store(spool)
    writer = store.begin()
    for chunk in chunks:
        writer.write(chunk)
    envelope = make_envelope(writer.msg_id, 3)
    result_of(writer.commit(envelope))
    assert result_of(store.read_body(writer.msg_id)) == b"".join(chunks)
    assert journaled(spool) == [Received(envelope, journaled(spool)[0].time)]
    assert recover(spool).messages[writer.msg_id].envelope == envelope


def test_large_body_streamed_in_chunks(tmp_path):
    """A body larger than the flush size reaches the file before commit, intact."""
    threads = ManualThreads()
    store = open_store(str(tmp_path), threads)
    writer = store.begin()
    body = os.urandom(FLUSH_BYTES + 1000)
    writer.write(body[:FLUSH_BYTES])
    assert len(threads.queued) == 1  # the first flush went to a thread
    writer.write(body[FLUSH_BYTES:])
    d = writer.commit(make_envelope(writer.msg_id))
    threads.run_all()
    result_of(d)
    with store.open_body(writer.msg_id) as f:
        assert f.read() == body


def test_ids_unique_and_sortable(tmp_path):
    """Message ids are unique, filename-safe and sort in creation order."""
    store = open_store(str(tmp_path))
    ids = [store.new_msg_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and ids == sorted(ids)
    assert all(i.isalnum() for i in ids)


def test_twenty_concurrent_commits_share_syncs(tmp_path):
    """20 commits arriving together cost 2 directory syncs and 2 journal fsyncs, not 20."""
    threads = ManualThreads()
    store = open_store(str(tmp_path), threads)
    writers = [store.begin() for _ in range(20)]
    for w in writers:
        w.write(b"Subject: hi\r\n\r\nbody\r\n")
    commits = [w.commit(make_envelope(w.msg_id)) for w in writers]
    threads.run_all()
    for d in commits:
        result_of(d)
    assert store.sync_batches <= 2
    assert store.journal.commits <= 2
    assert len(files_in(str(tmp_path))) == 20


def test_concurrent_commits_with_real_threads(tmp_path):
    """With real threads, 20 concurrent commits all land, in far fewer than 20 batches."""
    loop = ThreadLoop(workers=8)
    try:
        store = open_store(str(tmp_path), loop)
        writers = [store.begin() for _ in range(20)]
        done: list[object] = []
        for w in writers:
            w.write(os.urandom(20_000))
            w.commit(make_envelope(w.msg_id)).addBoth(done.append)
        loop.run_until(lambda: len(done) == 20)
    finally:
        loop.close()
    assert done == [None] * 20
    assert store.sync_batches < 10 and store.journal.commits < 10
    assert len(recover(str(tmp_path)).messages) == 20


@pytest.mark.parametrize("where", ["write", "fdatasync"])
def test_disk_full_is_spool_full_and_leaves_no_file(tmp_path, where):
    """ENOSPC while writing or syncing the file: SpoolFullError, and msg/ stays empty."""

    def no_space(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = open_store(str(tmp_path), file_ops=FileOps(**{where: no_space}))
    writer = store.begin()
    writer.write(b"x" * (FLUSH_BYTES + 1))
    writer.write(b"more")
    with pytest.raises(SpoolFullError):
        result_of(writer.commit(make_envelope(writer.msg_id)))
    assert files_in(str(tmp_path)) == []
    assert journaled(str(tmp_path)) == []


def test_journal_full_removes_the_message_file(tmp_path):
    """If the Received record cannot be journaled, the renamed file is removed again."""
    full = {"on": False}

    def fsync(fd: int) -> None:
        if full["on"] and os.readlink(f"/proc/self/fd/{fd}").endswith(".jnl"):
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        os.fsync(fd)

    store = open_store(str(tmp_path), file_ops=FileOps(fsync=fsync))
    full["on"] = True
    writer = store.begin()
    writer.write(b"body")
    with pytest.raises(SpoolFullError):
        result_of(writer.commit(make_envelope(writer.msg_id)))
    assert files_in(str(tmp_path)) == []


def test_other_io_error_is_spool_io_error(tmp_path):
    """EIO while writing: SpoolIOError (451), not SpoolFullError, and no file left."""

    def eio(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, "Input/output error")

    store = open_store(str(tmp_path), file_ops=FileOps(write=eio))
    writer = store.begin()
    writer.write(b"body")
    with pytest.raises(SpoolIOError) as info:
        result_of(writer.commit(make_envelope(writer.msg_id)))
    assert not isinstance(info.value, SpoolFullError)
    assert files_in(str(tmp_path)) == []


def test_min_free_space_refuses(tmp_path):
    """check_space raises SpoolFullError when free space is below min_free_space."""
    real = os.statvfs(str(tmp_path))
    free = real.f_bavail * real.f_frsize
    open_store(str(tmp_path), min_free_space=free // 2).check_space()
    with pytest.raises(SpoolFullError):
        open_store(str(tmp_path), min_free_space=free * 2).check_space()


def test_abort_removes_temp_file(tmp_path):
    """An aborted message leaves nothing in msg/, even after a flush."""
    store = open_store(str(tmp_path))
    writer = store.begin()
    writer.write(b"x" * (FLUSH_BYTES + 1))
    assert len(files_in(str(tmp_path))) == 1
    writer.abort()
    assert files_in(str(tmp_path)) == []


def test_remove_journals_then_unlinks(tmp_path):
    """remove journals Removed and unlinks the file."""
    store = open_store(str(tmp_path))
    writer = store.begin()
    writer.write(b"body")
    result_of(writer.commit(make_envelope(writer.msg_id)))
    result_of(store.remove(writer.msg_id))
    assert files_in(str(tmp_path)) == []
    assert isinstance(journaled(str(tmp_path))[-1], Removed)


def test_flipped_body_byte_detected_on_read(tmp_path):
    """A body byte flipped on disk makes reading the body fail, not return bad data."""
    store = open_store(str(tmp_path))
    writer = store.begin()
    writer.write(b"Subject: x\r\n\r\nhello\r\n")
    result_of(writer.commit(make_envelope(writer.msg_id)))
    (path,) = files_in(str(tmp_path))
    data = bytearray(Path(path).read_bytes())
    data[12] ^= 1
    Path(path).write_bytes(bytes(data))
    with pytest.raises(CorruptMessageError):
        result_of(store.read_body(writer.msg_id))
