"""The message store: the only writer of message files in `<spool>/msg/`.

One file per message, written once under a temporary name, fsync'd, renamed, its
directory fsync'd, never modified again; then a `Received` event is journaled.
`MessageWriter.acknowledge` fires, and reception may answer `250`, once the file and
its directory entry are durable and the journal's writer has *taken* the `Received`
(`hand_over`). In the process that owns the journal that is once the record is
fsync'd too (that process also queues the message, and must not deliver one whose
record could still fail). A reception worker waits only until its request is in the
pipe to the master (`mtaserver.workers.handoff`), not for the master's fsync. Why that
is enough: the file carries the whole envelope and a checksum, so it is the message;
the journal is the index of states. A crash before the `Received` reached the journal
leaves a durable file with no record, and recovery adopts it (journals its
`Received`), as it always did for a file renamed in place whose record did not make
it. So a worker's 250 costs one fsync chain (file, then directory) instead of two in
series, as Postfix's queue file does; the journal still group-commits.
`MessageWriter.commit` (the spool's own DSNs and copies) fires once the record is
fsync'd as well.

Files live in `msg/<first 8 hex digits of the id>/`: ids start with the time in
milliseconds, so one directory holds about a minute of mail and the messages synced
together share one directory fsync.

How the syncs are grouped (measured on ext4, 20 files of 20 kB: fdatasync one after
the other 8-14 ms, the same from 20 threads at once 4.5-9.5 ms, one `syncfs` 3.5-8.5
ms): each committing writer fdatasyncs its own file in a pool thread, so concurrent
commits sync in parallel and the filesystem merges them into few journal commits;
then a group commit renames every file ready meanwhile and fsyncs their directory
once, and the journal group-commits their `Received` events in one fsync. `syncfs`
was barely faster, but it also flushes whatever else is dirty on the filesystem
(acct files, other programs) and reports errors for the whole filesystem rather
than per file, so parallel fdatasync it is.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import BinaryIO, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.events import Envelope, Event, Received, Removed
from mtaserver.runtime import RunInThread
from mtaserver.spool.errors import (
    JournalOutcomeUnknown,
    SpoolError,
    SpoolFullError,
    SpoolIOError,
    spool_error,
)
from mtaserver.spool.fileops import REAL_FILE_OPS, FileOps
from mtaserver.spool.groupcommit import GroupCommit
from mtaserver.spool.journal import HandOver, JournalPosition
from mtaserver.spool.msgfile import HEADER, BodyReader, encode_tail

log = Logger()

FLUSH_BYTES = 256 * 1024  # a writer holds at most about this much body in memory
TMP_SUFFIX = ".tmp"
_MSG_ID = re.compile(r"\A[0-9a-f]{26}\Z")


def bucket_of(msg_id: str) -> str:
    """The `msg/` subdirectory of a message: its first 8 hex digits (65 s of ids)."""
    return msg_id[:8]


def is_msg_id(name: str) -> bool:
    return _MSG_ID.match(name) is not None


class StoreJournal(Protocol):
    """What the store needs of a journal: `mtaserver.spool.Journal` in the process that
    owns it, a `mtaserver.workers.HandoffJournal` (appends journaled by the master) in a
    reception worker."""

    def append(self, events: Sequence[Event]) -> Deferred[JournalPosition]: ...

    def hand_over(self, events: Sequence[Event]) -> HandOver:
        """Append `events`: the first Deferred fires once the journal's writer has them
        (a crash from then on leaves recovery to journal them), the second once they
        are fsync'd, with the position after them."""
        ...

    def set_oldest_live_segment(self, segment: int | None) -> None: ...


