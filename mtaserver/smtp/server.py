"""The SMTP server: one `ESMTP` subclass with every customisation, its factory and service.

Twisted's `ESMTP` gives the class shape (command dispatch by name, `TimeoutMixin`,
`startTLS`), but its line handling is replaced: `dataReceived` frames the byte
stream itself, because SMTP safety lives there.

* Commands end at CR LF only; a command line over 512 octets (12288 for AUTH) gets
  `500 5.5.2`, one holding a bare CR, LF or NUL gets `500 5.5.2`.
* DATA goes through `DataReader` (only CR LF . CR LF ends it) and `MessageBuilder`
  (headers processed, body streamed into the spool writer).
* Commands are pipelined (RFC 2920): while a reply waits on a Deferred (AUTH check,
  spool commit) input is buffered, and the transport paused once that buffer is
  large, so memory stays bounded.
* Bytes pipelined after STARTTLS are discarded, and the session forgets HELO, AUTH
  and the transaction once TLS starts (RFC 3207).
* Ten 5xx replies, or an idle `smtp-command-timeout` / `smtp-data-timeout`, end the
  session with 421.
* Slow senders cannot hold a session by trickling bytes, which restart the idle
  timers: one command line must end within `smtp-command-deadline`, a whole DATA
  phase within `smtp-data-deadline` (421 4.4.2; an unfinished message is dropped).
* More than `max-junk-commands` commands that make no progress (NOOP, RSET, VRFY,
  EXPN, HELP, a repeated HELO/EHLO) without an accepted message: 421 4.7.0.
* Connection caps (`max-smtp-in` per client IP, `total-max-smtp-in`, a reserve of
  free descriptors; see `connections`) refuse a new session with 421 4.7.0.
* With `smtp-greeting-delay`, the 220 waits; a client that talks first gets
  554 5.5.1 when `reject-early-talkers` is on (postscreen's pregreet test).
* On shutdown every session hears `421 4.3.2` and is closed; a message still in
  DATA is not queued.
* Bytes sent after a refused DATA are a body sent blind: they are dropped with
  the session, never run as commands. BDAT (CHUNKING is not offered) gets 502 and
  its announced chunk is skipped.
* AUTH failures are limited per client IP (`smtp-max-auth-failure-rate`) and per
  account (`max-auth-failures-per-user` within `auth-lockout-time`: then 454 4.7.0,
  even for the right password); see `mtaserver.auth.limiter`.
* HELO names and AUTH identities with control characters are refused.

Policy decisions are the `ReceptionHandler`'s; parsing of arguments is in
`server_params`; this module is the conversation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ITLSTransport,
)
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP
from twisted.python.failure import Failure
from zope.interface import implementer

from mtaserver import smtp_reply as R
from mtaserver.auth.checkers import CheckerChoice
from mtaserver.auth.ldap import LdapCheckers
from mtaserver.auth.limiter import AuthFailureLimiter
from mtaserver.auth.users import LocalUserChecker
from mtaserver.config.model import Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Recipient
from mtaserver.maillog import MailLog
from mtaserver.maillog.log import OFF_INBOUND
from mtaserver.message.addresses import has_controls
from mtaserver.message.builder import MessageBuilder
from mtaserver.message.intake import (
    MessageStoreLike,
    MessageWriterLike,
    OnAccepted,
    ReceptionStats,
)
from mtaserver.message.limits import ContentLimits
from mtaserver.runtime import RunInThread, default_run_in_thread
from mtaserver.smtp.connections import InboundConnections
from mtaserver.smtp.eager import EagerEndpoint
from mtaserver.smtp.reception import ReceptionHandler, Session, Transaction
from mtaserver.smtp.server_auth import MECHANISMS, Challenge, Credentials, SaslExchange
from mtaserver.smtp.server_data import DataReader
from mtaserver.smtp.server_params import (
    ParamError,
    decode_address,
    parse_mail_params,
    parse_mailbox,
    parse_rcpt_params,
    split_argument,
)
from mtaserver.smtp.tls import server_tls_options
from mtaserver.smtp_reply import Reply
from mtaserver.suppression.service import SuppressionService

log = Logger()

AUTH_LOCKED = Reply(
    454, "4.7.0", "Too many authentication failures for this account, try again later"
)

COMMAND, DATA, AUTH = "COMMAND", "DATA", "AUTH"
COMMANDS = frozenset(
    {"HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP"}
)
# BDAT is not offered (no CHUNKING), but understood enough to skip its chunk.
EXTENSION_COMMANDS = frozenset({"STARTTLS", "AUTH", "BDAT"})
# Web requests sent to an SMTP port are cross-protocol attacks: hang up (as Postfix).
FORBIDDEN = frozenset({"GET", "POST", "PUT", "HEAD", "CONNECT"})
# Commands that make no progress towards a message (Postfix's junk commands); a
# repeated HELO/EHLO counts too.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP"})
#: PowerMTA's mailmerge commands (`allow-mailmerge`): refused by name (R.MAILMERGE_REFUSED).
MAILMERGE_COMMANDS = frozenset({"XMRG", "XDFN", "XPRT"})


@implementer(IHandshakeListener)
class SmtpServerProtocol(ESMTP):
    """One SMTP session."""

    max_errors = 10
    max_command_line = 512  # octets with CRLF (RFC 5321 4.5.3.1.4)
    max_auth_line = 12288  # RFC 4954 section 4
    max_paused_buffer = 64 * 1024

    def __init__(
        self,
        handler: ReceptionHandler,
        checkers: CheckerChoice,
        limiter: AuthFailureLimiter,
        tls_options: ssl.CertificateOptions | None,
        clock: IReactorTime,
        connections: InboundConnections | None = None,
        live: LiveSessions | None = None,
        maillog: MailLog | None = None,
    ) -> None:
        super().__init__(chal={}, contextFactory=tls_options)
        self.maillog = maillog if maillog is not None else MailLog.service_log()
        self.trace = OFF_INBOUND  # the mail log's view of this session (connectionMade)
        self.connections = connections if connections is not None else InboundConnections()
        self.live = live if live is not None else LiveSessions(clock)
        self.handler = handler
        self.checkers = checkers
        self.limiter = limiter
        self.clock = clock
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]
        self.stats: ReceptionStats = handler.stats
        self.session = Session(client_ip="0.0.0.0", settings=handler.settings_for("0.0.0.0"))
        self.mode = COMMAND
        self.errors = 0
        self._inbox = bytearray()
        self._overlong = False
        self._paused = 0
        self._producer_paused = False
        self._in_process = False
        self._closing = False
        self._txn: Transaction | None = None
        self._writer: MessageWriterLike | None = None
        self._reader: DataReader | None = None
        self._message: MessageBuilder | None = None
        self._sasl: SaslExchange | None = None
        self._bdat_skip = 0  # octets of a refused BDAT chunk still to throw away
        self.junk_commands = 0
        self._admitted = False
        self._greeting_sent = False
        self._shutting_down = False
        self._greeting_call: IDelayedCall | None = None
        self._command_deadline: IDelayedCall | None = None
        self._data_deadline: IDelayedCall | None = None

    @property
    def _transport(self) -> Any:
        """The transport, untyped: TCP or TLS, with startTLS and pause/resumeProducing."""
        return self.transport

    # -- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self._transport.getPeer()
        ip = str(getattr(peer, "host", "0.0.0.0"))
        settings = self.handler.settings_for(ip)
        self.session = Session(client_ip=ip, settings=settings)
        self.trace = self.maillog.inbound(peer, self._transport.getHost, settings)
        self.stats.sessions_current += 1
        self.stats.sessions_total += 1
        self.stats.sessions_top = max(self.stats.sessions_top, self.stats.sessions_current)
        self.live.add(self)
        if self.live.closing:
            self.shut_down()
            return
        total = self.handler.holder.config.settings.total_max_smtp_in
        refused = self.connections.admit(ip, settings.max_smtp_in, total)
        if refused is not None:
            log.info(
                "SMTP connection from {client_ip} refused: {reply}",
                client_ip=ip,
                reply=str(refused),
            )
            self.reply(refused)
            self._close()
            return
        self._admitted = True
        if settings.smtp_greeting_delay > 0:
            self._greeting_call = self.clock.callLater(settings.smtp_greeting_delay, self._greet)
        else:
            self._greet()

    def _greet(self) -> None:
        """Send the 220 (or the source's refusal), then handle anything said early."""
        self._greeting_call = None
        if self._closing:
            return
        self._greeting_sent = True
        greeting = self.handler.check_connect(self.session)
        self.reply(greeting)
        if not greeting.is_success:
            self._close()
            return
        self.setTimeout(self.session.settings.smtp_command_timeout)
        if self._producer_paused:
            self._producer_paused = False
            self._transport.resumeProducing()
        if self._inbox:
            self._watch_command_line(0)
            self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.trace.closed("" if reason.check(ConnectionDone) else reason.getErrorMessage())
        self._closing = True
        self.setTimeout(None)
        self._cancel_timers()
        if self.mode == DATA and self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._release_slot()
        self.stats.sessions_current -= 1
        self.live.remove(self)

    def _release_slot(self) -> None:
        """Give back this session's place under `max-smtp-in`/`total-max-smtp-in`."""
        if self._admitted:
            self._admitted = False
            self.connections.release(self.session.client_ip)

    def abort(self) -> None:
        """Drop the connection without flushing: a client that would not take its 421."""
        self._closing = True
        self._cancel_timers()
        self._transport.abortConnection()

    def shut_down(self) -> None:
        """The server is stopping: 421 4.3.2 and close (RFC 5321 3.8).

        A reply still waiting on a Deferred (a message being committed) is sent
        first, so a client never hears 421 for a message that was queued.
        """
        if self._closing:
            return
        self._shutting_down = True
        if self._paused:
            return
        self.reply(R.SHUTTING_DOWN)
        self._close()

    def timeoutConnection(self) -> None:
        log.info("SMTP timeout for {client_ip}", client_ip=self.session.client_ip)
        self.reply(R.TIMEOUT)
        self._close()

    def reply(self, reply: Reply) -> None:
        """Send `reply`; the tenth 5xx of a session ends it (421)."""
        if self._closing:
            return
        if 400 <= reply.code < 500 and self.session.settings.disconnect_on_transient_error:
            # PowerMTA's `disconnect-on-transient-error`: for feeders that cannot handle 4xx
            log.info(
                "closing the connection of {client_ip} instead of replying {code}",
                client_ip=self.session.client_ip,
                code=reply.code,
            )
            self._close()
            return
        self.trace.reply(reply)
        self._transport.write(b"".join(reply.lines()))
        if reply.code >= 500:
            self.errors += 1
            if self.errors >= self.max_errors:
                log.info("too many errors from {client_ip}", client_ip=self.session.client_ip)
                self._transport.write(b"".join(R.TOO_MANY_ERRORS.lines()))
                self._close()

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """Twisted's reply method, kept working for anything inherited that calls it."""
        self.reply(Reply(code, "", message.decode("utf-8", "replace")))

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.setTimeout(None)
            self._cancel_timers()
            self._transport.loseConnection()

    def _cancel_timers(self) -> None:
        for call in (self._greeting_call, self._command_deadline, self._data_deadline):
            if call is not None and call.active():
                call.cancel()
        self._greeting_call = self._command_deadline = self._data_deadline = None

    # -- deadlines: idle timers restart on every byte, these do not ------------------

    def _watch_command_line(self, before: int) -> None:
        """Run `smtp-command-deadline` from the first byte of a command line to its CR LF.

        `before` is how much of the inbox was there before the newest bytes; a CR LF
        at or after it ended the line the deadline was watching.
        """
        if self.mode == DATA:
            return
        end = self._inbox.rfind(b"\r\n", max(0, before - 1))
        if end >= 0:
            self._stop_command_deadline()
            partial = len(self._inbox) > end + 2
        else:
            partial = bool(self._inbox)
        if partial and self._command_deadline is None and not self._closing:
            self._command_deadline = self.clock.callLater(
                self.session.settings.smtp_command_deadline, self._command_deadline_expired
            )

    def _stop_command_deadline(self) -> None:
        if self._command_deadline is not None:
            if self._command_deadline.active():
                self._command_deadline.cancel()
            self._command_deadline = None

    def _command_deadline_expired(self) -> None:
        self._command_deadline = None
        log.info("SMTP command deadline exceeded by {client_ip}", client_ip=self.session.client_ip)
        self.reply(R.COMMAND_DEADLINE)
        self._close()

    def _start_data_deadline(self) -> None:
        """Start `smtp-data-deadline` for a DATA (or BDAT) phase; the command one stops."""
        self._stop_command_deadline()
        if self._data_deadline is None and not self._closing:
            self._data_deadline = self.clock.callLater(
                self.session.settings.smtp_data_deadline, self._data_deadline_expired
            )

    def _stop_data_deadline(self) -> None:
        if self._data_deadline is not None:
            if self._data_deadline.active():
                self._data_deadline.cancel()
            self._data_deadline = None

    def _data_deadline_expired(self) -> None:
        """Out of time mid-message: 421, and connectionLost drops the unfinished message."""
        self._data_deadline = None
        log.info("SMTP DATA deadline exceeded by {client_ip}", client_ip=self.session.client_ip)
        self.reply(R.DATA_DEADLINE)
        self._close()

    # -- framing ------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if not self._greeting_sent:
            self._early_talk(data)
            return
        self.resetTimeout()
        before = len(self._inbox)
        self._inbox += data
        self._watch_command_line(before)
        self._process()

    def _early_talk(self, data: bytes) -> None:
        """Bytes before the 220: refused (554 5.5.1) or held until the greeting."""
        if self.session.settings.reject_early_talkers:
            log.info("early talker {client_ip}", client_ip=self.session.client_ip)
            self.reply(R.EARLY_TALKER)
            self._close()
            return
        self._inbox += data
        if not self._producer_paused:
            self._producer_paused = True
            self._transport.pauseProducing()

    def _process(self) -> None:
        """Handle buffered input until it runs out or a reply has to wait."""
        if self._in_process:
            return
        self._in_process = True
        try:
            while not self._paused and not self._closing:
                if self.mode == DATA:
                    if not self._inbox:
                        break
                    chunk = bytes(self._inbox)
                    self._inbox.clear()
                    self._data_chunk(chunk)
                    continue
                if self._bdat_skip:
                    if not self._inbox:
                        break
                    self._skip_chunk()
                    continue
                line = self._next_line()
                if line is None:
                    break
                self._line(*line)
        finally:
            self._in_process = False
        if (
            self._paused
            and len(self._inbox) > self.max_paused_buffer
            and not self._producer_paused
            and not self._closing
        ):
            self._producer_paused = True
            self._transport.pauseProducing()

    def _line_limit(self) -> int:
        if self.mode == AUTH or self._inbox[:5].upper() == b"AUTH ":
            return self.max_auth_line
        return self.max_command_line

    def _next_line(self) -> tuple[bytes, bool] | None:
        """(line without CRLF, too long) or None until a whole line is buffered."""
        limit = self._line_limit()
        end = self._inbox.find(b"\r\n")
        if end < 0:
            if len(self._inbox) > limit:
                keep = b"\r" if self._inbox.endswith(b"\r") else b""
                self._inbox[:] = keep
                self._overlong = True
            return None
        line = bytes(self._inbox[:end])
        del self._inbox[: end + 2]
        too_long = self._overlong or end + 2 > limit
        self._overlong = False
        return line, too_long

    def _line(self, line: bytes, too_long: bool) -> None:
        self.trace.command(line, secret=self.mode == AUTH, too_long=too_long)
        if too_long:
            if self.mode == AUTH:
                self.mode, self._sasl = COMMAND, None
            self.reply(R.LINE_TOO_LONG)
            return
        if self.mode == AUTH:
            self._auth_response(line)
            return
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            self.reply(R.BARE_NEWLINE_COMMAND)
            return
        verb, _, rest = line.strip(b" \t").partition(b" ")
        name = verb.decode("ascii", "replace").upper()
        if name in FORBIDDEN:
            log.info("web request on SMTP from {client_ip}", client_ip=self.session.client_ip)
            self._close()
            return
        if self._junk(name):
            return
        if name in COMMANDS:
            getattr(self, "do_" + name)(rest.lstrip(b" "))
        elif name in EXTENSION_COMMANDS:
            getattr(self, "ext_" + name)(rest.lstrip(b" "))
        elif name in MAILMERGE_COMMANDS:
            self.reply(R.MAILMERGE_REFUSED)
        else:
            self.reply(R.UNKNOWN_COMMAND)

    def _junk(self, name: str) -> bool:
        """Count a command that makes no progress; past `max-junk-commands`, 421 and close."""
        if name not in JUNK_COMMANDS and not (
            name in ("HELO", "EHLO") and self.session.helo is not None
        ):
            return False
        self.junk_commands += 1
        if self.junk_commands <= self.session.settings.max_junk_commands:
            return False
        log.info("too many junk commands from {client_ip}", client_ip=self.session.client_ip)
        self.reply(R.TOO_MANY_JUNK_COMMANDS)
        self._close()
        return True

    def _wait(self, d: Deferred[Any], then: Callable[[Any], None]) -> None:
        """Hold further input until `d` fires, then call `then` with its result."""
        self._paused += 1

        def done(result: Any) -> None:
            self._paused -= 1
            if self._closing:
                return
            then(result)
            if self._shutting_down and not self._paused:
                self.reply(R.SHUTTING_DOWN)
                self._close()
                return
            if self._producer_paused and not self._closing:
                self._producer_paused = False
                self._transport.resumeProducing()
            self._process()

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("SMTP session step failed", f))

    # -- HELO / EHLO --------------------------------------------------------------

    def _greeted(self, rest: bytes, esmtp: bool) -> bool:
        if not rest:
            self.reply(Reply(501, "5.5.4", "HELO/EHLO requires a domain name"))
            return False
        if any(b < 0x20 or b == 0x7F for b in rest):
            # The name goes into Received, acct records and logs: no control characters.
            self.reply(Reply(501, "5.5.4", "Invalid HELO/EHLO domain name"))
            return False
        self._reset_transaction()
        self.session.helo = rest.split(b" ")[0].decode("utf-8", "replace")[:255]
        self.session.esmtp = esmtp
        return True

    def do_HELO(self, rest: bytes) -> None:
        if self._greeted(rest, esmtp=False):
            self.reply(Reply(250, "", self.handler.host_name))

    def do_EHLO(self, rest: bytes) -> None:
        if self._greeted(rest, esmtp=True):
            self.reply(Reply(250, "", "\n".join(self.ehlo_lines())))

    def ehlo_lines(self) -> list[str]:
        settings = self.session.settings
        size = settings.max_message_size
        lines = [f"{self.handler.host_name} Hello [{self.session.client_ip}]", "PIPELINING"]
        lines.append(f"SIZE {size}" if size else "SIZE")
        lines.append("8BITMIME")
        if settings.allow_smtputf8:
            lines.append("SMTPUTF8")
        lines += ["ENHANCEDSTATUSCODES", "DSN"]
        if self._can_starttls():
            lines.append("STARTTLS")
        if settings.allow_auth and self._auth_allowed() and self._checker() is not None:
            lines.append("AUTH " + " ".join(MECHANISMS))
        return lines

    # -- the transaction ----------------------------------------------------------

    def _reset_transaction(self) -> None:
        self._txn = None

    def do_MAIL(self, rest: bytes) -> None:
        if self.session.helo is None:
            self.reply(R.HELO_FIRST)
            return
        if self._txn is not None:
            self.reply(Reply(503, "5.5.1", "Nested MAIL command"))
            return
        try:
            raw, params = split_argument(rest, b"FROM:")
            mail_params = parse_mail_params(
                params, self.session.esmtp, self.session.settings.allow_smtputf8
            )
            text = decode_address(raw, mail_params.smtputf8, "5.1.7")
            sender = parse_mailbox(text, "5.1.7", allow_null=True)
        except ParamError as exc:
            self.reply(exc.reply)
            return
        reply = self.handler.check_mail(self.session, sender, mail_params)
        if reply.is_success:
            self._txn = Transaction(sender, mail_params)
        self.reply(reply)

    def do_RCPT(self, rest: bytes) -> None:
        txn = self._txn
        if txn is None:
            self.reply(Reply(503, "5.5.1", "Need MAIL before RCPT"))
            return
        try:
            raw, params = split_argument(rest, b"TO:")
            rcpt_params = parse_rcpt_params(params, self.session.esmtp)
            text = decode_address(raw, txn.params.smtputf8, "5.1.3")
            rcpt = parse_mailbox(text, "5.1.3")
        except ParamError as exc:
            self.reply(exc.reply)
            return
        reply = self.handler.check_rcpt(self.session, txn, rcpt, rcpt_params)
        if reply.is_success:
            txn.recipients.append(Recipient(rcpt.address, rcpt_params.orcpt, rcpt_params.notify))
        self.reply(reply)

    def do_DATA(self, rest: bytes) -> None:
        txn = self._txn
        if rest:
            self._refuse_data(Reply(501, "5.5.4", "DATA takes no arguments"))
            return
        if txn is None:
            self._refuse_data(Reply(503, "5.5.1", "Need MAIL command"))
            return
        if not txn.recipients:
            self._refuse_data(Reply(554, "5.5.1", "No valid recipients"))
            return
        started = self.handler.begin_message(self.session, txn)
        if isinstance(started, Reply):
            self._reset_transaction()
            self._refuse_data(started)
            return
        settings = self.session.settings
        rules = self.handler.header_rules(self.session, txn, started.msg_id)
        self._writer = started
        self._message = MessageBuilder(
            started.write, rules, settings.max_message_size, ContentLimits.of(settings)
        )
        self._reader = DataReader(reject_bare_newline=settings.bare_newline == "reject")
        self.mode = DATA
        self.trace.message_started()
        self.setTimeout(settings.smtp_data_timeout)
        self._start_data_deadline()
        self.reply(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))

    def _refuse_data(self, reply: Reply) -> None:
        """Refuse DATA; a client that sent more without waiting loses it and the session.

        DATA ends a pipelined group (RFC 2920 3.1): anything already after it is a
        message body sent blind, whose lines must never run as commands (a
        `RCPT TO` or `QUIT` in the body). It is thrown away and the session ends.
        """
        self.reply(reply)
        if self._inbox and not self._closing:
            log.info(
                "discarded {count} bytes sent after a refused DATA by {client_ip}",
                count=len(self._inbox),
                client_ip=self.session.client_ip,
            )
            self._inbox.clear()
            self._close()

    def ext_BDAT(self, rest: bytes) -> None:
        """CHUNKING is not offered: 502, and the chunk's octets are skipped, never run.

        `BDAT size [LAST]` announces exactly how many octets follow; they are read
        and dropped. Without a readable size (or one over `max-message-size`) the
        chunk cannot be told from commands, so the input is dropped with the session.
        """
        self.reply(Reply(502, "5.5.1", "BDAT not available (CHUNKING not offered)"))
        size, _, last = rest.strip(b" ").partition(b" ")
        # Skipping is bounded like a message would be; a bigger "chunk" is a stream.
        limit = self.session.settings.max_message_size or 2**30
        if (
            size.isdigit()
            and len(size) <= 20
            and int(size) <= limit
            and last.strip(b" ").upper() in (b"", b"LAST")
        ):
            self._bdat_skip = int(size)
            return
        if not self._closing:
            log.info(
                "BDAT without a usable size from {client_ip}: session dropped",
                client_ip=self.session.client_ip,
            )
            self._inbox.clear()
            self._close()

    def _skip_chunk(self) -> None:
        """Throw away buffered octets of a refused BDAT chunk."""
        count = min(self._bdat_skip, len(self._inbox))
        del self._inbox[:count]
        self._bdat_skip -= count

    def _data_chunk(self, chunk: bytes) -> None:
        reader, message, writer, txn = self._reader, self._message, self._writer, self._txn
        assert reader is not None and message is not None and writer is not None
        assert txn is not None
        lines, rest = reader.feed(chunk)
        if lines:
            self.trace.data_lines(lines)
            message.add(lines)
        if rest is None:
            return
        message.finish()
        self.mode = COMMAND
        self._inbox += rest
        self._reader = self._message = self._writer = None
        self._txn = None
        self.setTimeout(None)
        self._stop_data_deadline()
        accepted = Deferred.fromCoroutine(
            self.handler.accept_message(self.session, txn, writer, message, reader.problem)
        )
        accepted.addErrback(self._accept_failed)
        self._wait(accepted, self._message_done)

    def _accept_failed(self, failure: Failure) -> Reply:
        log.failure("accepting a message failed", failure)
        return R.SPOOL_ERROR

    def _message_done(self, reply: Reply) -> None:
        self.setTimeout(self.session.settings.smtp_command_timeout)
        if reply.is_success:
            self.junk_commands = 0  # progress: a message was accepted
        self.reply(reply)

    def do_RSET(self, rest: bytes) -> None:
        self._reset_transaction()
        self.reply(R.OK)

    def do_NOOP(self, rest: bytes) -> None:
        self.reply(R.OK)

    def do_QUIT(self, rest: bytes) -> None:
        # The place is free before the 221 goes out: a client that connects again as
        # soon as it hears it (smtp-source at exactly max-smtp-in sessions) must not
        # be refused because our side of the old connection is still closing.
        self._release_slot()
        self.reply(Reply(221, "2.0.0", "Bye"))
        self._close()

    def do_VRFY(self, rest: bytes) -> None:
        self.reply(Reply(252, "2.5.0", "Cannot VRFY user, but will accept message"))

    def do_EXPN(self, rest: bytes) -> None:
        self.reply(Reply(502, "5.5.1", "EXPN not available"))

    def do_HELP(self, rest: bytes) -> None:
        self.reply(Reply(214, "2.0.0", "See RFC 5321"))

    # -- STARTTLS -----------------------------------------------------------------

    def _can_starttls(self) -> bool:
        return (
            self.ctx is not None
            and not self.session.tls
            and self.session.settings.allow_starttls
            and ITLSTransport.providedBy(self.transport)
        )

    def ext_STARTTLS(self, rest: bytes) -> None:
        if rest:
            self.reply(Reply(501, "5.5.4", "STARTTLS takes no arguments"))
            return
        if self.session.tls:
            self.reply(Reply(503, "5.5.1", "TLS already active"))
            return
        if not self._can_starttls():
            self.reply(Reply(454, "4.7.0", "TLS not available"))
            return
        self.reply(Reply(220, "2.0.0", "Ready to start TLS"))
        if self._inbox:
            log.warn(
                "discarded {count} bytes pipelined after STARTTLS from {client_ip}",
                count=len(self._inbox),
                client_ip=self.session.client_ip,
            )
            self._inbox.clear()
        self._transport.startTLS(self.ctx)
        ip = self.session.client_ip
        self.session = Session(client_ip=ip, settings=self.handler.settings_for(ip), tls=True)
        self._reset_transaction()

    def handshakeCompleted(self) -> None:  # noqa: N802 - IHandshakeListener's name
        """The STARTTLS handshake finished: `log-tls` shows its version and cipher."""
        self.trace.tls(self._transport.getHandle())

    # -- AUTH ---------------------------------------------------------------------

    def _auth_allowed(self) -> bool:
        settings = self.session.settings
        if self.session.user is not None:
            return False
        if self.session.tls:
            return True
        return settings.allow_unencrypted_plain_auth and not settings.require_starttls_before_auth

    def _checker(self) -> Any:
        return self.checkers.for_source(self.session.settings.auth_ldap)

    def ext_AUTH(self, rest: bytes) -> None:
        session = self.session
        if session.helo is None or not session.esmtp:
            self.reply(Reply(503, "5.5.1", "Send EHLO first"))
            return
        if session.user is not None:
            self.reply(Reply(503, "5.5.1", "Already authenticated"))
            return
        if self._txn is not None:
            self.reply(Reply(503, "5.5.1", "AUTH not allowed during a mail transaction"))
            return
        if not session.settings.allow_auth:  # `allow-auth no`
            self.reply(Reply(502, "5.5.1", "AUTH not available"))
            return
        if not self._auth_allowed():
            self.reply(R.ENCRYPTION_REQUIRED)
            return
        if self._checker() is None:
            self.reply(Reply(502, "5.5.1", "AUTH not available"))
            return
        limit, window = self._auth_failure_rate()
        if self.limiter.blocked(session.client_ip, limit, window):
            self.reply(R.AUTH_TOO_MANY)
            self._close()
            return
        mechanism, _, initial = rest.partition(b" ")
        name = mechanism.decode("ascii", "replace").upper()
        if name not in MECHANISMS:
            self.reply(Reply(504, "5.5.4", "Unrecognized authentication type"))
            return
        self._sasl = SaslExchange(name)
        self._auth_step(self._sasl.start(initial.strip() or None))

    def _auth_response(self, line: bytes) -> None:
        assert self._sasl is not None
        self._auth_step(self._sasl.respond(line))

    def _auth_step(self, step: Challenge | Credentials | Reply) -> None:
        if isinstance(step, Challenge):
            self.mode = AUTH
            self.reply(step.reply())
            return
        self.mode, self._sasl = COMMAND, None
        if isinstance(step, Reply):
            if step == R.AUTH_FAILED:
                self._auth_failed()
            else:
                self.reply(step)
            return
        if has_controls(step.user):
            # Never looked up, logged or counted under a name that could forge lines.
            self._auth_failed()
            return
        if self.limiter.user_locked(step.user):
            log.info(
                "AUTH for locked account {user} from {client_ip}",
                user=step.user,
                client_ip=self.session.client_ip,
            )
            self.reply(AUTH_LOCKED)
            return
        checker = self._checker()
        checked: Deferred[bool] = checker.check(step.user, step.password)
        self._wait(checked, lambda ok: self._auth_checked(step.user, ok))

    def _auth_checked(self, user: str, ok: bool | Failure) -> None:
        if isinstance(ok, Failure):
            log.failure("AUTH check failed", ok)
            self.reply(R.AUTH_TEMPORARY)
        elif ok:
            ip = self.session.client_ip
            self.session.user = user
            self.session.settings = self.handler.settings_for(ip, user)
            log.info("AUTH {user} from {client_ip}", user=user, client_ip=ip)
            self.trace.authenticated(user)
            self.reply(R.AUTH_OK)
        else:
            self._auth_failed(user)

    def _auth_failure_rate(self) -> tuple[int, float]:
        """(failures, seconds) allowed per client IP: `smtp-max-auth-failure-rate`,
        else `max-auth-failures-per-minute` per 60 s."""
        settings = self.session.settings
        rate = settings.smtp_max_auth_failure_rate
        if rate is not None:
            return rate.count, rate.per_seconds
        return settings.max_auth_failures_per_minute, 60.0

    def _auth_failed(self, user: str | None = None) -> None:
        ip = self.session.client_ip
        self.stats.auth_failures += 1
        limit, window = self._auth_failure_rate()
        failures = self.limiter.record(ip, window)
        log.info(
            "AUTH failed for {user} from {client_ip} ({failures} in {window}s)",
            user=user,
            client_ip=ip,
            failures=failures,
            window=window,
        )
        if user is not None:
            settings = self.handler.holder.config.settings
            if self.limiter.record_user(
                user, settings.max_auth_failures_per_user, settings.auth_lockout_time
            ):
                log.warn(
                    "AUTH account {user} locked for {lockout}s after {count} failures",
                    user=user,
                    lockout=settings.auth_lockout_time,
                    count=settings.max_auth_failures_per_user,
                )
        if failures >= limit:
            self.reply(R.AUTH_TOO_MANY)
            self._close()
        else:
            self.reply(R.AUTH_FAILED)


