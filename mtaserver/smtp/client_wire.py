"""Outbound SMTP, writing side: the command lines and the DATA payload we send.

Pure functions, table-tested without a network: `mail_command` / `rcpt_command` (the
parameters a server's extensions allow), `xtext` and `orcpt_param` (RFC 3461
encodings), `encode_data` (CRLF normalisation and dot-stuffing), `auth_plain`, and
the checks that keep hostile values off the wire: `valid_address` (no control
characters, spaces, `<` or `>` in an address we send) and `safe_command`, the last
guard that refuses any command line still holding CR, LF or NUL (command injection).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence

from mtaserver.events import Envelope, Recipient

__all__ = [
    "auth_plain",
    "encode_data",
    "is_loopback",
    "mail_command",
    "needs_smtputf8",
    "orcpt_param",
    "rcpt_command",
    "safe_command",
    "valid_address",
    "xtext",
]


def xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except `+` and `=` as is, everything else `+XX`."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


_BAD_ADDRESS = re.compile(r"[\x00-\x20\x7f<>]")


def valid_address(address: str) -> bool:
    """False for an address that must never reach the wire (control chars, spaces, <>)."""
    return _BAD_ADDRESS.search(address) is None


def needs_smtputf8(envelope: Envelope, recipients: Sequence[Recipient]) -> bool:
    """SMTPUTF8 is needed when the envelope says so or an address is not ASCII."""
    if envelope.smtputf8:
        return True
    return not all(a.isascii() for a in [envelope.sender, *(r.address for r in recipients)])


def mail_command(
    envelope: Envelope, extensions: Mapping[str, str], size: int, smtputf8: bool = False
) -> str:
    """`MAIL FROM:<sender>` with the parameters the server's extensions allow.

    SIZE only when offered; BODY=8BITMIME only when offered (see
    `mtaserver.smtp.client` for sending 8-bit data anyway); SMTPUTF8 when asked for; ENVID and
    RET only when DSN is offered.
    """
    params = []
    if "SIZE" in extensions:
        params.append(f"SIZE={size}")
    if envelope.body_type.upper() == "8BITMIME" and "8BITMIME" in extensions:
        params.append("BODY=8BITMIME")
    if smtputf8:
        params.append("SMTPUTF8")
    if "DSN" in extensions:
        if envelope.ret:
            params.append(f"RET={envelope.ret.upper()}")
        if envelope.env_id:
            params.append(f"ENVID={xtext(envelope.env_id)}")
    return " ".join([f"MAIL FROM:<{envelope.sender}>", *params])


_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def orcpt_param(orcpt: str) -> str:
    """The ORCPT value for the wire: `addr-type;xtext(address)` (RFC 3461 4.2).

    The spool holds the original recipient decoded (`rfc822;a+b@x` means the address
    `a+b@x`), so the address part is always xtext-encoded here: a CR or LF in it
    becomes `+0D`/`+0A` and can never end our command line. A value without a valid
    address type is taken as an rfc822 address as a whole.
    """
    addr_type, sep, address = orcpt.partition(";")
    if not sep or not _ADDR_TYPE.fullmatch(addr_type):
        addr_type, address = "rfc822", orcpt
    return f"{addr_type};{xtext(address)}"


def rcpt_command(recipient: Recipient, extensions: Mapping[str, str]) -> str:
    """`RCPT TO:<address>` with NOTIFY and ORCPT when the server offers DSN."""
    params = []
    if "DSN" in extensions:
        if recipient.notify:
            params.append(f"NOTIFY={recipient.notify.upper().replace(' ', '')}")
        if recipient.orcpt:
            params.append(f"ORCPT={orcpt_param(recipient.orcpt)}")
    return " ".join([f"RCPT TO:<{recipient.address}>", *params])


_UNSAFE_IN_COMMAND = re.compile(r"[\r\n\x00]")


def safe_command(line: str) -> bool:
    """False for a command line holding CR, LF or NUL: sent, it would be two commands.

    Everything we put in a command is validated or encoded before; this is the last
    line of defence against a value that slipped through (command injection).
    """
    return _UNSAFE_IN_COMMAND.search(line) is None


_LINE_END = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def encode_data(body: bytes) -> bytes:
    """The DATA payload for `body`: CRLF line ends only, dot-stuffed, `.` terminated.

    A lone CR or LF becomes CRLF, so that the receiver never sees a bare line end
    it might read differently from us (SMTP smuggling); a body that does not end
    with a line end gets one before the terminating `.`.
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\r") == crlf and body.count(b"\n") == crlf:
        data = body  # CRLF line ends only (the spool stores that): nothing to rewrite
    else:
        data = _LINE_END.sub(b"\r\n", body)
    if data[:1] == b"." or b"\n." in data:
        data = _LEADING_DOT.sub(b"..", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def auth_plain(username: str, password: str) -> str:
    """The initial response of AUTH PLAIN (RFC 4616): base64 of NUL user NUL password."""
    token = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
    return base64.b64encode(token).decode("ascii")


def is_loopback(ip: str) -> bool:
    """True for a loopback IP (where AUTH may go without TLS); False for anything else."""
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
