"""The one atomic write: whole old file or whole new file, never a torn one or a leftover."""

from __future__ import annotations

import os
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_configs import domain, relay_config
from server_process import ServerProcess, free_port, wait_until

from mtaserver.fsutil import atomic_write


def test_atomic_write_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    """A replaced file keeps its permissions; a new one from a unique temporary is 0600."""
    path = tmp_path / "state.json"
    atomic_write(str(path), "one")
    assert path.read_text() == "one" and path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    atomic_write(str(path), b"two")
    assert path.read_bytes() == b"two" and path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_sets_time_and_permissions(tmp_path: Path) -> None:
    """`mtime` and `permissions` are applied before the rename; chunks are concatenated."""
    path = tmp_path / "sub" / "record"
    atomic_write(str(path), [b"a", b"b"], permissions=0o600, mtime=1_000_000.0, make_directory=True)
    assert path.read_bytes() == b"ab"
    assert path.stat().st_mtime == 1_000_000.0 and path.stat().st_mode & 0o777 == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    """An error while writing keeps the previous content and removes the temporary."""
    path = tmp_path / "state"
    atomic_write(str(path), "old")

    def chunks() -> Iterator[bytes]:
        yield b"new"
        raise OSError(28, "No space left on device")

    for temporary in (None, str(path) + ".tmp"):
        with pytest.raises(OSError):
            atomic_write(str(path), chunks(), temporary=temporary)
        assert path.read_text() == "old"
        assert os.listdir(tmp_path) == ["state"]


def test_type_file_writes_the_message_whole(tmp_path: Path) -> None:
    """`type file` leaves <msg_id>.eml with Return-Path and the body, and no temporary."""
    port = free_port()
    out = tmp_path / "out"
    config = relay_config(
        tmp_path,
        port,
        domain(f"type file\nfile-output-directory {out}"),
        settings="host-name mta.test",
        identity=False,
    )
    with ServerProcess(tmp_path, config, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("s@src.test", ["r@dst.test"], b"Subject: f\r\n\r\nfile body\r\n")
        assert wait_until(lambda: out.exists() and any(out.iterdir()))
        assert wait_until(lambda: all(p.suffix == ".eml" for p in out.iterdir()))
    (written,) = out.iterdir()
    data = written.read_bytes()
    assert data.startswith(b"Return-Path: <s@src.test>\r\nX-Delivered-To: r@dst.test\r\n")
    assert data.endswith(b"file body\r\n")
