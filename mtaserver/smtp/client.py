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

The client is five modules, each small enough to read at once:

* `client` (this one): `run_session`, the driver. It connects, opens a `Session`,
  asks for transactions and reports each result, reconnects after a desync or a
  failed opportunistic TLS handshake, and closes.
* `client_session`: one connection's conversation (`Session`: greeting, EHLO,
  STARTTLS, AUTH, a transaction, RSET, QUIT) and the records it raises
  (`SessionFailure`, `SmtpTarget`).
* `client_protocol`: reply framing and parsing (`ReplyProtocol`, `ReplyAssembler`,
  `make_reply`, `parse_ehlo`), with the desync detection.
* `client_tls`: the TLS client contexts (verified, or opportunistic).
* `client_wire`: the command lines and DATA payload we write (`mail_command`,
  `rcpt_command`, `xtext`, `encode_data`, `safe_command`): pure functions.

The records the scheduler exchanges with every deliverer (`Transaction`,
`TransactionResult`, `ConnectionInfo`) are the delivery seam's, in
`mtaserver.queue.delivery`; `Reply` is `mtaserver.smtp_reply.Reply`.

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

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mtaserver.config.model import DomainSettings
from mtaserver.maillog.log import OFF_OUTBOUND, OutboundTrace
from mtaserver.queue.delivery import ConnectionInfo, Transaction, TransactionResult
from mtaserver.smtp.client_protocol import Broken, ReplyProtocol
from mtaserver.smtp.client_session import (
    Interrupted,
    Session,
    SessionFailure,
    SmtpTarget,
    TlsFallback,
    transient_reply,
)

log = Logger()

__all__ = ["run_session"]

CLOSE_TIMEOUT = 5.0


class _QuietFactory(Factory):
    """Hands out one protocol, without a "Starting factory" log line per connection."""

    noisy = False

    def __init__(self, proto: ReplyProtocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> ReplyProtocol:  # noqa: N802 - Twisted's name
        return self._proto


async def _connect(
    reactor: Any, target: SmtpTarget, source_ip: str | None, settings: DomainSettings
) -> ReplyProtocol:
    bind = (source_ip, 0) if source_ip else None
    endpoint_type = TCP6ClientEndpoint if isIPv6Address(target.ip) else TCP4ClientEndpoint
    endpoint = endpoint_type(
        reactor, target.ip, target.port, timeout=settings.connect_timeout, bindAddress=bind
    )
    proto = ReplyProtocol(reactor)
    try:
        await endpoint.connect(_QuietFactory(proto))
    except (error.ConnectError, OSError) as exc:
        where = f"{target.host}[{target.ip}]:{target.port}"
        if source_ip:
            where += f" from {source_ip}"
        raise SessionFailure(transient_reply("4.4.1", f"connect to {where}: {exc}")) from None
    return proto


async def _close(proto: ReplyProtocol, reactor: Any) -> None:
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
    trace: OutboundTrace = OFF_OUTBOUND,
) -> ConnectionInfo:
    """Deliver transactions over one connection to `target` until there are no more.

    `reactor` provides IReactorTCP and IReactorTime. `trust_root` is a
    `twisted.internet.ssl` trust root or CA `Certificate` (None: the system CAs),
    used only under `require-starttls`. `timeout` bounds every read. Each
    transaction is reported through `report` before the next one is asked for.
    Returns the connection's info after QUIT; raises SessionFailure when the
    connection as a whole fails, after reporting the transaction in flight. `trace`
    writes the session to the mail log (the domain's `log-*` switches).
    """
    starttls = settings.use_starttls or settings.require_starttls
    carried: Transaction | None = None
    while True:
        trace.connecting(target.host, target.ip, target.port, source_ip)
        proto = await _connect(reactor, target, source_ip, settings)
        trace.connected()
        session = Session(proto, target, settings, timeout, trace)
        try:
            try:
                await session.open(helo_name, starttls, trust_root)
            except TlsFallback as fallback:
                trace.tls_failed(str(fallback))
                log.info(
                    "TLS with {peer} failed ({reason}); retrying without STARTTLS",
                    peer=session.peer,
                    reason=str(fallback),
                )
                starttls = False
                continue
            except Broken as broken:
                failure = transient_reply(broken.status, broken.text)
                raise SessionFailure(failure, session.info) from None
            carried = await _transactions(session, settings, next_transaction, report, carried)
            if carried is not None:
                continue  # the connection desynced: go on over a fresh one
            await session.quit()
            return session.info
        finally:
            await _close(proto, reactor)
            trace.closed()


async def _transactions(
    session: Session,
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
        except Interrupted as stop:
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
        if session.proto.is_broken:
            return None  # delivery assumed after a timeout: this connection is done
        if needs_rset:
            try:
                await session.rset()
            except Broken as broken:
                failure = transient_reply(broken.status, broken.text)
                raise SessionFailure(failure, session.info) from None
    return None
