"""Durable file replacement: the one atomic write every writer of state files uses.

A crash at any point leaves either the old file or the new one, never a torn mix:
the data goes to a temporary name in the same directory, is fsynced, renamed over
the target, and the directory is fsynced so the rename itself survives power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable


def fsync_directory(directory: str) -> None:
    """Make a rename, create or unlink in `directory` durable."""
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate_durably(path: str, length: int, fsync: Callable[[int], None] = os.fsync) -> None:
    """Cut `path` to `length` bytes and fsync it (blocking): a torn tail found at
    recovery stays gone after a crash, so later appends never follow its garbage.

    `fsync` is the journal's injectable one in its crash tests.
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str,
    data: bytes | str | Iterable[bytes],
    *,
    temporary: str | None = None,
    permissions: int | None = None,
    mtime: float | None = None,
    make_directory: bool = False,
) -> None:
    """Replace `path` with `data` atomically and durably.

    `temporary` names the temporary file (default: a unique hidden name next to
    `path`); `permissions` sets its mode (default: keep the mode of an existing
    `path`, else 0600 for a unique temporary, 0666 less the umask for a named
    one); `mtime` sets access and modification time before the rename, for stores
    that prune by file age.
    """
    directory = os.path.dirname(path) or "."
    if make_directory:
        os.makedirs(directory, exist_ok=True)
    if temporary is None:
        fd, temporary = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
    else:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            if isinstance(data, str):
                stream.write(data.encode("utf-8"))
            elif isinstance(data, bytes | bytearray | memoryview):
                stream.write(data)
            else:
                for chunk in data:
                    stream.write(chunk)
            stream.flush()
            if permissions is not None:
                os.fchmod(stream.fileno(), permissions)
            elif os.path.exists(path):
                os.fchmod(stream.fileno(), os.stat(path).st_mode & 0o7777)
            if mtime is not None:
                os.utime(stream.fileno(), (mtime, mtime))
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    fsync_directory(directory)
