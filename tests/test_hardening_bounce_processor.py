"""`<bounce-processor>` and `<feedback-loop-processor>`: received reports become `rb`, `rs`
and `f` records, in the acct files and through the accounting webhook.

End to end on the real server: every message of the corpus (tests/data/bounces, 33 DSNs
and 6 ARF reports with sisimai's expected recipients) is sent over SMTP to a processor
address; each must come out as a record naming the manifest's recipient. The rest covers
what happens to the message afterwards (discarded, delivered onward, forwarded), the
config, the records' pure formatting and the journal round trip.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mx_receiver import Receiver as MxReceiver
from server_process import ServerProcess, free_port, listening, wait_until
from webhook_receiver import Receiver as WebhookReceiver

from mtaserver.accounting.records import fields_for, records_from_event
from mtaserver.config import ConfigError
from mtaserver.config.load import load_config
from mtaserver.events import Envelope, Recipient, RemoteReport, event_from_json
from mtaserver.inbound.reports import (
    ERROR,
    MATCHED,
    UNMATCHED,
    processor_for,
    read_report,
)

CORPUS = Path(__file__).resolve().parent / "data" / "bounces"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())

BOUNCE_ADDRESS = "bounce@bounces.mta.test"
REPORT_TYPES = ["rb", "rs", "f"]  # read_acct takes a list (a string would match "r")
FBL_ADDRESS = "fbl@fbl.mta.test"

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {tmp}/spool
smtp-listener 127.0.0.1:{port}
http-webhook-allow-addresses 127.0.0.1
relay-domain bounces.mta.test
relay-domain fbl.mta.test
<bounce-processor>
{bounce}
    <address-list>
        domain bounces.mta.test
    </address-list>
</bounce-processor>
<feedback-loop-processor>
    <address-list>
        address /^fbl@fbl\\.mta\\.test$/
    </address-list>
</feedback-loop-processor>
<acct-file {tmp}/acct.csv>
    records r,d,b,rb,rs,f
    record-fields rb *,header_X-Job
    record-fields f *,header_Subject
{acct}
</acct-file>
<domain *>
    type discard
</domain>
{domains}
"""


def config(tmp: Path, port: int, bounce: str = "", acct: str = "", domains: str = "") -> str:
    return CONFIG.format(tmp=tmp, port=port, bounce=bounce, acct=acct, domains=domains)


def read_acct(path: Path, record_types: str | list[str] | None = None) -> list[dict[str, str]]:
    """The complete rows of a CSV acct file, of `record_types` only if given.

    Only whole lines count: a row the writer is still writing would otherwise parse as a
    record with its last fields cut short."""
    if not path.exists():
        return []
    text = path.read_bytes().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))
    return [r for r in rows if record_types is None or r["type"] in record_types]


def relay_to(mx: MxReceiver, *domains: str) -> str:
    """`<domain>` blocks that deliver `domains` to the test MX (the rest is discarded)."""
    return "".join(
        f"<domain {d}>\n    type smtp\n    smtp-hosts [127.0.0.1]:{mx.port}\n</domain>\n"
        for d in domains
    )


def send(port: int, sender: str, rcpts: list[str], raw: bytes) -> None:
    if raw.startswith(b"From "):  # an mbox separator line in the corpus file, not mail
        raw = raw.split(b"\n", 1)[1]
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail(sender, rcpts, raw)


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def mx() -> Iterator[MxReceiver]:
    receiver = MxReceiver()
    yield receiver
    receiver.stop()


# -- end to end: the corpus --------------------------------------------------------


