"""Reception policy: who may send what to whom, and making an accepted message durable.

The protocol (`server.py`) parses the wire and asks this handler, the way
aiosmtpd's hooks are asked: `check_mail`, `check_rcpt`, `begin_message`,
`accept_message`, each answering with a `Reply`. Everything a `<source>` decides
lives here: relaying (`always-allow-relaying`, `relay-domain`, after AUTH),
`require-auth`, `max-message-size`, `max-rcpt-per-message`, the added headers and
the vmta/job selection, so it can be tested without a socket.

At MAIL, a declared `SIZE=` must fit in the spool above `spool-min-free-space`
(452 4.3.1), and with `require-sender-match-login` an authenticated client may
only use its own addresses (553 5.7.1, see `sender_matches_login`). The message's
structure (hops, header count and size, MIME depth) is checked while it streams,
by the `mtaserver.message` builder and its content checker.

At RCPT, a recipient on the suppression list (`mtaserver.suppression`: scopes
`global`, `domain:<sender's domain>`, `source:<name>` for each of the source's
`suppression-lists`) is refused with `550 5.7.1`, or, with
`suppressed-recipient-action drop`, answered `250` and kept out of the spooled
envelope: it gets a `b` record (`policy-related`, no DSN) once the message is durable.

`accept_message` hands the message to `mtaserver.message.intake.Intake.accept`, the
path the Transmissions API takes too (virtual MTA, commit, counters, scheduler), and
answers `250` only once it is durable. Spool errors are always 4xx, so the client
keeps the message and tries again.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mtaserver.config.model import SourceSettings, build
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Recipient
from mtaserver.message.addresses import Mailbox
from mtaserver.message.builder import MessageBuilder
from mtaserver.message.dsn import default_ret
from mtaserver.message.headers import HeaderRules, Trace, header_rules, printable
from mtaserver.message.intake import (
    Intake,
    MessageStoreLike,
    MessageWriterLike,
    OnAccepted,
    ReceptionStats,
    UnknownVirtualMTA,
)
from mtaserver.smtp.server_params import MailParams, RcptParams
from mtaserver.smtp_reply import (
    AUTH_REQUIRED,
    DELIVER_ONLY,
    RELAY_DEBUG,
    RELAY_DENIED,
    SPOOL_ERROR,
    SPOOL_FULL,
    TOO_BIG,
    TOO_MANY_RCPTS,
    Reply,
)
from mtaserver.spool.errors import SpoolError, SpoolFullError
from mtaserver.suppression.model import Entry
from mtaserver.suppression.service import REFUSED_TEXT, SuppressionService
from mtaserver.suppression.store import SuppressionStoreError

log = Logger()


@attrs.define
class Session:
    """One SMTP connection's state, as far as policy is concerned."""

    client_ip: str
    settings: SourceSettings
    helo: str | None = None
    esmtp: bool = False
    tls: bool = False
    user: str | None = None


@attrs.define
class Transaction:
    """MAIL FROM up to the end of DATA."""

    sender: Mailbox
    params: MailParams
    recipients: list[Recipient] = attrs.field(factory=list)
    # suppressed recipients answered 250 under `suppressed-recipient-action drop`
    dropped: dict[str, Entry] = attrs.field(factory=dict)


