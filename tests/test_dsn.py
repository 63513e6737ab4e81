"""RFC 3464 delivery status notifications: when to send them and what they say."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.events import Envelope, Recipient
from mtaserver.message.dsn import (
    FailedRecipient,
    build_dsn,
    clean_text,
    dsn_envelope,
    header_section,
    notify_wants,
    original_recipient_field,
    should_send_dsn,
    status_for,
    wanted_failures,
    xtext_decode,
)

NOW = 1_700_000_100.0
ORIGINAL = (
    b"From: Sender <sender@example.test>\r\n"
    b"To: rcpt@remote.test\r\n"
    b"Subject: quarterly report\r\n"
    b"Message-ID: <orig-1@example.test>\r\n"
    b"\r\n"
    b"The body, line one.\r\n"
    b"Line two.\r\n"
)


def _envelope(**kw: object) -> Envelope:
    fields: dict[str, object] = {
        "msg_id": "m1",
        "sender": "sender@example.test",
        "recipients": (Recipient("rcpt@remote.test"), Recipient("other@remote.test")),
        "time_queued": 1_700_000_000.0,
    }
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def _failure(address: str = "rcpt@remote.test", **kw: object) -> FailedRecipient:
    fields: dict[str, object] = {
        "recipient": Recipient(address),
        "action": "failed",
        "status": "5.1.1",
        "diag": "550 5.1.1 <rcpt@remote.test>: Recipient address rejected",
        "remote_mta": "mx.remote.test",
    }
    fields.update(kw)
    return FailedRecipient(**fields)  # type: ignore[arg-type]


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _parts(data: bytes) -> tuple[EmailMessage, list[Message]]:
    report = _parse(data)
    parts = report.get_payload()
    assert isinstance(parts, list)
    return report, parts


def _blocks(status_part: Message) -> list[Message]:
    blocks = status_part.get_payload()
    assert isinstance(blocks, list)
    return blocks


def _build(
    envelope: Envelope | None = None,
    failures: list[FailedRecipient] | None = None,
    original: bytes = ORIGINAL,
    **kw: object,
) -> bytes:
    return build_dsn(
        envelope or _envelope(),
        failures or [_failure()],
        original,
        kw.pop("reporting_mta", "mta.example.net"),  # type: ignore[arg-type]
        kw.pop("postmaster", ""),  # type: ignore[arg-type]
        NOW,
        "mta.example.net",
        **kw,  # type: ignore[arg-type]
    )


# -- whether to send -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "deliver_local_dsn", "expected"),
    [
        (_envelope(), True, True),
        (_envelope(sender=""), True, False),
        (_envelope(is_dsn=True), True, False),
        (_envelope(), False, False),
    ],
)
def test_should_send_dsn(envelope: Envelope, deliver_local_dsn: bool, expected: bool) -> None:
    """No DSN to the null sender, about a DSN, or with deliver-local-dsn off."""
    assert should_send_dsn(envelope, deliver_local_dsn) is expected


@pytest.mark.parametrize(
    ("notify", "action", "expected"),
    [
        (None, "failed", True),
        (None, "delayed", False),
        (None, "delivered", False),
        ("NEVER", "failed", False),
        ("never", "delayed", False),
        ("SUCCESS", "failed", False),
        ("SUCCESS", "delivered", True),
        ("FAILURE,DELAY", "delayed", True),
        ("failure, delay", "failed", True),
        ("DELAY", "failed", False),
    ],
)
def test_notify_wants(notify: str | None, action: str, expected: bool) -> None:
    """NOTIFY decides per recipient; without it only failures are reported."""
    assert notify_wants(Recipient("a@b.test", notify=notify), action) is expected


def test_wanted_failures_drops_notify_never() -> None:
    """Recipients that said NOTIFY=NEVER are left out of the report."""
    kept = _failure("a@remote.test")
    never = FailedRecipient(Recipient("b@remote.test", notify="NEVER"), "failed", "5.1.1", "x")
    assert wanted_failures([kept, never]) == [kept]


def test_unknown_action_is_refused() -> None:
    """A typo in the action cannot reach a report."""
    with pytest.raises(ValueError):
        _failure(action="bounced")


# -- the report ------------------------------------------------------------------------


def test_top_level_headers() -> None:
    """A multipart/report from MAILER-DAEMON to the envelope sender, auto-replied."""
    report, parts = _parts(_build())
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"].addresses[0].addr_spec == "MAILER-DAEMON@mta.example.net"
    assert report["To"].addresses[0].addr_spec == "sender@example.test"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert report["Message-ID"].endswith("@mta.example.net>")
    assert parsedate_to_datetime(report["Date"]).timestamp() == NOW
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_postmaster_is_the_sender_when_configured() -> None:
    """With a postmaster address, replies to the bounce reach a person."""
    report = _parse(_build(postmaster="postmaster@example.net"))
    assert report["From"].addresses[0].addr_spec == "postmaster@example.net"


def test_human_readable_part_names_each_recipient() -> None:
    """The text part says what happened to whom, and who said so."""
    _, parts = _parts(_build(failures=[_failure(), _failure("other@remote.test")]))
    text = parts[0].get_content()  # type: ignore[attr-defined]
    assert "mta.example.net" in text
    assert "<rcpt@remote.test>: failed (host mx.remote.test said): 550 5.1.1" in text
    assert "<other@remote.test>: failed" in text


def test_delivery_status_fields() -> None:
    """Every RFC 3464 field: per message, then one block per recipient."""
    envelope = _envelope(
        env_id="ENV+1",
        recipients=(Recipient("rcpt@remote.test", orcpt="rfc822;Rcpt+x@remote.test"),),
    )
    failures = [
        FailedRecipient(
            envelope.recipients[0], "failed", "5.1.1", "550 5.1.1 no", "mx.remote.test"
        ),
        FailedRecipient(
            Recipient("late@remote.test", notify="DELAY"), "delayed", "4.4.1", "connect timeout", ""
        ),
    ]
    _, parts = _parts(_build(envelope, failures))
    message_block, first, second = _blocks(parts[1])
    assert message_block["Reporting-MTA"] == "dns; mta.example.net"
    assert message_block["Original-Envelope-Id"] == "ENV+1"
    assert parsedate_to_datetime(message_block["Arrival-Date"]).timestamp() == 1_700_000_000.0
    assert first["Final-Recipient"] == "rfc822; rcpt@remote.test"
    assert first["Original-Recipient"] == "rfc822; Rcpt+x@remote.test"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; mx.remote.test"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 no"
    assert second["Final-Recipient"] == "rfc822; late@remote.test"
    assert second["Action"] == "delayed"
    assert second["Status"] == "4.4.1"
    assert second["Original-Recipient"] is None
    assert second["Remote-MTA"] is None


def test_optional_fields_absent_without_data() -> None:
    """No envid, no orcpt, no remote: those fields are left out, not empty."""
    _, parts = _parts(_build(failures=[_failure(remote_mta="", diag="")]))
    message_block, block = _blocks(parts[1])
    assert message_block["Original-Envelope-Id"] is None
    assert block["Remote-MTA"] is None
    assert block["Diagnostic-Code"] is None


def test_headers_only_by_default() -> None:
    """Without RET=FULL only the original's header section comes back."""
    _, parts = _parts(_build())
    returned = parts[2].get_content()  # type: ignore[attr-defined]
    assert "Subject: quarterly report" in returned
    assert "The body" not in returned


