"""Accounting records: which fields a record has, how it is built from a journal event,
and how it is written as a CSV or JSON line.

This is the pure core of accounting (no Twisted, no files): a record is a plain
`dict[str, str]` keyed by PowerMTA's acct field names (`type, timeLogged, ...`), so the file
writers and the webhook batchers format exactly the same values. Time is always taken
from the event, never from a clock, so replaying the journal rebuilds identical lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping

from mtaserver.accounting.bounce import classify
from mtaserver.config import values
from mtaserver.events import (
    Envelope,
    Event,
    Outcome,
    QueueFailure,
    Received,
    Recipient,
    RemoteReport,
)

RECORD_TYPES: tuple[str, ...] = values.RECORD_TYPES
"""PowerMTA's record types, in the order their columns are laid out in a CSV file.

The config's own list: `test config` and the writers check against the same one."""

DEFAULT_RECORDS: frozenset[str] = frozenset({"d", "b"})

FIELDS: tuple[str, ...] = values.ACCT_FIELDS
"""Every standard field in PowerMTA's documented order; `header_X` fields come after."""

HEADER_PREFIX = values.ACCT_HEADER_PREFIX

# The DSN action (RFC 3464) a record type implies when the event does not name one.
_DEFAULT_ACTION = {"d": "relayed", "b": "failed", "t": "delayed", "tq": "delayed"}


def format_time(ts: float) -> str:
    """`ts` (seconds since the epoch) as PowerMTA writes it: `YYYY-MM-DD HH:MM:SS+0000`."""
    return time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(ts))


def header_field(name: str) -> str:
    """The field name for header `name`: `X-Campaign` -> `header_X-Campaign`."""
    return name if name.startswith(HEADER_PREFIX) else HEADER_PREFIX + name


REPORT_FIELDS: Mapping[str, tuple[str, ...]] = values.REPORT_FIELDS
"""Fields only `rb`/`rs`/`f` records have (the processors'); `*` includes them there."""

ALL_FIELDS: frozenset[str] = frozenset(FIELDS).union(
    *REPORT_FIELDS.values(), (values.USER_STRING_FIELD,)
)


def standard_fields(record_type: str) -> tuple[str, ...]:
    """What `*` stands for in `record_type`'s field list: FIELDS, plus its own extras."""
    return FIELDS + REPORT_FIELDS.get(record_type, ())


def fields_for(
    record_type: str,
    record_fields: Mapping[str, Iterable[str]] | None = None,
    header_fields: Iterable[str] = (),
) -> tuple[str, ...]:
    """The fields written for `record_type`, in order, without duplicates.

    `record_fields` maps a type (or `*`, the default for every type) to a field list in
    which `*` stands for all standard fields; a type named nowhere gets all fields.
    `header_fields` (from `map-header-to-field`) are appended to every type's list.
    """
    selected: Iterable[str] = ("*",)
    if record_fields is not None:
        selected = record_fields.get(record_type, record_fields.get("*", ("*",)))
    out: dict[str, None] = {}
    for name in selected:
        if name.startswith("!"):  # `*,!orcpt`: leave out what was selected before
            out.pop(name[1:], None)
            continue
        for field in standard_fields(record_type) if name == "*" else (name,):
            out.setdefault(field, None)
    for name in header_fields:
        out.setdefault(header_field(name), None)
    return tuple(out)


#: RFC 3463 (and RFC 7505's X.1.10) meanings, as PowerMTA adds them to `dsnStatus`.
_STATUS_TEXT: Mapping[str, str] = {
    "0.0": "undefined status",
    "1.0": "other address status",
    "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.4": "destination mailbox address ambiguous",
    "1.5": "destination mailbox address valid",
    "1.6": "mailbox has moved",
    "1.7": "bad sender's mailbox address syntax",
    "1.8": "bad sender's system address",
    "1.10": "recipient address has null MX",
    "2.0": "other or undefined mailbox status",
    "2.1": "mailbox disabled, not accepting messages",
    "2.2": "mailbox full",
    "2.3": "message length exceeds administrative limit",
    "2.4": "mailing list expansion problem",
    "3.0": "other or undefined mail system status",
    "3.1": "mail system full",
    "3.2": "system not accepting network messages",
    "3.3": "system not capable of selected features",
    "3.4": "message too big for system",
    "3.5": "system incorrectly configured",
    "4.0": "other or undefined network or routing status",
    "4.1": "no answer from host",
    "4.2": "bad connection",
    "4.3": "routing server failure",
    "4.4": "unable to route",
    "4.5": "network congestion",
    "4.6": "routing loop detected",
    "4.7": "delivery time expired",
    "5.0": "other or undefined protocol status",
    "5.1": "invalid command",
    "5.2": "syntax error",
    "5.3": "too many recipients",
    "5.4": "invalid command arguments",
    "5.5": "wrong protocol version",
    "6.0": "other or undefined media error",
    "6.1": "media not supported",
    "6.2": "conversion required and prohibited",
    "6.3": "conversion required but not supported",
    "6.4": "conversion with loss performed",
    "6.5": "conversion failed",
    "7.0": "other or undefined security status",
    "7.1": "delivery not authorized, message refused",
    "7.2": "mailing list expansion prohibited",
    "7.3": "security conversion required but not possible",
    "7.4": "security features not supported",
    "7.5": "cryptographic failure",
    "7.6": "cryptographic algorithm not supported",
    "7.7": "message integrity failure",
}