class ReceptionHandler:
    """The policy hooks; one per listener, shared by its sessions."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: MessageStoreLike,
        on_accepted: OnAccepted,
        stats: ReceptionStats,
        clock: IReactorTime,
        suppression: SuppressionService | None = None,
        listener_source: str | None = None,
    ) -> None:
        self.holder = holder
        #: `smtp-listener ... source=NAME`: this listener's clients get `<source NAME>`.
        self.listener_source = listener_source
        self.suppression = suppression
        self.store = store
        self.on_accepted = on_accepted
        self.stats = stats
        self.clock = clock
        self.intake = Intake(holder, on_accepted, stats)

    @property
    def host_name(self) -> str:
        return self.holder.config.settings.host_name

    def _pattern_vmta(
        self, name: str | None, envelope: Envelope, headers: Mapping[str, str]
    ) -> str | None:
        """The vmta or pool the source's `<pattern-list>` chooses for this message."""
        patterns = self.holder.config.routing_patterns.get(name or "")
        if patterns is None:
            return None
        rcpts = (r.address for r in envelope.recipients)
        return patterns.virtual_mta_for(envelope.sender, rcpts, headers)

    def _rewrite_sender(self, name: str | None, sender: str) -> str:
        """MAIL FROM as the source's `<rewrite-list>` rewrites it (acct, DSNs, the wire)."""
        rewrites = self.holder.config.rewrite_lists.get(name or "")
        return sender if rewrites is None else rewrites.rewrite_mail_from(sender)

    def settings_for(self, ip: str, user: str | None = None) -> SourceSettings:
        """The client's `<source>`; after AUTH `{auth}`, then the user's own `source {name}`."""
        config = self.holder.config
        named = self.listener_source
        if user is None:
            return config.listener_source_settings(named) if named else config.source_settings(ip)
        entry = config.smtp_users.get(user)
        if entry is None or entry.source is None:
            if named:
                return config.listener_source_settings(named, authenticated=True)
            return config.source_settings(ip, authenticated=True)
        layers = [
            config.named_sources.get(named, {}) if named else config.source_layer(ip),
            config.named_sources.get("{auth}", {}),
            config.named_sources.get(entry.source, {}),
        ]
        settings: SourceSettings = build(SourceSettings, layers)
        return settings

    def check_connect(self, session: Session) -> Reply:
        if not session.settings.smtp_service:
            return Reply(554, "5.7.1", "No SMTP service for you")
        return Reply(220, "", f"{self.host_name} ESMTP mtaserver")

    def check_mail(self, session: Session, sender: Mailbox, params: MailParams) -> Reply:
        settings = session.settings
        if self.holder.config.settings.deliver_only:
            return DELIVER_ONLY
        if settings.require_auth and session.user is None:
            return AUTH_REQUIRED
        if settings.require_sender_match_login and session.user is not None:
            entry = self.holder.config.smtp_users.get(session.user)
            patterns = entry.mail_from if entry is not None else ()
            if not sender_matches_login(sender.address, session.user, patterns):
                log.info(
                    "MAIL FROM {sender} refused for login {user} from {client_ip}",
                    sender=sender.address,
                    user=session.user,
                    client_ip=session.client_ip,
                )
                return SENDER_NOT_OWNED
        limit = settings.max_message_size
        if params.size is not None and limit and params.size > limit:
            return TOO_BIG
        # The declared SIZE must fit above spool-min-free-space (RFC 1870: 452).
        spool_problem = self._spool_space(params.size or 0)
        if spool_problem is not None:
            return spool_problem
        return Reply(250, "2.1.0", "Sender ok")

    def _spool_space(self, needed: int = 0) -> Reply | None:
        try:
            self.store.check_space(needed)
        except SpoolFullError:
            return SPOOL_FULL
        except SpoolError:
            return SPOOL_ERROR
        return None

    def check_rcpt(
        self, session: Session, txn: Transaction, rcpt: Mailbox, params: RcptParams
    ) -> Reply:
        settings = session.settings
        limit = settings.max_rcpt_per_message  # 0: unlimited, as PowerMTA's default
        if limit and len(txn.recipients) >= limit:
            return TOO_MANY_RCPTS
        if not self.may_relay(session, rcpt):
            return RELAY_DEBUG if self.holder.config.settings.relay_debug else RELAY_DENIED
        if self.suppression is not None:
            sender = txn.sender.address
            try:
                entry = self.suppression.check(rcpt.address, sender, settings.suppression_lists)
            except (SuppressionStoreError, OSError) as exc:  # closed at shutdown, or I/O
                log.error("suppression list unavailable at RCPT: {error}", error=str(exc))
                return SUPPRESSION_UNAVAILABLE
            if entry is not None:
                if settings.suppressed_recipient_action == "drop":
                    txn.dropped[rcpt.address.lower()] = entry
                else:
                    self.suppression.refused(entry, rcpt.address, sender, "RCPT")
                    return SUPPRESSED
        return Reply(250, "2.1.5", "Recipient ok")

    def may_relay(self, session: Session, rcpt: Mailbox) -> bool:
        """Trusted clients relay anywhere; others only to relay-domains, never routed."""
        if session.settings.always_allow_relaying or session.user is not None:
            return True
        if rcpt.routed:
            return False
        config = self.holder.config
        return config.is_relay_domain(rcpt.domain) or config.is_relay_address(rcpt.address)

    def begin_message(self, session: Session, txn: Transaction) -> MessageWriterLike | Reply:
        """A spool writer for the body, or the 4xx reply to DATA if the spool cannot."""
        problem = self._spool_space()
        if problem is not None:
            return problem
        try:
            return self.store.begin()
        except SpoolFullError:
            return SPOOL_FULL
        except SpoolError:
            return SPOOL_ERROR

    def header_rules(self, session: Session, txn: Transaction, msg_id: str) -> HeaderRules:
        return header_rules(
            session.settings, self.holder.config, msg_id, self.clock.seconds(), trace(session, txn)
        )

    async def accept_message(
        self,
        session: Session,
        txn: Transaction,
        writer: MessageWriterLike,
        message: MessageBuilder,
        problem: Reply | None,
    ) -> Reply:
        """Commit the message and answer 250, or refuse it; never 5xx for a spool error."""
        problem = problem or message.problem
        if problem is not None:
            return self._refuse(session, writer, problem)
        declared_8bit = txn.params.body == "8BITMIME"
        if message.eight_bit and not declared_8bit:
            self.stats.eight_bit_undeclared += 1
            log.info(
                "8-bit message {msg_id} from {client_ip} without BODY=8BITMIME, accepted",
                msg_id=writer.msg_id,
                client_ip=session.client_ip,
            )
        kept = tuple(r for r in txn.recipients if r.address.lower() not in txn.dropped)
        dropped = [
            (r.address, txn.dropped[r.address.lower()])
            for r in txn.recipients
            if r.address.lower() in txn.dropped
        ]
        envelope = Envelope(
            msg_id=writer.msg_id,
            sender=self._rewrite_sender(session.settings.rewrite_list, txn.sender.address),
            recipients=kept,
            time_queued=self.clock.seconds(),
            src_type="smtp",
            src_mta=f"{session.helo or ''} ({session.client_ip})",
            smtp_user=session.user,
            job_id=message.x_job or None,
            env_id=txn.params.env_id or message.x_envid or None,
            ret=default_ret(txn.params.ret, session.settings.dsn_return_default),
            body_type="8BITMIME" if declared_8bit or message.eight_bit else "7BIT",
            smtputf8=txn.params.smtputf8,
            size=message.size,
            acct_headers=message.acct_headers,
            verp=session.settings.verp_default and bool(txn.sender.address),
            dkim_options=message.x_dkim_options or None,
            suppress_local_dsn=session.settings.suppress_local_dsn,
        )
        vmta_name = (
            message.x_virtual_mta
            or self._pattern_vmta(session.settings.pattern_list, envelope, message.routing_headers)
            or session.settings.default_virtual_mta
        )
        config = self.holder.config
        patterns = config.routing_patterns.get(session.settings.pattern_list or "")
        if patterns is not None:  # `recipient-priority=N` results
            priorities = patterns.recipient_priorities(
                envelope.sender, (r.address for r in envelope.recipients), message.routing_headers
            )
            envelope = attrs.evolve(envelope, recipient_priorities=priorities)
        known = not vmta_name or vmta_name in config.vmtas or vmta_name in config.vmta_pools
        if not known and not session.settings.reject_invalid_virtual_mta:
            # `reject-invalid-virtual-mta no`: the fallback (or the default) instead of 550
            vmta_name = config.settings.invalid_virtual_mta_fallback
        if not kept:  # every recipient suppressed and dropped: nothing to spool
            writer.abort()
            if not await self._record_dropped(envelope, dropped):
                return SPOOL_ERROR  # no b record is durable: the client must try again
            return Reply(250, "2.0.0", f"Ok: queued as {envelope.msg_id}")
        try:
            envelope = await self.intake.accept(writer, envelope, vmta_name)
        except UnknownVirtualMTA as exc:
            unknown = Reply(550, "5.7.1", f"Unknown virtual MTA {printable(exc.name)}")
            return self._refuse(session, None, unknown)
        except SpoolFullError:
            return SPOOL_FULL
        except SpoolError as exc:
            log.error("spool error for {msg_id}: {error}", msg_id=writer.msg_id, error=str(exc))
            return SPOOL_ERROR
        except Exception:
            log.failure("unexpected error committing {msg_id}", msg_id=writer.msg_id)
            return SPOOL_ERROR
        await self._record_dropped(envelope, dropped)
        return Reply(250, "2.0.0", f"Ok: queued as {envelope.msg_id}")

    async def _record_dropped(self, envelope: Envelope, dropped: list[tuple[str, Entry]]) -> bool:
        """The `b` records of dropped suppressed recipients; False when they are not durable.

        With other recipients kept, the message is already committed and stands either
        way (a 451 would make the client send the kept ones twice); the failure is logged.
        """
        if not dropped or self.suppression is None:
            return True
        try:
            await self.suppression.record_dropped(envelope, dropped, len(envelope.recipients))
        except Exception:
            log.failure("could not journal the b records of dropped suppressed recipients")
            return False
        return True

    def _refuse(self, session: Session, writer: MessageWriterLike | None, problem: Reply) -> Reply:
        """Give the message up (counted as rejected) and answer `problem`."""
        if writer is not None:
            writer.abort()
        self.stats.messages_rejected += 1
        log.info(
            "message refused from {client_ip}: {reply}",
            client_ip=session.client_ip,
            reply=str(problem),
        )
        return problem