class LiveSessions:
    """The open sessions of one listener, so that shutdown can say 421 to each."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.sessions: set[SmtpServerProtocol] = set()
        self.closing = False
        self._waiters: list[Deferred[None]] = []

    def add(self, protocol: SmtpServerProtocol) -> None:
        self.sessions.add(protocol)

    def remove(self, protocol: SmtpServerProtocol) -> None:
        self.sessions.discard(protocol)
        if not self.sessions:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self, grace: float) -> Deferred[None]:
        """421 4.3.2 to every session; fires once all are gone, aborting stragglers after `grace`.

        A client that does not read its 421 (a full send buffer) would otherwise hold
        shutdown forever.
        """
        self.closing = True
        for protocol in list(self.sessions):
            protocol.shut_down()
        if not self.sessions:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._waiters.append(done)

        def abort() -> None:
            for protocol in list(self.sessions):
                log.info(
                    "aborting SMTP session of {client_ip} at shutdown",
                    client_ip=protocol.session.client_ip,
                )
                protocol.abort()

        timer = self.clock.callLater(grace, abort)

        def stop_timer(result: None) -> None:
            if timer.active():
                timer.cancel()
            return result

        done.addBoth(stop_timer)
        return done


class SmtpServerFactory(ServerFactory):
    """Builds sessions for one `smtp-listener`; shares handler, stats and AUTH limiter."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: MessageStoreLike,
        on_accepted: OnAccepted,
        clock: IReactorTime,
        listener: Listener,
        *,
        stats: ReceptionStats | None = None,
        checkers: CheckerChoice | None = None,
        run_in_thread: RunInThread | None = None,
        tls_options: ssl.CertificateOptions | None = None,
        connections: InboundConnections | None = None,
        suppression: SuppressionService | None = None,
        maillog: MailLog | None = None,
    ) -> None:
        self.holder = holder
        self.maillog = maillog if maillog is not None else MailLog.service_log()
        # Shared by every listener of the server: total-max-smtp-in counts them all.
        self.connections = connections if connections is not None else InboundConnections()
        self.live = LiveSessions(clock)
        self.clock = clock
        self.listener = listener
        self.stats = stats if stats is not None else ReceptionStats()
        self.handler = ReceptionHandler(
            holder,
            store,
            on_accepted,
            self.stats,
            clock,
            suppression=suppression,
            listener_source=listener.source,
        )
        if tls_options is None:
            pem = listener.tls_certificate or holder.config.settings.smtp_server_tls_certificate
            policy = listener.tls or holder.config.settings.smtp_server_tls
            tls_options = server_tls_options(pem, policy) if pem else None
        self.tls_options = tls_options
        if checkers is None:
            run = run_in_thread or default_run_in_thread(clock)
            checkers = CheckerChoice(
                LocalUserChecker(holder, run), LdapCheckers(holder, run, clock)
            )
        self.checkers = checkers
        self.limiter = AuthFailureLimiter(clock.seconds)

    def buildProtocol(self, addr: IAddress | None) -> SmtpServerProtocol:
        protocol = SmtpServerProtocol(
            self.handler,
            self.checkers,
            self.limiter,
            self.tls_options,
            self.clock,
            connections=self.connections,
            live=self.live,
            maillog=self.maillog,
        )
        protocol.factory = self
        return protocol


