"""Delivery status notifications (RFC 3464): whether to send one, and its bytes.

A bounce is the only way a sender learns that mail we accepted with a `250` did not
arrive, so it must be correct and machine-readable (`multipart/report` with a
`message/delivery-status` part that bounce processors parse), and it must never cause
more mail about mail: no DSN to the null sender, none about a DSN we generated, none
to a recipient that asked NOTIFY=NEVER (RFC 3461).

Everything here is pure: the caller passes the time and a message id domain, and
gets bytes with CRLF line endings, ready for the spool. Texts that come from remote
servers (diagnostics) are untrusted: control characters are replaced and non-ASCII is
written as RFC 6533 `\\x{HEX}` escapes, so they can neither inject header fields nor
break the 7-bit `message/delivery-status` part.

The queue's `DsnSender` (`mtaserver.queue.bounces`) uses it when recipients of a
message end up bounced, delivered with NOTIFY=SUCCESS, or delayed with NOTIFY=DELAY
(`mtaserver.queue.delay_notices`): `should_send_dsn`, then `wanted_failures`, then
`build_dsn` (in the thread pool: with RET=FULL it reads and re-encodes up to 100 KB of
original) and `dsn_envelope`, and spools the report like any other message.

PowerMTA's options shape the report: `custom-dsn-from-header` is its From: field,
`dsn-format plain-text` sends only the delivery-status fields as a `text/plain`
message (for firewalls that strip attachments), and the source's `dsn-return-default`
is the RET of a message whose MAIL gave none (`default_ret`).
"""

from __future__ import annotations

import io
import re
import string
from collections.abc import Sequence
from datetime import UTC, datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser
from email.policy import Policy
from email.utils import format_datetime, make_msgid

import attrs

from mtaserver.events import Envelope, Recipient

MAX_FULL_ORIGINAL = 100 * 1024
"""RET=FULL returns the whole original only up to this size, then its headers only."""

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
_NOTIFY_FOR_ACTION = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@attrs.frozen
class FailedRecipient:
    """One recipient to report on: what happened (`action`) and the remote's words."""

    recipient: Recipient
    action: str  # failed | delayed (RFC 3464 also allows delivered, relayed, expanded)
    status: str  # enhanced status code, e.g. 5.1.1
    diag: str  # the remote's reply or our own explanation, e.g. "550 5.1.1 No such user"
    remote_mta: str = ""  # the MX host name, when a server answered
    will_retry_until: float | None = None  # a delayed recipient: when it will be given up

    def __attrs_post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {self.action!r}")


def notify_wants(recipient: Recipient, action: str) -> bool:
    """Does the recipient's NOTIFY ask for a report on `action`? Default: FAILURE only."""
    words = {word.strip().upper() for word in (recipient.notify or "FAILURE").split(",")}
    if "NEVER" in words:
        return False
    return _NOTIFY_FOR_ACTION[action] in words


def should_send_dsn(envelope: Envelope, deliver_local_dsn: bool) -> bool:
    """May this message cause a DSN at all? Per recipient, filter with `wanted_failures`.

    Never to the null sender (RFC 5321 6.1: that is how loops of bounces are stopped),
    never about a DSN we generated, never when `deliver-local-dsn no`.
    """
    return bool(envelope.sender) and not envelope.is_dsn and deliver_local_dsn


def asks_success(envelope: Envelope) -> bool:
    """Does any recipient ask NOTIFY=SUCCESS? (A cheap test on every delivered message.)"""
    return any(r.notify is not None and "SUCCESS" in r.notify for r in envelope.recipients)


def default_ret(ret: str | None, dsn_return_default: str) -> str | None:
    """RET as MAIL gave it, else the source's `dsn-return-default` (`system`: none = HDRS)."""
    if ret:
        return ret
    return {"headers": "HDRS", "full": "FULL"}.get(dsn_return_default)


