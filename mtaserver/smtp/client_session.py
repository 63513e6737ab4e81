"""Outbound SMTP, one connection's conversation, phase by phase, as RFC 5321 tells it.

`Session` holds what one connection learned (the server's extensions, ESMTP, TLS) and
runs the phases the driver in `mtaserver.smtp.client` calls: `open` (greeting,
EHLO/HELO, STARTTLS, AUTH), `deliver` (one transaction, pipelined when offered),
`rset` and `quit`. It reads replies through `ReplyProtocol`
(`mtaserver.smtp.client_protocol`) and writes only lines that pass `safe_command`
(`mtaserver.smtp.client_wire`). The records it shares with the driver live here:
`SmtpTarget`, `SessionFailure` (the connection as a whole failed), `Interrupted` (a
transaction stopped half way), `TlsFallback` and the synthesised `transient_reply`.
The choices it implements (opportunistic vs. verified TLS, AUTH only over TLS, local
refusals, desync handling) are listed in `mtaserver.smtp.client`'s docstring.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

from mtaserver.config.model import DomainSettings
from mtaserver.maillog.log import OFF_OUTBOUND, OutboundTrace
from mtaserver.queue.delivery import ConnectionInfo, Transaction
from mtaserver.smtp.client_protocol import Broken, ReplyProtocol, make_reply, parse_ehlo
from mtaserver.smtp.client_tls import ca_trust_root, tls_creator
from mtaserver.smtp.client_wire import (
    auth_plain,
    encode_data,
    is_loopback,
    mail_command,
    needs_smtputf8,
    rcpt_command,
    safe_command,
    valid_address,
)
from mtaserver.smtp_reply import Reply

__all__ = [
    "Interrupted",
    "Session",
    "SessionFailure",
    "SmtpTarget",
    "TlsFallback",
    "UnsafeCommand",
    "transient_reply",
]

# Code used for replies we make up for a transient problem on our side of the wire.
SYNTHETIC_TRANSIENT = 421
QUIT_TIMEOUT = 10.0


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


class UnsafeCommand(ValueError):
    """A command line would contain CR, LF or NUL; nothing was written."""


class TlsFallback(Exception):
    """Opportunistic TLS failed during the handshake: reconnect without STARTTLS."""


class Interrupted(Exception):
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


def transient_reply(status: str, text: str) -> Reply:
    """A reply no server said, for a transient problem on our side of the wire (421)."""
    return Reply(SYNTHETIC_TRANSIENT, status, text)


class Session:
    """The state of one connection: the protocol, what the server offers, and TLS."""

    def __init__(
        self,
        proto: ReplyProtocol,
        target: SmtpTarget,
        settings: DomainSettings,
        timeout: float,
        trace: OutboundTrace = OFF_OUTBOUND,
    ) -> None:
        self.proto = proto
        self.trace = trace  # the mail log (log-commands, log-data, log-tls)
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

    async def read_raw(
        self, stage: str, timeout: float | None = None
    ) -> tuple[int, tuple[str, ...]]:
        """The next reply; a broken connection becomes `Broken` naming peer and stage."""
        try:
            code, texts = await self.proto.read_reply(self.timeout if timeout is None else timeout)
        except Broken as broken:
            text = f"{broken.text} with {self.peer} {stage}"
            raise Broken(broken.status, text, broken.timed_out) from None
        self.trace.replied(code, texts)
        return code, texts

    async def read(self, stage: str) -> Reply:
        code, texts = await self.read_raw(stage)
        return make_reply(code, texts)

    def send(self, *lines: str) -> None:
        """Write command lines; one with CR, LF or NUL is never written (see safe_command)."""
        for line in lines:
            if not safe_command(line):
                raise UnsafeCommand(f"refusing to send a command with CR, LF or NUL: {line!r}")
        self.trace.sent(lines)
        self.proto.send(b"".join(line.encode("utf-8") + b"\r\n" for line in lines), len(lines))

    async def command(self, line: str, stage: str) -> Reply:
        self.send(line)
        return await self.read(stage)

    async def quit(self) -> None:
        """Say goodbye politely, but never wait long for the answer."""
        if self.proto.is_broken:
            return
        self.send("QUIT")
        with contextlib.suppress(Broken):
            await self.read_raw("after QUIT", min(self.timeout, QUIT_TIMEOUT))

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
        code, texts = await self.read_raw("in greeting", self.settings.smtp_greeting_timeout)
        greeting = make_reply(code, texts)
        if greeting.code != 220:
            raise await self.refused(greeting)
        await self.hello(helo_name)
        if starttls and "STARTTLS" in self.extensions:
            await self.starttls(helo_name, trust_root)
        elif self.settings.require_starttls:
            raise await self.give_up(
                transient_reply("4.7.5", f"{self.peer} does not offer STARTTLS, which is required")
            )
        if self.settings.auth_username:
            await self.authenticate(self.settings.auth_username, self.settings.auth_password or "")

    def ignored_extensions(self) -> list[str]:
        """The extensions `ignore-8bitmime`, `-chunking`, `-pipelining`, `-dsn` say to not use."""
        flags = {
            "8BITMIME": self.settings.ignore_8bitmime,
            "CHUNKING": self.settings.ignore_chunking,
            "PIPELINING": self.settings.ignore_pipelining,
            "DSN": self.settings.ignore_dsn,
        }
        return [name for name, ignored in flags.items() if ignored]

    async def hello(self, helo_name: str) -> None:
        """EHLO, and HELO when EHLO is refused permanently (a pre-ESMTP server)."""
        self.send(f"EHLO {helo_name}")
        code, texts = await self.read_raw("after EHLO")
        if code == 250:
            self.esmtp = True
            self.extensions = parse_ehlo(texts)
            for name in self.ignored_extensions():
                self.extensions.pop(name, None)
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
        except Broken:
            if not self.proto.unsolicited:
                raise
            reply = Reply(220, "", "")  # more than one reply came: refused just below
        if reply.code != 220:
            if required:
                raise await self.give_up(
                    transient_reply("4.7.5", f"{self.peer} refused STARTTLS: {reply}")
                )
            if reply.code == 421:
                raise await self.refused(reply)
            return  # opportunistic: go on in plaintext, as Postfix does
        if self.proto.unsolicited or self.proto.has_unread_input():
            # Anything after the 220 was sent before the handshake: an injection
            # attempt (CVE-2011-0411 style). Never read it as a reply to our EHLO.
            self.proto.abort()
            raise await self.give_up(
                transient_reply("4.7.5", f"{self.peer} sent data after its STARTTLS reply"),
                polite=False,
            )
        assert self.proto.transport is not None
        if self.settings.smtp_tls_ca is not None:  # `smtp-tls-ca-file`
            trust_root = ca_trust_root(self.settings.smtp_tls_ca)
        creator = tls_creator(self.target.host, required, trust_root, self.settings.smtp_tls)
        self.proto.transport.startTLS(creator)  # type: ignore[attr-defined]
        # Forget everything learned in plaintext (RFC 3207 section 4.2).
        self.extensions = {}
        self.esmtp = False
        try:
            await self.hello(helo_name)
        except Broken as broken:
            # The connection broke before the first reply over TLS: the handshake
            # failed (for a verified session: usually the certificate).
            reason = broken.text
            if self.proto.lost_reason is not None:
                reason = f"{reason} ({self.proto.lost_reason.getErrorMessage()})"
            if not required:
                raise TlsFallback(reason) from None
            raise SessionFailure(
                transient_reply("4.7.5", f"TLS with {self.peer} failed: {reason}"), self.info
            ) from None
        handle = self.proto.transport.getHandle()  # type: ignore[attr-defined]
        self.tls_protocol = str(handle.get_protocol_version_name() or "")
        self.tls_cipher = str(handle.get_cipher_name() or "")
        self.trace.tls(self.tls_protocol, self.tls_cipher)

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
            raise await self.give_up(transient_reply("4.7.0", f"{self.peer} {problem}"))
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

        Raises `Interrupted` when the connection broke or the server said 421.
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
        except Broken as broken:
            raise Interrupted(
                replies,
                transient_reply(broken.status, broken.text),
                server_closing=False,
                desync=self.proto.unsolicited,
            ) from None
        return tuple(r if r is not None else self._no_reply() for r in replies), needs_rset

    def _no_reply(self) -> Reply:
        return transient_reply("4.4.2", f"no reply from {self.peer}")

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
        self.trace.body(body)
        final = await self._final_reply()
        self._expect_final(final, "end of data", replies)
        for i in accepted:
            replies[i] = final
        self._stop_on_421(final, [], replies)
        return False

    async def _final_reply(self) -> Reply:
        """The reply to the final dot, waited for `smtp-data-termination-timeout`.

        With `assume-delivery-upon-data-termination-timeout yes`, no reply in that time is
        taken as delivery (PowerMTA's rule: the server usually has the message; a retry
        would send it twice): a synthesised 250 that says so. The connection is dropped
        either way (the reply may still come), so it is never reused.
        """
        timeout = self.settings.smtp_data_termination_timeout
        try:
            code, texts = await self.read_raw("after end of data", timeout)
        except Broken as broken:
            if not (
                broken.timed_out and self.settings.assume_delivery_upon_data_termination_timeout
            ):
                raise
            return Reply(
                250,
                "2.0.0",
                f"assumed delivered: {broken.text} (assume-delivery-upon-data-termination-timeout)",
            )
        return make_reply(code, texts)

    def _expect_final(self, reply: Reply, after: str, replies: list[Reply | None]) -> None:
        """Only 2xx, 4xx or 5xx may answer MAIL, RCPT or the end of data; 3xx is a desync."""
        if 300 <= reply.code < 400:
            raise self._desync(f"{after} answered {reply}", replies)

    def _desync(self, text: str, replies: list[Reply | None]) -> Interrupted:
        """Drop a connection whose replies no longer match our commands (never reused).

        Recipients without a final answer get a transient 4.5.0 (retried: a `t`).
        """
        broken = self.proto.desync(text)
        ending = transient_reply(broken.status, f"{broken.text} with {self.peer}")
        return Interrupted(replies, ending, server_closing=False, desync=True)

    def _stop_on_421(
        self, reply: Reply, indexes: Sequence[int], replies: list[Reply | None]
    ) -> None:
        """A 421 means the server is closing: it answers everyone not yet answered."""
        if reply.code == 421:
            for i in indexes:
                replies[i] = reply
            raise Interrupted(replies, reply, server_closing=True)

    async def rset(self) -> None:
        reply = await self.command("RSET", "after RSET")
        if not reply.is_success:
            raise await self.refused(reply)
