"""Reading one message for a `<bounce-processor>` or `<feedback-loop-processor>`: the
verdict (matched, unmatched, error) and the `RemoteReport` events (`rb`, `rs`, `f`).

Pure functions over the bytes of a received message and its envelope, with the time
passed in; `mtaserver.processors` runs them in the thread pool and acts on the verdict.
A message is *matched* when a report was read; an *error* when it has the form of a
report (null sender for the bounce processor, `multipart/report`, a delivery-status or
feedback-report part) but no recipient could be read; *unmatched* otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from mtaserver.config.model import ReportProcessorSettings
from mtaserver.events import Envelope, Recipient, RemoteReport
from mtaserver.inbound import mime
from mtaserver.inbound.arf import FeedbackReport, parse_arf
from mtaserver.inbound.dsn import BounceReport, parse_bounce

BOUNCE_PROCESSOR = "bounce-processor"
FBL_PROCESSOR = "feedback-loop-processor"

MAX_PARSE_BYTES = 2 * 2**20
"""Bytes of a message the parsers read: the report parts come first, and a report
that returns a big original need not be read whole (the parse is linear, but CPU)."""
MAX_HEADERS = 100
"""Headers of the original kept for `header_X` fields."""

MATCHED, UNMATCHED, ERROR = "matched", "unmatched", "error"


@attrs.frozen
class Verdict:
    """What processing a message found: its records and which way it ends."""

    outcome: str  # matched | unmatched | error
    events: tuple[RemoteReport, ...] = ()


def processor_for(
    processors: Sequence[ReportProcessorSettings], recipients: Sequence[Recipient]
) -> ReportProcessorSettings | None:
    """The processor every recipient is listed by, or None (none, or a mix)."""
    if not recipients:
        return None
    for processor in processors:
        if all(processor.matches(r.address) for r in recipients):
            return processor
    return None


def read_report(
    raw: bytes, envelope: Envelope, kind: str, now: float, size: int | None = None
) -> Verdict:
    """Parse a message for processor `kind`: its records, or unmatched/error. CPU work.

    `raw` is (at most `MAX_PARSE_BYTES` of) the message; `size` its whole size.
    """
    rcpt = envelope.recipients[0].address if envelope.recipients else ""
    events: tuple[RemoteReport, ...] = ()
    if kind == BOUNCE_PROCESSOR:
        bounce = parse_bounce(raw, report_rcpt=rcpt)
        if bounce is not None:
            events = bounce_events(bounce, envelope, now)
    else:
        complaint = parse_arf(raw)
        if complaint is not None and complaint.original_rcpt_to:
            events = (complaint_event(complaint, envelope, now),)
    if events:
        return Verdict(MATCHED, events)
    return Verdict(ERROR if looks_like_report(raw, envelope, kind) else UNMATCHED)


def looks_like_report(raw: bytes, envelope: Envelope, kind: str) -> bool:
    """Has the message the form of a report (so failing to read it is an error)?"""
    if kind == BOUNCE_PROCESSOR and envelope.sender == "":
        return True  # a null reverse-path is how every bounce arrives (RFC 5321 4.5.5)
    msg = mime.parse_message(raw)
    if msg is None:
        return False
    report_types = {"multipart/report", "message/delivery-status", "message/feedback-report"}
    return any(part.get_content_type() in report_types for part in mime.parts(msg))


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return dict(list(headers.items())[:MAX_HEADERS])


def bounce_events(report: BounceReport, envelope: Envelope, now: float) -> tuple[RemoteReport, ...]:
    """One `rb` per failed and one `rs` per delayed recipient of a parsed bounce."""
    headers = _headers(report.headers)
    return tuple(
        RemoteReport(
            record="rb" if r.action == "failed" else "rs",
            time=now,
            msg_id=envelope.msg_id,
            rcpt=r.rcpt,
            orig=report.orig,
            orcpt=r.orcpt,
            dsn_action=r.action,
            dsn_status=r.dsnStatus,
            dsn_diag=r.dsnDiag,
            dsn_mta=r.dsnMta,
            dsn_reporting_mta=report.dsnReportingMta,
            bounce_cat=r.bounceCat,
            hard=r.hard,
            format=report.format,
            src_type=envelope.src_type,
            src_mta=envelope.src_mta,
            job_id=report.jobId or headers.get("x-job", ""),
            env_id=report.envId,
            vmta=headers.get("x-virtual-mta", ""),
            headers=headers,
        )
        for r in report.recipients
    )


def complaint_event(report: FeedbackReport, envelope: Envelope, now: float) -> RemoteReport:
    """The `f` record of a parsed feedback-loop report."""
    headers = _headers(report.headers)
    return RemoteReport(
        record="f",
        time=now,
        msg_id=envelope.msg_id,
        rcpt=report.original_rcpt_to,
        orig=report.orig,
        format=report.format,
        feedback_type=report.feedback_type,
        user_agent=report.user_agent,
        reported_domain=report.reported_domain,
        source_ip=report.source_ip,
        dsn_reporting_mta=report.reporting_mta,
        src_type=envelope.src_type,
        src_mta=envelope.src_mta,
        job_id=report.jobId,
        env_id=report.envId,
        vmta=headers.get("x-virtual-mta", ""),
        headers=headers,
    )
