"""The mail log's pure parts and its file writer, with `task.Clock` and a synchronous pool."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from smtp_helpers import holder_from_text, run_now
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address

from mtaserver.config.model import DomainSettings, SourceSettings, TransmissionsApiSettings
from mtaserver.maillog import MailLog
from mtaserver.maillog.format import Stamper, escape, format_line, mask_auth
from mtaserver.maillog.log import OFF_INBOUND, OFF_OUTBOUND
from mtaserver.maillog.logfile import LogFile, next_midnight, rotate_files
from mtaserver.maillog.service import MailLogService
from mtaserver.smtp_reply import Reply


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"EHLO client.example", "EHLO client.example"),
        (b"a\r\nb", "a\\r\\nb"),
        (b"tab\there", "tab\\there"),
        (b"esc\x1b[31m red", "esc\\x1b[31m red"),
        (b"nul\x00 del\x7f c1\xc2\x85", "nul\\x00 del\\x7f c1\\x85"),
        (b"back\\slash", "back\\\\slash"),
        (b"bad utf8 \xff\xfe", "bad utf8 \\xff\\xfe"),
        ("bidi \u202e and ls \u2028".encode(), "bidi \\u202e and ls \\u2028"),
        ("j\u00f6rg@b\u00fccher.example".encode(), "j\u00f6rg@b\u00fccher.example"),
        ("nbsp\u00a0".encode(), "nbsp\\xa0"),
    ],
)
def test_escape_keeps_one_printable_line(data: bytes, shown: str) -> None:
    """Control, format and separator characters and bad bytes are escaped; UTF-8 stays."""
    assert escape(data) == shown
    assert escape(data.decode("utf-8", "replace")).count("\n") == 0


def test_escape_is_bounded() -> None:
    """A huge peer string is cut, saying how much is missing."""
    assert escape(b"x" * 5000, limit=10) == "x" * 10 + "...[4990 more]"
    assert escape("y" * 20, limit=5) == "yyyyy...[15 more]"


@pytest.mark.parametrize(
    ("line", "masked"),
    [
        (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH PLAIN ********"),
        (b"auth login YWxpY2U=", b"auth login ********"),
        (b"AUTH\tPLAIN\t\tAGFsaWNl", b"AUTH PLAIN ********"),
        (b"  AUTH CRAM-MD5", b"AUTH CRAM-MD5"),
        (b"AUTH LOGIN", b"AUTH LOGIN"),
        (b"AUTH AGFsaWNlAHNlY3JldA==", b"AUTH ********"),  # no mechanism: maybe the secret
        (b"MAIL FROM:<a@b>", b"MAIL FROM:<a@b>"),
        (b"AUTHOR x", b"AUTHOR x"),
    ],
)
def test_mask_auth(line: bytes, masked: bytes) -> None:
    """An AUTH command never shows its initial response; other commands are untouched."""
    assert mask_auth(line) == masked


def test_line_format_and_stamper() -> None:
    """`YYYY-MM-DD HH:MM:SS.mmm [TAG] TEXT` in UTC, one LF."""
    stamp = Stamper()
    assert stamp(0.25) == "1970-01-01 00:00:00.250"
    assert stamp(86400 + 3661.5) == "1970-01-02 01:01:01.500"
    assert format_line(stamp(1.0), "in 3", "closed") == b"1970-01-01 00:00:01.000 [in 3] closed\n"


def make_files(base: Path, names: list[str]) -> None:
    for name in names:
        (base.parent / name).write_text(name)


@pytest.mark.parametrize(
    ("keep", "before", "after"),
    [
        (3, ["log", "log.1", "log.2"], {"log.1": "log", "log.2": "log.1"}),
        (3, ["log"], {"log.1": "log"}),
        (2, ["log", "log.1", "log.2", "log.3"], {"log.1": "log"}),  # leftovers removed
        (1, ["log", "log.1"], {}),  # only the current file is kept
        (0, ["log", "log.1"], {"log": "log", "log.1": "log.1"}),  # never rotated
    ],
)
def test_rotate_files(tmp_path: Path, keep: int, before: list[str], after: dict[str, str]) -> None:
    """PowerMTA's rotation: log.N -> log.N+1, log -> log.1, `log-rotate` files kept."""
    path = tmp_path / "log"
    make_files(path, before)
    rotate_files(str(path), keep)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == after


def make_log(tmp_path: Path, **kwargs: Any) -> tuple[LogFile, task.Clock]:
    clock = task.Clock()
    return LogFile(str(tmp_path / "mail.log"), run_now, clock, **kwargs), clock


