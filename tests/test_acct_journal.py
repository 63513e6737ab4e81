"""AcctFileWriter following the real journal: positions, segment clean-up, restart."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet import task

from mtaserver.accounting.writer import AcctFileWriter
from mtaserver.events import Envelope, Outcome, Recipient
from mtaserver.spool.journal import Journal, JournalPosition, list_segments, read_events
from mtaserver.spool.testing import run_now

T0 = 1_700_000_000.0


def outcome(n: int) -> Outcome:
    env = Envelope(f"m{n}", "from@example.org", (Recipient(f"r{n}@example.com"),), T0)
    return Outcome("d", f"m{n}", (0,), T0 + n, env, dsn_status="2.0.0")


def make_writer(
    directory: str, journal: Journal, acct: Path, **options: Any
) -> AcctFileWriter[JournalPosition]:
    """A writer of `acct` following the journal in `directory` from its first segment.

    `options` are more `AcctFileWriter` arguments (`found_end`, `resync`).
    """
    return AcctFileWriter(
        str(acct),
        read_events=partial(read_events, directory),
        start_position=JournalPosition(list_segments(directory)[0], 0),
        position_from_pair=JournalPosition,
        journal_end=journal.end,
        on_position=partial(journal.set_consumer_position, "acct"),
        run_in_thread=run_now,
        clock=task.Clock(),
        **options,
    )


def test_writer_follows_real_journal_across_restart(tmp_path: Path) -> None:
    """Records follow commits, old segments go, and a restart resumes without repeats."""
    directory = str(tmp_path / "journal")
    journal = Journal(directory, run_now, segment_bytes=300)
    journal.set_oldest_live_segment(None)
    journal.add_consumer("acct")
    acct = tmp_path / "acct.csv"
    writer = make_writer(directory, journal, acct)

    def follow() -> None:
        writer.catch_up()  # never fails: errors are logged and retried

    journal.subscribe(follow)
    writer.start()
    for n in range(10):
        journal.append([outcome(n)])
    with open(acct, newline="") as f:
        assert [r["rcpt"] for r in csv.DictReader(f)] == [f"r{n}@example.com" for n in range(10)]
    assert list_segments(directory)[0] > 0  # segments the writer passed were deleted
    writer.stop()
    journal.close()

    journal = Journal(directory, run_now, segment_bytes=300)
    journal.append([outcome(10)])
    writer = make_writer(directory, journal, acct)
    writer.start()
    with open(acct, newline="") as f:
        assert [r["rcpt"] for r in csv.DictReader(f)] == [f"r{n}@example.com" for n in range(11)]
    journal.close()
