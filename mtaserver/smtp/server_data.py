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
            return fast
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

    def _plain_lines(self, buf: bytes) -> tuple[list[bytes], bytes | None] | None:
        """The fast path for the common chunk: whole CRLF lines, scanned in C, not per line.

        Taken when the complete lines of `buf` (up to its last CRLF) hold no NUL and
        no bare CR or LF; then every line end is a CRLF, and the only lines that need
        a look are those starting with `.`, found with `find(b"\\r\\n.")`: a stuffed
        dot is removed, the `.` line ends the data. A message of ordinary text, end
        included, is a handful of `count`/`find`/`split` calls however many lines it
        has (P1 sends each 5 KB message, final dot and all, in one chunk). A line
        over 998 octets, or anything else unusual, returns None and goes the careful
        way; what comes out is exactly what the line-by-line path would give.
        """
        last = buf.rfind(b"\r\n")
        if last < 0 or self.problem is not None:
            return None
        region = buf[: last + 2]
        crlf = region.count(b"\r\n")
        if region.count(b"\r") != crlf or region.count(b"\n") != crlf or b"\x00" in region:
            return None
        lines: list[bytes] = []
        start = 0
        dot_possible = not self._mid_line  # `start` is at the start of a line
        size = len(region)
        while start < size:
            if dot_possible and region[start] == 0x2E:  # "."
                if region.startswith(b".\r\n", start):
                    if lines and max(map(len, lines)) > MAX_LINE:
                        return None
                    self._mid_line = False
                    self._partial = b""
                    return lines, buf[start + 3 :]
                start += 1  # dot-unstuffing
            following = region.find(b"\r\n.", start)
            if following < 0:
                lines.extend(region[start:-2].split(b"\r\n"))
                break
            lines.extend(region[start:following].split(b"\r\n"))
            start = following + 2
            dot_possible = True
        rest = buf[last + 2 :]
        if len(rest) > _PARTIAL_LIMIT or (lines and max(map(len, lines)) > MAX_LINE):
            return None
        self._mid_line = False
        self._partial = rest
        return lines, None

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
