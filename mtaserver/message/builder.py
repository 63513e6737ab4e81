"""The message as stored: the header block processed, the body streamed through.

Only the header block is held in memory (up to `MAX_HEADER_BYTES`); body lines go
to the sink (the spool writer) as they arrive, so memory does not grow with the
message. In the header block the builder

* takes out `X-Virtual-MTA` and `X-Job` when the source says `process-x-virtual-mta`
  / `process-x-job`, keeping their values for the envelope;
* captures the headers the acct files map to fields (`map-header-to-field`);
* puts a `Received` header first, and adds `Message-ID` and `Date` at the end of
  the block when they are missing and the source wants them (`headers.HeaderRules`).

A message whose first line is not a header gets an empty line after the added
headers, so the client's first line stays body. SMTP feeds lines as DATA streams in;
the Transmissions API feeds a whole message with `feed_message`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from mtaserver.message.addresses import without_controls
from mtaserver.message.headers import HeaderRules
from mtaserver.message.limits import ContentChecker, ContentLimits
from mtaserver.smtp_reply import TOO_BIG, Reply

MAX_HEADER_BYTES = 256 * 1024
MAX_CAPTURED_VALUE = 998
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_ADDRESS_DOMAIN = re.compile(rb"(?<=@)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _rewrite_domains(field: list[bytes], rewrite: Callable[[str], str]) -> list[bytes]:
    """A From field with each address's domain as `rewrite` (`from-domain`) gives it."""

    def one(match: re.Match[bytes]) -> bytes:
        domain = match.group(0).decode("ascii")
        return rewrite(domain).encode("ascii")

    name_end = field[0].index(b":") + 1
    first = field[0][:name_end] + _ADDRESS_DOMAIN.sub(one, field[0][name_end:])
    return [first] + [_ADDRESS_DOMAIN.sub(one, line) for line in field[1:]]


def rewrite_from_header(message: bytes, rewrite: Callable[[str], str]) -> bytes:
    """A stored message with its From field's address domains as `rewrite` gives them.

    For a `<virtual-mta>`'s `rewrite-list` `from-domain` lines, applied at delivery
    (before DKIM signing); a `<source>`'s are applied at reception by `MessageBuilder`.
    Only the header block is touched; a message without a From field is returned as is.
    """
    end = message.find(b"\r\n\r\n")
    head_end = end + 2 if end >= 0 else len(message)
    lines = message[:head_end].split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[bytes] = []
    changed = False
    for field in _fields(lines):
        match = _FIELD_NAME.match(field[0])
        if match is not None and match.group(1).lower() == b"from" and not changed:
            field = _rewrite_domains(field, rewrite)
            changed = True
        out.extend(field)
    if not changed:
        return message
    return b"\r\n".join(out) + b"\r\n" + message[head_end:]