def test_corpus_becomes_rb_and_f_records_in_acct_file_and_webhook(
    tmp_path: Path, webhook: WebhookReceiver
) -> None:
    """Each corpus DSN gives an rb with the manifest's recipient and a bounceCat, each ARF
    report an f with it; the webhook receives the same rb/f records as the file."""
    port = free_port()
    acct = f"    http-webhook-url {webhook.url}\n    http-webhook-max-interval 1s"
    with ServerProcess(tmp_path, config(tmp_path, port, acct=acct), wait_ports=(port,)):
        for entry in MANIFEST:
            to = BOUNCE_ADDRESS if entry["kind"] == "dsn" else FBL_ADDRESS
            send(port, "", [to], (CORPUS / entry["file"]).read_bytes())
        acct_file = tmp_path / "acct.csv"

        def reports() -> list[dict[str, str]]:
            return read_acct(acct_file, REPORT_TYPES)

        assert wait_until(lambda: not _missing(reports()), timeout=90), _missing(reports())
        rows = reports()
        for entry in MANIFEST:
            if entry["kind"] == "dsn":
                found = [r for r in rows if r["type"] == "rb" and r["rcpt"] == entry["recipient"]]
                assert found, entry["file"]
                assert all(r["bounceCat"] for r in found), found
                assert all(r["dsnAction"] == "failed" for r in found), found
                if entry["status"]:
                    assert entry["status"] in {r["dsnStatus"] for r in found}, entry["file"]
            else:
                found = [r for r in rows if r["type"] == "f" and r["rcpt"] == entry["recipient"]]
                assert found, entry["file"]
                assert all(r["format"] == "arf" and r["feedbackType"] for r in found)
        assert {r["srcType"] for r in rows} == {"smtp"}
        # header_X fields come from the reported original (record-fields f *,header_Subject;
        # one Return Path report returns a message without a Subject)
        subjects = [r["header_Subject"] for r in rows if r["type"] == "f"]
        assert subjects.count("Nyaan") >= 4
        # the webhook gets the same rb/f records
        assert webhook.wait_for(lambda w: _webhook_reports(w) == _keys(reports()), timeout=60)
        # every report was discarded (deliver-matched-email no): no d record, spool empty
        assert read_acct(acct_file, "d") == []
        assert wait_until(lambda: not list((tmp_path / "spool" / "msg").glob("*/*")))


def _missing(rows: list[dict[str, str]]) -> list[str]:
    """The corpus files whose recipient has no rb (DSN) or f (ARF) record in `rows`."""
    found = {(r["type"], r["rcpt"]) for r in rows}
    return [
        e["file"]
        for e in MANIFEST
        if ("rb" if e["kind"] == "dsn" else "f", e["recipient"]) not in found
    ]