class SmtpListenerService(StreamServerEndpointService):
    """One `smtp-listener`; stopping it also ends its sessions with 421 4.3.2."""

    shutdown_grace = 10.0  # seconds a session gets to take its 421 before it is aborted

    def __init__(self, endpoint: Any, factory: SmtpServerFactory) -> None:
        super().__init__(EagerEndpoint(endpoint), factory)  # replies sent at once
        self.smtp_factory = factory

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        listening: Deferred[Any] = super().stopService()
        closed = self.smtp_factory.live.close_all(self.shutdown_grace)
        both = gatherResults([listening, closed], consumeErrors=True)
        return both.addCallback(lambda _: None)


def make_smtp_service(
    holder: ConfigHolder,
    store: MessageStoreLike,
    on_accepted: OnAccepted,
    listener: Listener,
    reactor: Any,
    **factory_options: Any,
) -> IService:
    """A service listening on `listener` (TCP, IPv4 or IPv6); STARTTLS from its PEM."""
    factory = SmtpServerFactory(holder, store, on_accepted, reactor, listener, **factory_options)
    host, port = listener.address.host, listener.address.port
    endpoint = (
        TCP6ServerEndpoint(reactor, port, interface=host)
        if ":" in host
        else TCP4ServerEndpoint(reactor, port, interface=host)
    )
    service = SmtpListenerService(endpoint, factory)
    service.setName(f"smtp-listener {listener.address}")
    return service