SUPPRESSED = Reply(550, "5.7.1", REFUSED_TEXT)
SUPPRESSION_UNAVAILABLE = Reply(451, "4.3.0", "suppression list unavailable, try again later")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address not owned by the authenticated user")


def sender_matches_login(sender: str, login: str, patterns: tuple[str, ...]) -> bool:
    """May `login` send as `sender`? (`require-sender-match-login`)

    The null sender (bounces) always may. Otherwise the sender must be the login
    itself when the login is an address, or match one of the user's `mail-from`
    patterns: an address, `*@domain` or `domain` (any mailbox there), or
    `*.domain` (any mailbox in a subdomain). Comparison ignores case.
    """
    if sender == "":
        return True
    address = sender.casefold()
    domain = address.rpartition("@")[2]
    if "@" in login and address == login.casefold():
        return True
    for pattern in patterns:
        wanted = pattern.casefold().strip()
        if wanted.startswith("*@"):
            wanted = wanted[2:]
        if wanted.startswith("*."):
            if domain.endswith(wanted[1:]):
                return True
        elif "@" in wanted:
            if address == wanted:
                return True
        elif domain == wanted:
            return True
    return False


def trace(session: Session, txn: Transaction) -> Trace:
    """The `Received` trace of an SMTP message: the `with` keyword of RFC 3848 / 6531."""
    proto = "ESMTP" if session.esmtp else "SMTP"
    if session.esmtp:
        proto += ("S" if session.tls else "") + ("A" if session.user else "")
        if txn.params.smtputf8:
            proto = "UTF8SMTP" + proto[len("ESMTP") :]
    return Trace(
        client_ip=session.client_ip,
        protocol=proto,
        helo=session.helo or "unknown",
        recipients=tuple(r.address for r in txn.recipients),
    )