class _IdMaker:
    """Ids: 12 hex digits of ms time, a per-process random tag, a counter.

    Sorting the ids sorts by reception time; the tag keeps two processes (or a
    restart within the same millisecond) apart; all hex, so filename-safe.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tag = secrets.randbelow(16**8)
        self._counter = 0
        self._last_ms = 0

    def __call__(self) -> str:
        self._last_ms = max(self._last_ms, int(self._clock() * 1000))
        self._counter = (self._counter + 1) % 16**6
        return f"{self._last_ms:012x}{self._tag:08x}{self._counter:06x}"


class MessageStore:
    """Writes, reads and removes message files; tells the journal what is live.

    `directory` is the spool directory (files go in `directory/msg`). It must have
    been through `recover()` first; pass its result to `resume` so the store knows
    which journal segments the live messages still need.

    A reception worker's store (`track_live=False`) only writes: the master, which owns
    the queue, tracks the messages it commits (`track_committed`) and removes them.
    """

    def __init__(
        self,
        directory: str,
        journal: StoreJournal,
        run_in_thread: RunInThread,
        min_free_space: int = 0,
        *,
        file_ops: FileOps = REAL_FILE_OPS,
        clock: Callable[[], float] = time.time,
        track_live: bool = True,
    ) -> None:
        self.directory = directory
        self.msg_directory = os.path.join(directory, "msg")
        self.journal = journal
        self.min_free_space = min_free_space
        self._run_in_thread = run_in_thread
        self._ops = file_ops
        self._clock = clock
        self.new_msg_id = _IdMaker(clock)
        self._buckets: set[str] = set()
        self._buckets_lock = threading.Lock()
        self._renames: GroupCommit[MessageWriter, None] = GroupCommit(self._rename_batch)
        self._unlinks: GroupCommit[str, None] = GroupCommit(self._unlink_batch)
        self._live: dict[str, int] = {}
        self._live_segments: Counter[int] = Counter()
        # -1: not reported yet; the journal keeps every segment until we report.
        self._oldest_live: int | None = -1
        self._track_live = track_live
        os.makedirs(self.msg_directory, exist_ok=True)

    @property
    def sync_batches(self) -> int:
        """Rename+directory-fsync batches run so far (tests check they are shared)."""
        return self._renames.batches

    def resume(self, live: dict[str, int]) -> None:
        """Take over the live messages found by recovery: msg_id -> journal segment."""
        for msg_id, segment in live.items():
            self._track(msg_id, segment)
        self._report_oldest()

    def begin(self) -> MessageWriter:
        """Start a message; nothing touches the disk until enough body has arrived."""
        return MessageWriter(self, self.new_msg_id())

    def set_min_free_space(self, min_free_space: int) -> None:
        """`spool-min-free-space` after a reload: the next message is checked against it."""
        self.min_free_space = min_free_space

    def check_space(self, needed: int = 0) -> None:
        """Raise SpoolFullError if `needed` more bytes would take the spool below `min_free_space`.

        `needed` is a message's declared `SIZE=`. `statvfs` reads the in-memory
        superblock: cheap enough for the reactor.
        """
        if self.min_free_space <= 0 and needed <= 0:
            return
        try:
            free = self._ops.free_bytes(self.msg_directory)
        except OSError as e:
            raise spool_error(e, "checking free space") from e
        if free - needed < self.min_free_space:
            raise SpoolFullError(
                f"spool has {free} bytes free, needs {self.min_free_space} + {needed}"
            )

    def path(self, msg_id: str) -> str:
        """The file of a committed message."""
        if not is_msg_id(msg_id):
            raise ValueError(f"not a message id: {msg_id!r}")
        return os.path.join(self.msg_directory, bucket_of(msg_id), msg_id)

    def open_body(self, msg_id: str) -> BinaryIO:
        """The body as a stream (blocking: call from a thread); the last read checks it."""
        try:
            fd = os.open(self.path(msg_id), os.O_RDONLY)
        except OSError as e:
            raise spool_error(e, f"opening {msg_id}") from e
        try:
            return io.BufferedReader(BodyReader(fd, msg_id), FLUSH_BYTES)
        except BaseException:
            os.close(fd)
            raise

    def read_body(self, msg_id: str) -> Deferred[bytes]:
        """The whole body, read and checked in a thread."""

        def read() -> bytes:
            with self.open_body(msg_id) as body:
                return body.read()

        return self._run_in_thread(read)

    def set_aside(self, msg_id: str) -> Deferred[None]:
        """Move a corrupt message file to `<spool>/corrupt/` (as recovery does), durably.

        Its recipients are bounced by the scheduler, which then calls `remove`; the
        unlink there finds nothing, and the journal forgets the message as usual.
        """
        path = self.path(msg_id)
        corrupt_dir = os.path.join(self.directory, "corrupt")

        def move() -> None:
            os.makedirs(corrupt_dir, exist_ok=True)
            try:
                os.rename(path, os.path.join(corrupt_dir, msg_id))
            except FileNotFoundError:
                return
            except OSError as e:
                raise spool_error(e, f"moving {msg_id} to corrupt/") from e
            self._ops.fsync_dir(os.path.dirname(path))
            self._ops.fsync_dir(corrupt_dir)

        return self._run_in_thread(move)

    def remove(self, msg_id: str) -> Deferred[None]:
        """Journal `Removed`, then unlink the file (all its recipients are final)."""
        return Deferred.fromCoroutine(self._remove(msg_id))

    async def _remove(self, msg_id: str) -> None:
        path = self.path(msg_id)
        await self.journal.append([Removed(msg_id=msg_id, time=self._clock())])
        await self._unlinks.submit(path)
        # Only now, with the unlink durable, may the journal drop its records: a
        # file that came back after a crash would otherwise be taken for new mail.
        self._untrack(msg_id)

    # -- bookkeeping of the journal segments live messages need ---------------

    def track_committed(self, msg_id: str, segment: int) -> None:
        """A message a reception worker committed, its `Received` in `segment` of our journal."""
        self._track(msg_id, segment)
        self._report_oldest()

    def _track(self, msg_id: str, segment: int) -> None:
        if not self._track_live:
            return
        self._live[msg_id] = segment
        self._live_segments[segment] += 1

    def _untrack(self, msg_id: str) -> None:
        segment = self._live.pop(msg_id, None)
        if segment is None:
            return
        self._live_segments[segment] -= 1
        if not self._live_segments[segment]:
            del self._live_segments[segment]
        self._report_oldest()

    def _report_oldest(self) -> None:
        oldest = min(self._live_segments) if self._live_segments else None
        if oldest != self._oldest_live:
            self._oldest_live = oldest
            self.journal.set_oldest_live_segment(oldest)

    # -- the thread side of writers --------------------------------------------

    def _ensure_bucket(self, bucket: str) -> str:
        """Create `msg/<bucket>` durably once (in a thread)."""
        path = os.path.join(self.msg_directory, bucket)
        with self._buckets_lock:
            if bucket not in self._buckets:
                os.makedirs(path, exist_ok=True)
                self._ops.fsync_dir(self.msg_directory)
                self._buckets.add(bucket)
        return path

    def _rename_batch(self, writers: list[MessageWriter]) -> Deferred[Sequence[None | Exception]]:
        def rename_all() -> list[None | Exception]:
            results: list[None | Exception] = []
            for writer in writers:
                try:
                    os.rename(writer.tmp_path, writer.final_path)
                    writer.renamed = True
                    results.append(None)
                except OSError as e:
                    results.append(spool_error(e, f"renaming {writer.msg_id}"))
            for bucket in {os.path.dirname(w.final_path) for w in writers}:
                try:
                    self._ops.fsync_dir(bucket)
                except OSError as e:
                    error = spool_error(e, f"syncing {bucket}")
                    for i, w in enumerate(writers):
                        if os.path.dirname(w.final_path) == bucket:
                            results[i] = error
            return results

        return self._run_in_thread(rename_all).addCallback(self._journal_received, writers)

    def _journal_received(
        self, results: list[None | Exception], writers: list[MessageWriter]
    ) -> list[None | Exception]:
        """Hand the batch's `Received` events to the journal in one append."""
        durable = [w for w, r in zip(writers, results, strict=True) if r is None]
        if not durable:
            return results
        now = self._clock()
        events = []
        for writer in durable:
            assert writer.envelope is not None  # set by commit()
            events.append(Received(writer.envelope, now))
        taken, journaled = self.journal.hand_over(events)
        for writer in durable:
            writer.taken = Deferred()

        def fan_out_taken(result: None | Failure) -> None:
            for writer in durable:
                assert writer.taken is not None
                if isinstance(result, Failure):
                    writer.taken.errback(result)
                else:
                    writer.taken.callback(None)

        def fan_out_journaled(result: JournalPosition | Failure) -> None:
            for writer in durable:
                writer.journal_result(result)

        # the fsync's outcome first: a synchronous failure must be known before `taken`
        journaled.addBoth(fan_out_journaled)
        taken.addBoth(fan_out_taken)
        return results

    def _unlink_batch(self, paths: list[str]) -> Deferred[Sequence[None | Exception]]:
        def unlink_all() -> list[None | Exception]:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            try:
                for bucket in {os.path.dirname(p) for p in paths}:
                    self._ops.fsync_dir(bucket)
            except OSError as e:
                return [spool_error(e, "syncing removals")] * len(paths)
            return [None] * len(paths)

        return self._run_in_thread(unlink_all)


