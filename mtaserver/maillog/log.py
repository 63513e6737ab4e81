"""`MailLog`: what the server's parts call to write the operator's mail log.

PowerMTA's log file is where an operator sees sessions: a `<source>`'s connections,
commands and data (`log-connections`, `log-commands`, `log-data`, `log-tls`), a
`<domain>`'s deliveries and their failures, DNS routing answers and disabled source
IPs (`log-resolution`, `log-transfer-failures`, `log-disabled-ips`), the Transmissions
API's requests (`log-requests`, `log-data`, `log-tls`). The switches are read from
the session's settings when the session starts (so a reload applies to the next one).

The server's parts hold a `MailLog` handed to them (never a global) and ask it for a
*trace* per session (`inbound`, `outbound`, `api`); each hook in the protocol code
is then one call such as ``self.trace.command(line)``, which costs one attribute test
when that switch is off. Everything a peer said goes through `format.escape`.

Where lines go: to the `log-file` (`logfile.LogFile`) when one is configured, else
to the service log (twistd's), one event per line, so a switch turned on without a
`log-file` is still seen. Tags: ``in N`` for a received SMTP session, ``out N`` for a
delivery session, ``api N`` for a Transmissions API request, ``queue`` for queue
events; a reception worker passes `process` (``w1``), giving ``w1 in N``.

Line texts (after the tag), `>>>` for what was read from the peer, `<<<` for what was
written to it, as in PowerMTA's log:

==========================  ==========================================================
switch                      text
==========================  ==========================================================
log-connections (source)    ``connection from IP:PORT to IP:PORT``; ``closed`` /
                            ``closed: REASON``
log-commands (source)       ``>>> COMMAND`` (``AUTH PLAIN ********``, AUTH responses
                            ``>>> ********``), ``<<< REPLY LINE``, ``authenticated as USER``
log-data (source)           ``data >>> HEADER LINE`` for each header line of a message,
                            up to `MAX_DATA_BYTES`, then ``data >>> ...(cut)``
log-tls (source, domain)    ``tls TLSv1.3 TLS_AES_256_GCM_SHA384``
log-connections (domain)    ``connecting to HOST [IP]:PORT for QUEUE``, ``connected``,
                            ``closed``
log-commands (domain)       ``<<< COMMAND`` (AUTH masked), ``>>> REPLY LINE``,
                            ``<<< [message body, N bytes]``
log-data (domain)           ``data <<< HEADER LINE`` of each message sent
log-resolution (domain)     ``resolved DOMAIN: PREF HOST [IP]:PORT, ...`` or
                            ``resolution of DOMAIN failed: STATUS DIAG``
log-transfer-failures       ``transfer failure QUEUE <RCPT>: REPLY``,
  (domain)                  ``delivery failure QUEUE HOST [IP]:PORT: REPLY``
log-disabled-ips (domain)   ``source KEY disabled for QUEUE (for Ns | until enabled)``
log-requests (API)          ``request METHOD PATH from IP: CODE DETAIL``
log-data (API)              ``data >>> BODY PART`` (1000-byte pieces, 64 KiB at most)
log-tls (API)               ``tls TLSv1.3 CIPHER``
==========================  ==========================================================
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from mtaserver.config.model import DomainSettings, SourceSettings, TransmissionsApiSettings
from mtaserver.maillog.format import MASK, Stamper, escape, format_line, mask_auth
from mtaserver.maillog.logfile import LogFile
from mtaserver.runtime import Clock
from mtaserver.smtp_reply import Reply

log = Logger()

MAX_DATA_BYTES = 16 * 1024  # header bytes of one message that log-data shows
API_DATA_PIECE = 1000
API_DATA_MAX = 64 * 1024


class _Sink(Protocol):
    def emit(self, tag: str, text: str) -> None: ...


class MailLog:
    """The mail log of one process; hand it to whatever writes to it."""

    def __init__(self, clock: Clock | None, file: LogFile | None = None, process: str = "") -> None:
        self.clock = clock
        self.file = file
        self.prefix = f"{process} " if process else ""
        self._stamp = Stamper()
        self._counters: dict[str, itertools.count[int]] = {}

    @classmethod
    def service_log(cls) -> MailLog:
        """A mail log without a file: its lines go to the service log (parts built alone)."""
        return cls(None)

    def emit(self, tag: str, text: str) -> None:
        """One line; `text` is already escaped."""
        if self.file is not None and self.clock is not None:
            stamp = self._stamp(self.clock.seconds())
            self.file.write(format_line(stamp, self.prefix + tag, text))
        else:
            log.info("[{tag}] {text}", tag=self.prefix + tag, text=text)

    def _tag(self, kind: str) -> str:
        counter = self._counters.setdefault(kind, itertools.count(1))
        return f"{kind} {next(counter)}"

    # -- traces --------------------------------------------------------------------

    def inbound(
        self, client: Any, server: Callable[[], Any], settings: SourceSettings
    ) -> InboundTrace:
        """A received SMTP session from `client` (a twisted address) on `server()`.

        The addresses are formatted only when the session is logged: nothing is spent
        on a session whose source logs nothing.
        """
        if not (
            settings.log_connections
            or settings.log_commands
            or settings.log_data
            or settings.log_tls
        ):
            return OFF_INBOUND
        trace = InboundTrace(self, self._tag("in"), settings)
        if trace.connections:
            where = f"from {_address(client)} to {_address(server())}"
            self.emit(trace.tag, f"connection {where}")
        return trace

    def outbound(self, queue: str, settings: DomainSettings) -> OutboundTrace:
        """A delivery session of `queue` (`domain/vmta`)."""
        if not (
            settings.log_connections
            or settings.log_commands
            or settings.log_data
            or settings.log_tls
            or settings.log_resolution
            or settings.log_transfer_failures
        ):
            return OFF_OUTBOUND
        return OutboundTrace(self, self._tag("out"), queue, settings)

    def api(self, settings: TransmissionsApiSettings) -> ApiTrace:
        """A Transmissions API request."""
        if not (settings.log_requests or settings.log_data or settings.log_tls):
            return OFF_API
        return ApiTrace(self, self._tag("api"), settings)

    # -- one-line events -----------------------------------------------------------

    def disabled_ip(
        self, settings: DomainSettings, queue: str, source: str, after: float | None
    ) -> None:
        """`log-disabled-ips`: `disable-source-ip` took `source` out of `queue`."""
        if settings.log_disabled_ips:
            until = "until enabled" if after is None else f"for {after:.0f}s"
            self.emit("queue", f"source {escape(source)} disabled for {escape(queue)} ({until})")

    # -- rotation ------------------------------------------------------------------

    def rotate(self) -> defer.Deferred[bool]:
        """`rotate log`: fires with whether a file was rotated (no log-file: False)."""
        if self.file is None:
            return defer.succeed(False)
        return self.file.rotate()


class InboundTrace:
    """One received SMTP session's lines (see `MailLog.inbound`)."""

    def __init__(self, sink: _Sink, tag: str, settings: SourceSettings) -> None:
        self.sink = sink
        self.tag = tag
        self.connections = settings.log_connections
        self.commands = settings.log_commands
        self.data = settings.log_data
        self.tls_on = settings.log_tls
        self._data_left = 0
        self._in_header = False

    def command(self, line: bytes, secret: bool = False, too_long: bool = False) -> None:
        """A command line the client sent; `secret` for an AUTH exchange's responses.

        Of a line too long only the tail is left, which may be the end of a secret:
        it is not shown.
        """
        if self.commands:
            if secret:
                shown = MASK
            elif too_long:
                shown = "[line too long, not shown]"
            else:
                shown = escape(mask_auth(line))
            self.sink.emit(self.tag, ">>> " + shown)

    def reply(self, reply: Reply) -> None:
        if self.commands:
            for line in reply.lines():
                self.sink.emit(self.tag, "<<< " + escape(line.rstrip(b"\r\n")))

    def authenticated(self, user: str) -> None:
        if self.commands:
            self.sink.emit(self.tag, f"authenticated as {escape(user)}")

    def message_started(self) -> None:
        """DATA was answered 354: the next lines are the message's header block."""
        self._in_header = self.data
        self._data_left = MAX_DATA_BYTES

    def data_lines(self, lines: Iterable[bytes]) -> None:
        """Content lines of the message in DATA; shows its header block, bounded."""
        if not self._in_header:
            return
        for line in lines:
            if not line:
                self._in_header = False
                return
            if self._data_left <= 0:
                self.sink.emit(self.tag, "data >>> ...(cut)")
                self._in_header = False
                return
            self._data_left -= len(line) + 2
            self.sink.emit(self.tag, "data >>> " + escape(line))

    def tls(self, handle: Any) -> None:
        """The STARTTLS handshake finished; `handle` is the OpenSSL connection."""
        if self.tls_on:
            self.sink.emit(self.tag, "tls " + tls_description(handle))

    def closed(self, reason: str = "") -> None:
        if self.connections:
            self.sink.emit(self.tag, f"closed: {escape(reason)}" if reason else "closed")


