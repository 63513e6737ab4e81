"""Start-up recovery: from message files and the journal back to the live queue.

Runs once, blocking, before the reactor serves anything. It trusts nothing: every
message file's header, trailer and envelope are checked (not its body, so restart
time grows with the journal and the number of messages, not with their sizes), torn
or corrupt files go to `<spool>/corrupt/` with an error in the log, leftover
temporary files are removed, and the journal is replayed (its torn tail cut off) to
learn each recipient's state: the last record about it wins.

A file with no `Received` record was renamed into place but its record did not reach
the journal's fsync. In one process its sender never got a `250`; a reception worker
answers `250` once the master has the record, before the master's fsync (see
`mtaserver.spool.store`), so such a file may be an acknowledged message. Either way
it is kept and a `Received` is journaled for it now ("adopted"): a sender without a
`250` will most likely send it again, and a duplicate is a small harm next to the
loss we would risk by dropping it. Dropping it would be the one unrepairable mistake.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import attrs
from twisted.logger import Logger

from mtaserver.events import Envelope, Outcome, Received, Removed
from mtaserver.runtime import RunInThread
from mtaserver.spool.errors import CorruptMessageError
from mtaserver.spool.fileops import REAL_FILE_OPS, FileOps
from mtaserver.spool.journal import (
    Journal,
    JournalPosition,
    frame,
    list_segments,
    open_journal,
    read_events,
    segment_path,
)
from mtaserver.spool.msgfile import BodyReader, read_envelope
from mtaserver.spool.store import TMP_SUFFIX, MessageStore, is_msg_id

log = Logger()


@attrs.frozen
class PendingRecipient:
    """A recipient still to deliver: its index in the envelope and its history."""

    index: int
    attempts: int = 0  # `t` outcomes so far
    last_attempt: float | None = None


@attrs.frozen
class RecoveredMessage:
    """A live message: its envelope and the recipients not yet final."""

    envelope: Envelope
    pending: tuple[PendingRecipient, ...]
    journal_segment: int  # the oldest journal segment it still needs

    @property
    def msg_id(self) -> str:
        return self.envelope.msg_id


@attrs.frozen
class RecoveredSpool:
    """What recovery found; `messages` is ordered by id, i.e. by reception time."""

    messages: Mapping[str, RecoveredMessage]
    journal_end: JournalPosition
    # The end as found on disk, before recovery journaled adopted messages: a
    # consumer's saved position past it means the journal was cut between runs.
    found_end: JournalPosition = JournalPosition(0, 0)
    corrupt: tuple[str, ...] = ()  # file names moved to corrupt/
    adopted: tuple[str, ...] = ()  # files without a Received record, journaled now
    # Received, not final, but no valid file (moved to corrupt/ or missing): the
    # caller should bounce these recipients so that each gets a final record.
    lost: tuple[RecoveredMessage, ...] = ()

    def live_segments(self) -> dict[str, int]:
        """msg_id -> journal segment, for `MessageStore.resume`."""
        return {m.msg_id: m.journal_segment for m in self.messages.values()}


class _State:
    """A message's state while the journal is replayed."""

    __slots__ = ("envelope", "segment", "final", "attempts", "last", "removed")

    def __init__(self, segment: int) -> None:
        self.envelope: Envelope | None = None
        self.segment = segment
        self.final: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.last: dict[int, float] = {}
        self.removed = False

    def pending(self, recipients: int) -> tuple[PendingRecipient, ...]:
        return tuple(
            PendingRecipient(i, self.attempts.get(i, 0), self.last.get(i))
            for i in range(recipients)
            if i not in self.final
        )


def _replay(journal_dir: str, end: JournalPosition) -> dict[str, _State]:
    states: dict[str, _State] = {}
    segments = list_segments(journal_dir)
    for position, event in read_events(journal_dir, JournalPosition(segments[0], 0), end):
        if isinstance(event, Received):
            state = states.setdefault(event.envelope.msg_id, _State(position.segment))
            state.envelope = event.envelope
        elif isinstance(event, Outcome):
            state = states.setdefault(event.msg_id, _State(position.segment))
            for i in event.rcpt_indexes:
                if event.is_final:
                    state.final.add(i)
                elif i not in state.final:
                    state.attempts[i] = state.attempts.get(i, 0) + 1
                    state.last[i] = event.time
        elif isinstance(event, Removed):
            states.setdefault(event.msg_id, _State(position.segment)).removed = True
    return states


def _check_file(path: str, name: str, verify_body: bool) -> Envelope:
    fd = os.open(path, os.O_RDONLY)
    try:
        envelope = read_envelope(fd, name)
        if envelope.msg_id != name:
            raise CorruptMessageError(f"{name}: envelope is for {envelope.msg_id}")
        if verify_body:
            reader = BodyReader(os.dup(fd), name)
            with reader:
                while reader.read(1 << 20):
                    pass
        return envelope
    finally:
        os.close(fd)