def test_ret_full_returns_the_whole_message() -> None:
    """RET=FULL returns the original as message/rfc822, body included."""
    _, parts = _parts(_build(_envelope(ret="FULL")))
    assert parts[2].get_content_type() == "message/rfc822"
    inner = parts[2].get_payload()[0]  # type: ignore[index]
    assert inner["Subject"] == "quarterly report"
    assert inner.get_content() == "The body, line one.\r\nLine two.\r\n"


def test_ret_full_over_the_cap_returns_headers_only() -> None:
    """A big original under RET=FULL still comes back as headers only."""
    big = ORIGINAL + b"x" * 2000 + b"\r\n"
    _, parts = _parts(_build(_envelope(ret="FULL"), original=big, max_full_original=1000))
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "xxxx" not in parts[2].get_content()  # type: ignore[attr-defined]


def test_output_has_only_crlf_line_endings() -> None:
    """Every line ends in CRLF, even for an original written with bare LF."""
    data = _build(_envelope(ret="FULL"), original=ORIGINAL.replace(b"\r\n", b"\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


def test_eight_bit_original_survives_byte_for_byte() -> None:
    """An 8-bit original's bytes are returned unchanged, marked 8bit."""
    original = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()
    data = _build(_envelope(ret="FULL"), original=original)
    assert original in data
    assert b"Content-Transfer-Encoding: 8bit" in data


def test_diag_cannot_inject_header_fields() -> None:
    """CR, LF and non-ASCII in a remote's reply stay inside the one field."""
    evil = "550 no\r\nX-Injected: yes\r\n\r\nBody-ish: caf\u00e9 \u2603"
    _, parts = _parts(_build(failures=[_failure(diag=evil, remote_mta="mx\r\nX-Evil: 1")]))
    _, block = _blocks(parts[1])
    assert block["X-Injected"] is None and block["X-Evil"] is None
    assert block["Diagnostic-Code"] == (
        "smtp; 550 no X-Injected: yes Body-ish: caf\\x{E9} \\x{2603}"
    )
    assert block["Remote-MTA"] == "dns; mx X-Evil: 1"
    text = parts[0].get_content()  # type: ignore[attr-defined]
    assert "caf\u00e9 \u2603" in text


def test_non_ascii_recipient_uses_utf8_address_type() -> None:
    """An internationalised address is reported as RFC 6533 utf-8 type, escaped."""
    failure = _failure("j\u00f6rg@remote.test")
    _, parts = _parts(_build(_envelope(smtputf8=True), [failure]))
    _, block = _blocks(parts[1])
    assert block["Final-Recipient"] == "utf-8; j\\x{F6}rg@remote.test"


def test_delay_only_report_subject() -> None:
    """A report of delays only does not claim the mail was returned."""
    failure = FailedRecipient(Recipient("a@remote.test", notify="DELAY"), "delayed", "4.4.1", "t")
    assert _parse(_build(failures=[failure]))["Subject"] == "Delayed Mail (still being retried)"


def test_empty_failures_refused() -> None:
    """A DSN about nobody is a caller bug."""
    with pytest.raises(ValueError):
        build_dsn(_envelope(), [], ORIGINAL, "mta.test", "", NOW, "mta.test")


# -- helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("5.1.1", "failed", "5.1.1"),
        ("4.4.7", "failed", "4.4.7"),
        ("", "failed", "5.0.0"),
        ("550", "failed", "5.0.0"),
        ("5.1.1\r\nX: y", "failed", "5.0.0"),
        ("", "delayed", "4.0.0"),
        ("", "delivered", "2.0.0"),
    ],
)
def test_status_for(status: str, action: str, expected: str) -> None:
    """Malformed status codes fall back to the action's generic code."""
    failure = FailedRecipient(Recipient("a@b.test"), action, status, "")
    assert status_for(failure) == expected


