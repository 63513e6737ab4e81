"""Feedback-loop complaints: an ARF report (RFC 5965) parsed into one record.

This is the parsing core of PowerMTA's `<feedback-loop-processor>` and its `f` acct
records. `parse_arf(raw)` answers a `FeedbackReport` or None when the message is not
an ARF report.

Choices:

* **What counts as ARF**: a message with a `message/feedback-report` part, wherever it
  sits. RFC 5965 puts it in a top-level `multipart/report; report-type=feedback-report`,
  but FBL relays (Amazon SES passing on Yahoo's reports, forwarding mailboxes) wrap
  the report, and the part itself is the unambiguous sign. Yahoo's, AOL's and Return
  Path's reports all use it.
* **Fields** are read with the stdlib `email` package (`mime.field_blocks`): the
  RFC 5965 names (`Feedback-Type`, `User-Agent`, `Version`, `Original-Mail-From`,
  `Original-Rcpt-To`, `Arrival-Date` or the older `Received-Date`, `Source-IP`,
  `Reported-Domain`, `Reporting-MTA`, `Original-Envelope-Id`) get attributes; every
  field is also kept in `arf_fields` (lower-cased names) for PowerMTA's `arf_<name>`
  acct fields. `feedback_type` is lower-cased; a report without one is `other`
  (RFC 5965's catch-all).
* **The complainer** (`original_rcpt_to`, PowerMTA's `rcpt`) is `Original-Rcpt-To`; the
  field is optional and many FBLs (Return Path for Terra, NetEase) leave it out, so it
  falls back to the `To` of the reported message (`message/rfc822` or
  `text/rfc822-headers` part), then to the recipient of a VERP `orig`.
* **The original** (`orig`) is `Original-Mail-From`, else the reported message's
  `Return-Path`. A VERP `orig` is decoded as in `dsn.py`: `orig` becomes the
  unVERPed sender and `verp_rcpt` the recipient it encoded.
* **The reported message's headers** (`headers`, keyed by lower-cased name, first
  occurrence wins) serve `header_X` acct fields and `map-header-to-field`; `jobId` is
  its `X-Job`, `message_id` its `Message-ID`.

Every value is CR/LF-free and length-capped (`mime.clean`); no input makes it raise.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.message import Message

import attrs

from mtaserver.inbound import mime
from mtaserver.inbound.verp import decode_verp


@attrs.frozen
class FeedbackReport:
    """A parsed feedback-loop report (an `f` acct record's values)."""

    format: str
    feedback_type: str
    user_agent: str = ""
    version: str = ""
    original_rcpt_to: str = ""
    orig: str = ""
    verp_rcpt: str = ""
    reported_domain: str = ""
    source_ip: str = ""
    arrival_date: str = ""
    reporting_mta: str = ""
    envId: str = ""  # PowerMTA's field name
    jobId: str = ""
    message_id: str = ""
    subject: str = ""
    arf_fields: dict[str, str] = attrs.field(factory=dict, hash=False)
    """Every feedback-report field by lower-cased name, for `arf_<name>` acct fields."""
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    """The reported message's headers by lower-cased name, for `header_X` acct fields."""


def parse_arf(raw: bytes, *, verp_prefixes: Iterable[str] = ()) -> FeedbackReport | None:
    """The feedback report in message `raw`, or None if it is not an ARF report."""
    try:
        return _parse(raw, tuple(verp_prefixes))
    except Exception:  # hostile input: a parser bug must not lose the message
        return None


def _parse(raw: bytes, prefixes: tuple[str, ...]) -> FeedbackReport | None:
    msg = mime.parse_message(raw)
    if msg is None:
        return None
    report = _report_part(msg)
    if report is None:
        return None
    fields: dict[str, str] = {}
    for block in mime.field_blocks(report):
        for name, value in block.items():
            fields.setdefault(name, value)
    original = mime.embedded_original(msg)
    headers = mime.header_map(original)
    orig = mime.address(fields.get("original-mail-from", "")) or mime.address(
        headers.get("return-path", "")
    )
    verp = decode_verp(orig, prefixes) if orig else None
    rcpt = (
        mime.address(fields.get("original-rcpt-to", ""))
        or mime.address(headers.get("to", ""))
        or (verp.rcpt if verp else "")
    )
    return FeedbackReport(
        format="arf",
        feedback_type=(fields.get("feedback-type", "").split() or ["other"])[0].lower(),
        user_agent=fields.get("user-agent", ""),
        version=fields.get("version", ""),
        original_rcpt_to=rcpt,
        orig=verp.orig if verp else orig,
        verp_rcpt=verp.rcpt if verp else "",
        reported_domain=fields.get("reported-domain", ""),
        source_ip=fields.get("source-ip", ""),
        arrival_date=fields.get("arrival-date", "") or fields.get("received-date", ""),
        reporting_mta=mime.typed_value(fields.get("reporting-mta", ""))[1],
        envId=fields.get("original-envelope-id", ""),
        jobId=headers.get("x-job", ""),
        message_id=headers.get("message-id", "") or fields.get("message-id", ""),
        subject=headers.get("subject", ""),
        arf_fields=fields,
        headers=headers,
    )


def _report_part(msg: Message) -> Message | None:
    """The `message/feedback-report` part of `msg`, or None."""
    for part in mime.parts(msg):
        if part.get_content_type() == "message/feedback-report":
            return part
    return None
