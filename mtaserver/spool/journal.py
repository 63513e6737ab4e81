"""The journal: the one durable, ordered record of everything that happens to mail.

Reception appends `Received`, the scheduler `Outcome` and `QueueFailure`, the spool
`Removed`. A recipient's state is the last record about it, so recovery is a replay,
and the accounting writers and webhook batchers follow the journal with their own
persisted positions instead of being called: a crash between a state change and
its acct line neither loses nor duplicates the line.

On disk: `<spool>/journal/<segment:016d>.jnl`, each a run of records framed as
`b"MJR1" | u32 length | u32 crc32(payload) | payload` (big-endian), the payload an
event's JSON. A record cut short or failing its checksum marks the torn end; it is
cut off when the journal is opened. Appends are group-committed: at most one
write+fsync is in flight, in a thread, and everything appended meanwhile shares the
next one.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.events import Event, event_from_json
from mtaserver.fsutil import truncate_durably
from mtaserver.runtime import RunInThread
from mtaserver.spool.errors import SpoolError, SpoolIOError, spool_error
from mtaserver.spool.fileops import REAL_FILE_OPS, FileOps
from mtaserver.spool.groupcommit import GroupCommit

log = Logger()

RECORD_MAGIC = b"MJR1"
_HEADER = struct.Struct(">4sII")
_MAX_RECORD = 1 << 30
_SUFFIX = ".jnl"


@attrs.frozen(order=True)
class JournalPosition:
    """A place in the journal: a byte offset within a numbered segment."""

    segment: int
    offset: int


#: What `hand_over` gives: (the journal's writer has the events, they are fsync'd there).
HandOver = tuple[Deferred[None], Deferred[JournalPosition]]


def frame(event: Event) -> bytes:
    """One event as a framed journal record."""
    payload = json.dumps(event.to_json(), separators=(",", ":")).encode("ascii")
    return _HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


def segment_path(directory: str, segment: int) -> str:
    return os.path.join(directory, f"{segment:016d}{_SUFFIX}")


def list_segments(directory: str) -> list[int]:
    """The segment numbers present, oldest first."""
    names = (n for n in os.listdir(directory) if n.endswith(_SUFFIX))
    return sorted(int(n[: -len(_SUFFIX)]) for n in names if n[: -len(_SUFFIX)].isdigit())


def _records(path: str, offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset after, payload) of each whole record from `offset`; stops at a tear."""
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            magic, length, crc = _HEADER.unpack(header)
            if magic != RECORD_MAGIC or length > _MAX_RECORD:
                return
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return
            offset += _HEADER.size + length
            yield offset, payload


def valid_end(path: str, offset: int = 0) -> int:
    """The offset just after the last whole record of a segment."""
    end = offset
    for record_end, _ in _records(path, offset):
        end = record_end
    return end


def next_record(
    directory: str, position: JournalPosition, end: JournalPosition
) -> JournalPosition | None:
    """The first whole record at or after `position` (up to `end`), for a stalled reader.

    A reader whose position is not a record boundary (the journal was cut and written
    again behind its back) would otherwise read nothing, forever. This scans forward for
    the record magic followed by a valid length and checksum, then tries later segments
    from their start. None if there is no record to resume at. Blocking: use a thread.
    """
    segment, offset = position.segment, position.offset
    while segment <= end.segment:
        path = segment_path(directory, segment)
        if os.path.exists(path):
            with open(path, "rb") as f:
                f.seek(offset)
                limit = end.offset - offset if segment == end.segment else -1
                data = f.read(limit) if limit >= 0 else f.read()
            at = data.find(RECORD_MAGIC)
            while at >= 0:
                if at + _HEADER.size <= len(data):
                    _, length, crc = _HEADER.unpack_from(data, at)
                    payload = data[at + _HEADER.size : at + _HEADER.size + length]
                    whole = length <= _MAX_RECORD and len(payload) == length
                    if whole and zlib.crc32(payload) == crc:
                        return JournalPosition(segment, offset + at)
                at = data.find(RECORD_MAGIC, at + 1)
        later = [s for s in list_segments(directory) if segment < s <= end.segment]
        if not later:
            return None
        segment, offset = later[0], 0
    return None


