"""`AcctFileWriter`: the one owner of one acct file, fed from the journal.

Each `<acct-file>` gets one writer; several run at once on different files. A writer
is a journal consumer with a persisted position (exactly once to the file): `catch_up()`
reads the events after its checkpoint, appends their records, then saves a new
checkpoint (see `checkpoint.py`). That order, plus truncating the file to the
checkpointed size on start, makes the file exactly-once across `kill -9`: lines written
after the last checkpoint are cut and written again, never twice and never lost. With
`sync yes` the file is fsync'd before each checkpoint, which extends this to power loss.

A writer with no checkpoint is brand new: it starts at `start_position`, which the
caller sets to the beginning of the journal (so a new acct file gets every record the
journal still holds). An acct file found without a checkpoint is moved aside as a
rotated file rather than appended to, since its contents cannot be trusted.

A writer never stalls silently. A checkpoint past the end the journal had when the
server started (`found_end`: the journal was cut between runs, by a disk fault or an
operator) is logged as a critical error, counted (`journal_truncations`,
`journal_lost_bytes`) and accounting resumes at that end, from the surviving records;
a position the journal has records after but none can be read at (not a record
boundary any more) is resynchronised with `resync` the same way; any other failed
catch-up is logged, counted (`errors`, `last_error`) and retried. `status()` is what
`/metrics` and `show status` read.

Blocking work (reading the journal, writing, fsync, rename) runs through the injected
`run_in_thread`; the reactor thread only schedules. One `DeferredLock` serialises
recovery, catch-up and rotation, so the file state is touched by one operation at a time.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import IO, Any, Generic, TypeVar, cast

from twisted.internet import defer, task
from twisted.logger import Logger

from mtaserver.accounting.checkpoint import (
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from mtaserver.accounting.privacy import Policy
from mtaserver.accounting.records import (
    ALL_FIELDS,
    DEFAULT_RECORDS,
    HEADER_PREFIX,
    RECORD_TYPES,
    csv_header,
    csv_line,
    fields_for,
    json_line,
    records_from_event,
)
from mtaserver.accounting.rotation import expired_files, rotated_name
from mtaserver.events import Event
from mtaserver.runtime import Clock, DelayedCall, RunInThread

P = TypeVar("P")
T = TypeVar("T")


def position_pair(position: Any) -> tuple[int, int]:
    """A journal position as `(segment, offset)`: an attrs `JournalPosition` or a pair."""
    if hasattr(position, "segment"):
        return int(position.segment), int(position.offset)
    segment, offset = position
    return int(segment), int(offset)


def _show(pair: tuple[int, int]) -> str:
    """A journal position as operators read it: `segment:offset`."""
    return f"{pair[0]}:{pair[1]}"


def csv_columns(fields_by_type: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
    """A CSV file's columns: every selected type's fields, in order of first appearance.

    A CSV file has one header row, so types with different `record-fields` share the
    union; a row leaves the columns its type does not select empty.
    """
    out: dict[str, None] = {}
    for record_type in RECORD_TYPES:
        for field in fields_by_type.get(record_type, ()):
            out.setdefault(field, None)
    return tuple(out)


def _encode(line: str) -> bytes:
    """UTF-8; 8-bit input kept as `surrogateescape` returns to its own bytes."""
    try:
        return line.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return line.encode("utf-8", "replace")


class AcctFileWriter(Generic[P]):
    """Writes the records of one `<acct-file>` from the journal, exactly once."""

    log = Logger()
    flush_bytes = 1 << 20  # checkpoint at least this often during a long catch-up
    retry_delay = 10.0  # seconds before retrying a failed catch-up (disk full...)

    def __init__(
        self,
        path: str,
        *,
        read_events: Callable[[P, P | None], Iterable[tuple[P, Event]]],
        start_position: P,
        run_in_thread: RunInThread,
        clock: Clock,
        position_from_pair: Callable[[int, int], P] | None = None,
        journal_end: Callable[[], P] | None = None,
        on_position: Callable[[P], object] | None = None,
        records: frozenset[str] = DEFAULT_RECORDS,
        record_fields: Mapping[str, tuple[str, ...]] | None = None,
        header_fields: tuple[str, ...] = (),
        sync: bool = False,
        max_size: int | None = None,
        move_interval: float | None = None,
        delete_after: float | None = None,
        found_end: P | None = None,
        resync: Callable[[P, P], P | None] | None = None,
        min_interval: float = 0.0,
        move_to: str | None = None,
        world_readable: bool = False,
        policy: Policy | None = None,
    ) -> None:
        unknown = set(records) - set(RECORD_TYPES)
        if unknown:
            raise ValueError(f"unknown acct record types: {', '.join(sorted(unknown))}")
        self.path = path
        self._dir = os.path.dirname(path) or "."
        #: `move-to`: where rotated files go (beside the acct file by default).
        self._rotated_dir = move_to or self._dir
        #: `world-readable`: 0644, else 0640 (PowerMTA's default keeps others out).
        self._mode = 0o644 if world_readable else 0o640
        #: `user-string` and `privacy-policy` (`accounting.privacy`), applied per record.
        self._policy = policy
        self._ckpt_path = checkpoint_path(path)
        self._json = path.endswith(".json")
        self._fields_by_type = {
            t: fields_for(t, record_fields, header_fields) for t in RECORD_TYPES if t in records
        }
        for fields in self._fields_by_type.values():
            bad = [f for f in fields if f not in ALL_FIELDS and not f.startswith(HEADER_PREFIX)]
            if bad:
                raise ValueError(f"unknown acct record fields: {', '.join(bad)}")
        self._columns = csv_columns(self._fields_by_type)
        self._header_names = tuple(c for c in self._columns if c.startswith(HEADER_PREFIX))
        self._header = b"" if self._json else _encode(csv_header(self._columns))
        self._read_events = read_events
        self._start_position = start_position
        self._from_pair = position_from_pair or cast(Callable[[int, int], P], lambda s, o: (s, o))
        self._journal_end = journal_end
        self._on_position = on_position
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._sync = sync
        self._max_size = max_size
        self._move_interval = move_interval
        self._delete_after = delete_after
        # Seconds between the starts of two catch-ups. Each catch-up ends in a checkpoint
        # (fsync, rename, directory fsync); under load the journal commits hundreds of
        # times a second, and a checkpoint per commit made acct files the biggest fsync
        # cost of the server. Exactly-once does not depend on it: lines past the last
        # checkpoint are cut and rewritten after a crash.
        self.min_interval = min_interval
        # File state, touched only by the operation holding `_lock`.
        self._position = start_position
        self._size = 0
        self._lock = defer.DeferredLock()
        self._waiters: list[defer.Deferred[None]] = []
        self._catching_up = False
        self._last_run = float("-inf")
        self._started = False
        self._timer: DelayedCall | None = None
        self._retry: DelayedCall | None = None
        self._found_end = found_end
        self._resync = resync
        # What monitoring reads (`status()`).
        self.errors = 0  # failed catch-ups since start
        self.last_error = ""
        self.failing = False  # the last catch-up failed: records are not being written
        self.journal_truncations = 0  # positions found past the journal's end, resynced
        self.journal_lost_bytes = 0  # journal bytes skipped by those (a lower bound)

    def status(self) -> dict[str, Any]:
        """The writer's health: position, failures, journal damage seen (for monitoring)."""
        segment, offset = position_pair(self._position)
        return {
            "acct_file": self.path,
            "position": _show((segment, offset)),
            "failing": self.failing,
            "errors": self.errors,
            "last_error": self.last_error,
            "journal_truncations": self.journal_truncations,
            "journal_lost_bytes": self.journal_lost_bytes,
        }

    # -- reactor side -------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Recover the file from its checkpoint, start the rotation timer, catch up."""
        self._started = True
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        now = self._clock.seconds()
        position = await self._locked(partial(self._recover, now))
        if self._on_position is not None:
            self._on_position(position)
        if self._move_interval:
            self._timer = self._clock.callLater(self._move_interval, self._tick)
        await self.catch_up()

    def catch_up(self) -> defer.Deferred[None]:
        """Write the records of every event up to the journal's end, then checkpoint.

        Calls are serialised: calls made while one runs share exactly one more run.
        The Deferred never fails; a failure is logged and retried after `retry_delay`.
        """
        if not self._started:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        if not self._catching_up:
            self._catching_up = True
            defer.Deferred.fromCoroutine(self._catch_up_loop())
        return d

    async def _catch_up_loop(self) -> None:
        try:
            while self._waiters:
                wait = self._last_run + self.min_interval - self._clock.seconds()
                if wait > 0:
                    await task.deferLater(self._clock, wait)  # type: ignore[arg-type]
                self._last_run = self._clock.seconds()
                waiters, self._waiters = self._waiters, []
                await self._catch_up_once()
                for d in waiters:
                    d.callback(None)
        finally:
            self._catching_up = False

    async def _catch_up_once(self) -> None:
        end = self._journal_end() if self._journal_end is not None else None
        now = self._clock.seconds()
        try:
            position = await self._locked(partial(self._catch_up_in_thread, end, now))
        except Exception as exc:
            self.errors += 1
            self.failing = True
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self.log.failure("acct file {path}: catch-up failed; records are not being "
                             "written until it succeeds", path=self.path)  # fmt: skip
            if self._started and (self._retry is None or not self._retry.active()):
                self._retry = self._clock.callLater(self.retry_delay, self.catch_up)
            return
        self.failing = False
        if position is not None and self._on_position is not None:
            self._on_position(position)

    def rotate(self) -> defer.Deferred[None]:
        """Rename the file to `<name>-<YYYYMMDDHHMMSS><suffix>` and start a new one.

        A file holding no record (at most a header row) is left alone, so an idle
        writer does not fill the directory with empty files. Errors fail the Deferred.
        """
        now = self._clock.seconds()
        return self._locked(partial(self._rotate_in_thread, now, False))

    def _tick(self) -> None:
        """The `move-interval` timer: rotate, drop old files, and re-arm."""
        d = self.rotate()
        d.addErrback(lambda f: self.log.failure("acct file {path}: rotation failed", f))
        if self._started and self._move_interval:
            self._timer = self._clock.callLater(self._move_interval, self._tick)

    def stop(self) -> defer.Deferred[None]:
        """Stop the timers and wait for the operation in progress to finish."""
        self._started = False
        for call in (self._timer, self._retry):
            if call is not None and call.active():
                call.cancel()
        return self._locked(lambda: None)

    def _locked(self, f: Callable[[], T]) -> defer.Deferred[T]:
        """Run blocking `f` in a thread while holding the writer's lock."""
        return self._lock.run(self._run_in_thread, f)

    # -- worker-thread side: blocking file work, serialised by `_lock` -------------

    def _save(self, size: int, rotated_to: str | None = None) -> None:
        pair = position_pair(self._position)
        name = os.path.basename(self.path)
        save_checkpoint(self._ckpt_path, Checkpoint(name, pair, size, rotated_to))

    def _join(self, name: str) -> str:
        """A rotated file's path (in `move-to`'s directory when one is set)."""
        return os.path.join(self._rotated_dir, name)

    def _recover(self, now: float) -> P:
        """Make the file match its checkpoint and return the position to read from."""
        ckpt = load_checkpoint(self._ckpt_path)
        if ckpt is None:
            self._position = self._start_position
            if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
                aside = rotated_name(self.path, now, lambda n: os.path.exists(self._join(n)))
                self.log.warn("acct file {path} has no checkpoint: moved to {aside}",
                              path=self.path, aside=aside)  # fmt: skip
                shutil.move(self.path, self._join(aside))
            self._save(0)
            self._start_file()
        elif ckpt.rotated_to is not None:
            self._position = self._from_pair(*ckpt.position)
            self._finish_rotation(ckpt.rotated_to)
            self._check_found_end()
        else:
            self._position = self._from_pair(*ckpt.position)
            self._size = ckpt.size
            if self._size == 0:
                self._start_file()
            else:
                with self._open():  # truncates what was written after the checkpoint
                    pass
                if not self._json and not self._header_matches():
                    self._rotate_in_thread(now, True)
            self._check_found_end()
        self._delete_expired(now)
        return self._position

    def _check_found_end(self) -> None:
        """A checkpoint past the journal's end at start-up: the journal was cut. Say so
        loudly, count it, and resume from the surviving records (the end), for good."""
        if self._found_end is None:
            return
        saved, end = position_pair(self._position), position_pair(self._found_end)
        if saved <= end:
            return
        lost = saved[1] - end[1] if saved[0] == end[0] else saved[1]
        self._skipped(self._found_end, lost)
        self.log.critical(
            "acct file {path}: its checkpoint is at journal position {saved} but the "
            "journal was truncated and ends at {end}: at least {lost} journal bytes are "
            "lost (disk fault or operator error); accounting resumes from the surviving "
            "records at {end}",
            path=self.path, saved=_show(saved), end=_show(end), lost=lost,
        )  # fmt: skip
        self._save(self._size)

    def _skipped(self, position: P, lost: int) -> None:
        self._position = position
        self.journal_truncations += 1
        self.journal_lost_bytes += max(lost, 0)

    def _header_matches(self) -> bool:
        with open(self.path, "rb") as f:
            return f.readline() == self._header

    def _open(self) -> IO[bytes]:
        """The acct file opened for writing at `_size`, cutting anything after it."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, self._mode)
        os.fchmod(fd, self._mode)
        f = os.fdopen(fd, "wb")
        actual = os.fstat(fd).st_size
        if actual > self._size:
            f.truncate(self._size)
        elif actual < self._size:
            self.log.error("acct file {path} is shorter than its checkpoint ({actual} < "
                           "{size} bytes): records were lost (use `sync yes`)",
                           path=self.path, actual=actual, size=self._size)  # fmt: skip
            self._size = actual
        if self._size == 0 and self._header:
            f.write(self._header)
            self._size = len(self._header)
        f.seek(self._size)
        return f

    def _start_file(self) -> None:
        """Create (or empty) the acct file, write its header, and checkpoint that."""
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, self._mode)
        os.fchmod(fd, self._mode)
        with os.fdopen(fd, "wb") as f:
            f.write(self._header)
            f.flush()
            if self._sync:
                os.fsync(f.fileno())
        self._size = len(self._header)
        self._save(self._size)

    def _finish_rotation(self, rotated_to: str) -> None:
        target = self._join(rotated_to)
        if os.path.exists(self.path) and not os.path.exists(target):
            shutil.move(self.path, target)  # a rename, or a copy to another filesystem
        self._start_file()

    def _rotate_in_thread(self, now: float, force: bool) -> None:
        if force or self._size > len(self._header):
            name = rotated_name(self.path, now, lambda n: os.path.exists(self._join(n)))
            self._save(0, rotated_to=name)  # recovery finishes a rotation cut short
            self._finish_rotation(name)
            self.log.info("acct file {path} rotated to {name}", path=self.path, name=name)
        self._delete_expired(now)

    def _delete_expired(self, now: float) -> None:
        if self._delete_after is None:
            return
        names = os.listdir(self._rotated_dir)
        for name in expired_files(self.path, names, now, self._delete_after):
            os.remove(self._join(name))
            self.log.info("acct file {name} deleted (delete-after)", name=name)

    def _lines(self, events: Iterable[tuple[P, Event]]) -> Iterator[tuple[P, bytes]]:
        """Each event's position with the encoded lines of its selected records."""
        for position, event in events:
            lines = []
            for record in records_from_event(event, self._header_names):
                fields = self._fields_by_type.get(record["type"])
                if fields is None:
                    continue
                if self._policy is not None:
                    record = self._policy(record)
                if self._json:
                    lines.append(json_line(record, fields))
                else:
                    lines.append(csv_line({f: record[f] for f in fields}, self._columns))
            yield position, _encode("".join(lines))

    def _catch_up_in_thread(self, end: P | None, now: float) -> P | None:
        """Append the records up to `end`; the checkpointed position, None if unmoved."""
        chunks: list[bytes] = []
        pending = 0
        reached: list[P] = []  # the position after the last event read, if any
        for position, data in self._lines(self._read_events(self._position, end)):
            chunks.append(data)
            pending += len(data)
            reached[:] = [position]
            if pending >= self.flush_bytes:
                self._commit(chunks, position, now)
                chunks, pending = [], 0
        if not reached:
            if end is not None and self._stalled(end):
                return self._catch_up_in_thread(end, now)
            return None
        self._commit(chunks, reached[0], now)
        return self._position

    def _stalled(self, end: P) -> bool:
        """Nothing was read though the journal goes on to `end`: our position is not a
        record boundary (the journal was cut and written again behind our back).
        Resynchronise at the next whole record, loudly; True if the position moved."""
        here = position_pair(self._position)
        if here >= position_pair(end):
            return False
        resume = self._resync(self._position, end) if self._resync is not None else None
        if resume is None or position_pair(resume) <= here:
            raise RuntimeError(
                f"acct writer stalled: the journal has records after position {_show(here)} "
                "but none can be read there"
            )
        there = position_pair(resume)
        lost = there[1] - here[1] if there[0] == here[0] else 0
        self._skipped(resume, lost)
        self.log.critical(
            "acct file {path}: no journal record at position {here} (the journal was cut "
            "or damaged): {lost} journal bytes skipped, accounting resumes at {there}",
            path=self.path, here=_show(here), there=_show(there), lost=lost,
        )  # fmt: skip
        self._save(self._size)
        return True

    def _commit(self, chunks: list[bytes], position: P, now: float) -> None:
        """Write `chunks`, (fsync,) then checkpoint: the order exactly-once rests on."""
        data = b"".join(chunks)
        if data:
            with self._open() as f:
                f.write(data)
                f.flush()
                if self._sync:
                    os.fsync(f.fileno())
            self._size += len(data)
        self._position = position
        self._save(self._size)
        if self._max_size is not None and self._size >= self._max_size:
            self._rotate_in_thread(now, False)
