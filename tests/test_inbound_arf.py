"""ARF feedback-loop reports (RFC 5965) on built messages: what the corpus does not cover."""

from __future__ import annotations

from mtaserver.inbound.arf import parse_arf

REPORTED = (
    b"Return-Path: <bounce-jane=example.net@b.example.com>\n"
    b"From: News <news@example.com>\n"
    b"To: Jane <jane@example.net>\n"
    b"Subject: Weekly\n"
    b"Message-ID: <m1@example.com>\n"
    b"X-Job: spring-sale\n"
    b"X-Campaign: c42\n"
    b"\n"
    b"Hello\n"
)


def arf(fields: bytes, reported: bytes = REPORTED, outer: bytes = b"") -> bytes:
    """A multipart/report feedback report with `fields` and the reported message."""
    report = (
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="F"\n'
        b"\n--F\nContent-Type: text/plain\n\nThis is an abuse report.\n"
        b"\n--F\nContent-Type: message/feedback-report\n\n" + fields + b"\n"
        b"\n--F\nContent-Type: message/rfc822\n\n" + reported + b"\n--F--\n"
    )
    return (
        b"From: fbl@isp.example\nTo: fbl@fbl.example.com\nSubject: FW: Weekly\n"
        b"MIME-Version: 1.0\n" + (outer or report)
    )


def test_all_fields_are_read() -> None:
    """Every RFC 5965 field lands in its attribute and in arf_fields."""
    raw = arf(
        b"Feedback-Type: Abuse\nUser-Agent: SomeGenerator/1.0\nVersion: 1\n"
        b"Original-Mail-From: <news@example.com>\nOriginal-Rcpt-To: <jane@example.net>\n"
        b"Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\nSource-IP: 192.0.2.1\n"
        b"Reported-Domain: example.com\nReporting-MTA: dns; mail.isp.example\n"
        b"Original-Envelope-Id: env-9\nIncidents: 3\n"
    )
    report = parse_arf(raw)
    assert report is not None
    assert (report.format, report.feedback_type, report.user_agent, report.version) == (
        "arf",
        "abuse",
        "SomeGenerator/1.0",
        "1",
    )
    assert (report.original_rcpt_to, report.orig) == ("jane@example.net", "news@example.com")
    assert (report.source_ip, report.reported_domain) == ("192.0.2.1", "example.com")
    assert report.arrival_date == "Thu, 8 Mar 2005 14:00:00 EDT"
    assert (report.reporting_mta, report.envId) == ("mail.isp.example", "env-9")
    assert report.arf_fields["incidents"] == "3"
    assert (report.jobId, report.message_id) == ("spring-sale", "<m1@example.com>")
    assert report.headers["x-campaign"] == "c42"


def test_missing_fields_fall_back_to_reported_message() -> None:
    """Without Original-* fields, rcpt is the reported To and orig its decoded VERP path."""
    report = parse_arf(arf(b"Feedback-Type: fraud\nUser-Agent: x/1\nVersion: 1\n"))
    assert report is not None
    assert report.feedback_type == "fraud"
    assert report.original_rcpt_to == "jane@example.net"
    assert (report.orig, report.verp_rcpt) == ("bounce@b.example.com", "jane@example.net")


def test_no_feedback_type_is_other() -> None:
    """A report without Feedback-Type is RFC 5965's catch-all `other`."""
    report = parse_arf(arf(b"User-Agent: x/1\nVersion: 1\n"))
    assert report is not None and report.feedback_type == "other"


def test_wrapped_report_is_found() -> None:
    """A report forwarded inside another multipart (an FBL relay) is still found."""
    inner = arf(b"Feedback-Type: abuse\nOriginal-Rcpt-To: jane@example.net\n").split(
        b"MIME-Version: 1.0\n", 1
    )[1]
    outer = (
        b'Content-Type: multipart/mixed; boundary="W"\n'
        b"\n--W\nContent-Type: text/plain\n\nForwarded complaint.\n"
        b"\n--W\n" + inner + b"\n--W--\n"
    )
    report = parse_arf(arf(b"", outer=outer))
    assert report is not None
    assert (report.feedback_type, report.original_rcpt_to) == ("abuse", "jane@example.net")


def test_values_are_one_line() -> None:
    """Folded or CR-laden field values come out on one line."""
    raw = arf(b"Feedback-Type: abuse\r\nUser-Agent: Some\r\n  Generator/2.0\r\nVersion: 1\r\n")
    report = parse_arf(raw)
    assert report is not None and report.user_agent == "Some Generator/2.0"


def test_values_lose_terminal_escapes() -> None:
    """ESC, BEL, BS and DEL in a report field never reach the report (and acct files)."""
    raw = arf(b"Feedback-Type: abuse\r\nUser-Agent: ua\x1b]0;pwn\x07\x08\x7f\r\nVersion: 1\r\n")
    report = parse_arf(raw)
    assert report is not None
    assert report.user_agent == "ua ]0;pwn"


def test_not_arf() -> None:
    """A plain message or a DSN is not a feedback report."""
    assert parse_arf(b"From: a@b.c\nTo: d@e.f\nSubject: hi\n\nhello\n") is None
    assert parse_arf(b"") is None
