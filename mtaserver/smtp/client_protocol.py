"""Outbound SMTP, reading side: replies framed, parsed and handed out in order.

Owns everything between the bytes a remote MTA sends and the `Reply` the session acts
on: `parse_reply_line` and `ReplyAssembler` (multi-line replies), `make_reply`
(enhanced status codes, one line of text for `dsnDiag`), `parse_ehlo`, and
`ReplyProtocol`, the `LineReceiver` that counts the replies each command is owed and
treats any reply that arrives when none is due as a desync (see its docstring: a
reply taken for the answer to the wrong command can count a message as delivered
that was never sent). The parsing functions need no network and are table-tested on
their own; the protocol is tested over `StringTransport` with `task.Clock`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from mtaserver.smtp.eager import write_now
from mtaserver.smtp_reply import Reply

__all__ = [
    "Broken",
    "ReplyAssembler",
    "ReplyError",
    "ReplyProtocol",
    "make_reply",
    "parse_ehlo",
    "parse_reply_line",
]


class ReplyError(ValueError):
    """A line from the server that is not an SMTP reply line."""


_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+|$)")


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """Split one reply line (without its line end) into (code, is_last, text).

    `250-text` continues a reply, `250 text` and a bare `250` end it. Anything else
    raises ReplyError: guessing about a server that does not speak SMTP is how mail
    gets lost. Text is decoded as UTF-8 (SMTPUTF8 servers may send it), with
    undecodable bytes replaced.
    """
    match = _REPLY_LINE.match(line)
    if match is None:
        raise ReplyError(f"not an SMTP reply line: {line[:80]!r}")
    code = int(match.group(1))
    separator = match.group(2)
    text = (match.group(3) or b"").decode("utf-8", errors="replace")
    return code, separator != b"-", text


# A stray CR (or any control) in a reply line would reach acct files, DSNs and logs.
_REPLY_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def make_reply(code: int, lines: Sequence[str]) -> Reply:
    """Build a Reply from a reply's code and the text of each of its lines.

    The enhanced status code (RFC 3463) comes from the first line when its class
    matches the reply code's; otherwise it is synthesised from the code class
    (2.0.0, 4.0.0, 5.0.0; none for 1xx/3xx). The same status repeated at the start
    of later lines is dropped; control characters (a stray CR) become spaces; lines
    are joined by one space.
    """
    status = ""
    first = lines[0] if lines else ""
    match = _ENHANCED.match(first)
    if match and match.group(1) == str(code)[0]:
        status = "{}.{}.{}".format(*match.groups())
    elif code // 100 in (2, 4, 5):
        status = f"{code // 100}.0.0"
    texts = []
    for line in lines:
        line_match = _ENHANCED.match(line)
        if line_match and "{}.{}.{}".format(*line_match.groups()) == status:
            line = line[line_match.end() :]
        line = _REPLY_CONTROLS.sub(" ", line).strip()
        if line:
            texts.append(line)
    return Reply(code, status, " ".join(texts))


class ReplyAssembler:
    """Collects reply lines until a reply is complete (a line with a space after the code).

    The only state is the lines seen so far, so it is tested like a function: feed
    lines, get `(code, texts)` back on the last one.
    """

    def __init__(self) -> None:
        self._texts: list[str] = []

    @property
    def pending(self) -> bool:
        """True while part of a multi-line reply has been seen."""
        return bool(self._texts)

    def feed(self, line: bytes) -> tuple[int, tuple[str, ...]] | None:
        code, is_last, text = parse_reply_line(line)
        self._texts.append(text)
        if not is_last:
            return None
        texts, self._texts = tuple(self._texts), []
        return code, texts


def parse_ehlo(lines: Sequence[str]) -> dict[str, str]:
    """The extensions an EHLO reply offers: keyword (upper case) -> its parameters.

    The first line is the server's name and greeting, not an extension.
    """
    extensions: dict[str, str] = {}
    for line in lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", keyword):
            extensions[keyword.upper()] = params.strip()
    return extensions


class Broken(Exception):
    """The conversation cannot go on: connection lost, a read timed out, or garbage.

    `status` is the enhanced status the recipients in flight get (4.4.2 lost or timed
    out, 4.5.0 protocol error); the session turns it into a synthesised transient reply.
    """

    def __init__(self, status: str, text: str, timed_out: bool = False) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.timed_out = timed_out  # no reply in time (not a lost connection)


class ReplyProtocol(LineReceiver):
    """Frames the server's output into replies and hands them out in order.

    `read_reply` returns a Deferred for the next reply, already fired when the
    reply was buffered (pipelining). A read that waits longer than its timeout
    aborts the connection.

    Every command sent says how many replies it is owed (`send(data, replies)`),
    starting with the greeting. A reply that arrives when none is owed is a desync
    (a server that answers twice, or talks while idle): taken for the answer to our
    next command it would make a message count as delivered that was never sent.
    Such a reply breaks the connection at once (4.5.0, `unsolicited` is set), and
    the replies framed but not yet handed out are dropped with it. The replies of
    one received chunk are all framed before any is handed out, so an extra reply
    in the same chunk as the awaited one is caught before the session, reacting to
    the first, writes its next command.
    """

    delimiter = b"\n"  # lenient: a server that ends lines with bare LF still works
    MAX_LENGTH = 65536

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._assembler = ReplyAssembler()
        self._replies: deque[tuple[int, tuple[str, ...]]] = deque()
        self._waiter: defer.Deferred[tuple[int, tuple[str, ...]]] | None = None
        self._broken: Broken | None = None
        self._due = 1  # the greeting
        self._framing = False
        self.unsolicited = False
        self.lost_reason: Failure | None = None
        self.closed: defer.Deferred[None] = defer.Deferred()

    # LineReceiver / IProtocol

    def dataReceived(self, data: bytes) -> None:
        self._framing = True
        try:
            super().dataReceived(data)
        finally:
            self._framing = False
        self._hand_out()

    def lineReceived(self, line: bytes) -> None:
        if self._broken is not None:
            return
        try:
            reply = self._assembler.feed(line.rstrip(b"\r"))
        except ReplyError as exc:
            self._break(Broken("4.5.0", f"protocol error: {exc}"))
            return
        if reply is None:
            return
        if self._due <= 0:
            self.unsolicited = True
            self._replies.clear()
            self._break(Broken("4.5.0", f"protocol error: unsolicited reply {make_reply(*reply)}"))
            return
        self._due -= 1
        self._replies.append(reply)
        if not self._framing:
            self._hand_out()

    def _hand_out(self) -> None:
        if self._waiter is not None and self._replies:
            waiter, self._waiter = self._waiter, None
            waiter.callback(self._replies.popleft())

    def lineLengthExceeded(self, line: bytes) -> None:
        self._break(Broken("4.5.0", "protocol error: reply line too long"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        if self._broken is None:
            self._broken = Broken("4.4.2", f"connection lost: {reason.getErrorMessage()}")
        self._fail_waiter()
        self.closed.callback(None)

    # used by the session

    @property
    def is_broken(self) -> bool:
        return self._broken is not None

    def has_unread_input(self) -> bool:
        """True when the server sent more than we have asked for (STARTTLS injection)."""
        return bool(self._replies) or self._assembler.pending or bool(self._buffer)

    def send(self, data: bytes, replies: int) -> None:
        """Write `data`, which is owed `replies` replies (commands, or 1 for a body)."""
        if self._broken is None and self.transport is not None:
            self._due += replies
            write_now(self.transport, data)  # commands and bodies go out at once

    def desync(self, text: str) -> Broken:
        """Break the connection for a reply that makes no sense where it came."""
        broken = Broken("4.5.0", f"protocol error: {text}")
        self._replies.clear()
        self._break(broken)
        return broken

    def read_reply(self, timeout: float) -> defer.Deferred[tuple[int, tuple[str, ...]]]:
        if self._replies:
            return defer.succeed(self._replies.popleft())
        if self._broken is not None:
            return defer.fail(self._broken)

        def cancel(cancelled: defer.Deferred[tuple[int, tuple[str, ...]]]) -> None:
            # The session was cancelled (shutdown): nobody will read the rest.
            if self._waiter is cancelled:
                self._waiter = None
            self.abort()

        waiter: defer.Deferred[tuple[int, tuple[str, ...]]] = defer.Deferred(cancel)
        self._waiter = waiter
        # the Broken is made only if the timer fires: not once per command read
        timer = self._clock.callLater(timeout, self._timed_out, timeout)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(stop_timer)
        return waiter

    def abort(self) -> None:
        if self.transport is not None and self.lost_reason is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _timed_out(self, timeout: float) -> None:
        self._break(Broken("4.4.2", f"timeout after {timeout:g}s", timed_out=True))

    def _break(self, broken: Broken) -> None:
        if self._broken is None:
            self._broken = broken
        self._fail_waiter()
        self.abort()

    def _fail_waiter(self) -> None:
        if self._waiter is not None and self._broken is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(self._broken)
