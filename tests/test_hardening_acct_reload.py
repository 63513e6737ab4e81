"""AcctService.apply: acct files added, changed and removed by a reload, without a restart."""

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


def service_for(tmp_path: Path, clock: task.Clock) -> tuple[AcctService, Journal]:
    journal = Journal(str(tmp_path / "spool" / "journal"), run_now)

    def make(acct: AcctFileSettings):  # type: ignore[no-untyped-def]
        return writer_for(acct, journal, run_now, clock)

    first = AcctFileSettings(str(tmp_path / "a.csv"), records=frozenset({"r"}))
    service = AcctService([make(first)], journal, [first], make)
    return service, journal


def test_apply_adds_changes_and_retires_writers(tmp_path: Path) -> None:
    """A new file gets the journal's records, a changed one is reopened, a removed one closed."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    service, journal = service_for(tmp_path, clock)
    service.startService()
    journal.append([received(1, clock.seconds())])
    clock.advance(1.0)
    a = AcctFileSettings(str(tmp_path / "a.csv"), records=frozenset({"r"}))
    b = AcctFileSettings(str(tmp_path / "b.csv"), records=frozenset({"r"}))
    service.apply((a, b))
    clock.advance(1.0)
    assert [w.path for w in service.writers] == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert [r["rcpt"] for r in read_acct(tmp_path / "b.csv")] == ["r1@dst.test"]
    first_writer = service.writers[0]
    a_json_fields = AcctFileSettings(
        str(tmp_path / "a.csv"), records=frozenset({"r"}), record_fields=(("r", ("type", "rcpt")),)
    )
    service.apply((a_json_fields,))  # a.csv changed, b.csv removed
    clock.advance(1.0)
    assert [w.path for w in service.writers] == [str(tmp_path / "a.csv")]
    assert service.writers[0] is not first_writer
    assert f"acct:{tmp_path / 'b.csv'}" not in journal._consumers
    journal.append([received(2, clock.seconds())])
    clock.advance(1.0)
    assert [r["rcpt"] for r in read_acct(tmp_path / "b.csv")] == ["r1@dst.test"]
    rows = read_acct(tmp_path / "a.csv")
    assert rows[-1] == {"type": "r", "rcpt": "r2@dst.test"}
    stopped = service.stopService()
    clock.advance(1.0)
    assert stopped.called


def test_apply_keeps_a_writer_whose_settings_did_not_change(tmp_path: Path) -> None:
    """Reloading the same <acct-file> keeps its writer (no reopen, no checkpoint churn)."""
    clock = task.Clock()
    clock.advance(1_700_000_000)
    service, _ = service_for(tmp_path, clock)
    service.startService()
    writer = service.writers[0]
    service.apply((AcctFileSettings(str(tmp_path / "a.csv"), records=frozenset({"r"})),))
    clock.advance(1.0)
    assert service.writers == [writer]
    service.stopService()
    clock.advance(1.0)


def test_every_restart_only_directive_can_be_compared(tmp_path: Path) -> None:
    """restart_only_changes can read each RESTART_ONLY directive (no KeyError at reload)."""
    from mtaserver.config import registry as reg
    from mtaserver.config.reload import ConfigHolder, directive_value, restart_only_changes

    path = tmp_path / "m.conf"
    path.write_text(f"spool {tmp_path}/one\n")
    old = ConfigHolder.from_file(str(path)).config
    for name in reg.RESTART_ONLY:
        directive_value(old, name)
    path.write_text(f"spool {tmp_path}/two\n")
    new = ConfigHolder.from_file(str(path)).config
    assert restart_only_changes(old, new) == ["spool"]
    assert restart_only_changes(old, old) == []
