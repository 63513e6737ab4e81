"""The acct service: writers fed by the journal, at most once a second, complete at stop."""

from __future__ import annotations

from pathlib import Path

from server_process import read_acct
from twisted.internet import task

from mtaserver.accounting.service import AcctService, writer_for
from mtaserver.config.model import AcctFileSettings
from mtaserver.events import Envelope, Received, Recipient
from mtaserver.spool import Journal
from mtaserver.spool.testing import run_now


def received(n: int, now: float) -> Received:
    envelope = Envelope(f"m{n}", "s@src.test", (Recipient(f"r{n}@dst.test"),), now)
    return Received(envelope, now)


def test_records_arrive_within_a_second_and_all_by_stop(tmp_path: Path) -> None:
    """Commits in the same second share one catch-up; a clean stop writes the rest."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    journal = Journal(str(tmp_path / "spool" / "journal"), run_now)
    acct = AcctFileSettings(str(tmp_path / "acct.csv"), records=frozenset({"r"}))
    service = AcctService([writer_for(acct, journal, run_now, clock)], journal)
    service.startService()
    journal.append([received(1, clock.seconds())])
    clock.advance(1.0)
    assert [r["rcpt"] for r in read_acct(tmp_path / "acct.csv")] == ["r1@dst.test"]
    journal.append([received(2, clock.seconds())])
    journal.append([received(3, clock.seconds())])
    assert len(read_acct(tmp_path / "acct.csv")) == 1  # waiting out the interval
    clock.advance(1.0)
    assert len(read_acct(tmp_path / "acct.csv")) == 3
    journal.append([received(4, clock.seconds())])
    stopped = service.stopService()
    clock.advance(1.0)
    assert stopped.called
    assert [r["rcpt"] for r in read_acct(tmp_path / "acct.csv")][-1] == "r4@dst.test"
