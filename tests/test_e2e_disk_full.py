"""Disk full, for real: the spool on a tiny tmpfs, the real server, smtplib.

A full disk must give `452 4.3.1` (try later), never a 5xx, and must never leave a
torn message file that recovery would take for a complete one.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess, free_port

from mtaserver.spool import recover


@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(spool)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_full_disk_gives_452_and_no_torn_file(tmp_path: Path, tiny_spool: Path) -> None:
    """Filling the spool's filesystem gets 452 4.3.1 and every spooled file is whole."""
    port = free_port()
    conf = f"""
spool {tiny_spool}
smtp-listener 127.0.0.1:{port}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain *>
    smtp-hosts [127.0.0.1]:{free_port()}
    retry-after 1h
</domain>
"""
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 200  # about 200 KB
    replies: list[int] = []
    accepted = 0
    with (
        ServerProcess(tmp_path, conf, wait_ports=(port,)),
        smtplib.SMTP("127.0.0.1", port, timeout=30) as client,
    ):
        for _ in range(40):
            try:
                client.sendmail("s@src.test", ["r@dst.test"], body)
                accepted += 1
            except smtplib.SMTPResponseException as exc:
                replies.append(exc.smtp_code)
                assert exc.smtp_code == 452, exc.smtp_error
                assert exc.smtp_error.startswith(b"4.3.1"), exc.smtp_error
                break
    assert replies == [452]
    assert 3 <= accepted < 40
    found = recover(str(tiny_spool))
    assert found.corrupt == ()
    assert len(found.messages) == accepted
    leftovers = [n for _, _, names in os.walk(tiny_spool / "msg") for n in names if ".tmp" in n]
    assert leftovers == []
