"""The log file itself: lines appended off the reactor thread, rotated as PowerMTA does.

`LogFile.write` only appends bytes to a buffer on the reactor thread; a flush a
moment later (or at once when the buffer holds `FLUSH_AT` bytes) hands the whole
batch to the thread pool, which writes it with one `os.write` on a descriptor opened
with ``O_APPEND``. No fsync: the mail log is a diagnostic, not a record of anything
acknowledged (the acct files and the journal are). One I/O step runs at a time, so
lines stay in order. When the disk is slower than the log (or failing), at most
`MAX_PENDING` bytes wait; newer lines are dropped and counted, and the next write
starts with a line saying how many were lost, so memory stays bounded and the
reactor never waits.

Several processes may append to the same file (reception workers beside the master):
each appends whole lines with ``O_APPEND``, which the kernel keeps from interleaving
inside one write on a local file system. Only the *owner* (the master) rotates; every
writer compares, before each batch, the inode of the path with that of its open
descriptor and reopens when they differ, so after a rotation every process writes to
the new file within one flush (a batch that raced the rename lands at the end of
``log.1``, nothing is lost).

Rotation (`rotate_files`) is PowerMTA's: ``log.N`` -> ``log.N+1``, ``log`` -> ``log.1``,
keeping `log-rotate` files counting the current one (1: only the current, nothing
older; 0: never rotated). The owner rotates on `rotate log`, at local midnight while
`log-auto-rotation` is on, and when the file reaches `log-max-size` (checked after
each of its batches and every `SIZE_CHECK` seconds, so growth by other processes is
seen too).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.maillog.format import Stamper, format_line
from mtaserver.runtime import Clock, DelayedCall, RunInThread

log = Logger()

FLUSH_DELAY = 0.2  # seconds a line may wait for company before it is written
FLUSH_AT = 64 * 1024  # bytes that are written at once
MAX_PENDING = 8 * 2**20  # bytes waiting for the disk before lines are dropped


def rotated(path: str, n: int) -> str:
    return f"{path}.{n}"


def rotate_files(path: str, keep: int) -> bool:
    """Rotate `path` keeping `keep` files (the current one included); blocking.

    Returns whether anything moved. `keep` 0 disables rotation; 1 keeps no old file.
    Old files past `keep` (left by a larger `log-rotate` before) are removed too.
    """
    if keep <= 0:
        return False
    n = keep
    while os.path.exists(rotated(path, n)):  # leftovers of a larger log-rotate
        os.unlink(rotated(path, n))
        n += 1
    if not os.path.exists(path):
        return False
    if keep == 1:
        os.unlink(path)
        return True
    for n in range(keep - 2, 0, -1):
        if os.path.exists(rotated(path, n)):
            os.replace(rotated(path, n), rotated(path, n + 1))
    os.replace(path, rotated(path, 1))
    return True


class LogFile:
    """One process's writer of the mail log file (see the module docstring)."""

    def __init__(
        self,
        path: str,
        run_in_thread: RunInThread,
        clock: Clock,
        *,
        world_readable: bool = False,
        owner: bool = True,
        flush_delay: float = FLUSH_DELAY,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = path
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.world_readable = world_readable
        self.owner = owner
        self.flush_delay = flush_delay
        self.max_pending = max_pending
        self.keep = 8  # log-rotate
        self.max_size = 0  # log-max-size
        self.dropped = 0  # lines lost to a full buffer or a failed write, since last said
        self.lines_dropped_total = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._timer: DelayedCall | None = None
        self._busy = False
        self._rotate_waiters: list[defer.Deferred[bool]] = []
        self._flush_waiters: list[defer.Deferred[None]] = []
        self._fd: int | None = None
        self._fd_path = ""
        self._stamp = Stamper()
        self._lock = threading.Lock()  # the descriptor: one I/O step at a time
        self._failing = False
        self.closed = False

    @property
    def mode(self) -> int:
        return 0o644 if self.world_readable else 0o640

    # -- the reactor side ------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue whole lines (ending in LF) for the file; never blocks."""
        if self.closed:
            return
        if self._pending_bytes + len(data) > self.max_pending:
            self.dropped += data.count(b"\n")
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_AT:
            self._kick()
        elif self._timer is None and not self._busy:
            self._timer = self.clock.callLater(self.flush_delay, self._kick)

    def flush(self) -> defer.Deferred[None]:
        """Fires once everything written so far is in the file."""
        waiter: defer.Deferred[None] = defer.Deferred()
        self._flush_waiters.append(waiter)
        self._kick()
        return waiter

    def rotate(self) -> defer.Deferred[bool]:
        """Rotate now (after what is queued is written); fires with whether it did."""
        waiter: defer.Deferred[bool] = defer.Deferred()
        self._rotate_waiters.append(waiter)
        self._kick()
        return waiter

    def check_size(self) -> None:
        """Rotate if the file outgrew `max_size` (growth by other processes included)."""
        if self.owner and self.max_size and not self._busy:
            self._kick(check=True)

    def _kick(self, check: bool = False) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._busy:
            return  # `_done` starts the next step
        if not (self._pending or self._rotate_waiters or self._flush_waiters or check):
            return
        batch = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        if self.dropped:
            note = f"{self.dropped} line(s) dropped: the log file was slow or failing"
            batch = format_line(self._stamp(self.clock.seconds()), "maillog", note) + batch
            self.lines_dropped_total += self.dropped
            self.dropped = 0
        rotations, self._rotate_waiters = self._rotate_waiters, []
        flushes, self._flush_waiters = self._flush_waiters, []
        self._busy = True
        path = self.path
        d = self.run_in_thread(lambda: self._io(path, batch, bool(rotations)))

        def done(result: Any) -> None:
            self._busy = False
            rotated_now = False
            if isinstance(result, Failure):
                self._write_failed(str(result.value), batch)
            else:
                rotated_now = bool(result)
            for waiter in rotations:
                waiter.callback(rotated_now)
            for flushed in flushes:
                flushed.callback(None)
            if self._pending or self._rotate_waiters or self._flush_waiters:
                self._kick()

        d.addBoth(done)

    def _write_failed(self, reason: str, batch: bytes) -> None:
        self.dropped += batch.count(b"\n")
        if not self._failing:  # once per outage, not once per batch
            self._failing = True
            log.error("mail log {path} cannot be written: {reason}", path=self.path, reason=reason)

    # -- the thread side --------------------------------------------------------------

    def _io(self, path: str, batch: bytes, rotate: bool) -> bool:
        """Write `batch`, then rotate when asked or when over `max_size`; blocking."""
        with self._lock:
            self._reopen_if_moved(path)
            if batch:
                self._write_all(batch)
            self._failing = False
            did = False
            if self.owner and (rotate or self._too_big()):
                did = rotate_files(path, self.keep)
                if did:
                    self._reopen_if_moved(path)
            return did

    def _too_big(self) -> bool:
        if not self.max_size or self._fd is None:
            return False
        try:
            return os.fstat(self._fd).st_size >= self.max_size
        except FileNotFoundError:
            return False

    def _reopen_if_moved(self, path: str) -> None:
        """(Re)open `path` when it is not the file our descriptor holds (or none is open)."""
        if self._fd is not None and path == self._fd_path:
            try:
                same = os.stat(path).st_ino == os.fstat(self._fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return
        self._close_fd()
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, self.mode)
        with contextlib.suppress(OSError):  # another user's file we may append to
            os.fchmod(fd, self.mode)
        self._fd, self._fd_path = fd, path

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            finally:
                self._fd = None

    def open_now(self) -> None:
        """Open (creating) the file at once; blocking. Start-up uses it to fail early."""
        with self._lock:
            self._reopen_if_moved(self.path)

    def close_now(self) -> None:
        """Write what is left and close; blocking (after the reactor has stopped)."""
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        batch = b"".join(self._pending)
        self._pending.clear()
        with self._lock:
            try:
                if batch:
                    self._reopen_if_moved(self.path)
                    self._write_all(batch)
            except OSError as exc:
                log.error("mail log {path}: {error}", path=self.path, error=str(exc))
            finally:
                self._close_fd()


def next_midnight(now: float) -> float:
    """The next local midnight after `now` (a timestamp), for `log-auto-rotation`."""
    today = datetime.datetime.fromtimestamp(now).date()
    midnight = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time(0))
    return max(now + 1.0, midnight.timestamp())  # a naive datetime is local time
