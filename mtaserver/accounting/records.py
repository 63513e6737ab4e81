"""Accounting records: which fields a record has, how it is built from a journal event,
and how it is written as a CSV or JSON line.

This is the pure core of accounting (no Twisted, no files): a record is a plain
`dict[str, str]` keyed by PowerMTA's field names (DESIGN.md section 5), so the file
writers and the webhook batchers format exactly the same values. Time is always taken
from the event, never from a clock, so replaying the journal rebuilds identical lines.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping

from mtaserver.accounting.bounce import classify
from mtaserver.events import Envelope, Event, Outcome, QueueFailure, Received, Recipient

RECORD_TYPES: tuple[str, ...] = ("r", "d", "b", "t", "tq", "f")
"""PowerMTA's record types, in the order their columns are laid out in a CSV file."""

DEFAULT_RECORDS: frozenset[str] = frozenset({"d", "b"})

FIELDS: tuple[str, ...] = (
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
    "totalSecondsQueued",
    "dlvTlsProtocol",
    "dlvTlsCipher",
    "rcvSmtpUser",
)
"""Every standard field, in DESIGN.md section 5 order; `header_X` fields come after."""

HEADER_PREFIX = "header_"

# The DSN action (RFC 3464) a record type implies when the event does not name one.
_DEFAULT_ACTION = {"d": "relayed", "b": "failed", "t": "delayed", "tq": "delayed"}


def format_time(ts: float) -> str:
    """`ts` (seconds since the epoch) as PowerMTA writes it: `YYYY-MM-DD HH:MM:SS+0000`."""
    return time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(ts))


def header_field(name: str) -> str:
    """The field name for header `name`: `X-Campaign` -> `header_X-Campaign`."""
    return name if name.startswith(HEADER_PREFIX) else HEADER_PREFIX + name


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
        for field in FIELDS if name == "*" else (name,):
            out.setdefault(field, None)
    for name in header_fields:
        out.setdefault(header_field(name), None)
    return tuple(out)


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
        "dsnStatus": event.dsn_status,
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
        dsnStatus=event.dsn_status,
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
    carries, `QueueFailure` one `tq`, `Removed` none. Each record has every standard
    field (empty when it does not apply) plus `header_X` for each of `header_names`.
    """
    names = tuple(header_names)
    if isinstance(event, Received):
        return _received(event, names)
    if isinstance(event, Outcome):
        return _outcome(event, names)
    if isinstance(event, QueueFailure):
        return _queue_failure(event, names)
    return []


_LINE_BREAKS = re.compile(r"[\r\n\x00]+")


def one_line(value: str) -> str:
    """`value` with each run of CR, LF or NUL replaced by one space.

    Values come from remote servers (reply texts in dsnDiag) and from clients (ORCPT,
    ENVID, header values). RFC 4180 would allow a quoted line break, but acct files
    are read line by line by `tail -f`, grep and log shippers: a CR/LF in a field
    would let a remote server forge a record. JSON escapes them by itself.
    """
    return _LINE_BREAKS.sub(" ", value)


def _csv_quote(value: str) -> str:
    """RFC 4180: quote a value holding a comma or a quote; double quotes; never a line break."""
    value = one_line(value)
    if any(c in value for c in ',"'):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_header(fields: Iterable[str]) -> str:
    """The CSV header row for `fields`, ending in LF."""
    return ",".join(_csv_quote(f) for f in fields) + "\n"


def csv_line(record: Mapping[str, str], fields: Iterable[str]) -> str:
    """One CSV row (RFC 4180 quoting, LF line end like PowerMTA on Unix); missing = ''."""
    return ",".join(_csv_quote(record.get(f, "")) for f in fields) + "\n"


def json_line(record: Mapping[str, str], fields: Iterable[str]) -> str:
    """One JSON object on one line holding only `fields` (values are strings), LF-ended."""
    obj = {f: record.get(f, "") for f in fields}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
