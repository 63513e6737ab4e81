"""One delivery session of one queue: hand the deliverer transactions, take results back.

A deliverer (`queue/delivery.py`) runs a session: it asks `next_transaction()` until
there is none and `report()`s each result. The session is where the queue's pace is
kept (`max-msg-per-connection`, `max-msg-rate`, holding an idle connection for the
next message) and where a result becomes records: each recipient's reply is matched
against the `smtp-pattern-list` (`patterns.py`) and decided (`outcomes.py`).

The session owns nothing durable. Every change of a recipient's state (records, retry,
bounce) is asked of its owner, the scheduler, through `SessionOwner`, so the order
"DSN spooled, record journaled, file removed" stays in one place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mtaserver.config.model import Config, DomainSettings, RewriteList
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome
from mtaserver.inbound.verp import encode_verp
from mtaserver.message.builder import rewrite_from_header
from mtaserver.queue import outcomes, patterns
from mtaserver.queue.delivery import (
    IDeliverer,
    QueueLevelFailure,
    SessionJob,
    Transaction,
    TransactionResult,
)
from mtaserver.queue.model import MessageState, Queue, WorkItem
from mtaserver.queue.retry import is_expired
from mtaserver.queue.slots import ConnectionSlots
from mtaserver.queue.sources import SourceChoice, SourceIps, rate_interval
from mtaserver.smtp_reply import Reply

log = Logger()

#: A queue's rate wait longer than this ends the session instead of holding it open.
MAX_RATE_WAIT = 2.0

BodyTransform = Callable[[Envelope, bytes, DomainSettings], Awaitable[bytes]]


def _rewrites(config: Config, settings: DomainSettings, envelope: Envelope) -> RewriteList | None:
    """The `rewrite-list` of the queue's vmta, else of the pool the message came through."""
    name = settings.rewrite_list
    pool = config.vmta_pools.get(envelope.vmta_pool or "")
    if name is None and pool is not None:
        name = pool.rewrite_list
    return config.rewrite_lists.get(name or "")


class SessionOwner(Protocol):
    """What a session reads from and asks of the scheduler (the one owner of state)."""

    @property
    def holder(self) -> ConfigHolder: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def slots(self) -> ConnectionSlots: ...

    @property
    def sources(self) -> SourceIps: ...

    @property
    def messages(self) -> Mapping[str, MessageState]: ...

    @property
    def queues(self) -> Mapping[str, Queue]: ...

    @property
    def idle_hold(self) -> float: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def transform_body(self) -> BodyTransform | None: ...

    def read_body(self, msg_id: str) -> defer.Deferred[bytes]: ...

    def settings_for(self, queue: Queue) -> DomainSettings: ...

    def arm_timer(self, queue: Queue, at: float | None = None) -> None: ...

    def retry(
        self,
        queue: Queue,
        settings: DomainSettings,
        items: Iterable[WorkItem],
        now: float,
        already_counted: bool = False,
    ) -> None: ...

    async def record(
        self, queue: Queue, records: list[Outcome], body: bytes | None = None
    ) -> None: ...

    async def bounce(
        self,
        queue: Queue,
        items: list[WorkItem],
        status: str,
        diag: str,
        dsn_mta: str,
        expired_reason: bool = False,
        category: str = "",
    ) -> None: ...

    async def bounce_unreadable(self, queue: Queue, msg_id: str, error: Exception) -> None: ...

    async def queue_failure(
        self, queue: Queue, settings: DomainSettings, failure: QueueLevelFailure
    ) -> None: ...

    def session_ended(self, queue: Queue) -> None: ...

    def disable_source(self, queue: Queue, key: str, actions: tuple[str, ...]) -> None: ...