def _keys(rows: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return sorted((r["type"], r["rcpt"], r["dsnStatus"], r["bounceCat"]) for r in rows)


def _webhook_reports(receiver: WebhookReceiver) -> list[tuple[str, ...]]:
    rows = [
        row
        for post in list(receiver.posts)
        for row in csv.DictReader(io.StringIO(post.body.decode()))
        if row["type"] in ("rb", "rs", "f")
    ]
    return _keys(rows)


# -- what becomes of the message ------------------------------------------------------

NOT_A_BOUNCE = b"From: someone@else.test\r\nSubject: hello\r\n\r\nJust a letter.\r\n"
BROKEN_REPORT = (
    b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
    b' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nSomething went wrong.\r\n'
    b"--b--\r\n"
)


def test_unmatched_mail_is_delivered_onward_by_default(tmp_path: Path, mx: MxReceiver) -> None:
    """A letter to the processor address (deliver-unmatched-email yes) reaches its domain."""
    port = free_port()
    domains = relay_to(mx, "bounces.mta.test")
    with ServerProcess(tmp_path, config(tmp_path, port, domains=domains), wait_ports=(port,)):
        send(port, "someone@else.test", [BOUNCE_ADDRESS], NOT_A_BOUNCE)
        assert wait_until(lambda: len(mx.messages) == 1, timeout=60)
        assert b"Just a letter." in mx.messages[0].data
        assert wait_until(lambda: len(read_acct(tmp_path / "acct.csv", "d")) == 1)
        assert read_acct(tmp_path / "acct.csv", REPORT_TYPES) == []


def test_unmatched_mail_is_discarded_with_deliver_unmatched_no(
    tmp_path: Path, mx: MxReceiver
) -> None:
    """deliver-unmatched-email no: a letter to the processor address is removed, unsent."""
    port = free_port()
    domains = relay_to(mx, "bounces.mta.test")
    conf = config(tmp_path, port, bounce="    deliver-unmatched-email no", domains=domains)
    with ServerProcess(tmp_path, conf, wait_ports=(port,)) as server:
        send(port, "someone@else.test", [BOUNCE_ADDRESS], NOT_A_BOUNCE)
        assert server.wait_for_log("unmatched")
        assert wait_until(lambda: not list((tmp_path / "spool" / "msg").glob("*/*")))
    assert mx.messages == []
    assert read_acct(tmp_path / "acct.csv", "r") != []
    assert read_acct(tmp_path / "acct.csv", ["d", "rb"]) == []


def test_matched_bounce_is_delivered_with_deliver_matched_yes(
    tmp_path: Path, mx: MxReceiver
) -> None:
    """deliver-matched-email yes: the bounce is recorded (rb) and also delivered onward."""
    port = free_port()
    domains = relay_to(mx, "bounces.mta.test")
    conf = config(tmp_path, port, bounce="    deliver-matched-email yes", domains=domains)
    raw = (CORPUS / MANIFEST[0]["file"]).read_bytes()
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        send(port, "", [BOUNCE_ADDRESS], raw)
        assert wait_until(lambda: len(mx.messages) == 1, timeout=60)
        assert wait_until(lambda: read_acct(tmp_path / "acct.csv", ["rb"]) != [])
        rb = read_acct(tmp_path / "acct.csv", ["rb"])
        assert [r["rcpt"] for r in rb] == [MANIFEST[0]["recipient"]]


def test_unreadable_report_is_forwarded_to_forward_errors_to_and_delivered(
    tmp_path: Path, mx: MxReceiver
) -> None:
    """A report whose recipient cannot be read goes to forward-errors-to and onward."""
    port = free_port()
    domains = relay_to(mx, "bounces.mta.test", "errors.test")
    conf = config(tmp_path, port, bounce="    forward-errors-to ops@errors.test", domains=domains)
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        send(port, "", [BOUNCE_ADDRESS], BROKEN_REPORT)
        assert wait_until(lambda: len(mx.messages) == 2, timeout=60)
    by_rcpt = {tuple(m.rcpt_tos): m for m in mx.messages}
    assert set(by_rcpt) == {("ops@errors.test",), (BOUNCE_ADDRESS,)}
    assert b"Something went wrong." in by_rcpt[("ops@errors.test",)].data
    assert read_acct(tmp_path / "acct.csv", REPORT_TYPES) == []


def test_mail_to_a_processor_address_still_obeys_the_relay_rules(tmp_path: Path) -> None:
    """A processor address outside relay-domain is refused at RCPT like any other."""
    port = free_port()
    conf = config(tmp_path, port).replace("relay-domain bounces.mta.test\n", "")
    with ServerProcess(tmp_path, conf, wait_ports=(port,)), smtplib.SMTP("127.0.0.1", port) as c:
        c.ehlo()
        c.mail("")
        code, _ = c.rcpt(BOUNCE_ADDRESS)
    assert code == 550


def test_spooled_report_not_yet_processed_is_processed_at_the_next_start(
    tmp_path: Path,
) -> None:
    """A report in the spool that never reached the processor (the window of a crash:
    here, spooled while no processor was configured, its queue unreachable) is taken
    by the processor at the next start: an rb record, and the file is removed."""
    port, down_port = free_port(), free_port()
    unreachable = (
        "<domain bounces.mta.test>\n    type smtp\n"
        f"    smtp-hosts [127.0.0.1]:{down_port}\n    retry-after 1h\n</domain>\n"
    )
    without_processor = (
        config(tmp_path, port, domains=unreachable)
        .replace("<bounce-processor>", "<feedback-loop-processor>")
        .replace("</bounce-processor>", "</feedback-loop-processor>")
    )
    server = ServerProcess(tmp_path, without_processor, wait_ports=(port,))
    with server:
        send(port, "", [BOUNCE_ADDRESS], (CORPUS / MANIFEST[0]["file"]).read_bytes())
        assert wait_until(lambda: read_acct(tmp_path / "acct.csv", "r") != [])
        server.kill9()
    assert list((tmp_path / "spool" / "msg").glob("*/*"))
    server.config.write_text(config(tmp_path, port, domains=unreachable))
    with server:
        acct = tmp_path / "acct.csv"
        assert wait_until(lambda: read_acct(acct, ["rb"]) != [], timeout=60)
        assert wait_until(lambda: not list((tmp_path / "spool" / "msg").glob("*/*")))
    assert [r["rcpt"] for r in read_acct(acct, ["rb"])] == [MANIFEST[0]["recipient"]]


def test_a_processor_added_by_reload_takes_the_next_report(tmp_path: Path) -> None:
    """Processors are live: after a reload that adds one, the next report becomes an rb."""
    port = free_port()
    without = (
        config(tmp_path, port)
        .replace("<bounce-processor>", "<feedback-loop-processor>")
        .replace("</bounce-processor>", "</feedback-loop-processor>")
    )
    raw = (CORPUS / MANIFEST[0]["file"]).read_bytes()
    acct = tmp_path / "acct.csv"
    with ServerProcess(tmp_path, without, wait_ports=(port,)) as server:
        send(port, "", [BOUNCE_ADDRESS], raw)
        assert wait_until(lambda: read_acct(acct, "d") != [])  # delivered (discarded)
        server.config.write_text(config(tmp_path, port))
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        assert server.wait_for_log("config reloaded")
        send(port, "", [BOUNCE_ADDRESS], raw)
        assert wait_until(lambda: read_acct(acct, ["rb"]) != [])
    assert len(read_acct(acct, "d")) == 1


# -- the pieces --------------------------------------------------------------------


def _envelope(rcpt: str = BOUNCE_ADDRESS, sender: str = "") -> Envelope:
    return Envelope(
        msg_id="m1",
        sender=sender,
        recipients=(Recipient(rcpt),),
        time_queued=0.0,
        src_mta="mx.remote (192.0.2.1)",
    )


def test_read_report_matched_unmatched_error() -> None:
    """A DSN is matched (rb), a letter unmatched, a report without recipients an error."""
    dsn = (CORPUS / MANIFEST[0]["file"]).read_bytes()
    verdict = read_report(dsn, _envelope(), "bounce-processor", 100.0)
    assert verdict.outcome == MATCHED
    assert [(e.record, e.rcpt) for e in verdict.events] == [("rb", MANIFEST[0]["recipient"])]
    assert verdict.events[0].src_mta == "mx.remote (192.0.2.1)"
    letter = read_report(NOT_A_BOUNCE, _envelope(sender="a@b.test"), "bounce-processor", 1.0)
    assert letter.outcome == UNMATCHED
    broken = read_report(BROKEN_REPORT, _envelope(sender="x@y.test"), "bounce-processor", 1.0)
    assert broken.outcome == ERROR
    arf = next(e for e in MANIFEST if e["kind"] == "arf")
    complaint = read_report(
        (CORPUS / arf["file"]).read_bytes(), _envelope(FBL_ADDRESS), "feedback-loop-processor", 1.0
    )
    assert [(e.record, e.rcpt) for e in complaint.events] == [("f", arf["recipient"])]
    assert complaint.events[0].feedback_type


DELAYED_DSN = (
    b"From: MAILER-DAEMON@relay.test\r\nTo: bounce@bounces.mta.test\r\n"
    b"Subject: Delayed Mail (still being retried)\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; relay.test\r\n\r\n"
    b"Final-Recipient: rfc822; slow@dst.test\r\nAction: delayed\r\nStatus: 4.4.1\r\n"
    b"Diagnostic-Code: smtp; 421 4.4.1 try later\r\n\r\n--b--\r\n"
)


def test_delayed_notice_is_an_rs_record() -> None:
    """A DSN whose recipient is `delayed` gives an rs record, not an rb."""
    verdict = read_report(DELAYED_DSN, _envelope(), "bounce-processor", 1.0)
    assert [(e.record, e.rcpt, e.dsn_status) for e in verdict.events] == [
        ("rs", "slow@dst.test", "4.4.1")
    ]
    (record,) = records_from_event(verdict.events[0])
    assert (record["type"], record["dsnAction"], record["dsnReportingMta"]) == (
        "rs",
        "delayed",
        "relay.test",
    )


def test_remote_report_round_trips_through_the_journal_form() -> None:
    """A RemoteReport written as JSON reads back equal (the journal's form)."""
    event = RemoteReport(
        record="rb",
        time=5.0,
        msg_id="m1",
        rcpt="a@b.test",
        orig="me@x.test",
        dsn_status="5.1.1",
        bounce_cat="bad-mailbox",
        hard=True,
        headers={"x-job": "j1"},
    )
    assert event_from_json(json.loads(json.dumps(event.to_json()))) == event


def test_rb_and_f_records_fields() -> None:
    """rb/f records carry their own fields (`*` includes them) and header_X of the original."""
    rb = RemoteReport(
        record="rb",
        time=0.0,
        msg_id="m1",
        rcpt="a@b.test",
        orig="me@x.test",
        dsn_action="failed",
        dsn_status="5.1.1",
        dsn_diag="smtp; 550 no such user",
        dsn_mta="mx.b.test",
        dsn_reporting_mta="mta.b.test",
        bounce_cat="bad-mailbox",
        job_id="j1",
        headers={"x-job": "j1"},
    )
    (record,) = records_from_event(rb, ("header_X-Job",))
    assert record["type"] == "rb"
    assert record["dsnReportingMta"] == "mta.b.test"
    assert record["header_X-Job"] == "j1"
    assert "dsnReportingMta" in fields_for("rb")
    assert "dsnReportingMta" not in fields_for("d")
    f = RemoteReport(
        record="f",
        time=0.0,
        msg_id="m2",
        rcpt="c@d.test",
        format="arf",
        feedback_type="abuse",
        user_agent="FBL/1.0",
        dsn_reporting_mta="fbl.d.test",
    )
    (frecord,) = records_from_event(f)
    assert (frecord["feedbackType"], frecord["userAgent"], frecord["reportingMta"]) == (
        "abuse",
        "FBL/1.0",
        "fbl.d.test",
    )
    assert set(fields_for("f")) >= {"format", "feedbackType", "userAgent", "reportedDomain"}


def test_processor_service_journals_reports_and_tells_its_subscribers(tmp_path: Path) -> None:
    """On a real spool: the rb is journaled, each on_remote_bounce subscriber gets it (one
    that raises does not stop the next), on_complaint gets the f, and the files go."""
    from mtaserver.config.reload import ConfigHolder
    from mtaserver.processors import ReportProcessor
    from mtaserver.spool import open_spool
    from mtaserver.spool.journal import JournalPosition, list_segments, read_events
    from mtaserver.spool.testing import run_now

    port = free_port()
    (tmp_path / "m.conf").write_text(config(tmp_path, port))
    holder = ConfigHolder.from_file(str(tmp_path / "m.conf"))
    _, journal, store = open_spool(str(tmp_path / "spool"), run_now)
    handed_on: list[Envelope] = []
    processor = ReportProcessor(
        holder, store, journal, lambda e, *a: handed_on.append(e), run_now, lambda: 50.0
    )
    bounces: list[RemoteReport] = []
    complaints: list[RemoteReport] = []

    def broken(event: RemoteReport) -> None:
        raise RuntimeError("a subscriber's bug")

    processor.on_remote_bounce += [broken, bounces.append]
    processor.on_complaint.append(complaints.append)
    arf = next(e for e in MANIFEST if e["kind"] == "arf")
    for to, entry in ((BOUNCE_ADDRESS, MANIFEST[0]), (FBL_ADDRESS, arf)):
        writer = store.begin()
        writer.write((CORPUS / entry["file"]).read_bytes().replace(b"\n", b"\r\n"))
        done = writer.commit(Envelope(writer.msg_id, "", (Recipient(to),), 1.0))
        assert done.called
        processor.enqueue(Envelope(writer.msg_id, "", (Recipient(to),), 1.0))
    assert [e.rcpt for e in bounces] == [MANIFEST[0]["recipient"]]
    assert [e.rcpt for e in complaints] == [arf["recipient"]]
    assert handed_on == []  # deliver-matched-email no: both removed
    assert not list((tmp_path / "spool" / "msg").glob("*/*"))
    journal_dir = str(tmp_path / "spool" / "journal")
    first = JournalPosition(list_segments(journal_dir)[0], 0)
    journaled = [e for _, e in read_events(journal_dir, first, journal.end())]
    assert [e.record for e in journaled if isinstance(e, RemoteReport)] == ["rb", "f"]
    journal.close()


# -- config ---------------------------------------------------------------------------


def test_processor_config_and_address_list_matching(tmp_path: Path) -> None:
    """address (address, local part, /regex/), domain and address-file lines all match."""
    listed = tmp_path / "addresses.txt"
    listed.write_text("# bounce boxes\nreturns\nfbl@Other.test\n")
    conf = tmp_path / "m.conf"
    conf.write_text(
        f"spool {tmp_path}/spool\n<bounce-processor>\n  deliver-matched-email yes\n"
        "  forward-errors-to ops@x.test\n  <address-list>\n    domain Bounces.Test\n"
        "    address exact@a.test\n    address local\n    address /^vp-.*@v\\.test$/\n"
        f"    address-file {listed}\n  </address-list>\n</bounce-processor>\n"
    )
    (processor,) = load_config(str(conf)).report_processors
    assert processor.deliver_matched_email and processor.deliver_unmatched_email
    assert processor.forward_errors_to == ("ops@x.test",)
    for address in (
        "a@bounces.test",
        "EXACT@a.test",
        "local@any.test",
        "vp-1@v.test",
        "returns@z.test",
        "fbl@other.test",
    ):
        assert processor.matches(address), address
    for address in ("exact@b.test", "a@sub.bounces.test", "xvp-1@v.test", "fbl@x.test"):
        assert not processor.matches(address), address
    assert processor_for((processor,), (Recipient("a@bounces.test"),)) is processor
    mixed = (Recipient("a@bounces.test"), Recipient("someone@else.test"))
    assert processor_for((processor,), mixed) is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<address-list>\n  domain x.test\n</address-list>\n", "not allowed at top level"),
        ("<bounce-processor>\n  address x@y.test\n</bounce-processor>\n", "not allowed"),
        ("<bounce-processor x>\n</bounce-processor>\n", "takes no argument"),
        (
            "<bounce-processor>\n <address-list>\n  address /(/\n </address-list>\n"
            "</bounce-processor>\n",
            "bad regular expression",
        ),
        (
            "<feedback-loop-processor>\n <address-list>\n  address-file /nonexistent/f\n"
            " </address-list>\n</feedback-loop-processor>\n",
            "file not found",
        ),
    ],
)
def test_processor_config_errors(tmp_path: Path, text: str, error: str) -> None:
    """Misplaced directives, arguments, bad regexes and missing files are config errors."""
    conf = tmp_path / "m.conf"
    conf.write_text(f"spool {tmp_path}/spool\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert error in str(info.value)


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["file"] for e in MANIFEST])
def test_corpus_parses_as_received_over_smtp(entry: dict[str, Any]) -> None:
    """With CRLF line ends and our Received header on top, as spooled, each report still
    names its recipient (the text rules were written for LF: Yahoo's notice was missed)."""
    raw = (CORPUS / entry["file"]).read_bytes()
    if raw.startswith(b"From "):
        raw = raw.split(b"\n", 1)[1]
    spooled = b"Received: from x ([127.0.0.1])\r\n\tby mta.test; now\r\n" + re.sub(
        rb"\r?\n", b"\r\n", raw
    )
    kind = "bounce-processor" if entry["kind"] == "dsn" else "feedback-loop-processor"
    verdict = read_report(spooled, _envelope(), kind, 0.0)
    assert entry["recipient"] in {e.rcpt.lower() for e in verdict.events}


