"""Hardening of accounting: a truncated journal must not stop acct files silently.

The issue's case: the journal was cut (disk fault, operator error) between two runs;
the acct writer's checkpoint pointed past the journal's new end, so after the restart
thousands of messages were delivered and `acct.csv` got no line, with no error.
"""

from __future__ import annotations

import csv
import json
import os
import smtplib
import urllib.parse
import urllib.request
from functools import partial
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, free_port, wait_until
from test_acct_journal import make_writer, outcome

from mtaserver.accounting.writer import AcctFileWriter
from mtaserver.spool.journal import (
    Journal,
    JournalPosition,
    frame,
    list_segments,
    next_record,
    segment_path,
)
from mtaserver.spool.testing import run_now


def delivered(acct: Path) -> list[str]:
    if not acct.exists():
        return []
    with open(acct, newline="") as f:
        return [row["rcpt"] for row in csv.DictReader(f) if row["type"] == "d"]


def send(port: int, start: int, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for i in range(start, start + count):
            client.sendmail("a@src.test", [f"u{i}@dst.test"], f"Subject: {i}\r\n\r\nx\r\n")


def config(tmp_path: Path, smtp: int, mgmt: int) -> str:
    return f"""
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{smtp}
http-mgmt-port 127.0.0.1:{mgmt}
http-access 127.0.0.1 monitor
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file {tmp_path}/acct.csv>
    records d
</acct-file>
<domain *>
    type discard
</domain>
"""


show_status = urllib.parse.urlencode({"command": "show status", "format": "json"}).encode()


def fetch(url: str, data: bytes | None = None) -> str:
    with urllib.request.urlopen(url, data=data, timeout=10) as answer:
        return str(answer.read().decode())


def truncate_journal(tmp_path: Path, keep: int) -> int:
    """Cut the newest journal segment to `keep` bytes; return the bytes cut."""
    directory = str(tmp_path / "spool" / "journal")
    path = segment_path(directory, list_segments(directory)[-1])
    size = os.path.getsize(path)
    os.truncate(path, keep)
    return size - keep


def test_acct_file_keeps_growing_after_the_journal_was_truncated(tmp_path: Path) -> None:
    """Journal cut between runs: the error is logged, counted, and acct.csv grows again."""
    smtp, mgmt = free_port(), free_port()
    acct = tmp_path / "acct.csv"
    server = ServerProcess(tmp_path, config(tmp_path, smtp, mgmt), wait_ports=(smtp, mgmt))
    with server:
        send(smtp, 0, 30)
        assert wait_until(lambda: len(delivered(acct)) == 30)
    cut = truncate_journal(tmp_path, 1000)
    assert cut > 0
    with server:
        send(smtp, 100, 20)
        assert wait_until(lambda: len(delivered(acct)) >= 50, timeout=60), server.read_log()
        log = server.read_log()
        metrics = fetch(f"http://127.0.0.1:{mgmt}/metrics")
        status = json.loads(fetch(f"http://127.0.0.1:{mgmt}/command", show_status))
    assert {f"u{i}@dst.test" for i in range(100, 120)} <= set(delivered(acct))
    assert "journal was truncated" in log
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples["mtaserver_acct_journal_truncations_total"] == 1
    assert samples["mtaserver_acct_journal_lost_bytes_total"] > 0
    assert samples["mtaserver_acct_writer_failing"] == 0
    (entry,) = status["data"]["acct"]
    assert entry["journal_truncations"] == 1 and entry["journal_lost_bytes"] > 0


# -- the journal and the writer at the API level ------------------------------------------


def api_writer(directory: str, journal: Journal, acct: Path) -> AcctFileWriter[JournalPosition]:
    """`make_writer` that also follows a journal cut under it (`found_end`, `resync`)."""
    return make_writer(
        directory,
        journal,
        acct,
        found_end=journal.found_end,
        resync=partial(next_record, directory),
    )


def rcpts(acct: Path) -> list[str]:
    with open(acct, newline="") as f:
        return [r["rcpt"] for r in csv.DictReader(f)]


def test_checkpoint_past_a_cut_journal_resumes_at_the_surviving_end(tmp_path: Path) -> None:
    """Cut between runs, then written past the old checkpoint: every new record is written."""
    directory = str(tmp_path / "journal")
    acct = tmp_path / "acct.csv"
    journal = Journal(directory, run_now)
    positions = [journal.append([outcome(n)]).result for n in range(10)]
    writer = api_writer(directory, journal, acct)
    writer.start()
    assert len(rcpts(acct)) == 10
    writer.stop()
    journal.close()

    os.truncate(segment_path(directory, 0), positions[2].offset)  # records 3.. are gone
    journal = Journal(directory, run_now)
    for n in range(10, 30):  # the end moves past the old checkpoint before the writer starts
        journal.append([outcome(n)])
    assert journal.end() > positions[-1]
    writer = api_writer(directory, journal, acct)
    writer.start()
    expected = [f"r{n}@example.com" for n in (*range(10), *range(10, 30))]
    assert rcpts(acct) == expected
    status = writer.status()
    assert status["journal_truncations"] == 1
    assert status["journal_lost_bytes"] == positions[-1].offset - positions[2].offset
    assert not status["failing"]
    journal.close()


def test_writer_resyncs_when_the_journal_is_cut_under_it(tmp_path: Path) -> None:
    """Records it had not read cut from under it: it resumes at the next record, counted."""
    directory = str(tmp_path / "journal")
    acct = tmp_path / "acct.csv"
    journal = Journal(directory, run_now)
    writer = api_writer(directory, journal, acct)
    writer.start()
    for n in range(5):
        journal.append([outcome(n)])
    writer.catch_up()
    assert len(rcpts(acct)) == 5
    before = journal.end()
    for n in range(5, 8):  # committed, not yet read by the writer...
        journal.append([outcome(n)])
    cut_at = journal.end()
    os.truncate(segment_path(directory, 0), 10)  # ...and cut: they read as zeros now
    journal.append([outcome(8)])
    writer.catch_up()
    assert rcpts(acct)[-2:] == ["r4@example.com", "r8@example.com"]
    journal.append([outcome(9)])
    writer.catch_up()
    assert rcpts(acct)[-1] == "r9@example.com"
    status = writer.status()
    assert status["journal_truncations"] == 1
    assert status["journal_lost_bytes"] == cut_at.offset - before.offset
    journal.close()


def test_next_record_finds_the_first_whole_record_after_garbage(tmp_path: Path) -> None:
    """`next_record` skips bytes that are no record and stops at a valid frame."""
    directory = tmp_path / "journal"
    directory.mkdir()
    first, second = frame(outcome(1)), frame(outcome(2))
    data = b"\0" * 7 + b"MJR1garbage" + first + second
    (directory / "0000000000000000.jnl").write_bytes(data)
    end = JournalPosition(0, len(data))
    found = next_record(str(directory), JournalPosition(0, 0), end)
    assert found == JournalPosition(0, 18)
    found = next_record(str(directory), JournalPosition(0, 19), end)
    assert found == JournalPosition(0, 18 + len(first))
    assert next_record(str(directory), JournalPosition(0, len(data) - 3), end) is None