@attrs.define
class Session:
    """One session of `queue` with the settings it started with."""

    owner: SessionOwner
    queue: Queue
    settings: DomainSettings
    #: The connection's source (`smtp-source-host`), chosen by the scheduler.
    source: SourceChoice = attrs.field(factory=lambda: SourceChoice(None))
    took_first: bool = False
    stop: bool = False
    transactions: int = 0
    errors: int = 0  # 4xx/5xx replies this connection got (max-errors-per-connection)
    stop_source: bool = False  # `disable-source-ip` matched: the source is disabled once
    in_flight: dict[int, tuple[Transaction, WorkItem]] = attrs.field(factory=dict)
    pending_writes: list[defer.Deferred[None]] = attrs.field(factory=list)
    #: `trace`: this session's transcript, when an operator traces it.
    transcript: Callable[[str], None] | None = None

    async def run(self, deliverer: IDeliverer | None) -> None:
        """Run `deliverer` for this session; a failure of the whole queue is retried."""
        queue, settings, owner = self.queue, self.settings, self.owner
        job = SessionJob(
            queue=queue.name,
            domain=queue.domain,
            vmta=queue.vmta,
            pool=queue.pool,
            settings=settings,
            next_transaction=self.next_transaction,
            report=self.report,
            source=self.source.source,
            transcript=self.transcript,
        )
        try:
            if deliverer is None:
                raise QueueLevelFailure(
                    "4.3.5",
                    f"no deliverer for type {settings.type}",
                    bounce_cat="bad-configuration",
                )
            await deliverer.run(job)
            queue.consecutive_failures = 0
            queue.connect_retry_at = 0.0
        except QueueLevelFailure as failure:
            await owner.queue_failure(queue, settings, failure)
        except defer.CancelledError:
            log.info("delivery session for {queue} cancelled at shutdown", queue=queue.name)
        except Exception as exc:  # a bug must not wedge the queue
            log.failure("delivery session for {queue} failed", queue=queue.name)
            await owner.queue_failure(
                queue, settings, QueueLevelFailure("4.3.0", f"internal error: {exc}")
            )
        finally:
            owner.slots.close(queue, took_work=self.took_first)
            owner.sources.closed(queue.domain, self.source.source)
            await self._unreported()
            owner.session_ended(queue)

    async def next_transaction(self) -> Transaction | None:
        """The queue's next message for this connection, or None to end the session."""
        queue, settings, owner = self.queue, self.settings, self.owner
        if not self.took_first:
            self.took_first = True
            owner.slots.took_work(queue)
            if not queue.connected:
                # Connected: the queue may now run its `max-smtp-out` sessions, once
                # this one has taken its item.
                queue.connected = True
                owner.arm_timer(queue, at=owner.clock.seconds())
        per_connection = settings.max_msg_per_connection
        while True:
            if self.stop or queue.paused or owner.stopping:
                return None
            if per_connection and self.transactions >= per_connection:
                return None
            if not queue.ready:
                if await self._wait_idle():
                    continue
                return None
            if not await self._wait_for_rate():
                return None
            if not queue.ready:
                continue
            item = queue.ready.popleft()
            message = owner.messages.get(item.msg_id)
            live = tuple(i for i in item.rcpt_indexes if message and i in message.pending)
            if message is None or not live:
                continue
            if len(live) != len(item.rcpt_indexes):
                item.rcpt_indexes = live  # (else keep the shared tuple: see index_span)
            try:
                body = await owner.read_body(item.msg_id)
            except Exception as exc:
                if outcomes.file_unreadable(exc):
                    await owner.bounce_unreadable(queue, item.msg_id, exc)
                else:
                    log.error("cannot read {msg_id}: {error}", msg_id=item.msg_id, error=exc)
                    owner.retry(queue, settings, [item], owner.clock.seconds())
                continue
            rewrites = _rewrites(owner.holder.config, settings, message.envelope)
            try:
                if rewrites is not None and rewrites.from_domain:  # before DKIM signs it
                    body = rewrite_from_header(body, rewrites.rewrite_from_domain)
                if owner.transform_body is not None:
                    body = await owner.transform_body(message.envelope, body, settings)
            except Exception as exc:
                log.error("cannot prepare {msg_id}: {error}", msg_id=item.msg_id, error=exc)
                owner.retry(queue, settings, [item], owner.clock.seconds())
                continue
            self.transactions += 1
            envelope = message.envelope
            if rewrites is not None and rewrites.mail_from:
                # the vmta's `rewrite-list`: the wire's MAIL FROM (records keep orig)
                envelope = attrs.evolve(
                    envelope, sender=rewrites.rewrite_mail_from(envelope.sender)
                )
            if envelope.verp and len(live) == 1 and envelope.sender:
                # the wire's MAIL FROM only: records keep the original sender (orig)
                rcpt = envelope.recipients[live[0]].address
                envelope = attrs.evolve(envelope, sender=encode_verp(envelope.sender, rcpt))
            transaction = Transaction(envelope, live, body)
            self.in_flight[id(transaction)] = (transaction, item)
            return transaction

    async def _wait_idle(self) -> bool:
        """Hold an open connection up to `idle_hold` seconds for the queue's next message.

        Like Postfix's connection cache: a steady trickle of mail reuses connections
        instead of opening one per message. True when woken with work to do.
        """
        owner, queue = self.owner, self.queue
        total_max = owner.holder.config.settings.total_max_smtp_out
        if owner.idle_hold <= 0 or owner.slots.wanted_elsewhere(
            owner.queues.values(), queue, total_max
        ):
            return False
        return await owner.slots.hold_idle(queue, owner.clock, owner.idle_hold)

    async def _wait_for_rate(self) -> bool:
        """Keep `max-msg-rate` (and the source IP's `source-ip-max-msg-rate`): wait a
        short while, or end the session and wake later."""
        owner, queue = self.owner, self.queue
        if not await self._wait_for_source_rate():
            return False
        rate = self.settings.max_msg_rate
        if rate is None:
            return True
        now = owner.clock.seconds()
        wait = queue.next_send_at - now
        if wait > MAX_RATE_WAIT:
            owner.arm_timer(queue, at=queue.next_send_at)
            return False
        if wait > 0:
            await task.deferLater(owner.clock, wait)
        queue.next_send_at = max(queue.next_send_at, owner.clock.seconds()) + 1 / rate.per_second
        return True

    async def _wait_for_source_rate(self) -> bool:
        """`source-ip-max-msg-rate`: messages of the domain per source IP, over its queues."""
        owner, queue, source = self.owner, self.queue, self.source.source
        if source is None or not self.settings.source_ip_max_msg_rate:
            return True
        interval = rate_interval(self.settings.source_ip_max_msg_rate, source.ip)
        if not interval:
            return True
        key = (queue.domain, source.ip)
        due = owner.sources.next_send.get(key, 0.0)
        wait = due - owner.clock.seconds()
        if wait > MAX_RATE_WAIT:
            owner.arm_timer(queue, at=due)
            return False
        if wait > 0:
            await task.deferLater(owner.clock, wait)
        due = owner.sources.next_send.get(key, 0.0)  # another session may have sent meanwhile
        owner.sources.next_send[key] = max(due, owner.clock.seconds()) + interval
        return True

    def report(self, result: TransactionResult) -> None:
        """A transaction's replies: recorded in the background, awaited before the end."""
        entry = self.in_flight.pop(id(result.transaction), None)
        if entry is None:
            return
        _, item = entry
        if self.transcript is not None:
            envelope = result.transaction.envelope
            for index, reply in zip(item.rcpt_indexes, result.replies, strict=False):
                word = "delivered" if reply.is_success else (
                    "bounced" if reply.is_permanent else "deferred")  # fmt: skip
                rcpt = envelope.recipients[index].address
                self.transcript(f"{word} {envelope.msg_id} {rcpt}: {outcomes.reply_line(reply)}")
        deferred = defer.Deferred.fromCoroutine(self._apply_result(item, result))
        deferred.addErrback(lambda f: log.failure("recording a result failed", f))
        self.pending_writes.append(deferred)

    async def _apply_result(self, item: WorkItem, result: TransactionResult) -> None:
        """Records for each reply; transient ones retry; pattern actions act on the queue."""
        owner, queue, settings = self.owner, self.queue, self.settings
        message = owner.messages.get(item.msg_id)
        if message is None:
            return
        now = owner.clock.seconds()
        envelope = message.envelope
        groups: dict[tuple[str, Reply], list[int]] = {}
        retry: list[int] = []
        queue_action = ""
        pattern_list = owner.holder.config.pattern_lists.get(settings.smtp_pattern_list or "")
        expired = is_expired(envelope.expiry_start, now, settings.bounce_after)
        for index, reply in zip(item.rcpt_indexes, result.replies, strict=False):
            line = outcomes.reply_line(reply)
            actions = pattern_list.actions_for(line) if pattern_list else ()
            queue_action = patterns.apply_actions(queue, actions, now) or queue_action
            if "skip-mx" in actions:  # leave this MX: the next connection takes the next one
                self.stop = True
            if "disable-source-ip" in actions and not self.stop_source:
                # the source that heard it serves this queue no more: this connection ends
                self.stop = self.stop_source = True
                owner.disable_source(queue, self.source.key, actions)
            if reply.code >= 400:
                self.errors += 1
                limit = settings.max_errors_per_connection
                if limit and self.errors >= limit:
                    self.stop = True  # `max-errors-per-connection`: a fresh connection next
            kind = outcomes.decide(reply, actions, expired)
            if (
                kind == "d"
                and queue.mode == "backoff"
                and settings.backoff_to_normal_after_delivery
            ):
                log.info("queue {queue} returns to normal mode after a delivery", queue=queue.name)
                queue.mode = "normal"
            if kind == "t":
                retry.append(index)
            groups.setdefault((kind, reply), []).append(index)
        fields = outcomes.delivery_fields(result.info, len(result.transaction.body))
        records = [
            outcomes.outcome(
                kind,
                reply,
                envelope,
                tuple(indexes),
                now,
                queue.name,
                queue.vmta,
                queue.pool,
                **fields,
            )  # fmt: skip
            for (kind, reply), indexes in groups.items()
        ]
        await owner.record(queue, records, body=result.transaction.body)
        settings = owner.settings_for(queue)  # a pattern action may have changed the mode
        if retry:
            retry_item = WorkItem(item.msg_id, tuple(retry), item.failed_attempts + 1)
            owner.retry(queue, settings, [retry_item], now, already_counted=True)
        if queue_action == "defer-queue":
            self.stop = True
            held, queue.held = queue.held, []  # a paused job's were not tried: no attempt
            owner.retry(queue, settings, queue.take_all(), now)
            queue.held = held
        elif queue_action == "bounce-queue":
            self.stop = True
            await owner.bounce(
                queue, queue.take_all(), "5.0.0", "queue bounced by smtp-pattern-list", ""
            )

    async def _unreported(self) -> None:
        """Items the session took but never reported go back to retry (nothing is dropped)."""
        if self.pending_writes:
            await defer.DeferredList(self.pending_writes)
        items = [item for _, item in self.in_flight.values()]
        self.in_flight.clear()
        if items:
            self.owner.retry(self.queue, self.settings, items, self.owner.clock.seconds())
