"""AcctFileWriter: files, field selection, rotation, and exactly-once across crashes."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from server_process import read_acct
from twisted.internet import defer, task

from mtaserver.accounting.checkpoint import checkpoint_path, load_checkpoint
from mtaserver.accounting.records import FIELDS
from mtaserver.accounting.writer import AcctFileWriter
from mtaserver.events import Envelope, Event, Outcome, QueueFailure, Received, Recipient
from mtaserver.spool.testing import run_now

T = TypeVar("T")
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
Pos = tuple[int, int]


class FakeJournal:
    """A list-backed event source: event i ends at position (0, i + 1)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.reads = 0

    def append(self, *events: Event) -> None:
        self.events.extend(events)

    def end(self) -> Pos:
        return (0, len(self.events))

    def read_events(self, start: Pos, end: Pos | None) -> Iterator[tuple[Pos, Event]]:
        self.reads += 1
        stop = len(self.events) if end is None else end[1]
        for i in range(start[1], stop):
            yield (0, i + 1), self.events[i]


def envelope(msg_id: str, n: int = 3, **kw: Any) -> Envelope:
    rcpts = tuple(Recipient(f"r{i}-{msg_id}@example.com") for i in range(n))
    return Envelope(
        msg_id=msg_id,
        sender="from@example.org",
        recipients=rcpts,
        time_queued=T0,
        src_mta="client (192.0.2.1)",
        acct_headers={"X-Campaign": f"camp-{msg_id}"},
        **kw,
    )


def received(msg_id: str, n: int = 3) -> Received:
    return Received(envelope(msg_id, n), T0 + 1)


def delivered(msg_id: str, record: str = "d", n: int = 3) -> Outcome:
    idx = tuple(range(n))
    env = envelope(msg_id, n)
    return Outcome(record, msg_id, idx, T0 + 10, env, dsn_status="2.0.0", dsn_diag="250 ok")


class Harness:
    """A writer on a tmp_path file with a fake journal and a fake clock."""

    def __init__(self, tmp_path: Path, name: str = "acct.csv") -> None:
        self.path = tmp_path / name
        self.journal = FakeJournal()
        self.clock = task.Clock()
        self.clock.advance(T0)
        self.positions: list[Pos] = []

    def writer(self, **kw: Any) -> AcctFileWriter[Pos]:
        return AcctFileWriter(
            str(self.path),
            read_events=self.journal.read_events,
            start_position=(0, 0),
            run_in_thread=run_now,
            clock=self.clock,
            journal_end=self.journal.end,
            on_position=self.positions.append,
            **kw,
        )

    def started(self, **kw: Any) -> AcctFileWriter[Pos]:
        w = self.writer(**kw)
        done = w.start()
        assert done.called
        return w


def json_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def rotated(path: Path) -> list[Path]:
    stem, suffix = os.path.splitext(path.name)
    return sorted(p for p in path.parent.glob(f"{stem}-*{suffix}"))


def test_r_records_in_csv(tmp_path: Path) -> None:
    """A Received with 3 recipients gives 3 `r` rows after a header row."""
    h = Harness(tmp_path)
    h.journal.append(received("m1"))
    h.started(records=frozenset({"r"}))
    assert h.path.read_text().splitlines()[0] == ",".join(FIELDS)
    got = read_acct(h.path)
    assert [r["type"] for r in got] == ["r", "r", "r"]
    assert [r["rcpt"] for r in got] == [f"r{i}-m1@example.com" for i in range(3)]
    assert got[0]["timeLogged"] == "2023-11-14 22:13:21+0000"
    assert got[0]["srcMta"] == "client (192.0.2.1)"
    assert h.positions[-1] == (0, 1)


def test_r_records_in_json_lines(tmp_path: Path) -> None:
    """A `.json` acct file holds one JSON object per record and no header."""
    h = Harness(tmp_path, "acct.json")
    h.journal.append(received("m1"))
    h.started(records=frozenset({"r"}))
    got = json_rows(h.path)
    assert [r["rcpt"] for r in got] == [f"r{i}-m1@example.com" for i in range(3)]
    assert set(got[0]) == set(FIELDS)


