"""Finding the end of DATA, safely, and turning the bytes in between into lines.

The only end of data is CR LF `.` CR LF (RFC 5321 4.1.1.4). A bare LF or bare CR
never ends a message, so the SMTP smuggling sequences (`\\n.\\n`, `\\r.\\r`,
`\\r\\n.\\r\\r\\n` and the rest) stay content. What comes out has CRLF line ends
only: by default each bare CR or LF becomes a line end (`bare-newline normalize`);
with `bare-newline reject` the message is refused once its real end arrives, like
Postfix's `smtpd_forbid_bare_newline`.

Dot-unstuffing happens only at the start of a CRLF-delimited line, the way the
client meant it. A `.` line that a bare newline turns into content is stored as
content; the delivery side dot-stuffs it again, so it cannot end anything later.

NUL bytes: a message containing NUL is refused (550 5.6.0) after its end. RFC 5322
does not allow NUL, and a receiver further on that drops NULs could turn
CR LF NUL `.` CR LF into an end of data; not passing NULs on closes that door.

Lines longer than 998 octets (plus CRLF) get the message refused (550 5.5.2) once
its real end arrives; the reader never falls back to command mode, and never holds
more than about one line of input.
"""

from __future__ import annotations

import re

from mtaserver.smtp_reply import Reply

MAX_LINE = 998  # octets, without CRLF (RFC 5322 2.1.1)
_PARTIAL_LIMIT = MAX_LINE + 3  # a longer unterminated run is a long line for sure
_NEWLINE = re.compile(rb"[\r\n]")

BARE_NEWLINE = Reply(550, "5.5.2", "Message refused: bare CR or LF in message content")
LONG_LINE = Reply(550, "5.5.2", "Message refused: line longer than 998 octets")
NUL_BYTE = Reply(550, "5.6.0", "Message refused: NUL character in message content")


class DataReader:
    """Consumes DATA bytes; returns content lines (without CRLF) and what follows the end."""

    def __init__(self, reject_bare_newline: bool = False) -> None:
        self.reject_bare_newline = reject_bare_newline
        self.problem: Reply | None = None
        self.bare_newlines = 0
        self._partial = b""
        self._mid_line = False  # `_partial` continues a line already partly consumed

    def feed(self, data: bytes) -> tuple[list[bytes], bytes | None]:
        """(content lines, None) while in DATA; (lines, rest) once the end was seen."""
        buf = self._partial + data if self._partial else data
        fast = self._plain_lines(buf)
        if fast is not None:
            return fast, None
        out: list[bytes] = []
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 2
            at_line_start = not self._mid_line
            self._mid_line = False
            if at_line_start and line[:1] == b".":
                if line == b".":
                    self._partial = b""
                    return out, buf[start:]
                line = line[1:]
            self._content(line, out, complete=True)
        rest = buf[start:]
        if len(rest) > _PARTIAL_LIMIT:
            rest = self._overflow(rest, out)
        self._partial = rest
        return out, None

    def _plain_lines(self, buf: bytes) -> list[bytes] | None:
        """The fast path for the common chunk: whole CRLF lines and nothing to look at.

        Taken only when the complete lines hold no NUL, no bare CR or LF, no line
        starting with `.` (so neither dot-unstuffing nor the end of data) and no line
        over 998 octets; then the lines are exactly what the line-by-line path would
        give, found with a few scans in C instead of Python work per line. Anything
        else returns None and goes the careful way.
        """
        last = buf.rfind(b"\r\n")
        if last < 0 or self.problem is not None:
            return None
        complete = buf[:last]
        crlf = complete.count(b"\r\n")
        if (
            b"\x00" in complete
            or complete.count(b"\r") != crlf
            or complete.count(b"\n") != crlf
            or b"\r\n." in complete
            or (not self._mid_line and complete[:1] == b".")
        ):
            return None
        lines = complete.split(b"\r\n")
        if max(map(len, lines)) > MAX_LINE:
            return None
        rest = buf[last + 2 :]
        if len(rest) > _PARTIAL_LIMIT:
            return None
        self._mid_line = False
        self._partial = rest
        return lines

    def _overflow(self, rest: bytes, out: list[bytes]) -> bytes:
        """A long run without CRLF: pass on what bare newlines end, or drop a long line."""
        # A CR at the very end may be the first half of CRLF: keep it for the next feed.
        body, keep = (rest[:-1], rest[-1:]) if rest.endswith(b"\r") else (rest, b"")
        cut = max(body.rfind(b"\n"), body.rfind(b"\r"))
        if cut >= 0 and self.problem is None:
            head = body[: cut + 1]
            if not self._mid_line and head[:1] == b".":
                head = head[1:]
            self._content(head, out, complete=False)
            self._mid_line = True
            remainder = body[cut + 1 :] + keep
            if len(remainder) <= _PARTIAL_LIMIT:
                return remainder
            keep = b"\r" if remainder.endswith(b"\r") else b""
        self._set_problem(LONG_LINE)
        self._mid_line = True
        return keep

    def _content(self, line: bytes, out: list[bytes], complete: bool) -> None:
        if self.problem is not None:
            return
        if b"\x00" in line:
            self._set_problem(NUL_BYTE)
            return
        if b"\r" in line or b"\n" in line:
            self.bare_newlines += 1
            if self.reject_bare_newline:
                self._set_problem(BARE_NEWLINE)
                return
            pieces = _NEWLINE.split(line)
            if not complete:
                pieces.pop()  # the split after the final bare newline: nothing yet
        else:
            pieces = [line]
        for piece in pieces:
            if len(piece) > MAX_LINE:
                self._set_problem(LONG_LINE)
                return
        out.extend(pieces)

    def _set_problem(self, reply: Reply) -> None:
        if self.problem is None:
            self.problem = reply