# -- a live Postfix bounces to the processor ----------------------------------------

POSTFIX = Path("/usr/sbin/postfix")


class PrivatePostfix:
    """Postfix from a private config dir on loopback (as bench/peers.py runs it): relays
    everything to `relay_port`, except `bounce_domain`, sent to `bounce_port`."""

    def __init__(
        self, workdir: Path, relay_port: int, bounce_domain: str, bounce_port: int
    ) -> None:
        self.port = free_port()
        workdir.mkdir()
        self.conf = workdir / "postfix-etc"
        self.conf.mkdir()
        queue, data = workdir / "postfix-queue", workdir / "postfix-data"
        queue.mkdir()
        data.mkdir()
        workdir.chmod(0o755)  # the postfix user reaches data_directory by its path
        shutil.chown(data, "postfix", "postfix")
        self.log = workdir / "postfix.log"
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\nmyhostname = peer.localdomain\n"
            "mydomain = localdomain\nmyorigin = $myhostname\nbiff = no\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n"
            "mydestination =\nlocal_recipient_maps =\nrelay_domains =\nalias_maps =\n"
            f"relayhost = [127.0.0.1]:{relay_port}\n"
            f"transport_maps = inline:{{ {bounce_domain}=smtp:[127.0.0.1]:{bounce_port} }}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            "disable_dns_lookups = yes\nsmtp_dns_support_level = disabled\n"
            "smtp_host_lookup = native\nsmtpd_peername_lookup = no\n"
            f"queue_directory = {queue}\ndata_directory = {data}\n"
            f"maillog_file = {self.log}\nmaillog_file_prefixes = {workdir}\n"
        )
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if fields and not line.startswith((" ", "\t", "#")) and len(fields) >= 8:
                if fields[0] == "smtp" and fields[1] == "inet":
                    fields[0] = f"127.0.0.1:{self.port}"
                fields[4] = "n"  # no chroot: the queue is a private temp dir
                line = "  ".join(fields)
            lines.append(line)
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")
        for name in ("dynamicmaps.cf", "postfix-files"):
            if (Path("/etc/postfix") / name).exists():
                shutil.copy(Path("/etc/postfix") / name, self.conf / name)
        for name in ("dynamicmaps.cf.d", "postfix-files.d"):
            if (Path("/etc/postfix") / name).is_dir():
                shutil.copytree(Path("/etc/postfix") / name, self.conf / name)

    def postfix(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.conf), command],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def __enter__(self) -> PrivatePostfix:
        out = self.postfix("start")
        if out.returncode != 0 or not wait_until(lambda: listening(self.port)):
            self.postfix("stop")
            raise RuntimeError(f"postfix did not start: {out.stdout}{out.stderr}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.postfix("stop")


@pytest.mark.skipif(
    not POSTFIX.exists() or os.geteuid() != 0,
    reason="needs Debian's postfix and root (a private instance chowns its data dir)",
)
def test_live_postfix_bounce_becomes_an_rb_record(tmp_path: Path, mx: MxReceiver) -> None:
    """Postfix relays to a receiver that refuses (550 5.1.1), bounces to our processor
    address, and the acct file gets an rb for the refused recipient with the job id."""
    port = free_port()
    server_dir = tmp_path / "mtaserver"
    server_dir.mkdir()
    verp = "news-hard-user=dst.test@bounces.mta.test"
    # pytest's tmp_path is mode 0700: the postfix user could not reach its data dir
    postfix_dir = Path(tempfile.mkdtemp(prefix="mtaserver-postfix-"))
    postfix_dir.chmod(0o755)
    acct = server_dir / "acct.csv"
    try:
        with (
            ServerProcess(server_dir, config(server_dir, port), wait_ports=(port,)),
            PrivatePostfix(postfix_dir / "run", mx.port, "bounces.mta.test", port) as postfix,
        ):
            send(
                postfix.port,
                verp,
                ["hard-user@dst.test"],
                b"From: news@mta.test\r\nTo: hard-user@dst.test\r\nX-Job: job42\r\n"
                b"Subject: news\r\n\r\nHello.\r\n",
            )
            assert wait_until(lambda: read_acct(acct, ["rb"]) != [], timeout=120), (
                postfix.log.read_text() if postfix.log.exists() else "no postfix log"
            )
    finally:
        shutil.rmtree(postfix_dir, ignore_errors=True)
    (rb,) = read_acct(acct, ["rb"])
    assert rb["rcpt"] == "hard-user@dst.test"
    assert rb["dsnStatus"].startswith("5.1.1")
    assert rb["bounceCat"] == "bad-mailbox"
    assert rb["dsnAction"] == "failed"
    assert rb["jobId"] == "job42"
    assert rb["header_X-Job"] == "job42"
    assert rb["orig"] == "news@bounces.mta.test"  # the VERP return path, decoded
    assert rb["dsnReportingMta"] == "peer.localdomain"
    assert rb["dsnMta"].startswith("127.0.0.1")  # the receiver that refused, as Postfix saw it
