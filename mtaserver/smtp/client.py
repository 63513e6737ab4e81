"""Outbound SMTP: one session to one MX target that delivers several transactions.

The scheduler opens a session with `run_session` and feeds it `Transaction`s until its
queue is empty (or `max-msg-per-connection` is reached); every transaction's outcome
is handed back through `report` as soon as it is known, one `Reply` per recipient.
A failure of the connection as a whole (no connection, greeting or EHLO refused,
STARTTLS required but impossible, AUTH refused, connection lost) is a
`SessionFailure`; the scheduler turns it into a `tq` record and a retry.

Why not `twisted.mail.smtp.ESMTPClient`: that client is built for one message per
connection. Its flow is driven by callbacks (`getMailFrom`, `getMailTo`,
`getMailData`, `sentMail`) and ends the session after one message; it never
pipelines, it reports recipients only once, after DATA, as `(numOk, addresses)`,
and its TLS handling is a single `requireTransportSecurity` switch, so it cannot do
opportunistic TLS without verification and verified TLS against the MX name on
the same code path. Bending it into multiple transactions with PIPELINING and
per-recipient replies means overriding nearly every state. So this module keeps
Twisted for what it is good at (TCP endpoints, `LineReceiver` framing,
`transport.startTLS` with `optionsForClientTLS`, service-identity checks) and
writes the conversation as one `async def` that reads top to bottom like RFC 5321.

The parts that need no network are pure functions, table-tested on their own:
`parse_reply_line` / `ReplyAssembler` (multi-line replies), `make_reply`
(enhanced status codes), `parse_ehlo`, `mail_command` / `rcpt_command` (command
and parameter building, xtext), `encode_data` (CRLF normalisation and
dot-stuffing).

Choices worth knowing:

* Synthesised replies (no server said them) use code 421 for transient and 550/552/
  553 for permanent problems, with the enhanced status that names the cause:
  4.4.1 no connection, 4.4.2 connection lost or timed out, 4.7.5 TLS required but
  impossible, 4.7.0 AUTH configured but impossible, 5.6.7 SMTPUTF8 needed but not
  offered, 5.3.4 message larger than the server's SIZE.
* Opportunistic TLS (`use-starttls yes`, `require-starttls no`, Postfix's `may`)
  does not verify the certificate. If its handshake fails, the session reconnects
  once without STARTTLS, as Postfix does, so a broken TLS stack at the receiver
  does not stop the mail. With `require-starttls yes` the certificate must verify
  against `target.host` (service-identity) or the session fails with 4.7.5 before
  any mail is sent. TLS 1.2 is the minimum either way.
* AUTH (PLAIN, else LOGIN) is attempted only when `auth-username` is set, and
  only over TLS unless the target's IP is loopback; credentials are never sent in
  clear to another host. AUTH configured but impossible is a 4.7.0 failure rather
  than an unauthenticated delivery, because a smarthost that needs AUTH would
  otherwise see relaying attempts from us.
* A body marked 8BITMIME goes to a server that does not offer 8BITMIME unchanged
  and without BODY= (what Postfix does by default; downgrading to quoted-printable
  would break DKIM signatures and almost every server accepts 8-bit data anyway).
* Addresses go out in UTF-8 with SMTPUTF8 when the envelope says so or any of its
  addresses is not ASCII. An address with a control character, `<` or `>` is never
  sent (553 5.1.3 / 5.1.7): the spool should not hold one, and putting it on the
  wire would allow command injection.
* `Recipient.orcpt` (stored decoded) goes out as `type;` plus the xtext form of its
  address, always; ENVID as xtext too (RFC 3461). As a last defence, a command line
  that would still hold CR, LF or NUL is never written: MAIL so affected fails the
  transaction, RCPT that recipient, with a permanent local 550 5.6.0.
* Only a 354 lets the body go. A 2xx/3xx to DATA, a 3xx to MAIL, RCPT or the end of
  data, and any reply that arrives when none is due (two replies after the dot, a
  line while idle) is a desync: the connection is dropped at once, never reused,
  the recipients in flight get a transient 4.5.0 (a `t`), and the session goes on
  over a fresh connection to the same target.
* A multi-line reply's `text` is its lines joined by a space, without the code and
  without a repeated enhanced status, fit for one `dsnDiag` field.
* `max-msg-per-connection` is enforced here too: after that many transactions the
  session sends QUIT without asking for another one.
* A connection that drops while the session waits for the next transaction is
  found when that transaction is sent; its recipients then get 4.4.2 (a `t`
  record) and the session ends with SessionFailure.
* Cancelling the Deferred of `run_session` (shutdown) aborts the connection; the
  transaction in flight, if any, is then not reported: it was not finished.
* After a refused MAIL, a transaction without accepted recipients, or a refused
  DATA, RSET is sent before the next transaction; a refused RSET ends the session.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import re
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from mtaserver.config.model import DomainSettings
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import ConnectionInfo, Transaction, TransactionResult
from mtaserver.smtp_reply import Reply

log = Logger()

__all__ = [
    "ReplyAssembler",
    "ReplyError",
    "SessionFailure",
    "SmtpTarget",
    "encode_data",
    "mail_command",
    "make_reply",
    "orcpt_param",
    "parse_ehlo",
    "parse_reply_line",
    "rcpt_command",
    "run_session",
    "safe_command",
    "xtext",
]

# Code used for replies we make up for a transient problem on our side of the wire.
SYNTHETIC_TRANSIENT = 421
QUIT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0


# --------------------------------------------------------------------------- records


class SmtpTarget(Protocol):
    """What the session needs of a target (`mtaserver.smtp.mx.Target` fits)."""

    @property
    def host(self) -> str: ...

    @property
    def ip(self) -> str: ...

    @property
    def port(self) -> int: ...


class SessionFailure(Exception):
    """The connection as a whole failed; `reply` says why (often synthesised)."""

    def __init__(self, reply: Reply, info: ConnectionInfo | None = None) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.info = info


# ---------------------------------------------------------------------- pure parts


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

    SIZE only when offered; BODY=8BITMIME only when offered (see the module
    docstring for sending 8-bit data anyway); SMTPUTF8 when asked for; ENVID and
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
    data = _LINE_END.sub(b"\r\n", body)
    data = _LEADING_DOT.sub(b"..", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def auth_plain(username: str, password: str) -> str:
    """The initial response of AUTH PLAIN (RFC 4616): base64 of NUL user NUL password."""
    token = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
    return base64.b64encode(token).decode("ascii")


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------ protocol


class _Broken(Exception):
    """The conversation cannot go on: connection lost, a read timed out, or garbage."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class _ReplyProtocol(LineReceiver):
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
        self._broken: _Broken | None = None
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
            self._break(_Broken("4.5.0", f"protocol error: {exc}"))
            return
        if reply is None:
            return
        if self._due <= 0:
            self.unsolicited = True
            self._replies.clear()
            self._break(_Broken("4.5.0", f"protocol error: unsolicited reply {make_reply(*reply)}"))
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
        self._break(_Broken("4.5.0", "protocol error: reply line too long"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost_reason = reason
        if self._broken is None:
            self._broken = _Broken("4.4.2", f"connection lost: {reason.getErrorMessage()}")
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
            self.transport.write(data)

    def desync(self, text: str) -> _Broken:
        """Break the connection for a reply that makes no sense where it came."""
        broken = _Broken("4.5.0", f"protocol error: {text}")
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
        timer = self._clock.callLater(
            timeout, self._break, _Broken("4.4.2", f"timeout after {timeout:g}s")
        )

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(stop_timer)
        return waiter

    def abort(self) -> None:
        if self.transport is not None and self.lost_reason is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _break(self, broken: _Broken) -> None:
        if self._broken is None:
            self._broken = broken
        self._fail_waiter()
        self.abort()

    def _fail_waiter(self) -> None:
        if self._waiter is not None and self._broken is not None:
            waiter, self._waiter = self._waiter, None
            waiter.errback(self._broken)


@implementer(IOpenSSLClientConnectionCreator)
class _OpportunisticTLS:
    """TLS without certificate verification (Postfix's `may`), still sending SNI.

    `optionsForClientTLS` always verifies; encryption against a passive listener is
    still worth having when the receiver's certificate is self-signed or for
    another name, which is the common case among MX hosts.
    """

    def __init__(self, hostname: str) -> None:
        self._options = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
        self._server_name: bytes | None = None
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            try:
                self._server_name = hostname.encode("idna")
            except UnicodeError:
                self._server_name = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def _tls_creator(hostname: str, verify: bool, trust_root: Any) -> Any:
    if verify:
        return optionsForClientTLS(
            hostname,
            trustRoot=trust_root,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
    return _OpportunisticTLS(hostname)


# ------------------------------------------------------------------------- session


class UnsafeCommand(ValueError):
    """A command line would contain CR, LF or NUL; nothing was written."""


class _TlsFallback(Exception):
    """Opportunistic TLS failed during the handshake: reconnect without STARTTLS."""


class _Interrupted(Exception):
    """A transaction stopped half way: `replies` holds what is known, `ending` the rest.

    `server_closing` is True for a 421 from the server (it is closing: no QUIT).
    `desync` is True when the server's replies stopped matching our commands: the
    connection is dropped and the session goes on over a fresh one.
    """

    def __init__(
        self,
        replies: list[Reply | None],
        ending: Reply,
        server_closing: bool,
        desync: bool = False,
    ) -> None:
        super().__init__(str(ending))
        self.replies = replies
        self.ending = ending
        self.server_closing = server_closing
        self.desync = desync


def _transient(status: str, text: str) -> Reply:
    return Reply(SYNTHETIC_TRANSIENT, status, text)


class _Session:
    """The state of one connection: the protocol, what the server offers, and TLS."""

    def __init__(
        self,
        proto: _ReplyProtocol,
        target: SmtpTarget,
        settings: DomainSettings,
        timeout: float,
    ) -> None:
        self.proto = proto
        self.target = target
        self.settings = settings
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.tls_protocol = ""
        self.tls_cipher = ""
        host = proto.transport.getHost() if proto.transport is not None else None
        self.source_ip = str(getattr(host, "host", ""))

    @property
    def peer(self) -> str:
        return f"{self.target.host}[{self.target.ip}]:{self.target.port}"

    @property
    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            source_ip=self.source_ip,
            destination_ip=self.target.ip,
            destination_host=self.target.host,
            esmtp=self.esmtp,
            tls_protocol=self.tls_protocol,
            tls_cipher=self.tls_cipher,
            extensions=frozenset(self.extensions),
        )

    # ------------------------------------------------------------ wire helpers

    async def read_raw(self, stage: str) -> tuple[int, tuple[str, ...]]:
        """The next reply; a broken connection becomes `_Broken` naming peer and stage."""
        try:
            return await self.proto.read_reply(self.timeout)
        except _Broken as broken:
            raise _Broken(broken.status, f"{broken.text} with {self.peer} {stage}") from None

    async def read(self, stage: str) -> Reply:
        code, texts = await self.read_raw(stage)
        return make_reply(code, texts)

    def send(self, *lines: str) -> None:
        """Write command lines; one with CR, LF or NUL is never written (see safe_command)."""
        for line in lines:
            if not safe_command(line):
                raise UnsafeCommand(f"refusing to send a command with CR, LF or NUL: {line!r}")
        self.proto.send(b"".join(line.encode("utf-8") + b"\r\n" for line in lines), len(lines))

    async def command(self, line: str, stage: str) -> Reply:
        self.send(line)
        return await self.read(stage)

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for the answer."""
        if self.proto.is_broken:
            return
        self.send("QUIT")
        with contextlib.suppress(_Broken):
            await self.proto.read_reply(min(self.timeout, QUIT_TIMEOUT))

    async def give_up(self, reply: Reply, *, polite: bool = True) -> SessionFailure:
        """QUIT (when `polite`) and build the SessionFailure for `reply`."""
        if polite:
            await self.quit()
        return SessionFailure(reply, self.info)

    async def refused(self, reply: Reply) -> SessionFailure:
        """The server refused something: QUIT unless it said 421 (it is closing)."""
        return await self.give_up(reply, polite=reply.code != 421)

    # ----------------------------------------------------------- opening phases

    async def open(self, helo_name: str, starttls: bool, trust_root: Any) -> None:
        """Greeting, EHLO/HELO, STARTTLS and AUTH: everything before the first MAIL."""
        greeting = await self.read("in greeting")
        if greeting.code != 220:
            raise await self.refused(greeting)
        await self.hello(helo_name)
        if starttls and "STARTTLS" in self.extensions:
            await self.starttls(helo_name, trust_root)
        elif self.settings.require_starttls:
            raise await self.give_up(
                _transient("4.7.5", f"{self.peer} does not offer STARTTLS, which is required")
            )
        if self.settings.auth_username:
            await self.authenticate(self.settings.auth_username, self.settings.auth_password or "")

    async def hello(self, helo_name: str) -> None:
        """EHLO, and HELO when EHLO is refused permanently (a pre-ESMTP server)."""
        self.send(f"EHLO {helo_name}")
        code, texts = await self.read_raw("after EHLO")
        if code == 250:
            self.esmtp = True
            self.extensions = parse_ehlo(texts)
            return
        reply = make_reply(code, texts)
        if reply.is_permanent:
            reply = await self.command(f"HELO {helo_name}", "after HELO")
            if reply.code == 250:
                self.esmtp = False
                self.extensions = {}
                return
        raise await self.refused(reply)

    async def starttls(self, helo_name: str, trust_root: Any) -> None:
        """STARTTLS, the handshake, and EHLO again; verified only under require-starttls."""
        required = self.settings.require_starttls
        try:
            reply = await self.command("STARTTLS", "after STARTTLS")
        except _Broken:
            if not self.proto.unsolicited:
                raise
            reply = Reply(220, "", "")  # more than one reply came: refused just below
        if reply.code != 220:
            if required:
                raise await self.give_up(
                    _transient("4.7.5", f"{self.peer} refused STARTTLS: {reply}")
                )
            if reply.code == 421:
                raise await self.refused(reply)
            return  # opportunistic: go on in plaintext, as Postfix does
        if self.proto.unsolicited or self.proto.has_unread_input():
            # Anything after the 220 was sent before the handshake: an injection
            # attempt (CVE-2011-0411 style). Never read it as a reply to our EHLO.
            self.proto.abort()
            raise await self.give_up(
                _transient("4.7.5", f"{self.peer} sent data after its STARTTLS reply"),
                polite=False,
            )
        assert self.proto.transport is not None
        creator = _tls_creator(self.target.host, required, trust_root)
        self.proto.transport.startTLS(creator)  # type: ignore[attr-defined]
        # Forget everything learned in plaintext (RFC 3207 section 4.2).
        self.extensions = {}
        self.esmtp = False
        try:
            await self.hello(helo_name)
        except _Broken as broken:
            # The connection broke before the first reply over TLS: the handshake
            # failed (for a verified session: usually the certificate).
            reason = broken.text
            if self.proto.lost_reason is not None:
                reason = f"{reason} ({self.proto.lost_reason.getErrorMessage()})"
            if not required:
                raise _TlsFallback(reason) from None
            raise SessionFailure(
                _transient("4.7.5", f"TLS with {self.peer} failed: {reason}"), self.info
            ) from None
        handle = self.proto.transport.getHandle()  # type: ignore[attr-defined]
        self.tls_protocol = str(handle.get_protocol_version_name() or "")
        self.tls_cipher = str(handle.get_cipher_name() or "")

    async def authenticate(self, username: str, password: str) -> None:
        """AUTH PLAIN (else LOGIN); never in clear to a host that is not loopback."""
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        problem = ""
        if "AUTH" not in self.extensions:
            problem = "does not offer AUTH"
        elif not self.tls_protocol and not is_loopback(self.target.ip):
            problem = "offers AUTH only without TLS; credentials are not sent in clear"
        elif "PLAIN" not in mechanisms and "LOGIN" not in mechanisms:
            problem = f"offers no AUTH mechanism we support ({' '.join(mechanisms)})"
        if problem:
            raise await self.give_up(_transient("4.7.0", f"{self.peer} {problem}"))
        if "PLAIN" in mechanisms:
            reply = await self.command(f"AUTH PLAIN {auth_plain(username, password)}", "after AUTH")
        else:
            reply = await self.command("AUTH LOGIN", "after AUTH")
            for secret in (username, password):
                if reply.code != 334:
                    break
                encoded = base64.b64encode(secret.encode("utf-8")).decode("ascii")
                reply = await self.command(encoded, "after AUTH")
        if reply.code != 235:
            raise await self.refused(reply)

    # -------------------------------------------------------------- transactions

    async def deliver(self, tx: Transaction) -> tuple[tuple[Reply, ...], bool]:
        """Run one transaction: one reply per recipient, and whether RSET is due.

        Raises `_Interrupted` when the connection broke or the server said 421.
        """
        recipients = tx.recipients
        envelope = tx.envelope
        utf8 = needs_smtputf8(envelope, recipients)
        local = self._local_refusal(tx, utf8)
        if local is not None:
            return tuple(local for _ in recipients), False

        replies: list[Reply | None] = [None] * len(recipients)
        for i, rcpt in enumerate(recipients):
            if not valid_address(rcpt.address):
                replies[i] = Reply(553, "5.1.3", f"invalid recipient address {rcpt.address!r}")
        sendable = [i for i, r in enumerate(replies) if r is None]
        if not sendable:
            return tuple(r for r in replies if r is not None), False

        mail = mail_command(envelope, self.extensions, len(tx.body), utf8)
        if not safe_command(mail):
            unsafe = Reply(550, "5.6.0", "MAIL FROM would contain CR, LF or NUL; not sent")
            return tuple(unsafe for _ in recipients), False
        for i in sendable:
            if not safe_command(rcpt_command(recipients[i], self.extensions)):
                replies[i] = Reply(550, "5.6.0", "RCPT TO would contain CR, LF or NUL; not sent")
        sendable = [i for i in sendable if replies[i] is None]
        if not sendable:
            return tuple(r for r in replies if r is not None), False
        rcpts = [rcpt_command(recipients[i], self.extensions) for i in sendable]
        try:
            needs_rset = await self._exchange(tx.body, mail, rcpts, sendable, replies)
        except _Broken as broken:
            raise _Interrupted(
                replies,
                _transient(broken.status, broken.text),
                server_closing=False,
                desync=self.proto.unsolicited,
            ) from None
        return tuple(r if r is not None else self._no_reply() for r in replies), needs_rset

    def _no_reply(self) -> Reply:
        return _transient("4.4.2", f"no reply from {self.peer}")

    def _local_refusal(self, tx: Transaction, utf8: bool) -> Reply | None:
        """A permanent failure we know without asking the server; nothing is sent."""
        if utf8 and "SMTPUTF8" not in self.extensions:
            return Reply(550, "5.6.7", f"{self.peer} does not support SMTPUTF8")
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and len(tx.body) > int(limit):
            return Reply(552, "5.3.4", f"message size exceeds the limit of {self.peer} ({limit})")
        if not valid_address(tx.envelope.sender):
            return Reply(553, "5.1.7", f"invalid sender address {tx.envelope.sender!r}")
        return None

    async def _exchange(
        self,
        body: bytes,
        mail: str,
        rcpts: list[str],
        sendable: list[int],
        replies: list[Reply | None],
    ) -> bool:
        """MAIL, RCPT..., DATA and the body; fills `replies`; returns whether RSET is due."""
        pipelining = "PIPELINING" in self.extensions
        if pipelining:
            # RFC 2920: MAIL, every RCPT and DATA in one write, then read in order.
            self.send(mail, *rcpts, "DATA")
            mail_reply = await self.read("after MAIL FROM")
        else:
            mail_reply = await self.command(mail, "after MAIL FROM")
        self._stop_on_421(mail_reply, sendable, replies)
        self._expect_final(mail_reply, "MAIL FROM", replies)
        if not mail_reply.is_success:
            for i in sendable:
                replies[i] = mail_reply
            if not pipelining:
                return True
            # Pipelined RCPT and DATA replies after a failed MAIL mean nothing.
            for _ in [*rcpts, "DATA"]:
                if (await self.read("after MAIL FROM failed")).code == 354:
                    self.send(".")
                    await self.read("after end of data")
            return True

        accepted: list[int] = []
        for i, line in zip(sendable, rcpts, strict=True):
            if pipelining:
                reply = await self.read("after RCPT TO")
            else:
                reply = await self.command(line, "after RCPT TO")
            self._stop_on_421(reply, [i], replies)
            self._expect_final(reply, "RCPT TO", replies)
            replies[i] = reply
            if reply.is_success:
                accepted.append(i)

        if pipelining:
            data_reply = await self.read("after DATA")
        elif accepted:
            data_reply = await self.command("DATA", "after DATA")
        else:
            return True
        if data_reply.code != 354 and data_reply.is_success:
            # Only 354 lets the body go; a 250 here would count the mail delivered
            # without sending it, and the replies after it would be off by one.
            raise self._desync(f"DATA answered {data_reply} instead of 354", replies)
        if not accepted:
            if data_reply.code == 354:
                # A server that said 354 anyway gets an empty message ended at once.
                self.send(".")
                await self.read("after end of data")
            return True
        self._stop_on_421(data_reply, accepted, replies)
        if data_reply.code != 354:
            for i in accepted:
                replies[i] = data_reply
            return True
        # From here a lost connection may mean the message was delivered anyway:
        # the accepted recipients get 4.4.2 (a retry, perhaps a duplicate).
        for i in accepted:
            replies[i] = None
        self.proto.send(encode_data(body), 1)
        final = await self.read("after end of data")
        self._expect_final(final, "end of data", replies)
        for i in accepted:
            replies[i] = final
        self._stop_on_421(final, [], replies)
        return False

    def _expect_final(self, reply: Reply, after: str, replies: list[Reply | None]) -> None:
        """Only 2xx, 4xx or 5xx may answer MAIL, RCPT or the end of data; 3xx is a desync."""
        if 300 <= reply.code < 400:
            raise self._desync(f"{after} answered {reply}", replies)

    def _desync(self, text: str, replies: list[Reply | None]) -> _Interrupted:
        """Drop a connection whose replies no longer match our commands (never reused).

        Recipients without a final answer get a transient 4.5.0 (retried: a `t`).
        """
        broken = self.proto.desync(text)
        ending = _transient(broken.status, f"{broken.text} with {self.peer}")
        return _Interrupted(replies, ending, server_closing=False, desync=True)

    def _stop_on_421(
        self, reply: Reply, indexes: Sequence[int], replies: list[Reply | None]
    ) -> None:
        """A 421 means the server is closing: it answers everyone not yet answered."""
        if reply.code == 421:
            for i in indexes:
                replies[i] = reply
            raise _Interrupted(replies, reply, server_closing=True)

    async def rset(self) -> None:
        reply = await self.command("RSET", "after RSET")
        if not reply.is_success:
            raise await self.refused(reply)


class _QuietFactory(Factory):
    """Hands out one protocol, without a "Starting factory" log line per connection."""

    noisy = False

    def __init__(self, proto: _ReplyProtocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> _ReplyProtocol:  # noqa: N802 - Twisted's name
        return self._proto


async def _connect(
    reactor: Any, target: SmtpTarget, source_ip: str | None, settings: DomainSettings
) -> _ReplyProtocol:
    bind = (source_ip, 0) if source_ip else None
    endpoint_type = TCP6ClientEndpoint if isIPv6Address(target.ip) else TCP4ClientEndpoint
    endpoint = endpoint_type(
        reactor, target.ip, target.port, timeout=settings.connect_timeout, bindAddress=bind
    )
    proto = _ReplyProtocol(reactor)
    try:
        await endpoint.connect(_QuietFactory(proto))
    except (error.ConnectError, OSError) as exc:
        where = f"{target.host}[{target.ip}]:{target.port}"
        if source_ip:
            where += f" from {source_ip}"
        raise SessionFailure(_transient("4.4.1", f"connect to {where}: {exc}")) from None
    return proto


async def _close(proto: _ReplyProtocol, reactor: Any) -> None:
    """Close the connection and wait (briefly) until it is gone."""
    if proto.lost_reason is None and proto.transport is not None:
        proto.transport.loseConnection()
    if not proto.closed.called:
        timer = reactor.callLater(CLOSE_TIMEOUT, proto.abort)
        try:
            await proto.closed
        finally:
            if timer.active():
                timer.cancel()


async def run_session(
    reactor: Any,
    target: SmtpTarget,
    *,
    helo_name: str,
    source_ip: str | None,
    settings: DomainSettings,
    next_transaction: Callable[[], Awaitable[Transaction | None]],
    report: Callable[[TransactionResult], None],
    trust_root: Any = None,
    timeout: float = 300,
) -> ConnectionInfo:
    """Deliver transactions over one connection to `target` until there are no more.

    `reactor` provides IReactorTCP and IReactorTime. `trust_root` is a
    `twisted.internet.ssl` trust root or CA `Certificate` (None: the system CAs),
    used only under `require-starttls`. `timeout` bounds every read. Each
    transaction is reported through `report` before the next one is asked for.
    Returns the connection's info after QUIT; raises SessionFailure when the
    connection as a whole fails, after reporting the transaction in flight.
    """
    starttls = settings.use_starttls or settings.require_starttls
    carried: Transaction | None = None
    while True:
        proto = await _connect(reactor, target, source_ip, settings)
        session = _Session(proto, target, settings, timeout)
        try:
            try:
                await session.open(helo_name, starttls, trust_root)
            except _TlsFallback as fallback:
                log.info(
                    "TLS with {peer} failed ({reason}); retrying without STARTTLS",
                    peer=session.peer,
                    reason=str(fallback),
                )
                starttls = False
                continue
            except _Broken as broken:
                raise SessionFailure(_transient(broken.status, broken.text), session.info) from None
            carried = await _transactions(session, settings, next_transaction, report, carried)
            if carried is not None:
                continue  # the connection desynced: go on over a fresh one
            await session.quit()
            return session.info
        finally:
            await _close(proto, reactor)


async def _transactions(
    session: _Session,
    settings: DomainSettings,
    next_transaction: Callable[[], Awaitable[Transaction | None]],
    report: Callable[[TransactionResult], None],
    carried: Transaction | None = None,
) -> Transaction | None:
    """Ask for transactions and run them until there are none (or the limit is hit).

    Returns a transaction to run over a fresh connection when this one desynced
    (an unsolicited reply, a 250 to DATA): it was taken but not started.
    """
    sent = 0
    limit = settings.max_msg_per_connection
    while not limit or sent < limit:
        tx = carried if carried is not None else await next_transaction()
        carried = None
        if tx is None:
            return None
        if session.proto.unsolicited:
            # The server spoke while no reply was due (idle): never reuse this one.
            # The fresh connection sends the carried transaction right after its
            # EHLO (an extra reply in that chunk fails `open`), so every reconnect
            # makes progress: no loop on a server that always talks out of turn.
            log.info("{peer} sent an unsolicited reply; reconnecting", peer=session.peer)
            return tx
        sent += 1
        try:
            replies, needs_rset = await session.deliver(tx)
        except _Interrupted as stop:
            # A 2xx here is a RCPT's acceptance, never a delivery: the body did not
            # get its final reply, so those recipients take the ending reply too.
            filled = tuple(
                r if r is not None and not r.is_success else stop.ending for r in stop.replies
            )
            report(TransactionResult(tx, filled, session.info))
            if stop.desync:
                log.info("{peer}: {reason}; reconnecting", peer=session.peer, reason=stop.ending)
                return await next_transaction()
            raise await session.give_up(stop.ending, polite=not stop.server_closing) from None
        report(TransactionResult(tx, replies, session.info))
        if needs_rset:
            try:
                await session.rset()
            except _Broken as broken:
                raise SessionFailure(_transient(broken.status, broken.text), session.info) from None
    return None
