"""Remote bounce parsing on built messages: the RFC 3464 cases the corpus does not cover."""

from __future__ import annotations

import base64

import pytest

from mtaserver.inbound.dsn import MAX_RECIPIENTS, bounce_category, parse_bounce, status_of

ORIGINAL = (
    b"Return-Path: <news@example.com>\n"
    b"From: News <news@example.com>\n"
    b"To: a@example.org\n"
    b"Subject: Weekly\n"
    b"Message-ID: <m1@example.com>\n"
    b"X-Job: spring-sale\n"
    b"X-Campaign: c42\n"
    b"\n"
    b"Hello\n"
)


def dsn(
    blocks: bytes,
    *,
    per_message: bytes = b"Reporting-MTA: dns; mx.example.org\n",
    original: bytes = ORIGINAL,
    dsn_type: bytes = b"message/delivery-status",
    dsn_headers: bytes = b"",
    body_of_dsn: bytes | None = None,
) -> bytes:
    """A multipart/report DSN with `blocks` as its per-recipient fields."""
    dsn_body = body_of_dsn if body_of_dsn is not None else per_message + b"\n" + blocks
    return (
        b"From: MAILER-DAEMON@mx.example.org\n"
        b"To: news@example.com\n"
        b"Subject: Undelivered Mail Returned to Sender\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n'
        b"\n--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n"
        b"\n--B\nContent-Type: " + dsn_type + b"\n" + dsn_headers + b"\n" + dsn_body + b"\n"
        b"\n--B\nContent-Type: message/rfc822\n\n" + original + b"\n--B--\n"
    )


def test_every_failed_and_delayed_recipient_is_reported() -> None:
    """Each failed or delayed recipient block is reported; delivered ones are left out."""
    raw = dsn(
        b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 No such user\n\n"
        b"Final-Recipient: rfc822; b@example.org\nAction: delayed\nStatus: 4.2.2\n"
        b"Diagnostic-Code: smtp; 452 4.2.2 Mailbox full\n\n"
        b"Final-Recipient: rfc822; c@example.org\nAction: delivered\nStatus: 2.0.0\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    assert [(r.rcpt, r.action, r.dsnStatus, r.bounceCat, r.hard) for r in report.recipients] == [
        ("a@example.org", "failed", "5.1.1", "bad-mailbox", True),
        ("b@example.org", "delayed", "4.2.2", "quota-issues", False),
    ]


def test_success_only_dsn_is_not_a_bounce() -> None:
    """A DSN that only reports deliveries is not a bounce."""
    raw = dsn(b"Final-Recipient: rfc822; c@example.org\nAction: delivered\nStatus: 2.0.0\n")
    assert parse_bounce(raw) is None


def test_original_envelope_details_are_recovered() -> None:
    """envId, orcpt, jobId, Message-ID, orig and the original's headers are recovered."""
    raw = dsn(
        b"Original-Recipient: rfc822; A@Example.org\nFinal-Recipient: rfc822; a@example.org\n"
        b"Action: failed\nStatus: 5.1.1\nRemote-MTA: dns; mx1.example.org\n",
        per_message=b"Reporting-MTA: dns; relay.example.org\nOriginal-Envelope-Id: env-77\n",
    )
    report = parse_bounce(raw)
    assert report is not None
    (rcpt,) = report.recipients
    assert (rcpt.orcpt, rcpt.dsnMta) == ("A@Example.org", "mx1.example.org")
    assert report.envId == "env-77"
    assert report.jobId == "spring-sale"
    assert report.message_id == "<m1@example.com>"
    assert report.orig == "news@example.com"
    assert report.dsnReportingMta == "relay.example.org"
    assert report.headers["x-campaign"] == "c42"


def test_verp_return_path_is_decoded() -> None:
    """A VERP return path gives back the original sender and the encoded recipient."""
    original = ORIGINAL.replace(
        b"Return-Path: <news@example.com>", b"Return-Path: <bounce-a=example.org@b.example.com>"
    )
    raw = dsn(b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n",
              original=original)  # fmt: skip
    report = parse_bounce(raw)
    assert report is not None
    assert (report.orig, report.verp_rcpt) == ("bounce@b.example.com", "a@example.org")