def wanted_failures(failures: Sequence[FailedRecipient]) -> list[FailedRecipient]:
    """The failures whose recipient's NOTIFY asks for them (RFC 3461 4.1)."""
    return [f for f in failures if notify_wants(f.recipient, f.action)]


# -- field text ------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """One line of printable ASCII: controls become a space, non-ASCII `\\x{HEX}`."""
    text = _CONTROL.sub(" ", text).strip()
    return "".join(ch if ord(ch) < 128 else f"\\x{{{ord(ch):X}}}" for ch in text)


def xtext_decode(text: str) -> str:
    """Undo RFC 3461 xtext (`+2B` is `+`), as ORCPT and ENVID arrive over SMTP."""
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def address_field(address: str) -> str:
    """`rfc822; addr`, or RFC 6533's `utf-8; addr` with escapes for a non-ASCII address."""
    kind = "rfc822" if address.isascii() else "utf-8"
    return f"{kind}; {clean_text(address)}"


def original_recipient_field(orcpt: str) -> str:
    """ORCPT as stored (`type;address`, xtext already decoded at reception): `type; address`.

    Plain addresses get rfc822. Decoding again would turn a literal `+2B` into `+`.
    Controls (CR, LF: a header injection) become spaces through `clean_text`.
    """
    kind, sep, value = orcpt.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", kind):
        return address_field(orcpt)
    return f"{clean_text(kind)}; {clean_text(value)}"


def status_for(failure: FailedRecipient) -> str:
    """The given status if well formed, else the generic one for the action."""
    if _STATUS.fullmatch(failure.status):
        return failure.status
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(failure.action, "2.0.0")


def _date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def _crlf(data: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", data)


def header_section(message: bytes) -> bytes:
    """The original's header fields, up to (without) the blank line, CRLF-terminated."""
    data = _crlf(message)
    end = data.find(b"\r\n\r\n")
    headers = data if end < 0 else data[: end + 2]
    return headers if headers.endswith(b"\r\n") or not headers else headers + b"\r\n"


# -- the report ------------------------------------------------------------------------


def _summary(failures: Sequence[FailedRecipient]) -> list[str]:
    """The sentences saying what happened, one paragraph per kind of report."""
    actions = {f.action for f in failures}
    lines: list[str] = []
    if "failed" in actions:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
        ]
    if "delayed" in actions:
        lines += [
            "Your message could not yet be delivered to one or more recipients.",
            "It will be retried; you do not need to send it again.",
            "",
        ]
    if "relayed" in actions:
        lines += [
            "Your message was relayed to the recipients' mail systems below, which do",
            "not send delivery reports: you will not be told when it arrives.",
            "",
        ]
    if actions & {"delivered", "expanded"}:
        lines += ["Your message was successfully delivered to the recipients below.", ""]
    return lines


def _recipient_lines(failures: Sequence[FailedRecipient]) -> list[str]:
    lines = []
    for f in failures:
        where = f" (host {clean_text(f.remote_mta)} said)" if f.remote_mta else ""
        # This part is encoded text, so the remote's words may keep their non-ASCII.
        diag = _CONTROL.sub(" ", f.diag).strip()
        lines.append(f"<{clean_text(f.recipient.address)}>: {f.action}{where}: {diag}")
    return lines


