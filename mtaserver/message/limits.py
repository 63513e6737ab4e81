"""Limits on a message's structure: hops, header count and size, MIME nesting.

A message that already went through `max-message-hops` relays is a mail loop
(`554 5.4.6`, as Postfix's `hopcount_limit`); a header block with more than
`max-header-count` fields or more than `max-header-size` octets is refused with
`552 5.3.4`; multiparts nested deeper than `max-mime-depth` are refused with
`554 5.6.0` (Postfix's `mime_nesting_limit`; an attached `message/rfc822`
counts as a level too, and its own header is read for further multiparts).
Such messages cost every hop memory and parsing time, and a loop never ends by
itself.

`ContentChecker` is fed content lines (without CRLF) as they arrive, so SMTP
reception checks a message while it streams to the spool, holding only the
boundaries of the open multiparts. `check_message`, `count_hops` and `mime_depth`
are the same rules over a whole message, header block or list of lines; the
Transmissions API checks `email_rfc822` with the same checker and words its 400
from `ContentChecker.exceeded` (the directive) and the counts. Nothing here
imports Twisted.

A refusal is the `Reply` SMTP reception answers with; the API answers 400 instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from mtaserver.config.model import SourceSettings
from mtaserver.smtp_reply import Reply

TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops: mail loop detected")
TOO_MANY_HEADERS = Reply(552, "5.3.4", "Message header has too many fields")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header is too big")
MIME_TOO_DEEP = Reply(554, "5.6.0", "MIME nesting is too deep")

_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_RECEIVED = re.compile(rb"received[ \t]*:", re.IGNORECASE)
_CONTENT_TYPE = re.compile(rb"content-type[ \t]*:(.*)", re.IGNORECASE | re.DOTALL)
_MULTIPART = re.compile(rb"\s*multipart/", re.IGNORECASE)
_EMBEDDED = re.compile(rb"\s*message/(rfc822|global)\b", re.IGNORECASE)
_BOUNDARY = re.compile(rb';\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))', re.IGNORECASE)


@attrs.frozen
class ContentLimits:
    """The structural limits of a `<source>` (0 turns a limit off)."""

    max_message_hops: int = 100
    max_header_count: int = 1000
    max_header_size: int = 1024 * 1024
    max_mime_depth: int = 100

    @classmethod
    def of(cls, settings: SourceSettings) -> ContentLimits:
        return cls(
            max_message_hops=settings.max_message_hops,
            max_header_count=settings.max_header_count,
            max_header_size=settings.max_header_size,
            max_mime_depth=settings.max_mime_depth,
        )


def count_hops(header_block: bytes) -> int:
    """The `Received:` fields of a header block (CRLF or LF lines, up to the first empty one)."""
    hops = 0
    for line in header_block.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break
        if _RECEIVED.match(line):
            hops += 1
    return hops


def check_message(message: bytes, limits: ContentLimits) -> Reply | None:
    """The refusal for a whole message (CRLF or LF lines), or None when it is within limits."""
    checker = ContentChecker(limits)
    checker.feed([line.rstrip(b"\r") for line in message.split(b"\n")])
    return checker.problem


def mime_depth(lines: list[bytes], stop_above: int) -> int:
    """How deep multiparts (and attached messages) nest; stops counting past `stop_above`."""
    checker = ContentChecker(ContentLimits(0, 0, 0, stop_above))
    checker.feed(lines)
    return checker.deepest


class ContentChecker:
    """Checks content lines as they stream by; `problem` is set at the first limit exceeded."""

    def __init__(self, limits: ContentLimits) -> None:
        self.limits = limits
        self.problem: Reply | None = None
        self.exceeded: str | None = None  # the directive, once `problem` is set
        self.deepest = 0  # the deepest nesting seen (at most one past max-mime-depth)
        self.hops = 0
        self.header_count = 0
        self.header_size = 0
        self._top_header = True  # in the message's own header block
        self._in_header = True  # in the top header or a part's header
        self._field: list[bytes] = []  # the current field of a part header (to find Content-Type)
        self._part_type: bytes | None = None
        # The open multiparts' boundaries, outermost first; None for an embedded
        # message (message/rfc822), which nests as deep as a multipart does.
        self._boundaries: list[bytes | None] = []

    @property
    def depth(self) -> int:
        return len(self._boundaries)

    def feed(self, lines: list[bytes]) -> None:
        if self.problem is not None:
            return
        index = 0
        while self._in_header and index < len(lines) and self.problem is None:
            self._header_line(lines[index])
            index += 1
        if index >= len(lines) or not self._boundaries or self.problem is not None:
            return
        rest = lines[index:] if index else lines
        # Most body batches hold no boundary at all: one C-speed search decides.
        joined = b"\n".join(rest)
        if not joined.startswith(b"--") and b"\n--" not in joined:
            return
        self._body_lines(rest)

    def _body_lines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            if self.problem is not None:
                return
            if self._in_header:
                self._header_line(line)
            elif self._boundaries and line.startswith(b"--"):
                self._boundary_line(line)

    def _boundary_line(self, line: bytes) -> None:
        text = line[2:].rstrip(b" \t")
        for level in range(len(self._boundaries) - 1, -1, -1):
            boundary = self._boundaries[level]
            if boundary is None:
                continue
            if text == boundary:
                del self._boundaries[level + 1 :]
                self._in_header = True  # a part's header follows
                return
            if text == boundary + b"--":
                del self._boundaries[level:]
                return

    def _header_line(self, line: bytes) -> None:
        if self._top_header:
            self._top_header_line(line)
            if self.problem is not None:
                return
        if line == b"" or not (line[:1] in (b" ", b"\t") or _FIELD_START.match(line)):
            self._end_header()
            return
        if line[:1] in (b" ", b"\t"):
            if self._field:
                self._field.append(line)
            return
        self._finish_field()
        self._field = [line]

    def _top_header_line(self, line: bytes) -> None:
        limits = self.limits
        if line == b"" or not (line[:1] in (b" ", b"\t") or _FIELD_START.match(line)):
            self._top_header = False
            return
        self.header_size += len(line) + 2
        if limits.max_header_size and self.header_size > limits.max_header_size:
            self._refuse(HEADER_TOO_BIG, "max-header-size")
            return
        if line[:1] in (b" ", b"\t"):
            return
        self.header_count += 1
        if limits.max_header_count and self.header_count > limits.max_header_count:
            self._refuse(TOO_MANY_HEADERS, "max-header-count")
            return
        if _RECEIVED.match(line):
            self.hops += 1
            if limits.max_message_hops and self.hops > limits.max_message_hops:
                self._refuse(TOO_MANY_HOPS, "max-message-hops")

    def _refuse(self, problem: Reply, directive: str) -> None:
        """Stop at the first limit exceeded; `exceeded` names its directive for the API."""
        self.problem = problem
        self.exceeded = directive

    def _finish_field(self) -> None:
        if not self._field:
            return
        match = _CONTENT_TYPE.match(b"".join(self._field))
        self._field = []
        if match is not None:
            self._part_type = match.group(1)

    def _end_header(self) -> None:
        self._finish_field()
        self._in_header = False
        self._top_header = False
        content_type, self._part_type = self._part_type, None
        if content_type is None:
            return
        if _EMBEDDED.match(content_type) and self._boundaries:
            # An attached message: its own header follows, and may open multiparts.
            self._boundaries.append(None)
            self._in_header = True
        elif _MULTIPART.match(content_type):
            found = _BOUNDARY.search(content_type)
            if found is None:
                return
            boundary = found.group(1) if found.group(1) is not None else found.group(2)
            if not boundary:
                return
            self._boundaries.append(boundary)
        else:
            return
        self.deepest = max(self.deepest, len(self._boundaries))
        limit = self.limits.max_mime_depth
        if limit and len(self._boundaries) > limit:
            self._refuse(MIME_TOO_DEEP, "max-mime-depth")
