"""Parsing MAIL FROM / RCPT TO arguments: paths, mailboxes and ESMTP parameters.

Pure functions over the bytes of a command line. Problems raise `ParamError`
carrying the reply to send, so the protocol never formats an error itself. What
the parameters mean for the envelope (RFC 1870 SIZE, 6152 8BITMIME, 6531
SMTPUTF8, 3461 DSN) is kept in `MailParams` and `RcptParams`.

Client text never carries control characters onward: ENVID and ORCPT are
refused (`501 5.5.4`) when their decoded xtext holds anything but printable
US-ASCII (RFC 3461 4.2 and 4.4), because both go out again on our own RCPT and
MAIL lines, into DSNs and acct records; addresses never hold C0 or C1 controls.

The mailbox syntax itself (and `routed` paths) is `mtaserver.message.addresses`,
shared with the Transmissions API; this module adds SMTP's replies to it.
"""

from __future__ import annotations

import re

import attrs

from mtaserver.message.addresses import AddressError, Mailbox
from mtaserver.message.addresses import parse_mailbox as parse_address
from mtaserver.smtp_reply import Reply


class ParamError(Exception):
    """A MAIL or RCPT argument is wrong; `reply` says how."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@attrs.frozen
class MailParams:
    size: int | None = None
    body: str = "7BIT"
    smtputf8: bool = False
    env_id: str | None = None
    ret: str | None = None


@attrs.frozen
class RcptParams:
    notify: str | None = None
    orcpt: str | None = None


def split_argument(rest: bytes, keyword: bytes) -> tuple[bytes, list[bytes]]:
    """`FROM:<path> P=1 Q` -> (`path` without brackets, [`P=1`, `Q`])."""
    head = rest[: len(keyword)]
    if head.upper() != keyword:
        raise ParamError(Reply(501, "5.5.4", f"Syntax: expected {keyword.decode()}<address>"))
    text = rest[len(keyword) :].lstrip(b" ")
    if text.startswith(b"<"):
        end = _closing_bracket(text)
        if end < 0:
            raise ParamError(Reply(501, "5.5.4", "Syntax: unbalanced < > around the address"))
        path, tail = text[1:end], text[end + 1 :]
        if tail and not tail.startswith(b" "):
            raise ParamError(Reply(501, "5.5.4", "Syntax: expected a space after the address"))
    else:
        path, _, tail = text.partition(b" ")
    return path, [p for p in tail.split(b" ") if p]


def _closing_bracket(text: bytes) -> int:
    quoted = escaped = False
    for i in range(1, len(text)):
        c = text[i : i + 1]
        if escaped:
            escaped = False
        elif c == b"\\" and quoted:
            escaped = True
        elif c == b'"':
            quoted = not quoted
        elif c == b">" and not quoted:
            return i
    return -1


def decode_address(raw: bytes, smtputf8: bool, status: str) -> str:
    """The address as text: 8-bit only with SMTPUTF8 (553 5.6.7), valid UTF-8 (501)."""
    if raw.isascii():
        return raw.decode("ascii")
    if not smtputf8:
        raise ParamError(Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParamError(Reply(501, "5.6.7", "Address is not valid UTF-8")) from None


def parse_mailbox(text: str, status: str, allow_null: bool = False) -> Mailbox:
    """`[@route:]local@domain` -> Mailbox; `status` is 5.1.7 (sender) or 5.1.3 (recipient)."""
    try:
        return parse_address(text, allow_null)
    except AddressError as exc:
        raise ParamError(Reply(501, status, str(exc))) from None


def _split_params(params: list[bytes], esmtp: bool) -> dict[str, str | None]:
    if params and not esmtp:
        raise ParamError(Reply(555, "5.5.4", "Parameters need EHLO"))
    out: dict[str, str | None] = {}
    for raw in params:
        if not raw.isascii():
            raise ParamError(Reply(501, "5.5.4", "Non-ASCII parameter"))
        key, eq, value = raw.decode("ascii").partition("=")
        key = key.upper()
        if key in out:
            raise ParamError(Reply(501, "5.5.4", f"Duplicate parameter {key}"))
        out[key] = value if eq else None
    return out


def parse_mail_params(params: list[bytes], esmtp: bool, allow_smtputf8: bool) -> MailParams:
    """SIZE, BODY, SMTPUTF8, ENVID, RET (and AUTH=, accepted and ignored)."""
    values = _split_params(params, esmtp)
    fields: dict[str, object] = {}
    for key, value in values.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                raise ParamError(Reply(501, "5.5.4", "Bad SIZE parameter"))
            fields["size"] = int(value)
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise ParamError(Reply(555, "5.5.4", "BODY must be 7BIT or 8BITMIME"))
            fields["body"] = value.upper()
        elif key == "SMTPUTF8":
            if value is not None or not allow_smtputf8:
                raise ParamError(Reply(555, "5.5.4", "SMTPUTF8 not available"))
            fields["smtputf8"] = True
        elif key == "ENVID":
            env_id = decode_xtext(value)
            if not _printable_ascii(env_id, space=False):
                raise ParamError(Reply(501, "5.5.4", "Bad ENVID: control or non-ASCII character"))
            if len(env_id) > 100:
                raise ParamError(Reply(501, "5.5.4", "ENVID too long"))
            fields["env_id"] = env_id
        elif key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise ParamError(Reply(501, "5.5.4", "RET must be FULL or HDRS"))
            fields["ret"] = value.upper()
        elif key != "AUTH":
            raise ParamError(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return MailParams(**fields)  # type: ignore[arg-type]


_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})


def parse_rcpt_params(params: list[bytes], esmtp: bool) -> RcptParams:
    """NOTIFY and ORCPT (RFC 3461); ORCPT is kept as `type;decoded-address`."""
    values = _split_params(params, esmtp)
    notify = orcpt = None
    for key, value in values.items():
        if key == "NOTIFY":
            items = [v.upper() for v in (value or "").split(",")]
            if not items or not set(items) <= _NOTIFY or ("NEVER" in items and len(items) > 1):
                raise ParamError(Reply(501, "5.5.4", "Bad NOTIFY parameter"))
            notify = ",".join(items)
        elif key == "ORCPT":
            kind, sep, xtext = (value or "").partition(";")
            if not sep or not re.fullmatch(r"[A-Za-z0-9-]+", kind):
                raise ParamError(Reply(501, "5.5.4", "Bad ORCPT parameter"))
            address = decode_xtext(xtext)
            if not address or not _printable_ascii(address, space=True):
                raise ParamError(Reply(501, "5.5.4", "Bad ORCPT: control or non-ASCII character"))
            orcpt = f"{kind.lower()};{address}"
            if len(orcpt) > 500:
                raise ParamError(Reply(501, "5.5.4", "ORCPT too long"))
        else:
            raise ParamError(Reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return RcptParams(notify, orcpt)


def _printable_ascii(text: str, space: bool) -> bool:
    """Visible US-ASCII (and SP when `space`): what RFC 3461 lets ENVID and ORCPT decode to."""
    low = 32 if space else 33
    return all(low <= ord(c) <= 126 for c in text)


def decode_xtext(value: str | None) -> str:
    """RFC 3461 xtext: printable ASCII with `+XX` for anything else."""
    if value is None:
        raise ParamError(Reply(501, "5.5.4", "Parameter needs a value"))
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "+":
            hexdigits = value[i + 1 : i + 3]
            if len(hexdigits) != 2 or not re.fullmatch(r"[0-9A-Fa-f]{2}", hexdigits):
                raise ParamError(Reply(501, "5.5.4", "Bad xtext encoding"))
            out.append(chr(int(hexdigits, 16)))
            i += 3
        elif 33 <= ord(c) <= 126 and c != "=":
            out.append(c)
            i += 1
        else:
            raise ParamError(Reply(501, "5.5.4", "Bad xtext encoding"))
    return "".join(out)