def test_record_types_filter(tmp_path: Path) -> None:
    """By default only d and b records are written; r, t and tq are skipped."""
    h = Harness(tmp_path)
    h.journal.append(
        received("m1", 1),
        delivered("m1", "t", 1),
        QueueFailure("example.com", T0, dsn_status="4.4.1"),
        delivered("m1", "d", 1),
        delivered("m2", "b", 1),
    )
    h.started()
    assert [r["type"] for r in read_acct(h.path)] == ["d", "b"]


def test_record_fields_and_star(tmp_path: Path) -> None:
    """record-fields selects per type, `*` sets the default; CSV columns are the union."""
    h = Harness(tmp_path, "acct.json")
    h.journal.append(received("m1", 1), delivered("m1", "d", 1))
    fields = {"d": ("type", "rcpt", "dsnStatus"), "*": ("type", "orig")}
    h.started(records=frozenset({"r", "d"}), record_fields=fields)
    r, d = json_rows(h.path)
    assert list(r) == ["type", "orig"]
    assert d == {"type": "d", "rcpt": "r0-m1@example.com", "dsnStatus": "2.0.0 (success)"}

    h2 = Harness(tmp_path / "csv")
    (tmp_path / "csv").mkdir()
    h2.journal.append(received("m1", 1), delivered("m1", "d", 1))
    h2.started(records=frozenset({"r", "d"}), record_fields=fields)
    assert h2.path.read_text().splitlines()[0] == "type,orig,rcpt,dsnStatus"
    assert read_acct(h2.path) == [
        {"type": "r", "orig": "from@example.org", "rcpt": "", "dsnStatus": ""},
        {"type": "d", "orig": "", "rcpt": "r0-m1@example.com", "dsnStatus": "2.0.0 (success)"},
    ]


def test_header_fields(tmp_path: Path) -> None:
    """map-header-to-field adds `header_X` filled from the envelope's headers."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1", "d", 1))
    h.started(record_fields={"*": ("type", "rcpt")}, header_fields=("x-campaign",))
    assert read_acct(h.path) == [
        {"type": "d", "rcpt": "r0-m1@example.com", "header_x-campaign": "camp-m1"}
    ]


def test_unknown_type_or_field_is_an_error(tmp_path: Path) -> None:
    """A typo in records or record-fields fails at construction."""
    h = Harness(tmp_path)
    with pytest.raises(ValueError, match="types"):
        h.writer(records=frozenset({"x"}))
    with pytest.raises(ValueError, match="fields"):
        h.writer(record_fields={"d": ("rcpt", "nope")})


def test_catch_up_appends_only_new_events(tmp_path: Path) -> None:
    """Each catch-up writes the events since the last one and reports the position."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    w = h.started()
    h.journal.append(delivered("m2"))
    w.catch_up()
    assert [r["rcpt"][3:] for r in read_acct(h.path)] == ["m1@example.com"] * 3 + [
        "m2@example.com"
    ] * 3
    assert h.positions[-1] == (0, 2)
    assert load_checkpoint(checkpoint_path(str(h.path))).position == (0, 2)  # type: ignore[union-attr]


def test_catch_up_calls_coalesce(tmp_path: Path) -> None:
    """Calls made while a catch-up runs share exactly one more run."""
    h = Harness(tmp_path)
    pending: list[defer.Deferred[Any]] = []

    def run_later(f: Callable[[], T]) -> defer.Deferred[T]:
        d: defer.Deferred[T] = defer.Deferred()
        pending.append(d)
        d.addCallback(lambda _: f())
        return d

    w = AcctFileWriter(
        str(h.path),
        read_events=h.journal.read_events,
        start_position=(0, 0),
        run_in_thread=run_later,
        clock=h.clock,
    )
    w.start()
    pending.pop(0).callback(None)  # recovery
    first = w.catch_up()  # start()'s own catch-up is already queued; this joins the next
    h.journal.append(delivered("m1"))
    calls = [w.catch_up() for _ in range(3)]
    while pending:
        pending.pop(0).callback(None)
    assert first.called and all(c.called for c in calls)
    assert h.journal.reads == 2
    assert len(read_acct(h.path)) == 3