@pytest.mark.parametrize(
    ("orcpt", "expected"),
    [
        ("rfc822;a+2Bb@x.test", "rfc822; a+2Bb@x.test"),
        ("rfc822;a@x.test\r\nX-Injected: 1", "rfc822; a@x.test X-Injected: 1"),
        ("a@x.test", "rfc822; a@x.test"),
        ("utf-8;j\\x{F6}rg@x.test", "utf-8; j\\x{F6}rg@x.test"),
    ],
)
def test_original_recipient_field(orcpt: str, expected: str) -> None:
    """ORCPT is shown as stored (already decoded), controls as spaces; bare gets rfc822."""
    assert original_recipient_field(orcpt) == expected


def test_xtext_decode() -> None:
    """`+XX` hex pairs decode; other text is left alone."""
    assert xtext_decode("a+2Bb+3Dc+zz") == "a+b=c+zz"


def test_header_section() -> None:
    """The header section ends before the blank line, with CRLF endings."""
    assert header_section(b"A: 1\nB: 2\n\nbody\n") == b"A: 1\r\nB: 2\r\n"
    assert header_section(b"A: 1") == b"A: 1\r\n"


@given(st.text())
def test_clean_text_is_one_printable_ascii_line(text: str) -> None:
    """Whatever a remote says, the field text is printable ASCII on one line."""
    cleaned = clean_text(text)
    assert cleaned.isascii()
    assert all(" " <= ch <= "~" for ch in cleaned)


def test_dsn_envelope() -> None:
    """The bounce goes from the null sender to the original sender, marked as a DSN."""
    original = _envelope(vmta="vmta1", vmta_pool="pool1", env_id="E", job_id="J")
    data = _build(original)
    bounce = dsn_envelope(original, "m2", NOW, data)
    assert bounce.msg_id == "m2"
    assert bounce.sender == ""
    assert bounce.recipients == (Recipient("sender@example.test", notify="NEVER"),)
    assert bounce.is_dsn and bounce.time_queued == NOW and bounce.size == len(data)
    assert (bounce.vmta, bounce.vmta_pool, bounce.job_id, bounce.env_id) == (
        "vmta1",
        "pool1",
        None,
        None,
    )
    assert not should_send_dsn(bounce, True)
