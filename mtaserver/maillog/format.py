"""The mail log's lines: timestamps, escaping of what peers said, and AUTH masking.

Pure functions, no I/O. Every byte a peer sends (an SMTP command, a remote reply, a
header, an HTTP body) reaches a log line only through `escape`, so a line can never
be split or forged by a CR, LF or NUL, nor repaint a terminal with ESC or turn a
`grep` result around with a bidi override: backslash, control characters (C0, DEL,
C1), Unicode format and separator characters and undecodable bytes are written as
``\\\\``, ``\\r``, ``\\n``, ``\\t``, ``\\xNN``, ``\\uNNNN``. Printable UTF-8 (an SMTPUTF8
address) stays readable. Each piece is bounded (`MAX_TEXT`), so one line stays short
enough to read and a hostile peer cannot make one huge.

A line is ``YYYY-MM-DD HH:MM:SS.mmm [TAG] TEXT`` in UTC; TAG names the session
(``in 7``, ``out 3``, ``api 2``) or the part (``queue``), so ``grep '\\[in 7\\]'`` gives one
session's transcript.
"""

from __future__ import annotations

import re
import time

#: Characters of peer text kept in one line; the rest is cut, saying how much.
MAX_TEXT = 2000
MASK = "********"

_PLAIN = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII without backslash
_AUTH = re.compile(rb"\s*(AUTH)\s+(\S+)(.*)\Z", re.IGNORECASE | re.DOTALL)
_MECHANISMS = frozenset(
    b"PLAIN LOGIN CRAM-MD5 DIGEST-MD5 XOAUTH2 OAUTHBEARER GSSAPI NTLM ANONYMOUS EXTERNAL "
    b"SCRAM-SHA-1 SCRAM-SHA-1-PLUS SCRAM-SHA-256 SCRAM-SHA-256-PLUS".split()
)
_NAMED = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", "\t": "\\t"}


def escape(data: bytes | str, limit: int = MAX_TEXT) -> str:
    """`data` as one printable line: nothing in it can end the line or fake another."""
    if isinstance(data, bytes):
        cut = len(data) - limit if len(data) > limit else 0
        text = data[:limit].decode("utf-8", "surrogateescape")
    else:
        cut = len(data) - limit if len(data) > limit else 0
        text = data[:limit]
    if not _PLAIN.fullmatch(text):
        text = "".join(_escape_char(ch) for ch in text)
    if cut:
        text += f"...[{cut} more]"
    return text


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch.isprintable():
        return ch
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


class Stamper:
    """`YYYY-MM-DD HH:MM:SS.mmm` in UTC, formatting each second once."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}"


def format_line(stamp: str, tag: str, text: str) -> bytes:
    """One line of the log; `text` must already be escaped (see `escape`)."""
    return f"{stamp} [{tag}] {text}\n".encode("utf-8", "surrogateescape")


def mask_auth(line: bytes) -> bytes:
    """`AUTH PLAIN <secret>` -> `AUTH PLAIN ********`: never a credential in the log.

    The mechanism stays (it says what was tried); an initial response, which holds the
    password (PLAIN) or the user name (LOGIN), is masked whatever it is, and so is
    anything after the mechanism however it is spaced or cased.
    """
    match = _AUTH.match(line)
    if match is None:
        return line
    verb, mechanism, rest = match.groups()
    if mechanism.upper() not in _MECHANISMS:  # no mechanism: perhaps the secret itself
        return verb + b" " + MASK.encode()
    if not rest.strip():
        return verb + b" " + mechanism
    return verb + b" " + mechanism + b" " + MASK.encode()