def _human_text(
    envelope: Envelope,
    failures: Sequence[FailedRecipient],
    reporting_mta: str,
    postmaster: str,
    original: bytes,
    template: str | None,
) -> str:
    """The notification part: ours, or a `dsn-text-file` template filled in.

    A template's `$fields` are single lines of text (controls replaced) except
    `$recipients` and `$summary`, which are ours; what the sender or a remote wrote
    cannot add MIME structure, because this part is encoded text.
    """
    if template is None:
        lines = [f"This is the mail system at host {clean_text(reporting_mta)}.", ""]
        lines += _summary(failures)
        if postmaster:
            lines += [f"For further assistance, please contact <{clean_text(postmaster)}>.", ""]
        lines += _recipient_lines(failures)
        return "\r\n".join(lines) + "\r\n"
    headers = BytesHeaderParser(policy=email_policy.compat32).parsebytes(header_section(original))
    subject = str(headers.get("Subject", ""))
    values = {
        "sender": _CONTROL.sub(" ", envelope.sender),
        "reporting_mta": clean_text(reporting_mta),
        "postmaster": clean_text(postmaster),
        "recipients": "\n".join(_recipient_lines(failures)),
        "summary": "\n".join(_summary(failures)).rstrip("\n"),
        "envid": clean_text(envelope.env_id or ""),
        "subject": _CONTROL.sub(" ", subject).strip(),
    }
    text = string.Template(template).safe_substitute(values)
    return re.sub(r"\r\n|\r|\n", "\r\n", text.rstrip("\r\n") + "\n")


def _fields(policy: Policy, fields: list[tuple[str, str]]) -> MIMEPart:
    block = MIMEPart(policy=policy)
    for name, value in fields:
        block[name] = value
    return block


def _subject(failures: Sequence[FailedRecipient]) -> str:
    actions = {f.action for f in failures}
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def build_dsn(
    envelope: Envelope,
    failures: Sequence[FailedRecipient],
    original: bytes,
    reporting_mta: str,
    postmaster: str,
    now: float,
    msg_id_domain: str,
    max_full_original: int = MAX_FULL_ORIGINAL,
    *,
    from_header: str | None = None,
    plain_text: bool = False,
    text_template: str | None = None,
) -> bytes:
    """The DSN for `failures` of `envelope`, to its sender, as bytes with CRLF line ends.

    From is `from_header` (`custom-dsn-from-header`) when given, else `postmaster` when
    configured (replies reach a person), else `MAILER-DAEMON@reporting_mta`. The third
    part is the original's headers (`text/rfc822-headers`), or the whole original
    (`message/rfc822`) when the sender asked RET=FULL and it is at most
    `max_full_original` bytes. `plain_text` (`dsn-format plain-text`) sends instead a
    single `text/plain` part holding the delivery-status fields, and nothing of the
    original (PowerMTA: that format overrides `dsn-return-default`). `text_template`
    (`dsn-text-file` +) replaces our human-readable part.
    """
    if not failures:
        raise ValueError("a DSN needs at least one recipient to report on")
    utf8 = envelope.smtputf8 or not envelope.sender.isascii()
    policy = email_policy.SMTPUTF8 if utf8 else email_policy.SMTP
    sender_host = clean_text(reporting_mta)

    report = EmailMessage(policy=policy)
    from_address = clean_text(postmaster) or f"MAILER-DAEMON@{sender_host}"
    report["From"] = clean_text(from_header or "") or f"Mail Delivery System <{from_address}>"
    report["To"] = _CONTROL.sub("", envelope.sender)
    report["Subject"] = _subject(failures)
    report["Date"] = _date(now)
    report["Message-ID"] = make_msgid(domain=clean_text(msg_id_domain))
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"

    per_message, per_recipient = status_fields(envelope, failures, reporting_mta, now)
    if plain_text:
        report["Content-Type"] = 'text/plain; charset="us-ascii"'
        report["Content-Transfer-Encoding"] = "7bit"
        groups = [per_message, *per_recipient]
        report.set_payload(
            "\r\n".join("".join(f"{n}: {v}\r\n" for n, v in group) for group in groups)
        )
        out = io.BytesIO()
        _Generator(out, policy=policy).flatten(report)
        return out.getvalue()
    report["Content-Type"] = "multipart/report; report-type=delivery-status"

    text = MIMEPart(policy=policy)
    text.set_content(
        _human_text(envelope, failures, reporting_mta, postmaster, original, text_template)
    )
    text["Content-Description"] = "Notification"

    blocks: list[Message | str] = [_fields(policy, per_message)]
    blocks += [_fields(policy, fields) for fields in per_recipient]
    status = MIMEPart(policy=policy)
    status["Content-Description"] = "Delivery report"
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)

    full = envelope.ret is not None and envelope.ret.upper() == "FULL"
    returned = _crlf(original) if full and len(original) <= max_full_original else None
    content = returned if returned is not None else header_section(original)
    returned_part = MIMEPart(policy=policy)
    if returned is not None:
        returned_part["Content-Description"] = "Undelivered Message"
        returned_part["Content-Type"] = "message/rfc822"
    else:
        returned_part["Content-Description"] = "Undelivered Message Headers"
        returned_part["Content-Type"] = "text/rfc822-headers"
    returned_part["Content-Transfer-Encoding"] = "7bit" if content.isascii() else "8bit"
    # surrogateescape carries the original's bytes, 8-bit or not, through unchanged.
    returned_part.set_payload(content.decode("ascii", "surrogateescape"))

    report.set_payload([text, status, returned_part])
    out = io.BytesIO()
    _Generator(out, policy=policy).flatten(report)
    return out.getvalue()