def open_journal(directory: str, file_ops: FileOps = REAL_FILE_OPS) -> JournalPosition:
    """Create the journal directory if needed, cut a torn tail, return the end.

    Blocking: for start-up only. Only the last segment can have a torn tail, since
    a segment is left only after its last write was fsync'd.
    """
    os.makedirs(directory, exist_ok=True)
    segments = list_segments(directory)
    if not segments:
        fd = os.open(segment_path(directory, 0), os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
        file_ops.fsync_dir(directory)
        return JournalPosition(0, 0)
    last = segment_path(directory, segments[-1])
    end = valid_end(last)
    size = os.path.getsize(last)
    if size > end:
        log.warn(
            "journal {path}: cutting torn tail of {torn} bytes at offset {offset}",
            path=last,
            torn=size - end,
            offset=end,
        )
        truncate_durably(last, end, file_ops.fsync)
    return JournalPosition(segments[-1], end)


def read_events(
    directory: str, start: JournalPosition, end: JournalPosition | None = None
) -> Iterator[tuple[JournalPosition, Event]]:
    """Yield (position just after it, event) from `start` up to `end` (blocking).

    Readers that follow a live journal should pass `end=journal.end()`, read on the
    reactor thread, so they never see a record that is written but not yet fsync'd.
    Without `end` they stop at the torn or unsynced end. A start segment that was
    already deleted is a SpoolIOError: the reader did not report its position.
    """
    segment, offset = start.segment, start.offset
    if not os.path.exists(segment_path(directory, segment)):
        later = [s for s in list_segments(directory) if s > segment]
        if later:
            raise SpoolIOError(f"journal segment {segment} was deleted before it was read")
        return
    retried = False
    while True:
        path = segment_path(directory, segment)
        for record_end, payload in _records(path, offset):
            offset = record_end
            position = JournalPosition(segment, offset)
            if end is not None and position > end:
                return
            yield position, event_from_json(json.loads(payload))
            if end is not None and position >= end:
                return
        if not os.path.exists(segment_path(directory, segment + 1)):
            return
        if offset < os.path.getsize(path):
            if not retried:
                # Sealed only a moment ago: the tail we saw unsynced is whole now.
                retried = True
                continue
            log.error(
                "journal {path}: corrupt record at offset {offset}, rest of segment skipped",
                path=path,
                offset=offset,
            )
        segment, offset, retried = segment + 1, 0, False


class Journal:
    """Appends events durably with group commit, and deletes segments nobody needs.

    A segment may be deleted once it is below every consumer's position and below
    the oldest segment a live message needs (its `Received` record and everything
    after it must be replayable). Until the spool has said which segment that is
    (`set_oldest_live_segment`) and every consumer added with `add_consumer` has
    reported, nothing is deleted.
    """

    def __init__(
        self,
        directory: str,
        run_in_thread: RunInThread,
        segment_bytes: int = 64 * 2**20,
        *,
        file_ops: FileOps = REAL_FILE_OPS,
        found_end: JournalPosition | None = None,
        hold_pruning: bool = False,
    ) -> None:
        self.directory = directory
        self._run_in_thread = run_in_thread
        self._segment_bytes = segment_bytes
        self._ops = file_ops
        self._end = open_journal(directory, file_ops)
        # Where the journal ended on disk when this run started, before it appended
        # anything (recovery passes the end it found before journaling adopted
        # messages). A consumer whose saved position is past it lost journal records:
        # the journal was cut between runs. See `AcctFileWriter`.
        self.found_end = found_end if found_end is not None else self._end
        self._first_segment = list_segments(directory)[0]
        # Owned by the batch thread (at most one batch runs at a time).
        self._fd_segment = self._end.segment
        self._fd = os.open(segment_path(directory, self._end.segment), os.O_WRONLY)
        os.lseek(self._fd, self._end.offset, os.SEEK_SET)
        self._broken: SpoolError | None = None
        self._group: GroupCommit[Sequence[Event], JournalPosition] = GroupCommit(self._run_batch)
        self._subscribers: list[Callable[[], None]] = []
        self._consumers: dict[str, JournalPosition | None] = {}
        self._oldest_live: int | None = -1  # -1: not told yet, keep everything
        self._pruning = False
        # Held until every consumer of this run has said where it stands: a segment
        # deleted before an acct writer registered its checkpoint would lose its records.
        self._prune_held = hold_pruning

    def release_pruning(self) -> None:
        """Every consumer is registered: segments nobody needs may go from now on."""
        self._prune_held = False
        self._prune()

    @property
    def commits(self) -> int:
        """How many write+fsync batches have run (for tests and metrics)."""
        return self._group.batches

    def end(self) -> JournalPosition:
        """The committed end: every record before it is fsync'd."""
        return self._end

    def append(self, events: Sequence[Event]) -> Deferred[JournalPosition]:
        """Append `events`; fires with the position after them once they are fsync'd.

        Framing (JSON, CRC) happens in the batch's thread with the write, not here on
        the reactor: a message to thousands of recipients is a large record.
        """
        return self._group.submit(tuple(events))

    def hand_over(self, events: Sequence[Event]) -> HandOver:
        """`append`, for the message store. In the journal's own process the events
        count as taken only once they are fsync'd: the process that acknowledges the
        message also queues it, and must not deliver (or account for) a message whose
        record might still fail to be written."""
        journaled = self.append(events)
        taken: Deferred[None] = Deferred()

        def settle(result: JournalPosition | Failure) -> JournalPosition | Failure:
            if isinstance(result, Failure):
                taken.errback(result)
            else:
                taken.callback(None)
            return result

        return taken, journaled.addBoth(settle)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` on the reactor thread after every commit."""
        self._subscribers.append(callback)

    def add_consumer(self, name: str, position: JournalPosition | None = None) -> None:
        """Declare a consumer; with no position yet it keeps every segment."""
        self._consumers[name] = position
        self._prune()

    def remove_consumer(self, name: str) -> None:
        """Forget a consumer (an acct file removed from the config)."""
        self._consumers.pop(name, None)
        self._prune()

    def set_consumer_position(self, name: str, position: JournalPosition) -> None:
        """`name` has read everything before `position`."""
        self._consumers[name] = position
        self._prune()

    def set_oldest_live_segment(self, segment: int | None) -> None:
        """The oldest segment a live message needs; None when the spool is empty."""
        self._oldest_live = segment
        self._prune()

    def close(self) -> None:
        """Close the segment file; appends after this fail."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._broken = SpoolIOError("journal closed")

    def _run_batch(
        self, appends: list[Sequence[Event]]
    ) -> Deferred[Sequence[JournalPosition | Exception]]:
        segment, committed = self._end.segment, self._end.offset
        if committed >= self._segment_bytes:
            segment, committed = segment + 1, 0
        work = self._run_in_thread(lambda: self._frame_and_write(segment, committed, appends))
        return work.addCallback(self._committed)

    def _frame_and_write(
        self, segment: int, committed: int, appends: list[Sequence[Event]]
    ) -> list[JournalPosition | Exception]:
        """In a thread: frame each append (one that cannot be framed fails alone), write."""
        positions: list[JournalPosition | Exception] = []
        payloads: list[bytes] = []
        offset = committed
        for events in appends:
            try:
                payload = b"".join(frame(e) for e in events)
            except (TypeError, ValueError) as e:
                positions.append(e)
                continue
            offset += len(payload)
            payloads.append(payload)
            positions.append(JournalPosition(segment, offset))
        self._write(segment, committed, b"".join(payloads))
        return positions

    def _committed(
        self, positions: Sequence[JournalPosition | Exception]
    ) -> Sequence[JournalPosition | Exception]:
        ends = [p for p in positions if isinstance(p, JournalPosition)]
        if ends:
            self._end = ends[-1]
        for callback in list(self._subscribers):
            try:
                callback()
            except Exception:
                log.failure("journal subscriber {callback!r} failed", callback=callback)
        self._prune()
        return positions

    def _write(self, segment: int, committed: int, data: bytes) -> None:
        """In a thread: write and fsync one batch, or leave the segment as it was."""
        if self._broken is not None:
            raise self._broken
        try:
            if segment != self._fd_segment:
                self._rotate(segment)
            self._ops.write_all(self._fd, data)
            self._ops.fsync(self._fd)
        except OSError as e:
            error = spool_error(e, "journal append")
            self._undo(committed, error)
            raise error from e

    def _rotate(self, segment: int) -> None:
        fd = os.open(segment_path(self.directory, segment), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self._ops.fsync_dir(self.directory)
        except OSError:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self._fd_segment = fd, segment

    def _undo(self, committed: int, error: SpoolError) -> None:
        """Cut a failed batch off, so the next one follows the last good record."""
        try:
            os.ftruncate(self._fd, committed)
            os.lseek(self._fd, committed, os.SEEK_SET)
            self._ops.fsync(self._fd)
        except OSError:
            log.critical("journal cannot undo a failed append; appends stop: {e}", e=error)
            self._broken = SpoolIOError(f"journal unusable after: {error}")

    def _prune(self) -> None:
        if self._prune_held:
            return
        limit = self._end.segment
        if self._oldest_live is not None:
            limit = min(limit, self._oldest_live)
        for position in self._consumers.values():
            limit = min(limit, -1 if position is None else position.segment)
        if self._pruning or limit <= self._first_segment:
            return
        self._pruning = True
        doomed = range(self._first_segment, limit)
        d = self._run_in_thread(lambda: self._delete(doomed))
        d.addCallbacks(self._pruned, self._prune_failed, callbackArgs=(limit,))

    def _pruned(self, _: None, limit: int) -> None:
        self._first_segment = limit
        self._pruning = False
        self._prune()

    def _prune_failed(self, failure: Failure) -> None:
        # Retried at the next commit or position report, not at once.
        self._pruning = False
        log.failure("journal segments not deleted", failure)

    def _delete(self, segments: range) -> None:
        for segment in segments:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(segment_path(self.directory, segment))
        self._ops.fsync_dir(self.directory)
