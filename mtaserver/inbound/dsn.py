"""Remote bounces: a delivery-failure notice parsed into one record per failed recipient.

This is the parsing core of PowerMTA's `<bounce-processor>` (its `rb` records, and the
`rs` records of `delayed` notices). `parse_bounce(raw)` answers a `BounceReport` whose
recipients carry PowerMTA's field names (`rcpt`, `dsnAction`-style `action`,
`dsnStatus`, `dsnDiag`, `dsnMta`, `bounceCat`, `orcpt`), plus what can be recovered of
the original message (`orig`, `jobId`, `envId`, `message_id`), or None when the message
is not a bounce.

Choices, in the order the parser applies them:

1. **RFC 3464 first** (`format` "dsn"). A `message/delivery-status` (or RFC 6533
   `message/global-delivery-status`) part anywhere in the message is read with the
   stdlib `email` package: per-message fields (`Reporting-MTA`, `Original-Envelope-Id`,
   Postfix's `X-Postfix-Sender`) and one block per recipient (`Final-Recipient`,
   `Original-Recipient`, `Action`, `Status`, `Remote-MTA`, `Diagnostic-Code`). Only
   `failed` and `delayed` recipients are reported: `delivered`, `relayed` and
   `expanded` are success notices, not bounces. A DSN with no such recipient is not a
   bounce (None).
2. **Everything else through flufl.bounce** (GNU Mailman's detectors: qmail, Exim,
   Postfix, Exchange, Yahoo, AOL, ... 17 of them), which answers the temporary and
   permanent failed addresses (`format` "text", "qmail" for a QSBMF notice). flufl
   gives addresses only, so the diagnostic is ours: the paragraph of the notice that
   names the recipient, or, when that paragraph holds no reply (Gmail's old format
   puts the address alone on its line), the first paragraph after it with an SMTP
   reply code.
3. **Our own rule where flufl misses: QSBMF recipient paragraphs under any intro.**
   flufl's qmail detector only starts after one of seven known intro sentences, and
   Yahoo's "Failure Notice" ("Sorry, we were unable to deliver your message to the
   following address.") is not one of them (its Yahoo detector wants the sender to be
   `mailer-daemon@yahoo...`, which relayed and regional Yahoo notices are not). So a
   notice from a mailer daemon (null Return-Path, or From `MAILER-DAEMON`/`postmaster`)
   that has `<address>:` recipient paragraphs followed by qmail's "copy of the message"
   separator is read as QSBMF.
4. **VERP as the last resort.** If no recipient was found but the bounce came back
   to a VERP return path (`prefix-rcpt=domain@bounce.domain`, see `verp.py`) and it is
   a failure notice from a mailer daemon carrying a 5xx/4xx reply, that recipient is
   reported with the first reply found in the notice (`format` "verp").

The status, when a notice has none, is the enhanced code in the diagnostic, else
`X.0.0` from its basic reply code, else `5.0.0` for a failure and `4.0.0` for a delay.
`bounceCat` is `mtaserver.accounting.bounce.classify` (the same 17 categories as local
`b` records) with one remote-bounce refinement: a `X.4.4` ("unable to route") whose
text says the domain does not exist is `bad-domain`, because Postfix and Amazon SES
both report NXDOMAIN that way, and a reporting MTA that already gave up on the domain
is telling us the address is bad. `hard` is True for a `failed` recipient in
`bad-mailbox` or `bad-domain`: the address itself is bad and mailing it again cannot
succeed. Full mailboxes, disabled accounts, blocks, spam and size rejections are
soft even with a 5.x.x status (the sender may succeed later or elsewhere); this is
sisimai's `hardbounce` notion, and on the bundled 33-bounce corpus the verdicts agree
with it for all of them (see tests/test_inbound_corpus.py).

The original's `orig` is, in order: its `Return-Path`, the DSN's `X-Postfix-Sender`,
then the notice's own envelope recipient (`X-Original-To`, `Delivered-To`,
`Envelope-To`, `To`): a bounce is sent to the original MAIL FROM, which is also how
PowerMTA fills `orig` ("taken from report's recipient address"); the caller can pass
the SMTP envelope recipient as `report_rcpt`, which wins. A VERP `orig` is decoded:
`orig` becomes the unVERPed sender and `verp_rcpt` the recipient it encoded.

Every value is CR/LF-free (`mime.clean`), and no input makes the parser raise: a
message it cannot read at all is None, a partly broken one yields what could be read.
The work is linear in the message size (no backtracking regex over unbounded text, at
most `MAX_RECIPIENTS` recipients), but it is CPU work over a whole message: the server
must call it in its thread pool, never on the reactor thread.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable
from email.message import Message

import attrs
from flufl.bounce import all_failures

from mtaserver.accounting.bounce import TEXT_RULES, classify, enhanced_code
from mtaserver.inbound import mime
from mtaserver.inbound.verp import decode_verp

HARD_CATEGORIES: frozenset[str] = frozenset({"bad-mailbox", "bad-domain"})
"""The categories in which a failed recipient is a hard bounce (the address is bad)."""

REPORTED_ACTIONS: frozenset[str] = frozenset({"failed", "delayed"})

MAX_RECIPIENTS = 1000
"""Recipients kept from one report: a notice naming more is junk or an attack."""
MAX_PARAGRAPHS = 50
"""Paragraphs searched for a reply code after the one naming a recipient."""

_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_BASIC = re.compile(r"(?<![\d.])([45])\d\d(?=[ \-]|$)", re.MULTILINE)
# "host mx.example.com [192.0.2.1]:", "remote host 192.0.2.32 said:", "Connected to
# 192.0.2.225 but": a dotted name or address, never "host named <the failed domain>".
_REMOTE_HOST = re.compile(
    r"(?:remote host|\bhost|connected to)\s+(?!named\b|said\b)"
    r"([A-Za-z0-9][A-Za-z0-9\-]*(?:\.[A-Za-z0-9\-]+)+(?:\s*\[[0-9A-Fa-f:.]+\])?)",
    re.IGNORECASE,
)
_QMAIL_RCPT = re.compile(r"^<([^<>\s@]++@[^<>\s]++)>:[ \t]*$", re.MULTILINE)
_DAEMON = re.compile(r"mailer-daemon|postmaster|mail delivery", re.IGNORECASE)

# flufl.bounce logs every detector it runs at INFO and its tracebacks at ERROR: ours to
# decide, not the server log's.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


@attrs.frozen
class BouncedRecipient:
    """One recipient a remote MTA reports as failed or delayed (an `rb`/`rs` record)."""

    rcpt: str
    action: str
    dsnStatus: str  # PowerMTA's field name
    dsnDiag: str
    dsnMta: str
    hard: bool
    bounceCat: str
    orcpt: str = ""


@attrs.frozen
class BounceReport:
    """A parsed bounce: its recipients and what is known of the original message."""

    format: str
    recipients: tuple[BouncedRecipient, ...]
    orig: str = ""
    verp_rcpt: str = ""
    dsnReportingMta: str = ""
    jobId: str = ""
    envId: str = ""
    message_id: str = ""
    subject: str = ""
    headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    """The original's headers by lower-cased name, for `header_X` acct fields."""