def test_rotation_by_size(tmp_path: Path) -> None:
    """Past max-size the file is renamed with a timestamp and a fresh one started."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    w = h.started(max_size=200)
    (old,) = rotated(h.path)
    assert old.name == "acct-20231114221320.csv"
    assert len(read_acct(old)) == 3
    assert h.path.read_text() == ",".join(FIELDS) + "\n"
    h.journal.append(delivered("m2"))
    w.catch_up()
    assert {p.name for p in rotated(h.path)} == {
        "acct-20231114221320.csv",
        "acct-20231114221320-1.csv",
    }


def test_rotation_by_interval(tmp_path: Path) -> None:
    """move-interval rotates on the clock; a file with no records is left alone."""
    h = Harness(tmp_path, "acct.json")
    w = h.started(move_interval=3600)
    h.clock.advance(3600)
    assert rotated(h.path) == []
    h.journal.append(delivered("m1"))
    w.catch_up()
    h.clock.advance(3600)
    (old,) = rotated(h.path)
    assert old.name == "acct-20231115001320.json"
    assert len(json_rows(old)) == 3
    assert h.path.read_bytes() == b""
    w.stop()
    assert not h.clock.getDelayedCalls()


def test_explicit_rotate(tmp_path: Path) -> None:
    """rotate() (mtactl rotate acct) moves the current file aside."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    w = h.started()
    w.rotate()
    assert len(rotated(h.path)) == 1
    assert read_acct(h.path) == []


def test_delete_after(tmp_path: Path) -> None:
    """Rotated files older than delete-after are removed; others and strangers stay."""
    h = Harness(tmp_path)
    for name in ("acct-20231101000000.csv", "acct-20231114000000.csv", "other-2023.csv"):
        (tmp_path / name).write_text("x\n")
    h.started(move_interval=3600, delete_after=2 * 86400)
    names = sorted(os.listdir(tmp_path))
    assert "acct-20231101000000.csv" not in names
    assert "acct-20231114000000.csv" in names and "other-2023.csv" in names
    h.clock.advance(86400)
    assert "acct-20231114000000.csv" in os.listdir(tmp_path)
    h.clock.advance(86400)
    assert "acct-20231114000000.csv" not in os.listdir(tmp_path)