def recover(
    directory: str, *, verify_bodies: bool = False, file_ops: FileOps = REAL_FILE_OPS
) -> RecoveredSpool:
    """Check and clean the spool at `directory`, and say what is still to deliver.

    `verify_bodies` also reads every body to check its checksum: thorough, but it
    makes restart time grow with the spool's size, so it is off by default (bodies
    are checked anyway whenever they are read for delivery).
    """
    msg_dir = os.path.join(directory, "msg")
    corrupt_dir = os.path.join(directory, "corrupt")
    journal_dir = os.path.join(directory, "journal")
    for path in (msg_dir, corrupt_dir):
        os.makedirs(path, exist_ok=True)
    end = found_end = open_journal(journal_dir, file_ops)
    states = _replay(journal_dir, end)

    messages: dict[str, RecoveredMessage] = {}
    corrupt: list[str] = []
    adopted: list[Envelope] = []
    seen: set[str] = set()
    for bucket in sorted(os.listdir(msg_dir)):
        bucket_dir = os.path.join(msg_dir, bucket)
        if not os.path.isdir(bucket_dir):
            log.warn("spool: stray file {path} left alone", path=bucket_dir)
            continue
        for name in sorted(os.listdir(bucket_dir)):
            path = os.path.join(bucket_dir, name)
            if name.endswith(TMP_SUFFIX):
                os.unlink(path)  # never committed, never acknowledged
                continue
            if not is_msg_id(name):
                log.warn("spool: stray file {path} left alone", path=path)
                continue
            try:
                envelope = _check_file(path, name, verify_bodies)
            except CorruptMessageError as e:
                os.rename(path, os.path.join(corrupt_dir, name))
                log.error(
                    "spool: corrupt message {msg_id} moved to corrupt/: {why}",
                    msg_id=name,
                    why=str(e),
                )
                corrupt.append(name)
                continue
            seen.add(name)
            state = states.get(name)
            if state is None or state.envelope is None:
                adopted.append(envelope)
                state = state or _State(end.segment)
                state.segment = end.segment
            pending = state.pending(len(envelope.recipients))
            if state.removed or not pending:
                os.unlink(path)  # every recipient final: the file's job is done
                continue
            messages[name] = RecoveredMessage(envelope, pending, state.segment)
        file_ops.fsync_dir(bucket_dir)
        with contextlib.suppress(OSError):
            os.rmdir(bucket_dir)  # only succeeds when empty
    file_ops.fsync_dir(msg_dir)
    file_ops.fsync_dir(corrupt_dir)
    if adopted:
        end = _journal_adopted(journal_dir, end, adopted, file_ops)
    lost = _lost(states, seen)
    return RecoveredSpool(
        messages=dict(sorted(messages.items())),
        journal_end=end,
        found_end=found_end,
        corrupt=tuple(corrupt),
        adopted=tuple(e.msg_id for e in adopted),
        lost=lost,
    )


def _journal_adopted(
    journal_dir: str, end: JournalPosition, adopted: list[Envelope], file_ops: FileOps
) -> JournalPosition:
    for envelope in adopted:
        log.warn(
            "spool: message {msg_id} has no Received record (a crash before it was "
            "journaled); kept and journaled now",
            msg_id=envelope.msg_id,
        )
    data = b"".join(frame(Received(envelope, envelope.time_queued)) for envelope in adopted)
    fd = os.open(segment_path(journal_dir, end.segment), os.O_WRONLY)
    try:
        os.lseek(fd, end.offset, os.SEEK_SET)
        file_ops.write_all(fd, data)
        file_ops.fsync(fd)
    finally:
        os.close(fd)
    return JournalPosition(end.segment, end.offset + len(data))


def _lost(states: dict[str, _State], seen: set[str]) -> tuple[RecoveredMessage, ...]:
    lost = []
    for msg_id, state in sorted(states.items()):
        if msg_id in seen or state.removed or state.envelope is None:
            continue
        pending = state.pending(len(state.envelope.recipients))
        if pending:
            log.error(
                "spool: message {msg_id} was accepted but its file is gone or corrupt",
                msg_id=msg_id,
            )
            lost.append(RecoveredMessage(state.envelope, pending, state.segment))
    return tuple(lost)


def open_spool(
    directory: str,
    run_in_thread: RunInThread,
    *,
    min_free_space: int = 0,
    segment_bytes: int = 64 * 2**20,
    verify_bodies: bool = False,
    hold_pruning: bool = False,
) -> tuple[RecoveredSpool, Journal, MessageStore]:
    """Recover the spool at `directory`, then open its journal and store (blocking).

    With `hold_pruning`, no journal segment is deleted until `journal.release_pruning()`
    (the server calls it once its acct writers and other consumers are registered).
    """
    recovered = recover(directory, verify_bodies=verify_bodies)
    journal = Journal(
        os.path.join(directory, "journal"),
        run_in_thread,
        segment_bytes,
        found_end=recovered.found_end,
        hold_pruning=hold_pruning,
    )
    store = MessageStore(directory, journal, run_in_thread, min_free_space)
    store.resume(recovered.live_segments())
    return recovered, journal, store