_BARE_STATUS = re.compile(r"([245])\.(\d{1,3}\.\d{1,3})")


def dsn_status_text(status: str) -> str:
    """PowerMTA's `dsnStatus` form: `5.1.1` -> `5.1.1 (bad destination mailbox address)`.

    `2.0.0` is `(success)`. A status that already has its text, or a code RFC 3463
    does not name, is written as it is.
    """
    match = _BARE_STATUS.fullmatch(status.strip())
    if not match:
        return status
    if status.strip() == "2.0.0":
        return "2.0.0 (success)"
    text = _STATUS_TEXT.get(match.group(2))
    return f"{status.strip()} ({text})" if text else status


def _headers(envelope: Envelope, header_names: Iterable[str]) -> dict[str, str]:
    """`header_X` values for the requested headers, matched case-insensitively."""
    by_lower = {k.lower(): v for k, v in envelope.acct_headers.items()}
    out: dict[str, str] = {}
    for name in header_names:
        bare = name.removeprefix(HEADER_PREFIX)
        out[HEADER_PREFIX + bare] = by_lower.get(bare.lower(), "")
    return out


def _envelope_fields(envelope: Envelope, rcpt: Recipient) -> dict[str, str]:
    """The fields every per-recipient record takes from the envelope."""
    return {
        "timeQueued": format_time(envelope.time_queued),
        "orig": envelope.sender,
        "rcpt": rcpt.address,
        "orcpt": rcpt.orcpt or "",
        "srcType": envelope.src_type,
        "srcMta": envelope.src_mta,
        "vmta": envelope.vmta or "",
        "vmtaPool": envelope.vmta_pool or "",
        "jobId": envelope.job_id or "",
        "envId": envelope.env_id or "",
        "rcvSmtpUser": envelope.smtp_user or "",
    }


def _blank(record_type: str, time_logged: float) -> dict[str, str]:
    record = dict.fromkeys(FIELDS, "")
    record["type"] = record_type
    record["timeLogged"] = format_time(time_logged)
    return record


def _received(event: Received, header_names: Iterable[str]) -> list[dict[str, str]]:
    env = event.envelope
    headers = _headers(env, header_names)
    out = []
    for rcpt in env.recipients:
        record = _blank("r", event.time)
        record.update(_envelope_fields(env, rcpt))
        record["dlvSize"] = str(env.size) if env.size else ""
        record.update(headers)
        out.append(record)
    return out


def _outcome(event: Outcome, header_names: Iterable[str]) -> list[dict[str, str]]:
    env = event.envelope
    headers = _headers(env, header_names)
    bounce_cat = event.bounce_cat
    if not bounce_cat and event.record in ("b", "t"):
        bounce_cat = classify(event.dsn_status, event.dsn_diag)
    common = {
        "dsnAction": event.dsn_action or _DEFAULT_ACTION.get(event.record, ""),
        "dsnStatus": dsn_status_text(event.dsn_status),
        "dsnDiag": event.dsn_diag,
        "dsnMta": event.dsn_mta,
        "bounceCat": bounce_cat,
        "dlvType": event.dlv_type,
        "dlvSourceIp": event.dlv_source_ip,
        "dlvDestinationIp": event.dlv_destination_ip,
        "dlvEsmtpAvailable": event.dlv_esmtp_available,
        "dlvSize": str(event.dlv_size) if event.dlv_size else "",
        "queue": event.queue,
        "totalSecondsQueued": str(max(0, round(event.time - env.time_queued))),
        "dlvTlsProtocol": event.dlv_tls_protocol,
        "dlvTlsCipher": event.dlv_tls_cipher,
    }
    out = []
    for rcpt in env.recipients:
        record = _blank(event.record, event.time)
        record.update(_envelope_fields(env, rcpt))
        record.update(common)
        # The vmta that actually tried the delivery, else the one asked for.
        record["vmta"] = event.vmta or record["vmta"]
        record["vmtaPool"] = event.vmta_pool or record["vmtaPool"]
        record.update(headers)
        out.append(record)
    return out