class MessageBuilder:
    """Receives content lines (without CRLF), writes the stored message to `sink`."""

    def __init__(
        self,
        sink: Callable[[bytes], None],
        rules: HeaderRules,
        max_size: int = 0,
        limits: ContentLimits | None = None,
    ) -> None:
        self._sink = sink
        self._rules = rules
        self._max_size = max_size
        self._checker = ContentChecker(limits) if limits is not None else None
        self._capture = {name.lower(): name for name in rules.capture}
        self._in_header = True
        self._header_lines: list[bytes] = []
        self._header_bytes = 0
        self.received_bytes = 0  # what the client sent, unstuffed, with CRLFs
        self.size = 0  # what was written
        self.eight_bit = False
        self.problem: Reply | None = None
        self.x_virtual_mta: str | None = None
        self.x_job: str | None = None
        self.x_envid: str | None = None
        self.x_dkim_options: str | None = None
        self.acct_headers: dict[str, str] = {}
        #: `<pattern-list>` header lines: the first field of each wanted name, its whole
        #: value (folds and all), before any processing removes it.
        self.routing_headers: dict[str, str] = {}

    def add(self, lines: list[bytes]) -> None:
        if not lines or self.problem is not None:
            return
        self.received_bytes += sum(len(line) for line in lines) + 2 * len(lines)
        if self._max_size and self.received_bytes > self._max_size:
            self.problem = TOO_BIG
            return
        if self._checker is not None:
            self._checker.feed(lines)
            if self._checker.problem is not None:
                self.problem = self._checker.problem
                return
        if not self.eight_bit and not all(line.isascii() for line in lines):
            self.eight_bit = True
        index = 0
        while self._in_header and index < len(lines):
            self._header_line(lines[index])
            index += 1
        if index < len(lines):
            rest = lines[index:] if index else lines
            self._write(b"\r\n".join(rest) + b"\r\n")

    def finish(self) -> None:
        """The end of data: a message that is all header still gets its header work."""
        if self._in_header and self.problem is None:
            self._end_header(None)

    def _header_line(self, line: bytes) -> None:
        if line == b"":
            self._end_header(b"")
        elif (line[:1] in (b" ", b"\t") and self._header_lines) or _FIELD_NAME.match(line):
            self._keep_header_line(line)
        else:
            self._end_header(line, add_separator=True)

    def _keep_header_line(self, line: bytes) -> None:
        self._header_lines.append(line)
        self._header_bytes += len(line) + 2
        if self._header_bytes > MAX_HEADER_BYTES:
            # Too big to hold: what we have is processed, the rest passes as is.
            self._end_header(None)

    def _end_header(self, line: bytes | None, add_separator: bool = False) -> None:
        self._in_header = False
        rules = self._rules
        out = [rules.received] if rules.received else []
        seen: set[bytes] = set()
        for field in _fields(self._header_lines):
            name = _FIELD_NAME.match(field[0]).group(1).lower()  # type: ignore[union-attr]
            seen.add(name)
            # Client text that ends up in acct fields, logs and outbound lines:
            # control characters never pass.
            value = without_controls(_unfold(field))
            if name in rules.routing and name.decode("ascii") not in self.routing_headers:
                whole = b"\r\n".join(field).split(b":", 1)[1]
                self.routing_headers[name.decode("ascii")] = whole.decode("utf-8", "replace")
            if name == b"x-virtual-mta" and rules.process_x_virtual_mta:
                self.x_virtual_mta = self.x_virtual_mta or value.strip()
                if not rules.retain_x_virtual_mta:
                    continue
            elif name == rules.job_header and rules.process_x_job:
                self.x_job = self.x_job or value.strip()
                if not rules.retain_x_job:
                    continue
            elif name == b"x-envid" and rules.process_x_envid:
                self.x_envid = self.x_envid or value.strip()
                continue
            elif name == b"x-dkim-options" and rules.process_x_dkim_options:
                self.x_dkim_options = self.x_dkim_options or value.strip()
                if not rules.retain_x_dkim_options:
                    continue
            elif name == b"received" and rules.remove_received_headers:
                continue
            if name in rules.remove:  # `remove-header`
                continue
            if name == b"from" and rules.from_domain is not None:
                field = _rewrite_domains(field, rules.from_domain)
            wanted = self._capture.get(name.decode("ascii"))
            if wanted is not None and wanted not in self.acct_headers:
                self.acct_headers[wanted] = value.strip()[:MAX_CAPTURED_VALUE]
            out.append(b"\r\n".join(field) + b"\r\n")
        if rules.message_id is not None and b"message-id" not in seen:
            out.append(rules.message_id)
        if rules.date is not None and b"date" not in seen:
            out.append(rules.date)
        if add_separator:
            out.append(b"\r\n")
        if line is not None:
            out.append(line + b"\r\n")
        self._header_lines = []
        self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        self.size += len(data)
        self._sink(data)


def _fields(lines: Iterable[bytes]) -> list[list[bytes]]:
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _unfold(field: list[bytes]) -> str:
    """The value of a field, continuation lines joined, as text."""
    first = field[0]
    value = first[first.index(b":") + 1 :]
    joined = b"".join([value, *field[1:]])
    return joined.decode("utf-8", "replace").replace("\t", " ")


def feed_message(builder: MessageBuilder, data: bytes) -> None:
    """A whole CRLF message through the builder, as lines without CRLF, and finish it."""
    lines = data.split(b"\r\n")
    builder.add(lines[:-1] if lines and lines[-1] == b"" else lines)
    builder.finish()