class MessageWriter:
    """One message being received: body streamed to a temporary file, then committed.

    `write` only buffers; every `FLUSH_BYTES` the buffer goes to the file in a
    thread, so a writer holds a bounded amount of body. Errors while flushing are
    kept and raised by `commit`. After any failure the temporary (or renamed) file
    is removed, so no file is ever left that recovery would take for a message.
    """

    def __init__(self, store: MessageStore, msg_id: str) -> None:
        self.msg_id = msg_id
        self._store = store
        bucket = os.path.join(store.msg_directory, bucket_of(msg_id))
        self.tmp_path = os.path.join(bucket, msg_id + TMP_SUFFIX)
        self.final_path = os.path.join(bucket, msg_id)
        self.envelope: Envelope | None = None
        self.renamed = False
        self.taken: Deferred[None] | None = None  # the journal's writer has the Received
        self._committed = False  # commit() has fired: the sender may have its 250
        self._position: JournalPosition | None = None  # the Received fsync'd here
        self._journal_error: Exception | None = None
        # after the 250: True once the Received is fsync'd, or why it could not be
        self._recorded: bool | Failure | None = None
        self._recorded_waiters: list[Deferred[None]] = []
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flushing = False
        self._flushed_waiter: Deferred[None] | None = None
        self._error: SpoolError | None = None
        self._done = False
        # Thread side, touched by one flush at a time.
        self._fd = -1
        self._size = 0
        self._crc = 0

    def write(self, data: bytes) -> None:
        """Add body bytes (cheap: the disk write happens in a thread, later)."""
        if self._done:
            raise RuntimeError(f"message {self.msg_id} already committed or aborted")
        if self._error is not None:
            return  # commit will raise it; the bytes have nowhere to go
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered >= FLUSH_BYTES and not self._flushing:
            self._flush()

    def commit(self, envelope: Envelope) -> Deferred[None]:
        """Make the message durable; fires once file, directory and journal are synced.

        Fails with SpoolFullError or SpoolIOError, leaving no file behind. For the
        spool's own messages (DSNs, copies), which are queued as soon as this fires.
        """
        return self.acknowledge(envelope).addCallback(lambda _: self.when_recorded())

    def acknowledge(self, envelope: Envelope) -> Deferred[None]:
        """Make the message durable; fires once the sender may have its `250`.

        That is once the file and its directory entry are fsync'd and the journal's
        writer has taken the `Received` (see the module docstring); `when_recorded`
        says when the journal has it too. Fails as `commit` does.
        """
        if self._done:
            raise RuntimeError(f"message {self.msg_id} already committed or aborted")
        if envelope.msg_id != self.msg_id:
            raise ValueError(f"envelope is for {envelope.msg_id}, writer for {self.msg_id}")
        self._done = True
        self.envelope = envelope
        return Deferred.fromCoroutine(self._commit(envelope))

    def when_recorded(self) -> Deferred[None]:
        """Fires once the `Received` is fsync'd in the journal (call after `acknowledge`
        fired); fails if the journal could not take it (the file stays for the next start)."""
        d: Deferred[None] = Deferred()
        if self._recorded is None:
            self._recorded_waiters.append(d)
        elif isinstance(self._recorded, Failure):
            d.errback(self._recorded)
        else:
            d.callback(None)
        return d

    def abort(self) -> None:
        """Give the message up and remove its temporary file."""
        if self._done:
            return
        self._done = True
        self._buffer = []
        if self._flushing:
            self._flushed_waiter = Deferred()
            self._flushed_waiter.addBoth(lambda _: self._discard())
        else:
            self._discard()

    async def _commit(self, envelope: Envelope) -> None:
        try:
            if self._flushing:
                self._flushed_waiter = Deferred()
                await self._flushed_waiter
            if self._error is not None:
                raise self._error
            tail = b"".join(self._buffer)
            self._buffer = []
            await self._store._run_in_thread(lambda: self._finish(tail, envelope))
            await self._store._renames.submit(self)
            assert self.taken is not None
            await self.taken
            if self._journal_error is not None:  # refused before we could answer 250
                raise self._journal_error
        except BaseException as e:
            if isinstance(e, JournalOutcomeUnknown) and self.renamed:
                raise  # the file stays for recovery: its Received may be journaled
            self._discard()
            if isinstance(e, SpoolError):
                raise
            raise SpoolIOError(f"committing {self.msg_id}: {e}") from e
        self._committed = True
        if self._position is not None:
            self._tracked(self._position)

    def journal_result(self, result: JournalPosition | Failure) -> None:
        """The `Received`'s fsync is done (a position) or failed (after a 250 or not)."""
        if isinstance(result, Failure):
            error = result.value
            if not self._committed:
                self._journal_error = (
                    error if isinstance(error, Exception) else SpoolIOError(str(error))
                )
                return
            log.error(
                "journaling message {msg_id} failed ({error}): its file stays, and the next "
                "start journals it",
                msg_id=self.msg_id,
                error=str(error),
            )
            self._set_recorded(result)
        elif self._committed:
            self._tracked(result)
        else:
            self._position = result

    def _tracked(self, position: JournalPosition) -> None:
        self._store._track(self.msg_id, position.segment)
        self._store._report_oldest()
        self._set_recorded(True)

    def _set_recorded(self, outcome: bool | Failure) -> None:
        self._recorded = outcome
        waiters, self._recorded_waiters = self._recorded_waiters, []
        for d in waiters:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)

    def _flush(self) -> None:
        chunk = b"".join(self._buffer)
        self._buffer = []
        self._buffered = 0
        self._flushing = True
        d = self._store._run_in_thread(lambda: self._write_chunk(chunk))
        d.addCallbacks(self._flushed, self._flush_failed)

    def _flushed(self, _: None) -> None:
        self._flushing = False
        if self._flushed_waiter is not None:
            waiter, self._flushed_waiter = self._flushed_waiter, None
            waiter.callback(None)
        elif self._buffered >= FLUSH_BYTES and not self._done:
            self._flush()

    def _flush_failed(self, failure: Failure) -> None:
        error = failure.value
        self._error = error if isinstance(error, SpoolError) else SpoolIOError(str(error))
        self._buffer = []
        self._flushed(None)

    def _discard(self) -> None:
        """Remove whatever file this writer left (in a thread, best effort)."""

        def discard() -> None:
            self._close()
            path = self.final_path if self.renamed else self.tmp_path
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

        d = self._store._run_in_thread(discard)
        d.addErrback(lambda f: log.failure("could not remove {id}", f, id=self.msg_id))

    # -- in a thread ---------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        try:
            if self._fd < 0:
                self._store._ensure_bucket(bucket_of(self.msg_id))
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.tmp_path, flags, 0o600)
                self._store._ops.write_all(self._fd, HEADER)
            self._store._ops.write_all(self._fd, data)
        except OSError as e:
            raise spool_error(e, f"writing {self.msg_id}") from e
        self._size += len(data)
        self._crc = zlib.crc32(data, self._crc)

    def _finish(self, tail: bytes, envelope: Envelope) -> None:
        self._write_chunk(tail)
        try:
            self._store._ops.write_all(self._fd, encode_tail(envelope, self._size, self._crc))
            self._store._ops.fdatasync(self._fd)
        except OSError as e:
            raise spool_error(e, f"syncing {self.msg_id}") from e
        finally:
            self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
