"""The scheduler: the one owner of queue state, in the way Postfix's qmgr is.

Reception hands it accepted envelopes (`enqueue`); it splits recipients into
`domain/vmta` queues and starts delivery sessions (`session.py`) within each queue's
limits (`max-smtp-out`, `total-max-smtp-out`, `max-msg-rate`; slot counts in
`slots.py`). Every change of a recipient's state happens here: records from a
session's results (`record`), retries on `retry-after` (`retry`), expiry on
`bounce-after` and bounces (`bounce`), queue-level failures (`queue_failure`), and
the operator commands that `control.py`'s `QueueControl` hands on.

The order of durability is kept in `record`: a bounce's DSN is spooled first, then
the recipients' final records are journaled (the acct files are written from the
journal), and only when every recipient of a message is final is its file removed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mtaserver.accounting.bounce import classify
from mtaserver.config.model import DomainSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import IPAddress, SourceHost
from mtaserver.events import Envelope, Event, Outcome, QueueFailure
from mtaserver.maillog import MailLog
from mtaserver.message.dsn import asks_success
from mtaserver.queue import outcomes, patterns
from mtaserver.queue.control import QueueControl, RecipientFilter, TraceRequest
from mtaserver.queue.delay_notices import DelayNotices
from mtaserver.queue.delivery import IDeliverer, QueueLevelFailure
from mtaserver.queue.model import (
    MessageState,
    PendingRecipients,
    Queue,
    WorkItem,
    compact_envelope,
    index_span,
    shared_indexes,
)
from mtaserver.queue.retry import is_expired, next_attempt_at
from mtaserver.queue.routing import VmtaChooser, queue_matches, queue_name, recipient_domain
from mtaserver.queue.session import MAX_RATE_WAIT, BodyTransform, Session
from mtaserver.queue.slots import ConnectionSlots
from mtaserver.queue.sources import DEFAULT as DEFAULT_SOURCE
from mtaserver.queue.sources import (
    SourceChoice,
    SourceIps,
    rate_interval,
    reenable_after,
    source_key,
)
from mtaserver.smtp_reply import Reply
from mtaserver.spool.errors import CorruptMessageError

log = Logger()


class IScheduleJournal(Protocol):
    def append(self, events: Sequence[Event]) -> defer.Deferred[Any]: ...


class IScheduleStore(Protocol):
    def read_body(self, msg_id: str) -> defer.Deferred[bytes]: ...

    def remove(self, msg_id: str) -> defer.Deferred[None]: ...

    def set_aside(self, msg_id: str) -> defer.Deferred[None]: ...


#: Seconds a domain's `mx-rollup` name is kept before it is looked up again.
ROLLUP_TTL = 3600.0

BounceNotifier = Callable[[Envelope, list[Outcome], bytes | None], Awaitable[None]]


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Scheduler:
    """Owns every queue; moves recipients between ready, retry, paused and final."""

    #: Seconds an idle session waits for more of its queue's mail before QUIT.
    idle_hold = 2.0

    def __init__(
        self,
        holder: ConfigHolder,
        store: IScheduleStore,
        journal: IScheduleJournal,
        deliverers: dict[str, IDeliverer],
        clock: IReactorTime,
        notify_bounce: BounceNotifier | None = None,
        transform_body: BodyTransform | None = None,
        rollup: Callable[[str], Awaitable[str | None]] | None = None,
        delay_notices: DelayNotices | None = None,
        maillog: MailLog | None = None,
    ) -> None:
        self.holder = holder
        self.maillog = maillog if maillog is not None else MailLog.service_log()
        self.store = store
        self.journal = journal
        self.deliverers = deliverers
        self.clock = clock
        self.notify_bounce = notify_bounce
        #: `notify-of-delay-every`: asked at each failed attempt (delay DSNs).
        self.delay_notices = delay_notices
        self.transform_body = transform_body
        #: `mx-rollup`: a domain's best MX host name (None: no rollup), cached per domain.
        self.rollup = rollup
        self._rollups: dict[str, tuple[str | None, float]] = {}
        #: `cold-virtual-mta` warm-up: messages given per (cold vmta, domain, day).
        self._cold_counts: dict[tuple[str, str, int], int] = {}
        self._cold_first_day: dict[str, int] = {}
        self._cold_turn = 0
        self.queues: dict[str, Queue] = {}
        self.messages: dict[str, MessageState] = {}
        self.slots = ConnectionSlots()
        #: Each session's source (`smtp-source-host`) and those `disable-source-ip` disabled.
        self.sources = SourceIps()
        #: The read and command view for everything outside `queue/`.
        self.control = QueueControl(self)
        self._timers: dict[str, IDelayedCall] = {}
        self._vmtas = VmtaChooser()
        self._sessions: set[defer.Deferred[None]] = set()
        self.stopping = False
        self._restoring = False  # `restore` is placing a message recovery found
        #: Queues with ready work that could not start a session for want of a slot
        #: (`total-max-smtp-out`, a source's cap): a session's end pumps these, not
        #: every queue (with a million recipients in a thousand queues, that scan
        #: was the largest cost of a session's end).
        self._slot_waiters: dict[str, Queue] = {}
        self._paused_patterns: set[str] = set()
        #: `pause job`: job ids whose recipients wait in `queue.held` (in memory, like
        #: queue pauses: a restart resumes every job).
        self.paused_jobs: set[str] = set()
        #: `set priority`: queued messages' priorities (0-100; unset: 50), ready is ordered.
        self.priorities: dict[str, int] = {}
        #: Some message had `recipient-priority` results: ready items are kept ordered.
        self.recipient_priorities = False
        #: `trace`: requests waiting for the next session of a matching queue.
        self.traces: list[TraceRequest] = []

    # -- entering the queues -------------------------------------------------------

    def enqueue(
        self,
        envelope: Envelope,
        pending: Iterable[int] | None = None,
        failed_attempts: int = 0,
        retry_at: float | None = None,
    ) -> None:
        """Queue a durable message's pending recipients (all of them by default)."""
        config = self.holder.config
        count = len(envelope.recipients)
        if pending is None:
            indexes: Sequence[int] = index_span(0, count)
            state = PendingRecipients(count)
        else:
            indexes = sorted(set(pending))
            state = PendingRecipients(count, indexes)
        if not indexes:
            return
        if envelope.start_time is not None and envelope.start_time > (retry_at or 0.0):
            retry_at = envelope.start_time  # scheduled (`start_time`): held until then
        by_domain: dict[str, list[int]] = {}
        recipients = envelope.recipients
        for index in indexes:
            by_domain.setdefault(recipient_domain(recipients[index].address), []).append(index)
        envelope = compact_envelope(envelope)
        self.messages[envelope.msg_id] = MessageState(envelope, state)
        # a pool message has vmta=None and pool=NAME: the pool's members take turns
        vmta, pool = self._vmtas.choose(config, envelope.vmta or envelope.vmta_pool)
        pool = pool or envelope.vmta_pool
        for domain, rcpts in by_domain.items():
            domain_vmta = self._warm_up(domain, vmta, pool) if pending is None else vmta
            place = functools.partial(
                self._place, envelope, rcpts, domain_vmta, pool, failed_attempts, retry_at
            )
            settings = config.domain_settings(domain, vmta, pool)
            if settings.queue_to:  # per-ISP queues: hotmail.co.uk in hotmail.com's queue
                place(settings.queue_to.lower())
                continue
            if not settings.mx_rollup or self.rollup is None:
                place(domain)
                continue
            cached = self._rollups.get(domain)
            if cached is not None and cached[1] > self.clock.seconds():
                place(cached[0] or domain)
                continue
            d = defer.Deferred.fromCoroutine(self._rollup_place(domain, place))
            d.addErrback(lambda f: log.failure("mx-rollup placement failed", f))

    def _warm_up(self, domain: str, vmta: str, pool: str | None) -> str:
        """`cold-virtual-mta`: the day's first messages for `domain` go to a cold vmta.

        Each cold vmta of `vmta` takes up to `max-cold-virtual-mta-msg` (that of `vmta`'s
        settings for the domain; day N of the warm-up uses the Nth limit, the last one
        repeats) messages a day per domain, in turn; the rest stay on `vmta`. Counters
        reset at midnight UTC and live in memory (a restart starts the day's count anew).
        """
        config = self.holder.config
        warm = config.vmtas.get(vmta)
        if warm is None or not warm.cold_virtual_mta:
            return vmta
        limits = config.domain_settings(domain, vmta, pool).max_cold_virtual_mta_msg
        if not limits:
            return vmta
        day = int(self.clock.seconds() // 86400)
        for turn in range(len(warm.cold_virtual_mta)):
            cold = warm.cold_virtual_mta[(self._cold_turn + turn) % len(warm.cold_virtual_mta)]
            first_day = self._cold_first_day.setdefault(cold, day)
            rate = limits[min(day - first_day, len(limits) - 1)]
            limit = 0 if rate is None else round(rate.count * 86400 / rate.per_seconds)
            key = (cold, domain.lower(), day)
            if self._cold_counts.get(key, 0) < limit:
                self._cold_counts[key] = self._cold_counts.get(key, 0) + 1
                self._cold_turn += 1
                if len(self._cold_counts) > 100_000:  # yesterday's counters go
                    self._cold_counts = {k: n for k, n in self._cold_counts.items() if k[2] == day}
                return cold
        return vmta

    async def _rollup_place(self, domain: str, place: Callable[[str], None]) -> None:
        """Look up `domain`'s rollup name (its best MX host), then queue there."""
        assert self.rollup is not None
        try:
            name = await self.rollup(domain)
        except Exception:
            name = None  # DNS trouble: the domain keeps a queue of its own
        self._rollups[domain] = (name, self.clock.seconds() + ROLLUP_TTL)
        place(name or domain)

    def _place(
        self,
        envelope: Envelope,
        rcpts: list[int],
        vmta: str,
        pool: str | None,
        failed_attempts: int,
        retry_at: float | None,
        domain: str,
    ) -> None:
        """Queue recipients of one domain on `domain/vmta` (a rollup's MX host name)."""
        if envelope.msg_id not in self.messages:
            return  # gone meanwhile (deleted while its rollup name was looked up)
        queue = self._queue(domain, vmta, pool)
        if self._restoring and not queue.counters.connections:
            queue.connected = False  # unproven since the restart: one session first
        settings = self.settings_for(queue)
        # a VERP return path names one recipient: one recipient a transaction
        size = 1 if envelope.verp else max(settings.max_rcpt_per_transaction, 1)
        for start in range(0, len(rcpts), size):
            chunk = shared_indexes(rcpts[start : start + size])
            item = WorkItem(envelope.msg_id, chunk, failed_attempts)
            if retry_at is not None and retry_at > self.clock.seconds():
                queue.add_retry(retry_at, item)
            elif queue.connect_retry_at > self.clock.seconds():
                queue.add_retry(queue.connect_retry_at, item)  # joins the next attempt
            else:
                queue.ready.append(item)
        if envelope.recipient_priorities:
            self.recipient_priorities = True
            self.order_ready(queue)
        elif self.priorities:  # `set priority`: new mail (50) goes before lower priorities
            self.order_ready(queue)
        self.arm_timer(queue)
        self._pump(queue)

    def restore(self, envelope: Envelope, pending: Sequence[tuple[int, int, float | None]]) -> None:
        """Queue a message found by recovery: (index, failed attempts, last attempt) each.

        Recipients that had failed wait out the rest of their retry interval, so a
        restart neither hammers a destination nor forgets a schedule.
        """
        if not pending:
            return
        attempts = max(a for _, a, _ in pending)
        last = max((t for _, _, t in pending if t is not None), default=None)
        retry_at = None
        if attempts and last is not None:
            domain = recipient_domain(envelope.recipients[pending[0][0]].address)
            settings = self.holder.config.domain_settings(domain, envelope.vmta, envelope.vmta_pool)
            retry_at = next_attempt_at(
                last, attempts, settings.retry_after, envelope.expiry_start, settings.bounce_after
            )
        if self.delay_notices is not None:
            self.delay_notices.restored(envelope, pending)
        self._restoring = True
        try:
            self.enqueue(envelope, [i for i, _, _ in pending], attempts, retry_at)
        finally:
            self._restoring = False

    async def bounce_lost(self, envelope: Envelope, indexes: Sequence[int]) -> None:
        """Recipients whose message file recovery found gone or corrupt: a `b` and a DSN.

        The DSN carries no returned headers (the body is gone). It is spooled before
        the `b` is journaled, as for every bounce.
        """
        outcome = outcomes.outcome(
            "b",
            Reply(550, "5.3.0", "message file lost or corrupt in the spool"),
            envelope,
            tuple(indexes),
            self.clock.seconds(),
            queue="",
            vmta="",
            pool=None,
            bounce_cat="other",
        )
        if self.notify_bounce is not None:
            try:
                await self.notify_bounce(envelope, [outcome], b"")
            except Exception:
                log.failure("could not queue a DSN for {msg_id}", msg_id=envelope.msg_id)
        await self.journal.append([outcome])

    async def bounce_unreadable(self, queue: Queue, msg_id: str, error: Exception) -> None:
        """A message whose file is missing or corrupt at delivery time bounces at once.

        Retrying cannot bring the body back, so every pending recipient (of every
        queue) gets a `b` (5.3.0, category `other`) and the sender a DSN without the
        returned headers; a corrupt file is moved to `<spool>/corrupt/` first, for a
        post-mortem, instead of being read again at every retry until bounce-after.
        """
        message = self.messages.get(msg_id)
        if message is None or not message.pending:
            return
        what = "missing"
        if isinstance(error, CorruptMessageError):
            what = "corrupt (moved to corrupt/)"
            try:
                await self.store.set_aside(msg_id)
            except Exception as exc:
                log.error("cannot set {msg_id} aside: {error}", msg_id=msg_id, error=exc)
        log.error(
            "message file of {msg_id} is {what}: bouncing its recipients ({error})",
            msg_id=msg_id,
            what=what,
            error=error,
        )
        reply = Reply(550, "5.3.0", f"message file {what} in the spool: {error}")
        indexes = tuple(sorted(message.pending))
        outcome = self._outcome(
            "b", reply, message.envelope, indexes, self.clock.seconds(), queue, bounce_cat="other"
        )
        await self.record(queue, [outcome], body=b"")

    def _queue(self, domain: str, vmta: str, pool: str | None) -> Queue:
        name = queue_name(domain, vmta)
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name, domain, vmta, pool)
            queue.paused = any(queue_matches(p, name) for p in self._paused_patterns)
        return queue

    def settings_for(self, queue: Queue) -> DomainSettings:
        """The queue's settings from the running config, in its current mode."""
        settings = self.holder.config.domain_settings(queue.domain, queue.vmta, queue.pool)
        return patterns.effective_settings(queue, settings)

    # -- starting sessions ---------------------------------------------------------

    def _pump(self, queue: Queue) -> None:
        """Start as many sessions as the queue's work and limits allow."""
        self.hold_paused_jobs(queue)
        if queue.paused or self.stopping:
            return
        config = self.holder.config
        patterns.leave_backoff_if_due(
            queue,
            config.domain_settings(queue.domain, queue.vmta, queue.pool),
            self.clock.seconds(),
        )
        self.slots.wake_idle(queue)
        settings = self.settings_for(queue)
        limit = self.slots.limit(queue, settings, config) if queue.connected else 1
        while self.slots.unclaimed(queue) and queue.active < limit:
            if self.slots.at_total(config.settings.total_max_smtp_out):
                # An idle session elsewhere holds a slot this queue could use: end it;
                # its session's end pumps the queues that wait for a slot.
                self._slot_waiters[queue.name] = queue
                self.slots.release_one_idle(self.queues.values(), except_queue=queue)
                return
            if not self._rate_allows(queue, settings) or not self._connect_rate_allows(
                queue, settings
            ):
                return
            source = self._source_for(queue, settings)
            if source is None:
                self._slot_waiters[queue.name] = queue  # a source's cap: a session end
                return
            self._start_session(queue, settings, source)

    def _rate_allows(self, queue: Queue, settings: DomainSettings) -> bool:
        """With max-msg-rate, wake the queue later instead of starting a session now."""
        if settings.max_msg_rate is None:
            return True
        now = self.clock.seconds()
        if queue.next_send_at <= now + MAX_RATE_WAIT:
            return True
        self.arm_timer(queue, at=queue.next_send_at)
        return False

    def _connect_rate_allows(self, queue: Queue, settings: DomainSettings) -> bool:
        """`max-connect-rate`: a new connection at most every 1/rate seconds, else wake later."""
        rate = settings.max_connect_rate
        if rate is None:
            return True
        now = self.clock.seconds()
        if queue.next_connect_at > now:
            self.arm_timer(queue, at=queue.next_connect_at)
            return False
        queue.next_connect_at = now + 1 / rate.per_second
        return True

    def _source_for(self, queue: Queue, settings: DomainSettings) -> SourceChoice | None:
        """The new session's source; None (the queue waits) when `disable-source-ip`
        has disabled every source of the queue (it wakes when the first is enabled), or
        the per-IP limits hold every other one back (`source-ip-max-smtp-out`: a session's
        end wakes it; `source-ip-max-connect-rate` and `-msg-rate`: a timer does)."""
        # the vmta's smtp-source-host lines, else the global ones
        hosts: Sequence[SourceHost] = self.holder.config.source_hosts(queue.vmta)
        if self.traces:  # `trace --source-ip`: the traced session uses that source
            hosts = self._traced_sources(queue, hosts)
        now = self.clock.seconds()
        waits: list[float] = []

        def allowed(source: SourceHost) -> bool:
            ip = _address(source.ip)
            if ip is None:
                return True
            key = (queue.domain, source.ip)
            for network, limit in settings.source_ip_max_smtp_out:
                if ip.version != network.version or ip not in network:
                    continue
                if self.sources.active.get(key, 0) >= limit:
                    return False
            if rate_interval(settings.source_ip_max_connect_rate, source.ip):
                due = self.sources.next_connect.get(key, 0.0)
                if due > now:
                    waits.append(due)
                    return False
            if rate_interval(settings.source_ip_max_msg_rate, source.ip):
                due = self.sources.next_send.get(key, 0.0)
                if due > now + MAX_RATE_WAIT:  # a session would end at once: wake then
                    waits.append(due)
                    return False
            return True

        choice = self.sources.choose(queue.name, hosts, now, allowed)
        if choice is None:
            at = self.sources.next_reenable(queue.name)
            times = [t for t in (at, *waits) if t is not None]
            if times:
                self.arm_timer(queue, at=min(times))
            return None
        source = choice.source
        if source is not None:  # the strictest rate of the IP's networks spaces connections
            interval = rate_interval(settings.source_ip_max_connect_rate, source.ip)
            if interval:
                self.sources.next_connect[(queue.domain, source.ip)] = now + interval
        return choice

    def disable_source(self, queue: Queue, key: str, actions: Sequence[str]) -> None:
        """`disable-source-ip`: the source `key` of this session no longer serves `queue`."""
        settings = self.settings_for(queue)
        after = reenable_after(actions, settings.reenable_source_ip_after)
        log.info(
            "source {source} disabled for queue {queue} ({until})",
            source=key,
            queue=queue.name,
            until="never re-enabled" if after is None else f"for {after:.0f}s",
        )
        self.sources.disable(queue.name, key, self.clock.seconds(), after)
        self.maillog.disabled_ip(settings, queue.name, key, after)

    def enable_sources(self, pattern: str, key: str | None = None, ip: str | None = None) -> int:
        """Enable disabled sources (all, `key`, or those of `ip`) of the matching queues."""
        queues = self.matching(pattern)
        count = self.sources.enable([q.name for q in queues], key, ip=ip)
        for queue in queues:
            self._pump(queue)
        return count

    def priority(self, queue: Queue) -> int:
        """The queue's priority: `set priority` if given, else its `queue-priority`."""
        if queue.priority is not None:
            return queue.priority
        return self.settings_for(queue).queue_priority

    def set_priority(self, pattern: str, priority: int) -> list[str]:
        """`set priority --queue=`: the matching queues' priority until restart."""
        queues = self.matching(pattern)
        for queue in queues:
            queue.priority = priority
        return [q.name for q in queues]

    def _start_session(self, queue: Queue, settings: DomainSettings, source: SourceChoice) -> None:
        self.slots.open(queue)
        self.sources.opened(queue.domain, source.source)
        trace = self._take_trace(queue, source) if self.traces else None
        session = Session(self, queue, settings, source=source)
        if trace is not None:
            trace.start(queue.name)
            trace.line(f"source {source.key}")
            session.transcript = trace.line
        deferred = defer.Deferred.fromCoroutine(session.run(self.deliverers.get(settings.type)))
        self._sessions.add(deferred)
        deferred.addBoth(lambda _: self._sessions.discard(deferred))
        if trace is not None:
            deferred.addBoth(_finish_trace, trace)

    def session_ended(self, queue: Queue) -> None:
        """A finished session frees a global slot: let every queue use it.

        `queue-priority`: queues with work take freed slots in priority order (higher
        first; this queue first among equals), so when `total-max-smtp-out` is the
        bottleneck a high-priority queue is served before a low one.
        """
        waiters = self._slot_waiters
        waiting = [queue] + [q for q in waiters.values() if q is not queue and q.ready]
        waiting.sort(key=lambda q: -self.priority(q))
        for other in waiting:
            if other is not queue and self.slots.at_total(
                self.holder.config.settings.total_max_smtp_out
            ):
                break
            waiters.pop(other.name, None)  # `_pump` puts it back if it still has to wait
            self._pump(other)
        for name in [name for name, q in waiters.items() if not q.ready]:
            del waiters[name]

    # -- records, in the order of durability (sessions call these too) ------------

    def read_body(self, msg_id: str) -> defer.Deferred[bytes]:
        """A session reads a message's body through its owner (`SessionOwner`)."""
        return self.store.read_body(msg_id)

    def _outcome(
        self,
        kind: str,
        reply: Reply,
        envelope: Envelope,
        indexes: tuple[int, ...],
        now: float,
        queue: Queue,
        **fields: Any,
    ) -> Outcome:
        """`outcomes.outcome` for recipients of `queue`."""
        return outcomes.outcome(
            kind, reply, envelope, indexes, now, queue.name, queue.vmta, queue.pool, **fields
        )

    async def record(
        self, queue: Queue, records: list[Outcome], body: bytes | None = None, dsn: bool = True
    ) -> None:
        """Spool DSNs, make outcomes durable, then remove files whose recipients are final.

        The DSN for a bounce is spooled before the `b` record is journaled: a kill -9
        between the two at worst bounces (and notifies) again after the restart, where
        the other order could lose the notification.
        """
        if not records:
            return
        records = [self._categorised(outcome) for outcome in records]
        finals: dict[str, list[Outcome]] = {}
        for outcome in records:
            message = self.messages.get(outcome.msg_id)
            if outcome.is_final and message is not None:
                message.pending.difference_update(outcome.rcpt_indexes)
                finals.setdefault(outcome.msg_id, []).append(outcome)
            if outcome.record in ("t", "b"):  # a 451 to RCPT or DATA is the queue's too
                diag = outcome.dsn_diag.removeprefix("smtp;")
                queue.last_error = f"{outcome.dsn_status} {diag}"
            counter = {"d": "delivered", "b": "bounced", "t": "deferred"}[outcome.record]
            setattr(
                queue.counters,
                counter,
                getattr(queue.counters, counter) + len(outcome.rcpt_indexes),
            )
        for msg_id, finished in finals.items():
            # bounces, and deliveries whose recipients may have asked NOTIFY=SUCCESS
            reported = [o for o in finished if o.record == "b" or asks_success(o.envelope)]
            message = self.messages.get(msg_id)
            if reported and dsn and self.notify_bounce is not None and message is not None:
                try:
                    await self.notify_bounce(message.envelope, reported, body)
                except Exception:
                    log.failure("could not queue a DSN for {msg_id}", msg_id=msg_id)
        await self.journal.append(records)
        if self.delay_notices is not None:
            for outcome in records:
                if outcome.record == "t":
                    await self.delay_notices.transient(self.settings_for(queue), outcome, body)
        for msg_id in finals:
            message = self.messages.get(msg_id)
            if message is not None and not message.pending:
                del self.messages[msg_id]
                self.priorities.pop(msg_id, None)
                if self.delay_notices is not None:
                    self.delay_notices.forget(msg_id)
                await self.store.remove(msg_id)

    def _categorised(self, outcome: Outcome) -> Outcome:
        """A b/t record's category from `<bounce-category-patterns>` when a line matches."""
        if outcome.record == "d" or outcome.bounce_cat == "message-expired":
            return outcome
        category = self.holder.config.bounce_category(outcome.dsn_status, outcome.dsn_diag)
        return attrs.evolve(outcome, bounce_cat=category) if category else outcome

    # -- failures and retries ------------------------------------------------------

    def retry(
        self,
        queue: Queue,
        settings: DomainSettings,
        items: Iterable[WorkItem],
        now: float,
        already_counted: bool = False,
    ) -> None:
        for item in items:
            message = self.messages.get(item.msg_id)
            if message is None:
                continue
            attempts = item.failed_attempts if already_counted else item.failed_attempts + 1
            item.failed_attempts = attempts
            due = next_attempt_at(
                now,
                attempts,
                settings.retry_after,
                message.envelope.expiry_start,
                settings.bounce_after,
            )
            queue.add_retry(due, item)
        self.arm_timer(queue)

    async def queue_failure(
        self, queue: Queue, settings: DomainSettings, failure: QueueLevelFailure
    ) -> None:
        now = self.clock.seconds()
        queue.counters.connection_failures += 1
        queue.last_error = f"{failure.status} {failure.diag}"
        # A tq record says "delayed": only a transient failure writes one. A permanent
        # answer (NXDOMAIN, null MX) bounces the queue's recipients, and their b
        # records carry the 5.x.x status (a delay with a permanent status misleads).
        if not failure.permanent:
            tq = QueueFailure(
                queue=queue.name,
                time=now,
                dsn_status=failure.status,
                dsn_diag=failure.diag,
                dsn_mta=failure.dsn_mta,
                bounce_cat=self.holder.config.bounce_category(failure.status, failure.diag)
                or failure.bounce_cat
                or classify(failure.status, failure.diag),
                vmta=queue.vmta,
                vmta_pool=queue.pool or "",
                dlv_destination_ip=failure.destination_ip,
            )
            await self.journal.append([tq])
        items = list(queue.ready)
        queue.ready.clear()
        if failure.permanent:
            await self.bounce(
                queue,
                items,
                failure.status,
                failure.diag,
                failure.dsn_mta,
                category=failure.bounce_cat,  # routing knows best (bad-domain for 5.4.4)
            )
            return
        queue.consecutive_failures += 1
        expired = [i for i in items if self._expired(i, settings, now)]
        waiting = [i for i in items if not self._expired(i, settings, now)]
        if expired:
            await self.bounce(
                queue, expired, "4.4.7", failure.diag, failure.dsn_mta, expired_reason=True
            )
        self.retry(queue, settings, waiting, now)
        queue.connected = False
        if waiting:
            queue.connect_retry_at = queue.next_due() or 0.0
        if self.delay_notices is not None:
            await self.delay_notices.queue_failed(
                settings, waiting, self.messages, failure.status, failure.diag, failure.dsn_mta
            )

    def _expired(self, item: WorkItem, settings: DomainSettings, now: float) -> bool:
        message = self.messages.get(item.msg_id)
        return message is not None and is_expired(
            message.envelope.expiry_start, now, settings.bounce_after
        )

    async def bounce(
        self,
        queue: Queue,
        items: list[WorkItem],
        status: str,
        diag: str,
        dsn_mta: str,
        expired_reason: bool = False,
        category: str = "",
        dsn: bool = True,
    ) -> None:
        now = self.clock.seconds()
        records = []
        for item in items:
            message = self.messages.get(item.msg_id)
            if message is None:
                continue
            live = tuple(i for i in item.rcpt_indexes if i in message.pending)
            if not live:
                continue
            kind = "x" if expired_reason else "b"
            reply = outcomes.failure_reply(status, diag)
            records.append(
                self._outcome(
                    kind,
                    reply,
                    message.envelope,
                    live,
                    now,
                    queue,
                    dsn_mta=dsn_mta,
                    bounce_cat=category,
                )
            )
        await self.record(queue, records, dsn=dsn)

    # -- timers --------------------------------------------------------------------

    def arm_timer(self, queue: Queue, at: float | None = None) -> None:
        due = queue.next_due()
        if at is not None:
            due = at if due is None else min(due, at)
        if due is None:
            return
        timer = self._timers.get(queue.name)
        if timer is not None and timer.active():
            if timer.getTime() <= due:
                return
            timer.cancel()
        delay = max(due - self.clock.seconds(), 0.0)
        self._timers[queue.name] = self.clock.callLater(delay, self._wake, queue)

    def _wake(self, queue: Queue) -> None:
        try:
            self._timers.pop(queue.name, None)
            queue.ready.extend(queue.pop_due(self.clock.seconds()))
            self.order_ready(queue)
            self.arm_timer(queue)
            self._pump(queue)
        except Exception:
            log.failure("waking queue {queue} failed", queue=queue.name)

    # -- operator commands ---------------------------------------------------------

    def matching(self, pattern: str) -> list[Queue]:
        return [q for name, q in sorted(self.queues.items()) if queue_matches(pattern, name)]

    def pause(self, pattern: str) -> list[str]:
        """Pause matching queues, and queues created later that match (a campaign's)."""
        self._paused_patterns.add(pattern)
        queues = self.matching(pattern)
        for queue in queues:
            queue.paused = True
            self.slots.release_idle(queue)
        return [q.name for q in queues]

    def resume(self, pattern: str) -> list[str]:
        self._paused_patterns = {
            p for p in self._paused_patterns if p != pattern and not queue_matches(pattern, p)
        }
        queues = self.matching(pattern)
        for queue in queues:
            queue.paused = False
            self._pump(queue)
        return [q.name for q in queues]

    def job_paused(self, msg_id: str) -> bool:
        """Whether the message's job is paused (`pause job`): its recipients wait."""
        if not self.paused_jobs:
            return False
        message = self.messages.get(msg_id)
        return message is not None and message.envelope.job_id in self.paused_jobs

    def hold_paused_jobs(self, queue: Queue) -> None:
        """Move ready items of paused jobs to `queue.held`, before a session is started.

        Every way into `ready` ends in `_pump`, which calls this before it starts a
        session: a queue with only a paused job's mail opens no connection, and a
        running session never finds a paused job's item in `ready`.
        """
        if not self.paused_jobs or not queue.ready:
            return
        ready = list(queue.ready)
        queue.ready.clear()
        for item in ready:
            (queue.held if self.job_paused(item.msg_id) else queue.ready).append(item)

    def pause_job(self, job: str) -> int:
        """Hold the job's recipients, queued now or later; how many wait now.

        Like a paused queue's, they are not tried, so they count no failed attempt and
        are not expired while paused: `bounce-after` applies at their next attempt.
        Other jobs of the same queues keep flowing.
        """
        self.paused_jobs.add(job)
        for queue in self.queues.values():
            self.hold_paused_jobs(queue)
        return self._job_recipients(job)

    def resume_job(self, job: str) -> int:
        """Make the job's held recipients ready at once; how many of the job wait."""
        self.paused_jobs.discard(job)
        for queue in list(self.queues.values()):
            held = [i for i in queue.held if not self.job_paused(i.msg_id)]
            if not held:
                continue
            queue.held = [i for i in queue.held if self.job_paused(i.msg_id)]
            queue.ready.extend(held)
            self.order_ready(queue)
            self._pump(queue)
        return self._job_recipients(job)

    def _job_recipients(self, job: str) -> int:
        return sum(
            len(item.rcpt_indexes)
            for queue in self.queues.values()
            for item in queue.waiting()
            if (message := self.messages.get(item.msg_id)) is not None
            and message.envelope.job_id == job
        )

    def schedule(self, pattern: str) -> list[str]:
        """Retry now: every item waiting for its retry time becomes ready.

        Messages held for their `start_time` (never tried yet) keep waiting for it:
        `schedule` and `trace` retry mail, they do not send a campaign early.
        """
        queues = self.matching(pattern)
        now = self.clock.seconds()
        for queue in queues:
            later = [(due, item) for due, item in queue.retrying() if self._not_yet(item, now)]
            queue.schedule_now()
            if later:
                kept = {id(item) for _, item in later}
                queue.ready = type(queue.ready)(i for i in queue.ready if id(i) not in kept)
                for due, item in later:
                    queue.add_retry(due, item)
                self.arm_timer(queue)
            self.order_ready(queue)
            self._pump(queue)
        return [q.name for q in queues]

    def _not_yet(self, item: WorkItem, now: float) -> bool:
        """Is this item held for its message's `start_time` (not tried yet)?"""
        message = self.messages.get(item.msg_id)
        if message is None or item.failed_attempts:
            return False
        start = message.envelope.start_time
        return start is not None and start > now

    def set_mode(self, pattern: str, mode: str) -> list[str]:
        if mode not in ("normal", "backoff"):
            raise ValueError("mode must be normal or backoff")
        queues = self.matching(pattern)
        for queue in queues:
            queue.mode, queue.backoff_since = mode, self.clock.seconds()
            self._pump(queue)
        return [q.name for q in queues]

    async def delete(self, selection: RecipientFilter, dsn: bool = False) -> int:
        """Bounce the waiting recipients `selection` picks; return how many.

        Each gets a `b` record (5.0.0 "deleted by administrator", category `other`);
        the sender gets a DSN only with `dsn` (`delete --dsn`). The other recipients
        keep their place and schedule.
        """
        count = 0
        for queue in self.matching(selection.queue):

            def pick(item: WorkItem) -> tuple[int, ...]:
                message = self.messages.get(item.msg_id)
                if message is None:
                    return ()
                return selection.split(message.envelope, item.rcpt_indexes)

            drop = queue.select(pick)
            if not drop:
                continue
            count += sum(len(i.rcpt_indexes) for i in drop)
            await self.bounce(
                queue, drop, "5.0.0", "deleted by administrator", "", category="other", dsn=dsn
            )
            self.arm_timer(queue)
        return count

    def order_ready(self, queue: Queue) -> None:
        """`set priority` and `recipient-priority`: ready items, higher priority first (stable)."""
        if not (self.priorities or self.recipient_priorities) or len(queue.ready) < 2:
            return
        queue.ready = type(queue.ready)(sorted(queue.ready, key=lambda i: -self.item_priority(i)))

    def item_priority(self, item: WorkItem) -> int:
        """`set priority` of its message if given, else its recipients' `recipient-priority`."""
        priority = self.priorities.get(item.msg_id)
        if priority is not None:
            return priority
        message = self.messages.get(item.msg_id)
        return message.envelope.priority_of(item.rcpt_indexes) if message is not None else 50

    def set_message_priority(self, selection: RecipientFilter, priority: int) -> int:
        """Give the queued messages with recipients `selection` picks this priority."""
        chosen: set[str] = set()
        queues = self.matching(selection.queue)
        for queue in queues:
            for item in queue.waiting():
                message = self.messages.get(item.msg_id)
                if message is not None and selection.split(message.envelope, item.rcpt_indexes):
                    chosen.add(item.msg_id)
        for msg_id in chosen:
            self.priorities[msg_id] = priority
        if chosen:
            for queue in queues:
                self.order_ready(queue)
        return len(chosen)

    def source_keys(self, vmta_name: str) -> list[str]:
        """The source keys of a vmta's sessions (`default` without smtp-source-host)."""
        hosts = self.holder.config.source_hosts(vmta_name)
        return [source_key(host) for host in hosts] or [DEFAULT_SOURCE]

    def disable_sources(self, pattern: str, ip: str, after: float | None) -> list[str]:
        """`disable source IP D/V`: the sources of IP `ip` serve the matching queues no more."""
        now = self.clock.seconds()
        done = []
        for queue in self.matching(pattern):
            for key in self.source_keys(queue.vmta):
                if key.split(" ", 1)[0] == ip:
                    self.sources.disable(queue.name, key, now, after)
                    done.append(f"{queue.name}: {key}")
            self.arm_timer(queue)
        return done

    def trace(self, request: TraceRequest) -> None:
        """The next session of a queue matching the request gets its transcript."""
        self.traces.append(request)

    def cancel_trace(self, request: TraceRequest) -> None:
        if request in self.traces:
            self.traces.remove(request)

    def _traced_sources(self, queue: Queue, hosts: Sequence[SourceHost]) -> Sequence[SourceHost]:
        for request in self.traces:
            if request.source_ip is not None and queue_matches(request.pattern, queue.name):
                return [h for h in hosts if h.ip == request.source_ip] or hosts
        return hosts

    def _take_trace(self, queue: Queue, source: SourceChoice) -> TraceRequest | None:
        for request in self.traces:
            if not queue_matches(request.pattern, queue.name):
                continue
            if request.source_ip is not None and (
                source.source is None or source.source.ip != request.source_ip
            ):
                continue
            self.traces.remove(request)
            return request
        return None

    async def stop(self, grace: float = 5.0) -> None:
        """Start no more sessions; give running ones `grace` seconds, then cancel them.

        A cancelled session's transaction in hand stays queued: it is in the spool, and
        recovery queues it again at the next start (at worst delivered twice).
        """
        self.stopping = True
        for queue in self.queues.values():
            self.slots.release_idle(queue)
        for timer in self._timers.values():
            if timer.active():
                timer.cancel()
        self._timers.clear()
        if not self._sessions:
            return
        waiting = defer.DeferredList(list(self._sessions), consumeErrors=True)
        deadline = self.clock.callLater(grace, self._cancel_sessions)
        await waiting
        if deadline.active():
            deadline.cancel()

    def _cancel_sessions(self) -> None:
        for session in list(self._sessions):
            session.cancel()


def _finish_trace(result: object, trace: TraceRequest) -> object:
    trace.finish()
    return result