def test_lines_are_batched_and_written_after_the_delay(tmp_path: Path) -> None:
    """write() only buffers; the batch reaches the file when the flush delay has passed."""
    file, clock = make_log(tmp_path)
    file.open_now()
    file.write(b"one\n")
    file.write(b"two\n")
    assert (tmp_path / "mail.log").read_bytes() == b""
    clock.advance(file.flush_delay)
    assert (tmp_path / "mail.log").read_bytes() == b"one\ntwo\n"
    assert oct((tmp_path / "mail.log").stat().st_mode & 0o777) == "0o640"


def test_a_full_buffer_drops_lines_and_says_so(tmp_path: Path) -> None:
    """Past max_pending bytes lines are dropped, counted, and the next batch names the count."""
    pending: list[Any] = []
    clock = task.Clock()

    def stuck(work: Any) -> defer.Deferred[Any]:  # the disk does not answer yet
        d: defer.Deferred[Any] = defer.Deferred()
        pending.append((work, d))
        return d

    file = LogFile(str(tmp_path / "mail.log"), stuck, clock, max_pending=10)
    file.write(b"first\n")
    clock.advance(1)  # the first batch is in the (stuck) thread
    file.write(b"12345\n")
    file.write(b"dropped\n")
    assert file.dropped == 1
    work, d = pending.pop()
    d.callback(work())  # the disk answers; the next batch starts
    work, d = pending.pop()
    d.callback(work())
    text = (tmp_path / "mail.log").read_text()
    assert text.splitlines() == [
        "first",
        "1970-01-01 00:00:01.000 [maillog] 1 line(s) dropped: the log file was slow or failing",
        "12345",
    ]


def test_writer_reopens_after_another_process_rotated(tmp_path: Path) -> None:
    """A non-owner notices the inode change and writes to the new file, not to log.1."""
    worker, clock = make_log(tmp_path, owner=False)
    worker.write(b"before\n")
    clock.advance(1)
    os.replace(tmp_path / "mail.log", tmp_path / "mail.log.1")  # the master rotated
    worker.write(b"after\n")
    clock.advance(1)
    assert (tmp_path / "mail.log.1").read_text() == "before\n"
    assert (tmp_path / "mail.log").read_text() == "after\n"
    assert not worker.rotate().result  # not the owner: it never rotates