def crash_before_checkpoint(w: AcctFileWriter[Pos], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the writer die (as with kill -9) right after writing, before checkpointing."""

    def die(*args: Any, **kw: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(w, "_save", die)


@pytest.mark.parametrize("name", ["acct.csv", "acct.json"])
def test_exactly_once_after_crash(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines written after the last checkpoint are cut and rewritten: none lost or doubled."""
    h = Harness(tmp_path, name)
    h.journal.append(delivered("m1"))
    w = h.started()
    h.journal.append(delivered("m2"), delivered("m3", "b"))
    crash_before_checkpoint(w, monkeypatch)
    w.catch_up()
    assert h.path.read_text().count("m3@") == 3  # the lines did reach the file
    h.journal.append(delivered("m4"))
    h.started()  # the restarted process
    read = json_rows if name.endswith(".json") else read_acct
    got = [r["rcpt"] for r in read(h.path)]
    expected = [f"r{i}-m{m}@example.com" for m in range(1, 5) for i in range(3)]
    assert got == expected


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    """A partial line left by a crash is removed before writing resumes."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    h.started()
    with open(h.path, "ab") as f:
        f.write(b'd,2023-11-14 22:13:30+0000,"torn')
    h.journal.append(delivered("m2"))
    h.started()
    got = read_acct(h.path)
    assert len(got) == 6 and all(r["type"] == "d" for r in got)
    assert "torn" not in h.path.read_text()


def test_crash_during_rotation_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation cut short after its checkpoint is completed on restart, once."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    w = h.started()

    def die(*args: Any) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(w, "_finish_rotation", die)
    with pytest.raises(RuntimeError):
        w._rotate_in_thread(h.clock.seconds(), False)
    assert rotated(h.path) == []
    h.journal.append(delivered("m2"))
    h.started()
    (old,) = rotated(h.path)
    assert [r["rcpt"][3:] for r in read_acct(old)] == ["m1@example.com"] * 3
    assert [r["rcpt"][3:] for r in read_acct(h.path)] == ["m2@example.com"] * 3


def test_new_writer_starts_at_start_position_and_moves_stray_file(tmp_path: Path) -> None:
    """Without a checkpoint, a writer reads from the start and sets an old file aside."""
    h = Harness(tmp_path)
    h.path.write_text("left,over\n1,2\n")
    h.journal.append(delivered("m1"))
    h.started()
    (aside,) = rotated(h.path)
    assert aside.read_text() == "left,over\n1,2\n"
    assert len(read_acct(h.path)) == 3


def test_changed_fields_start_a_new_csv_file(tmp_path: Path) -> None:
    """If record-fields change between runs, the old CSV file is rotated, not mixed."""
    h = Harness(tmp_path)
    h.journal.append(delivered("m1"))
    h.started()
    h.journal.append(delivered("m2"))
    h.started(record_fields={"*": ("type", "rcpt")})
    (old,) = rotated(h.path)
    assert len(read_acct(old)) == 3
    assert h.path.read_text().splitlines()[0] == "type,rcpt"
    assert len(read_acct(h.path)) == 3


def test_catch_up_failure_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed catch-up does not fail its caller and is retried after retry_delay."""
    h = Harness(tmp_path)
    w = h.started()
    h.journal.append(delivered("m1"))
    calls = []
    real = h.journal.read_events

    def flaky(start: Pos, end: Pos | None) -> Iterator[tuple[Pos, Event]]:
        calls.append(start)
        if len(calls) == 1:
            raise OSError("disk on fire")
        return real(start, end)

    monkeypatch.setattr(w, "_read_events", flaky)
    d = w.catch_up()
    assert d.called and d.result is None
    assert read_acct(h.path) == []
    h.clock.advance(w.retry_delay)
    assert len(read_acct(h.path)) == 3


def test_utf8_and_quoting_survive(tmp_path: Path) -> None:
    """Non-ASCII addresses and diagnostics with commas and quotes round-trip."""
    h = Harness(tmp_path)
    env = Envelope("m", "ïñ@exämple.org", (Recipient("用户@例子.广告"),), T0, smtputf8=True)
    diag = 'smtp;550 5.1.1 "no", really\nno'
    h.journal.append(Outcome("b", "m", (0,), T0, env, dsn_status="5.1.1", dsn_diag=diag))
    h.started()
    (r,) = read_acct(h.path)
    flat = diag.replace("\n", " ")  # a line break never reaches the file
    assert (r["orig"], r["rcpt"], r["dsnDiag"]) == ("ïñ@exämple.org", "用户@例子.广告", flat)
    assert list(csv.reader(io.StringIO(h.path.read_text("utf-8"), newline="")))[1][8] == flat


def test_min_interval_spaces_catch_ups(tmp_path: Path) -> None:
    """With min_interval 1s, five calls within a second cost one more journal read."""
    h = Harness(tmp_path)
    w = h.writer()
    w.min_interval = 1.0
    assert w.start().called
    reads = h.journal.reads
    for n in range(5):
        h.journal.append(delivered(f"m{n}"))
        w.catch_up()
    assert h.journal.reads == reads  # the first catch-up waits out the interval
    h.clock.advance(1.0)
    assert h.journal.reads == reads + 1
    assert len(read_acct(h.path)) == 15