def test_report_rcpt_wins_for_orig() -> None:
    """The SMTP recipient the notice arrived for is orig, as PowerMTA takes it."""
    raw = dsn(b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n")
    report = parse_bounce(raw, report_rcpt="<jsmith-a=example.org@example.com>")
    assert report is not None
    assert (report.orig, report.verp_rcpt) == ("jsmith@example.com", "a@example.org")


def test_diagnostic_is_one_line() -> None:
    """A folded Diagnostic-Code (CR/LF inside) becomes one line in dsnDiag."""
    raw = dsn(
        b"Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n"
        b"Diagnostic-Code: smtp; 552 5.2.2 Quota exceeded\r\n    (mailbox for user is full)\r\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt.dsnDiag == "smtp;552 5.2.2 Quota exceeded (mailbox for user is full)"


def test_base64_delivery_status_part_is_read() -> None:
    """A transfer-encoded delivery-status part is decoded and read."""
    body = base64.encodebytes(
        b"Reporting-MTA: dns; mx.example.org\n\n"
        b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.2\n"
    )
    raw = dsn(b"", body_of_dsn=body, dsn_headers=b"Content-Transfer-Encoding: base64\n")
    report = parse_bounce(raw)
    assert report is not None
    assert [(r.rcpt, r.bounceCat, r.hard) for r in report.recipients] == [
        ("a@example.org", "bad-domain", True)
    ]


def test_global_delivery_status_is_read() -> None:
    """An RFC 6533 message/global-delivery-status part (UTF-8 addresses) is read."""
    raw = dsn(
        "Final-Recipient: utf-8; üser@example.org\nAction: failed\nStatus: 5.1.1\n".encode(),
        dsn_type=b"message/global-delivery-status",
    )
    report = parse_bounce(raw)
    assert report is not None
    assert [r.rcpt for r in report.recipients] == ["üser@example.org"]


def test_missing_status_comes_from_diagnostic_then_action() -> None:
    """Without Status, dsnStatus is the diagnostic's code, else X.0.0 from the action."""
    raw = dsn(
        b"Final-Recipient: rfc822; a@example.org\nAction: failed\n"
        b"Diagnostic-Code: smtp; 550 user unknown\n\n"
        b"Final-Recipient: rfc822; b@example.org\nAction: delayed\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    assert [(r.dsnStatus, r.bounceCat, r.hard) for r in report.recipients] == [
        ("5.0.0", "bad-mailbox", True),
        ("4.0.0", "other", False),
    ]


@pytest.mark.parametrize(
    ("status", "diag", "action", "expected"),
    [
        ("5.1.1 (bad destination mailbox address)", "", "failed", "5.1.1"),
        ("", "smtp; 550-5.7.1 blocked", "failed", "5.7.1"),
        ("", "smtp; 451 try later", "failed", "4.0.0"),
        ("", "retry timeout exceeded", "failed", "5.0.0"),
        ("", "", "delayed", "4.0.0"),
    ],
)
def test_status_ladder(status: str, diag: str, action: str, expected: str) -> None:
    """dsnStatus: Status field, then the diagnostic's codes, then the action."""
    assert status_of(status, diag, action) == expected


@pytest.mark.parametrize(
    ("status", "diag", "expected"),
    [
        ("5.4.4", "X-Postfix; Host or domain name not found", "bad-domain"),
        ("5.4.4", "smtp; 550 5.4.4 Unable to route", "routing-errors"),
        ("4.4.1", "connect to mx: Connection timed out", "no-answer-from-host"),
    ],
)
def test_unable_to_route_refinement(status: str, diag: str, expected: str) -> None:
    """X.4.4 is bad-domain only when its text says the domain does not exist."""
    assert bounce_category(status, diag) == expected


def test_text_bounce_recovered_through_verp() -> None:
    """An unrecognised daemon notice to a VERP address reports the VERP recipient."""
    raw = (
        b"Return-Path: <>\n"
        b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\n"
        b"To: bounce-jdoe=example.net@b.example.com\n"
        b"Subject: Returned mail\n\n"
        b"Something went wrong with your message.\n\n"
        b"The server said: 550 5.1.1 mailbox unavailable\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    assert report.format == "verp"
    (rcpt,) = report.recipients
    assert (rcpt.rcpt, rcpt.dsnStatus, rcpt.hard) == ("jdoe@example.net", "5.1.1", True)
    assert report.orig == "bounce@b.example.com"


def test_ordinary_mail_is_not_a_bounce() -> None:
    """A person's reply (even to a VERP address) is not a bounce."""
    raw = (
        b"From: Jane <jane@example.net>\nTo: bounce-jdoe=example.net@b.example.com\n"
        b"Subject: Re: Weekly\n\nPlease stop; error 550 is what I feel.\n"
    )
    assert parse_bounce(raw) is None


def test_base64_delivery_status_with_8bit_junk_is_read() -> None:
    """A base64 delivery-status part with stray 8-bit bytes still yields its recipients."""
    body = base64.encodebytes(
        b"Reporting-MTA: dns; mx.example.org\n\n"
        b"Final-Recipient: rfc822; a@example.org\nAction: failed\nStatus: 5.1.1\n"
    )
    raw = dsn(
        b"", body_of_dsn=body + b"\xff\xfe\n", dsn_headers=b"Content-Transfer-Encoding: base64\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    assert [r.rcpt for r in report.recipients] == ["a@example.org"]


def test_recipients_are_capped() -> None:
    """A notice naming thousands of recipients is cut at MAX_RECIPIENTS."""
    raw = (
        b"Return-Path: <>\nFrom: MAILER-DAEMON@x.example\nSubject: failure notice\n\n"
        b"Hi. This is the qmail-send program at x.example.\n\n"
        + b"".join(b"<u%d@example.org>:\n550 5.1.1 no mailbox\n\n" % i for i in range(1500))
        + b"--- Below this line is a copy of the message.\n\nSubject: hi\n"
    )
    report = parse_bounce(raw)
    assert report is not None
    assert len(report.recipients) == MAX_RECIPIENTS
    assert report.recipients[7].dsnDiag == "550 5.1.1 no mailbox"