def _queue_failure(event: QueueFailure, header_names: Iterable[str]) -> list[dict[str, str]]:
    record = _blank("tq", event.time)
    record.update(
        dsnAction=_DEFAULT_ACTION["tq"],
        dsnStatus=dsn_status_text(event.dsn_status),
        dsnDiag=event.dsn_diag,
        dsnMta=event.dsn_mta,
        bounceCat=event.bounce_cat or classify(event.dsn_status, event.dsn_diag),
        queue=event.queue,
        vmta=event.vmta,
        vmtaPool=event.vmta_pool,
        dlvDestinationIp=event.dlv_destination_ip,
    )
    record.update((header_field(name), "") for name in header_names)
    return [record]


def records_from_event(event: Event, header_names: Iterable[str] = ()) -> list[dict[str, str]]:
    """The acct records one journal event produces (every type; the caller filters).

    `Received` gives one `r` per recipient, `Outcome` one `d`/`b`/`t` per recipient it
    carries, `QueueFailure` one `tq`, `RemoteReport` its `rb`/`rs`/`f`, `Removed` none.
    Each record has every standard field (empty when it does not apply) plus `header_X`
    for each of `header_names`.
    """
    names = tuple(header_names)
    if isinstance(event, Received):
        return _received(event, names)
    if isinstance(event, Outcome):
        return _outcome(event, names)
    if isinstance(event, QueueFailure):
        return _queue_failure(event, names)
    if isinstance(event, RemoteReport):
        return [_remote_report(event, names)]
    return []


def _remote_report(event: RemoteReport, header_names: Iterable[str]) -> dict[str, str]:
    """An `rb`, `rs` or `f` record: the original message's story, told by a report."""
    record = _blank(event.record, event.time)
    record.update(dict.fromkeys(ALL_FIELDS - set(FIELDS), ""))
    record.update(
        orig=event.orig,
        rcpt=event.rcpt,
        orcpt=event.orcpt,
        dsnAction=event.dsn_action,
        dsnStatus=event.dsn_status,
        dsnDiag=event.dsn_diag,
        dsnMta=event.dsn_mta,
        bounceCat=event.bounce_cat,
        srcType=event.src_type,
        srcMta=event.src_mta,
        dlvSourceIp=event.source_ip,
        vmta=event.vmta,
        jobId=event.job_id,
        envId=event.env_id,
        dsnReportingMta=event.dsn_reporting_mta if event.record != "f" else "",
        reportingMta=event.dsn_reporting_mta if event.record == "f" else "",
        format=event.format,
        feedbackType=event.feedback_type,
        userAgent=event.user_agent,
        reportedDomain=event.reported_domain,
    )
    for name in header_names:
        bare = name.removeprefix(HEADER_PREFIX)
        record[HEADER_PREFIX + bare] = event.headers.get(bare.lower(), "")
    return record


_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(value: str) -> str:
    """`value` with each run of control characters (CR, LF, NUL, ESC...) as one space.

    Values come from remote servers (reply texts in dsnDiag) and from clients (ORCPT,
    ENVID, header values). RFC 4180 would allow a quoted line break, but acct files
    are read line by line by `tail -f`, grep and log shippers: a CR/LF in a field
    would let a remote server forge a record, and an ESC sequence would reach the
    terminal of whoever reads the file. JSON escapes them by itself.
    """
    return _LINE_BREAKS.sub(" ", value)


def _csv_quote(value: str) -> str:
    """RFC 4180: quote a value holding a comma or a quote; double quotes; never a line break."""
    value = one_line(value)
    if any(c in value for c in ',"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_header(fields: Iterable[str]) -> str:
    """The CSV header row for `fields`, ending in CRLF."""
    return ",".join(_csv_quote(f) for f in fields) + "\r\n"


def csv_line(record: Mapping[str, str], fields: Iterable[str]) -> str:
    """One CSV row: RFC 4180 quoting and CRLF line end, as PowerMTA writes; missing = ''."""
    return ",".join(_csv_quote(record.get(f, "")) for f in fields) + "\r\n"


def json_line(record: Mapping[str, str], fields: Iterable[str]) -> str:
    """One JSON object on one line holding only `fields` (values are strings), LF-ended."""
    obj = {f: record.get(f, "") for f in fields}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
