"""The few system calls the spool makes durable data with, injectable for tests.

Fault-injection tests (disk full, EIO) replace `write` or `fsync` here rather than
patching `os`, so the code under test runs unchanged and the fault is precise.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import attrs


def _fdatasync(fd: int) -> None:
    # fdatasync is enough for a file we just wrote: it flushes the data and the
    # metadata needed to read it back (size, blocks), and skips mtime.
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


@attrs.frozen
class FileOps:
    """`os.write`, `os.fsync`, fdatasync and free-space lookup, swappable as a unit."""

    write: Callable[[int, memoryview], int] = os.write
    fsync: Callable[[int], None] = os.fsync
    fdatasync: Callable[[int], None] = _fdatasync
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs

    def write_all(self, fd: int, data: bytes | memoryview) -> None:
        """Write all of `data`, looping over short writes."""
        view = memoryview(data)
        while view:
            view = view[self.write(fd, view) :]

    def fsync_dir(self, path: str) -> None:
        """fsync a directory, so the names created or removed in it are durable."""
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self.fsync(fd)
        finally:
            os.close(fd)

    def free_bytes(self, path: str) -> int:
        """Bytes available to an unprivileged user on `path`'s filesystem."""
        st = self.statvfs(path)
        return st.f_bavail * st.f_frsize


REAL_FILE_OPS = FileOps()