def test_size_rotation_keeps_n_files(tmp_path: Path) -> None:
    """Each batch that takes the file past max_size rotates it; log-rotate files remain."""
    file, clock = make_log(tmp_path)
    file.keep, file.max_size = 3, 100
    for n in range(10):
        file.write(f"{n:02d}".encode() * 30 + b"\n")
        clock.advance(1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mail.log", "mail.log.1", "mail.log.2"]
    kept = "".join((tmp_path / n).read_text() for n in ("mail.log.2", "mail.log.1", "mail.log"))
    assert [line[:2] for line in kept.splitlines()] == ["06", "07", "08", "09"]
    assert (tmp_path / "mail.log").read_text() == ""  # the last batch filled one: rotated


def test_a_failing_disk_never_raises_into_the_reactor(tmp_path: Path) -> None:
    """A log file that cannot be written loses lines (counted), and the writer goes on."""
    path = tmp_path / "mail.log"
    path.mkdir()  # open() fails: EISDIR
    file = LogFile(str(path), run_now, task.Clock())
    file.write(b"lost\n")
    file.flush()
    assert file.dropped == 1
    path.rmdir()
    file.write(b"kept\n")
    file.flush()
    assert path.read_text().splitlines() == [
        "1970-01-01 00:00:00.000 [maillog] 1 line(s) dropped: the log file was slow or failing",
        "kept",
    ]
    assert file.lines_dropped_total == 1


def test_next_midnight_is_local_midnight() -> None:
    """log-auto-rotation's next run is the coming local midnight."""
    now = datetime.datetime(2026, 3, 4, 15, 30).timestamp()
    assert next_midnight(now) == datetime.datetime(2026, 3, 5).timestamp()


class FakeReactor(task.Clock):
    def __init__(self) -> None:
        super().__init__()
        self.triggers: list[Any] = []

    def addSystemEventTrigger(self, *args: Any) -> None:  # noqa: N802 - Twisted's name
        self.triggers.append(args)


def test_service_rotates_at_midnight_and_follows_reload(tmp_path: Path) -> None:
    """The master rotates at local midnight; a reload moves the log to a new path."""
    path = tmp_path / "mail.log"
    holder = holder_from_text(f"log-file {path}\nlog-rotate 2\n", str(tmp_path))
    reactor = FakeReactor()
    reactor.advance(datetime.datetime(2026, 3, 4, 23, 59).timestamp())
    service = MailLogService(holder, reactor, run_now)
    service.startService()
    maillog = service.maillog
    maillog.emit("queue", "before midnight")
    reactor.advance(61)  # past midnight: rotated
    reactor.advance(1)
    maillog.emit("queue", "after midnight")
    reactor.advance(1)
    assert "before midnight" in (tmp_path / "mail.log.1").read_text()
    assert "after midnight" in path.read_text()
    (tmp_path / "mtaserver.conf").write_text(f"log-file {tmp_path / 'other.log'}\n")
    assert holder.reload() == []
    maillog.emit("queue", "moved")
    reactor.advance(1)
    assert "moved" in (tmp_path / "other.log").read_text()
    service.stopService()


def test_traces_are_off_unless_switched_on() -> None:
    """A scope without log-* switches gets the shared off traces: nothing is emitted."""
    lines: list[tuple[str, str]] = []

    class Sink(MailLog):
        def emit(self, tag: str, text: str) -> None:
            lines.append((tag, text))

    sink = Sink(task.Clock())
    client, server = IPv4Address("TCP", "1.2.3.4", 5), IPv4Address("TCP", "6.7.8.9", 25)
    assert sink.inbound(client, lambda: server, SourceSettings()) is OFF_INBOUND
    assert sink.outbound("a.test/v", DomainSettings()) is OFF_OUTBOUND
    sink.disabled_ip(DomainSettings(), "a.test/v", "10.0.0.1", None)
    sink.api(TransmissionsApiSettings()).request(None, "1.2.3.4", 200, "x")
    assert lines == []
    trace = sink.inbound(client, lambda: server, SourceSettings(log_commands=True))
    trace.command(b"EHLO x")
    trace.reply(Reply(250, "", "a\nb"))
    trace.closed()  # log-connections is off
    assert lines == [("in 1", ">>> EHLO x"), ("in 1", "<<< 250-a"), ("in 1", "<<< 250 b")]


def test_outbound_trace_masks_our_auth_and_logs_failures() -> None:
    """Our AUTH to a smarthost is masked (PLAIN and LOGIN); failed recipients are logged."""
    lines: list[str] = []

    class Sink(MailLog):
        def emit(self, tag: str, text: str) -> None:
            lines.append(text)

    settings = DomainSettings(log_commands=True, log_transfer_failures=True, log_disabled_ips=True)
    trace = Sink(task.Clock()).outbound("a.test/v", settings)
    trace.sent(["AUTH PLAIN AGFAYg=="])
    trace.replied(235, ["ok"])
    trace.sent(["AUTH LOGIN"])
    trace.replied(334, ["VXNlcm5hbWU6"])
    trace.sent(["YWxpY2U="])
    trace.replied(334, ["UGFzc3dvcmQ6"])
    trace.sent(["c2VjcmV0"])
    trace.replied(235, ["ok"])
    trace.sent(["MAIL FROM:<s@x>"])
    trace.report(["a@a.test", "b@a.test"], [Reply(250, "", "ok"), Reply(550, "5.1.1", "gone")])
    assert lines == [
        "<<< AUTH PLAIN ********",
        ">>> 235 ok",
        "<<< AUTH LOGIN",
        ">>> 334 VXNlcm5hbWU6",
        "<<< ********",
        ">>> 334 UGFzc3dvcmQ6",
        "<<< ********",
        ">>> 235 ok",
        "<<< MAIL FROM:<s@x>",
        "transfer failure a.test/v <b@a.test>: 550 5.1.1 gone",
    ]


def test_reload_adds_and_removes_the_log_file(tmp_path: Path) -> None:
    """A log-file added by reload is opened by the first write; removed, lines leave it."""
    holder = holder_from_text("host-name a.test\n", str(tmp_path))
    reactor = FakeReactor()
    service = MailLogService(holder, reactor, run_now)
    service.startService()
    assert service.maillog.file is None
    path = tmp_path / "added.log"
    (tmp_path / "mtaserver.conf").write_text(f"log-file {path}\n")
    assert holder.reload() == []
    assert not path.exists()  # nothing opened on the reactor at reload
    service.maillog.emit("queue", "first line")
    reactor.advance(1)
    assert path.read_text().endswith("[queue] first line\n")
    (tmp_path / "mtaserver.conf").write_text("host-name a.test\n")
    assert holder.reload() == []
    service.maillog.emit("queue", "to the service log")
    reactor.advance(1)
    assert service.maillog.file is None
    assert "service log" not in path.read_text()
    service.stopService()