def bounce_category(status: str, diag: str) -> str:
    """PowerMTA's `bounceCat` for a remote failure (see the module docstring)."""
    category = classify(status, diag)
    code = enhanced_code(status) or enhanced_code(diag) or ""
    if category == "routing-errors" and code[1:] == ".4.4":
        for pattern, text_category in TEXT_RULES:
            if pattern.search(diag):
                return "bad-domain" if text_category == "bad-domain" else category
    return category


def status_of(status: str, diag: str, action: str) -> str:
    """The dsnStatus: the report's own, else from the diagnostic, else from the action."""
    code = enhanced_code(status) or enhanced_code(diag)
    if code:
        return code
    basic = _BASIC.search(diag)
    if basic:
        return f"{basic.group(1)}.0.0"
    return "4.0.0" if action == "delayed" else "5.0.0"


def make_recipient(
    rcpt: str, action: str, status: str, diag: str, mta: str, orcpt: str = ""
) -> BouncedRecipient:
    """A `BouncedRecipient` with its status, category and hard verdict worked out."""
    status = status_of(status, diag, action)
    category = bounce_category(status, diag)
    hard = action == "failed" and status.startswith("5") and category in HARD_CATEGORIES
    return BouncedRecipient(
        rcpt=rcpt,
        action=action,
        dsnStatus=status,
        dsnDiag=diag,
        dsnMta=mta,
        hard=hard,
        bounceCat=category,
        orcpt=orcpt,
    )


def parse_bounce(
    raw: bytes, *, report_rcpt: str = "", verp_prefixes: Iterable[str] = ()
) -> BounceReport | None:
    """The bounce report in message `raw`, or None if it is not a bounce.

    `report_rcpt` is the SMTP envelope recipient the notice was delivered to (PowerMTA
    takes `orig` from it); `verp_prefixes` are known VERP bounce prefixes.
    """
    try:
        return _parse(raw, report_rcpt, tuple(verp_prefixes))
    except Exception:  # hostile input: a parser bug must not lose the message
        return None