def status_fields(
    envelope: Envelope, failures: Sequence[FailedRecipient], reporting_mta: str, now: float
) -> tuple[list[tuple[str, str]], list[list[tuple[str, str]]]]:
    """The `message/delivery-status` fields: the per-message block, then one per recipient.

    Every value is one line of printable ASCII (`clean_text`), whatever a peer sent.
    """
    per_message = [("Reporting-MTA", f"dns; {clean_text(reporting_mta)}")]
    if envelope.env_id:
        # Stored decoded at reception, like ORCPT.
        per_message.append(("Original-Envelope-Id", clean_text(envelope.env_id)))
    per_message.append(("Arrival-Date", _date(envelope.time_queued)))
    blocks = []
    for f in failures:
        fields = [("Final-Recipient", address_field(f.recipient.address))]
        if f.recipient.orcpt:
            fields.append(("Original-Recipient", original_recipient_field(f.recipient.orcpt)))
        fields += [("Action", f.action), ("Status", status_for(f))]
        if f.remote_mta:
            fields.append(("Remote-MTA", f"dns; {clean_text(f.remote_mta)}"))
        if f.diag:
            fields.append(("Diagnostic-Code", f"smtp; {clean_text(f.diag)}"))
        fields.append(("Last-Attempt-Date", _date(now)))
        if f.action == "delayed" and f.will_retry_until is not None:
            fields.append(("Will-Retry-Until", _date(f.will_retry_until)))
        blocks.append(fields)
    return per_message, blocks


class _Generator(BytesGenerator):
    """Writes a `message/rfc822` string payload's 8-bit bytes back as they came.

    The stock generator encodes such a payload as strict ASCII; re-parsing the original
    into a Message instead would refold its headers and could break its signatures.
    """

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def dsn_envelope(original: Envelope, msg_id: str, now: float, dsn: bytes) -> Envelope:
    """The envelope that carries `dsn` back to `original.sender`.

    Null reverse-path (so it can never bounce back), `is_dsn` (so nothing reports on it
    again), NOTIFY=NEVER, and the same vmta and pool as the original, so the bounce
    leaves from the address the sender's domain already talks to. The scheduler
    supplies `msg_id` as for any new message.
    """
    return Envelope(
        msg_id=msg_id,
        sender="",
        recipients=(Recipient(original.sender, notify="NEVER"),),
        time_queued=now,
        src_type=original.src_type,
        src_mta="",
        vmta=original.vmta,
        vmta_pool=original.vmta_pool,
        body_type="7BIT" if dsn.isascii() else "8BITMIME",
        smtputf8=not original.sender.isascii() or original.smtputf8,
        size=len(dsn),
        is_dsn=True,
    )