class OutboundTrace:
    """One delivery session's lines (see `MailLog.outbound`)."""

    def __init__(self, sink: _Sink, tag: str, queue: str, settings: DomainSettings) -> None:
        self.sink = sink
        self.tag = tag
        self.queue = queue
        self.connections = settings.log_connections
        self.commands = settings.log_commands
        self.data = settings.log_data
        self.tls_on = settings.log_tls
        self.resolution = settings.log_resolution
        self.failures = settings.log_transfer_failures
        self._auth = False  # AUTH sent: lines until a non-334 reply are secrets

    def _emit(self, text: str) -> None:
        self.sink.emit(self.tag, text)

    def resolved(self, domain: str, levels: Sequence[Sequence[Any]]) -> None:
        """The routing answer: levels of targets (`host`, `ip`, `port`, `preference`)."""
        if self.resolution:
            shown = ", ".join(
                f"{t.preference} {escape(t.host)} [{escape(t.ip)}]:{t.port}"
                for level in levels
                for t in level
            )
            self._emit(f"resolved {escape(domain)}: {shown or 'no targets'}")

    def resolution_failed(self, domain: str, status: str, diag: str) -> None:
        if self.resolution or self.failures:
            self._emit(f"resolution of {escape(domain)} failed: {escape(status)} {escape(diag)}")

    def connecting(self, host: str, ip: str, port: int, source_ip: str | None) -> None:
        if self.connections:
            source = f" from {escape(source_ip)}" if source_ip else ""
            self._emit(
                f"connecting to {escape(host)} [{escape(ip)}]:{port}{source}"
                f" for {escape(self.queue)}"
            )

    def connected(self) -> None:
        if self.connections:
            self._emit("connected")

    def closed(self) -> None:
        if self.connections:
            self._emit("closed")

    def sent(self, lines: Sequence[str]) -> None:
        """Command lines we wrote; an AUTH's credentials are masked."""
        if not self.commands:
            return
        for line in lines:
            if self._auth:
                shown = MASK
            else:
                shown = escape(mask_auth(line.encode("utf-8", "replace")))
                self._auth = line[:5].upper() == "AUTH "
            self._emit("<<< " + shown)

    def replied(self, code: int, texts: Sequence[str]) -> None:
        if code != 334:
            self._auth = False
        if self.commands:
            for i, text in enumerate(texts or ("",)):
                sep = " " if i == len(texts) - 1 or not texts else "-"
                self._emit(f">>> {code}{sep}{escape(text)}")

    def body(self, body: bytes) -> None:
        """The message went out after a 354."""
        if self.commands:
            self._emit(f"<<< [message body, {len(body)} bytes]")
        if self.data:
            end = body.find(b"\r\n\r\n", 0, MAX_DATA_BYTES)
            header = body[: end if end >= 0 else MAX_DATA_BYTES]
            for line in header.split(b"\r\n"):
                self._emit("data <<< " + escape(line))
            if end < 0 and len(body) > MAX_DATA_BYTES:
                self._emit("data <<< ...(cut)")

    def tls(self, protocol: str, cipher: str) -> None:
        if self.tls_on:
            self._emit(f"tls {escape(protocol)} {escape(cipher)}")

    def tls_failed(self, reason: str) -> None:
        if self.tls_on:
            self._emit(f"tls failed: {escape(reason)}")

    def report(self, recipients: Sequence[str], replies: Sequence[Reply]) -> None:
        """`log-transfer-failures`: each recipient the remote (or we) did not accept."""
        if self.failures:
            for rcpt, reply in zip(recipients, replies, strict=False):
                if not reply.is_success:
                    self._emit(
                        f"transfer failure {escape(self.queue)} <{escape(rcpt)}>: "
                        f"{escape(str(reply))}"
                    )

    def session_failed(self, host: str, ip: str, port: int, reply: Reply) -> None:
        if self.failures:
            self._emit(
                f"delivery failure {escape(self.queue)} {escape(host)} [{escape(ip)}]:{port}: "
                f"{escape(str(reply))}"
            )

    def wrap_report(self, report: Callable[[Any], None]) -> Callable[[Any], None]:
        """`report` for `run_session` that also logs each transaction's failures."""
        if not self.failures:
            return report

        def logged(result: Any) -> None:
            recipients = [r.address for r in result.transaction.recipients]
            self.report(recipients, result.replies)
            report(result)

        return logged