def _parse(raw: bytes, report_rcpt: str, prefixes: tuple[str, ...]) -> BounceReport | None:
    msg = mime.parse_message(raw)
    if msg is None or _is_feedback_report(msg):
        return None
    original = mime.embedded_original(msg)
    dsn_parts = [p for p in mime.parts(msg) if p.get_content_type() in _DSN_TYPES]
    per_message: dict[str, str] = {}
    recipients: list[BouncedRecipient] = []
    fmt = "dsn"
    if dsn_parts:
        per_message, recipients = _from_dsn(dsn_parts[0])
        if not recipients and not _has_recipient_blocks(dsn_parts[0]):
            recipients = _from_text(msg)
            fmt = "text"
    else:
        recipients = _from_text(msg)
        fmt = "qmail" if _looks_qmail(msg) else "text"

    orig_header = mime.address(mime.header(original, "Return-Path"))
    orig = (
        mime.address(report_rcpt)
        or orig_header
        or mime.address(per_message.get("x-postfix-sender", ""))
        or _notice_rcpt(msg)
    )
    verp = decode_verp(orig, prefixes) if orig else None
    if verp is None and orig_header and orig_header != orig:
        verp = decode_verp(orig_header, prefixes)
    if not recipients and verp is not None and dsn_parts == []:
        recipients = _from_verp(msg, verp.rcpt)
        fmt = "verp" if recipients else fmt
    if not recipients:
        return None
    reporting = mime.typed_value(per_message.get("reporting-mta", ""))[1] or _reporting_host(msg)
    headers = mime.header_map(original)
    return BounceReport(
        format=fmt,
        recipients=tuple(recipients),
        orig=verp.orig if verp else orig,
        verp_rcpt=verp.rcpt if verp else "",
        dsnReportingMta=reporting,
        jobId=headers.get("x-job", ""),
        envId=per_message.get("original-envelope-id", ""),
        message_id=headers.get("message-id", "") or per_message.get("x-original-message-id", ""),
        subject=headers.get("subject", ""),
        headers=headers,
    )


def _is_feedback_report(msg: Message) -> bool:
    """True for an ARF report: complaints are the feedback-loop processor's, not ours."""
    report_type = msg.get_param("report-type", header="content-type")
    if isinstance(report_type, str) and report_type.lower() == "feedback-report":
        return True
    return any(p.get_content_type() == "message/feedback-report" for p in mime.parts(msg))


def _has_recipient_blocks(part: Message) -> bool:
    """True if the DSN part names any recipient at all (even a delivered one)."""
    return any("final-recipient" in b or "original-recipient" in b for b in mime.field_blocks(part))


def _from_dsn(part: Message) -> tuple[dict[str, str], list[BouncedRecipient]]:
    """The per-message fields and the failed/delayed recipients of a DSN part."""
    blocks = mime.field_blocks(part)
    if not blocks:
        return {}, []
    per_message: dict[str, str] = {}
    recipient_blocks = []
    for block in blocks:
        if "final-recipient" in block or "original-recipient" in block:
            recipient_blocks.append(block)
        elif not recipient_blocks:
            per_message.update({k: v for k, v in block.items() if k not in per_message})
    reporting = mime.typed_value(per_message.get("reporting-mta", ""))[1]
    out: list[BouncedRecipient] = []
    seen: set[tuple[str, str]] = set()
    for block in recipient_blocks[:MAX_RECIPIENTS]:
        action = block.get("action", "").split()[0].lower() if block.get("action") else ""
        orcpt = mime.address(block.get("original-recipient", ""))
        rcpt = mime.address(block.get("final-recipient", "")) or orcpt
        if not action and block.get("status", "").startswith(("4", "5")):
            action = "delayed" if block["status"].startswith("4") else "failed"
        if action not in REPORTED_ACTIONS or not rcpt or (rcpt.lower(), action) in seen:
            continue
        seen.add((rcpt.lower(), action))
        out.append(
            make_recipient(
                rcpt,
                action,
                block.get("status", ""),
                _diagnostic(block.get("diagnostic-code", "")),
                mime.typed_value(block.get("remote-mta", ""))[1] or reporting,
                orcpt,
            )
        )
    return per_message, out


def _diagnostic(value: str) -> str:
    """A Diagnostic-Code as PowerMTA writes dsnDiag: `smtp;550 5.1.1 ...`."""
    kind, text = mime.typed_value(value)
    return f"{kind};{text}" if kind and " " not in kind else value