class ApiTrace:
    """One Transmissions API request's lines (see `MailLog.api`)."""

    def __init__(self, sink: _Sink, tag: str, settings: TransmissionsApiSettings) -> None:
        self.sink = sink
        self.tag = tag
        self.requests = settings.log_requests
        self.data = settings.log_data
        self.tls_on = settings.log_tls

    def request(self, request: Any, client: str, code: int, detail: str) -> None:
        """The answer to `request` (a twisted.web request): `log-requests`."""
        if self.requests:
            self.sink.emit(
                self.tag,
                f"request {escape(request.method)} {escape(request.path, 200)} from "
                f"{escape(client)}: {code} {escape(detail)}",
            )

    def body(self, data: bytes) -> None:
        """The request body (`log-data`), in pieces, bounded."""
        if self.data:
            shown = data[:API_DATA_MAX]
            for start in range(0, len(shown), API_DATA_PIECE):
                piece = shown[start : start + API_DATA_PIECE]
                self.sink.emit(self.tag, "data >>> " + escape(piece))
            if len(data) > API_DATA_MAX:
                self.sink.emit(self.tag, "data >>> ...(cut)")

    def tls(self, request: Any) -> None:
        """The TLS session a request came over (`log-tls`); nothing for plain HTTP."""
        if self.tls_on and request.isSecure():
            get_handle = getattr(request.transport, "getHandle", None)
            if get_handle is not None:
                self.sink.emit(self.tag, "tls " + tls_description(get_handle()))


def _address(address: Any) -> str:
    """`IP:PORT` of a twisted address, escaped."""
    return escape(f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}")


def tls_description(handle: Any) -> str:
    """`TLSv1.3 TLS_AES_256_GCM_SHA384` from an OpenSSL connection (or `unknown`)."""
    try:
        version = handle.get_protocol_version_name() or "unknown"
        cipher = handle.get_cipher_name() or "unknown"
    except Exception:  # not a TLS connection after all
        return "unknown"
    return f"{escape(str(version))} {escape(str(cipher))}"


_NOBODY = MailLog(None)
_OFF_SOURCE = SourceSettings()
_OFF_DOMAIN = DomainSettings()
#: Traces with every switch off: what a session gets when its scope logs nothing.
OFF_INBOUND = InboundTrace(_NOBODY, "", _OFF_SOURCE)
OFF_OUTBOUND = OutboundTrace(_NOBODY, "", "", _OFF_DOMAIN)
OFF_API = ApiTrace(_NOBODY, "", TransmissionsApiSettings())