def _from_text(msg: Message) -> list[BouncedRecipient]:
    """The recipients of a non-RFC 3464 notice (flufl.bounce, then our QSBMF rule)."""
    temporary: frozenset[bytes] = frozenset()
    permanent: frozenset[bytes] = frozenset()
    with contextlib.suppress(Exception):
        temporary, permanent = all_failures(msg)
    found: list[tuple[str, str]] = [
        (a.decode("ascii", "replace"), "failed") for a in sorted(permanent)
    ] + [(a.decode("ascii", "replace"), "delayed") for a in sorted(temporary - permanent)]
    notice = mime.notice_text(msg)
    if not found and _from_daemon(msg) and mime.SEPARATOR.search(_body_text(msg)):
        found = [(addr, "failed") for addr in _QMAIL_RCPT.findall(notice)]
    paragraphs = _paragraphs(notice)
    lowered = [p.lower() for p in paragraphs]
    out: list[BouncedRecipient] = []
    seen: set[str] = set()
    for addr, action in found:
        rcpt = mime.clean(addr, 320)
        if not rcpt or "@" not in rcpt or rcpt.lower() in seen:
            continue
        seen.add(rcpt.lower())
        diag = _paragraph_for(paragraphs, lowered, rcpt)
        out.append(make_recipient(rcpt, action, "", diag, _remote_host(diag)))
        if len(out) >= MAX_RECIPIENTS:
            break
    return out


def _from_verp(msg: Message, rcpt: str) -> list[BouncedRecipient]:
    """The VERP recipient, if `msg` is a daemon's failure notice with a reply code."""
    if not _from_daemon(msg):
        return []
    diag = _reply_paragraph(_paragraphs(mime.notice_text(msg)))
    if not diag:
        return []
    action = "delayed" if status_of("", diag, "failed").startswith("4") else "failed"
    return [make_recipient(rcpt, action, "", diag, _remote_host(diag))]


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")) if p.strip()]


def _has_reply(text: str) -> bool:
    return bool(enhanced_code(text) or _BASIC.search(text))


def _reply_paragraph(paragraphs: list[str]) -> str:
    """The first of `paragraphs` holding an SMTP reply code, cleaned."""
    for paragraph in paragraphs[:MAX_PARAGRAPHS]:
        if _has_reply(paragraph):
            return mime.clean(paragraph)
    return ""


def _paragraph_for(paragraphs: list[str], lowered: list[str], rcpt: str) -> str:
    """The diagnostic a plain-text notice gives for `rcpt` (see the module docstring).

    `lowered` is `paragraphs` lower-cased once, not once per recipient.
    """
    needle = rcpt.lower()
    for i, paragraph in enumerate(lowered):
        at = paragraph.find(needle)
        if at < 0:
            continue
        rest = paragraphs[i][at + len(needle) :].lstrip(">: \t")
        if rest.strip() and _has_reply(rest):
            return mime.clean(rest)
        return _reply_paragraph(paragraphs[i + 1 : i + 1 + MAX_PARAGRAPHS]) or mime.clean(rest)
    return _reply_paragraph(paragraphs)


def _remote_host(diag: str) -> str:
    """The remote MTA a plain-text diagnostic names (`host mx.example.com [192.0.2.1]`)."""
    m = _REMOTE_HOST.search(diag)
    return mime.clean(m.group(1), 200).rstrip(".:") if m else ""


def _body_text(msg: Message) -> str:
    return "\n".join(
        mime.decoded_text(p) for p in mime.parts(msg) if p.get_content_type() == "text/plain"
    )


def _from_daemon(msg: Message) -> bool:
    """True for a notice from a mailer daemon: a null Return-Path or a daemon's From."""
    return_path = mime.header(msg, "Return-Path")
    if return_path and mime.address(return_path) == "" and "<>" in return_path:
        return True
    return bool(_DAEMON.search(mime.header(msg, "From")))


def _looks_qmail(msg: Message) -> bool:
    return "qmail-send program" in mime.notice_text(msg)


def _notice_rcpt(msg: Message) -> str:
    """The address the notice itself was delivered to (the original's MAIL FROM)."""
    for name in ("X-Original-To", "Delivered-To", "Envelope-To", "To"):
        found = mime.address(mime.header(msg, name))
        if found:
            return found
    return ""


def _reporting_host(msg: Message) -> str:
    """The reporting MTA of a plain-text notice: the domain of its daemon's From."""
    sender = mime.address(mime.header(msg, "From"))
    return sender.rpartition("@")[2] if sender else ""
