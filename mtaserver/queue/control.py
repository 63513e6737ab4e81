"""`QueueControl`: what operators and monitoring may see and do to the queues.

The scheduler's heaps, dicts and counters are its own; commands (`mtaserver.commands`),
the monitoring API and `/metrics` read frozen snapshots from this view and ask it to
pause, resume, schedule, delete or change a queue's mode, to pause or resume a job,
to set priorities, to disable or enable sources and to trace a session, which it
hands to the scheduler (the one owner of queue state). Reading never changes anything.

The records that cross this seam live here: `RecipientFilter` (the `--queue`,
`--orig`, `--rcpt`, `--jobId`, `--envId`, `--older-than` selection of `delete`,
`list` and `set priority`) and `TraceRequest` (`trace`: a transcript of the next
session of a queue, filled by the delivery side and read by the command).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer

from mtaserver.events import Envelope
from mtaserver.queue.model import MessageState, Queue, WorkItem

if TYPE_CHECKING:
    from mtaserver.queue.scheduler import Scheduler


@attrs.frozen
class QueueView:
    """One `domain/vmta` queue as `show queues` lists it."""

    name: str
    domain: str
    vmta: str
    pool: str | None
    recipients: int
    messages: int
    bytes: int  # size of the waiting messages
    oldest: float | None  # time the oldest waiting message was queued
    paused: bool
    mode: str
    connections: int
    delivered: int
    bounced: int
    deferred: int
    connections_total: int
    next_retry: float | None
    last_error: str
    #: Recipients held for their message's `start_time` (counted in `recipients` too).
    scheduled: int = 0


@attrs.frozen
class QueueState:
    """A queue's name, place and mode, without the counts: cheap for a periodic reader.

    A `QueueView` counts the queue's recipients, messages and bytes, which walks every
    waiting item; a watcher that only needs modes reads this instead, so its cost does
    not grow with the number of queued recipients.
    """

    name: str
    domain: str
    vmta: str
    pool: str | None
    mode: str
    paused: bool
    last_error: str


@attrs.frozen
class WaitingRecipient:
    """One recipient waiting in a queue (`list --queue=...`)."""

    queue: str
    msg_id: str
    rcpt: str
    job: str
    attempts: int
    state: str  # ready | retry | scheduled (held for its start_time) | paused (job paused)
    next_attempt: float | None
    orig: str = ""  # the message's MAIL FROM
    env_id: str = ""
    time_queued: float = 0.0
    size: int = 0  # the message's size in bytes
    priority: int | None = None  # `set priority` of its message; None: not set


@attrs.frozen
class RecipientFilter:
    """Which waiting recipients `delete`, `list` and `set priority` act on.

    Every given criterion must hold: the queue pattern, the sender (`orig`), the
    recipient (`rcpt`; addresses compare without case), the job id, the envelope id,
    and `queued_before` (`--older-than`: queued at or before this time).
    """

    queue: str = "*"
    orig: str | None = None
    rcpt: str | None = None
    job_id: str | None = None
    env_id: str | None = None
    queued_before: float | None = None

    def matches_message(self, envelope: Envelope) -> bool:
        if self.orig is not None and envelope.sender.lower() != self.orig.lower():
            return False
        if self.job_id is not None and envelope.job_id != self.job_id:
            return False
        if self.env_id is not None and envelope.env_id != self.env_id:
            return False
        return self.queued_before is None or envelope.time_queued <= self.queued_before

    def matches_rcpt(self, address: str) -> bool:
        return self.rcpt is None or address.lower() == self.rcpt.lower()

    def split(self, envelope: Envelope, indexes: tuple[int, ...]) -> tuple[int, ...]:
        """The recipients of `indexes` this filter selects (none when the message is not)."""
        if not self.matches_message(envelope):
            return ()
        return tuple(i for i in indexes if self.matches_rcpt(envelope.recipients[i].address))


#: The most lines a trace keeps, and the longest line (the rest is cut).
MAX_TRACE_LINES = 5000
MAX_TRACE_LINE = 1000


def _printable(text: str) -> str:
    """A transcript line with CR, LF and every control character escaped (`\\r`, `\\x1b`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@attrs.define
class TraceRequest:
    """`trace`: the transcript of the next delivery session of a matching queue.

    The scheduler gives the first session it starts for a queue matching `pattern`
    (from `source_ip`, when given) this request's `line` as its transcript; the
    delivery side writes what it does and says (`>>>` what the server sent, `<<<`
    what we sent; AUTH secrets and message data never appear). `finished` fires when
    that session ends.
    """

    pattern: str
    source_ip: str | None = None
    clock: Any = None
    lines: list[str] = attrs.field(factory=list)
    queue: str = ""
    finished: defer.Deferred[None] = attrs.field(factory=defer.Deferred)
    dropped: int = 0

    def line(self, text: str) -> None:
        """Add one line, stamped with the time; control characters never pass."""
        if len(self.lines) >= MAX_TRACE_LINES:
            self.dropped += 1
            return
        now = self.clock.seconds() if self.clock is not None else time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now))
        self.lines.append(f"{stamp} {_printable(text)[:MAX_TRACE_LINE]}")

    def start(self, queue: str) -> None:
        self.queue = queue
        self.line(f"starting {queue}")

    def finish(self) -> None:
        if not self.finished.called:
            self.line(f"done {self.queue}")
            self.finished.callback(None)


@attrs.frozen
class JobView:
    """The messages of one job id still queued, and their recipients not yet final."""

    job: str
    messages: int
    recipients: int
    paused: bool = False
    bytes: int = 0  # size of its queued messages


@attrs.frozen
class QueueTotals:
    """The whole server's queue: `show status`'s queue and outbound lines."""

    recipients: int
    messages: int
    queues: int
    paused: int
    connections: int
    connections_total: int


def _scheduled(item: WorkItem, message: MessageState | None, now: float) -> bool:
    """Is this item held for its message's `start_time` (not yet tried)?"""
    if message is None or item.failed_attempts:
        return False
    start = message.envelope.start_time
    return start is not None and start > now


def _waiting(
    queue: Queue,
    state: str,
    due: float | None,
    item: WorkItem,
    envelope: Envelope,
    address: str,
    size: int = 0,
    priority: int | None = None,
) -> WaitingRecipient:
    """The `WaitingRecipient` row of one recipient of a waiting item."""
    return WaitingRecipient(
        queue=queue.name,
        msg_id=item.msg_id,
        rcpt=address,
        job=envelope.job_id or "",
        attempts=item.failed_attempts,
        state=state,
        next_attempt=due,
        orig=envelope.sender,
        env_id=envelope.env_id or "",
        time_queued=envelope.time_queued,
        size=size,
        priority=priority,
    )


def _view(queue: Queue, messages: Mapping[str, MessageState], now: float) -> QueueView:
    counters = queue.counters
    waiting = [messages[m].envelope for m in queue.message_ids() if m in messages]
    return QueueView(
        name=queue.name,
        domain=queue.domain,
        vmta=queue.vmta,
        pool=queue.pool,
        recipients=queue.recipients,
        messages=queue.messages,
        bytes=sum(envelope.size for envelope in waiting),
        oldest=min((envelope.time_queued for envelope in waiting), default=None),
        paused=queue.paused,
        mode=queue.mode,
        connections=queue.active,
        delivered=counters.delivered,
        bounced=counters.bounced,
        deferred=counters.deferred,
        connections_total=counters.connections,
        next_retry=queue.next_due(),
        last_error=queue.last_error,
        scheduled=sum(
            len(item.rcpt_indexes)
            for _, _, item in queue.retry
            if _scheduled(item, messages.get(item.msg_id), now)
        ),
    )


@attrs.frozen
class DisabledSource:
    """A source (`IP HOSTNAME`, or `default`) disabled for a queue, and for how long more."""

    queue: str
    source: str
    reenable_in: float | None  # seconds; None: until `enable source` or a restart


class QueueControl:
    """The scheduler's read and command interface for everything outside `queue/`."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    # -- reading -------------------------------------------------------------------

    def queues(self, pattern: str = "*") -> list[QueueView]:
        """The queues matching `pattern`, by name."""
        messages = self._scheduler.messages
        now = self._scheduler.clock.seconds()
        return [_view(queue, messages, now) for queue in self._scheduler.matching(pattern)]

    def states(self, pattern: str = "*") -> list[QueueState]:
        """The queues matching `pattern`, by name, without counts (O(queues), not items)."""
        return [
            QueueState(q.name, q.domain, q.vmta, q.pool, q.mode, q.paused, q.last_error)
            for q in self._scheduler.matching(pattern)
        ]

    def totals(self) -> QueueTotals:
        queues = list(self._scheduler.queues.values())
        return QueueTotals(
            recipients=sum(q.recipients for q in queues),
            messages=len(self._scheduler.messages),
            queues=len(queues),
            paused=sum(1 for q in queues if q.paused),
            connections=self._scheduler.slots.total,
            connections_total=sum(q.counters.connections for q in queues),
        )

    def connections(self) -> tuple[int, int]:
        """Outbound sessions open now and the most open at once since start (O(1))."""
        return self._scheduler.slots.total, self._scheduler.slots.top

    def jobs(self) -> list[JobView]:
        """Queued messages grouped by job id (messages without one are left out).

        A paused job is listed even with no mail queued: its pause holds later mail.
        """
        paused = self._scheduler.paused_jobs
        jobs: dict[str, list[int]] = {job: [0, 0, 0] for job in paused}
        for state in self._scheduler.messages.values():
            job = state.envelope.job_id
            if job:
                row = jobs.setdefault(job, [0, 0, 0])
                row[0] += 1
                row[1] += len(state.pending)
                row[2] += state.envelope.size
        return [
            JobView(name, messages, recipients, paused=name in paused, bytes=size)
            for name, (messages, recipients, size) in sorted(jobs.items())
        ]

    def waiting(
        self, pattern: str | RecipientFilter, limit: int
    ) -> tuple[list[WaitingRecipient], int]:
        """Up to `limit` recipients waiting in the matching queues, and how many wait."""
        rows: list[WaitingRecipient] = []
        total = 0
        selection = pattern if isinstance(pattern, RecipientFilter) else RecipientFilter(pattern)
        for queue, state, due, item, message in self._waiting_items(selection.queue):
            for index in selection.split(message.envelope, item.rcpt_indexes):
                total += 1
                if len(rows) < limit:
                    rows.append(
                        _waiting(
                            queue,
                            state,
                            due,
                            item,
                            message.envelope,
                            message.envelope.recipients[index].address,
                            priority=self._scheduler.priorities.get(item.msg_id),
                        )
                    )
        return rows, total

    def listing(
        self,
        pattern: str,
        select: Callable[[Envelope, str], bool],
        offset: int,
        limit: int,
    ) -> tuple[list[WaitingRecipient], int, dict[str, int]]:
        """A page of the waiting recipients `select(envelope, rcpt)` keeps (`/listQueue`).

        Returns the `limit` recipients from position `offset` (queues by name; in a
        queue ready, then retry in the order due, then held), how many match in all,
        and how many match in each queue. One pass, and only the page is built.
        """
        rows: list[WaitingRecipient] = []
        total = 0
        per_queue: dict[str, int] = {}
        for queue, state, due, item, message in self._waiting_items(pattern):
            envelope = message.envelope
            for index in item.rcpt_indexes:
                address = envelope.recipients[index].address
                if not select(envelope, address):
                    continue
                if offset <= total < offset + limit:
                    rows.append(
                        _waiting(queue, state, due, item, envelope, address, size=envelope.size)
                    )
                total += 1
                per_queue[queue.name] = per_queue.get(queue.name, 0) + 1
        return rows, total, per_queue

    def _waiting_items(
        self, pattern: str
    ) -> Iterator[tuple[Queue, str, float | None, WorkItem, MessageState]]:
        """Each waiting item of the matching queues with its state, due time and message.

        Queues by name; in a queue ready, then retry in the order due, then held. A
        retry item held for its message's `start_time` is `scheduled`; an item whose
        message is gone is skipped.
        """
        messages = self._scheduler.messages
        now = self._scheduler.clock.seconds()
        for queue in self._scheduler.matching(pattern):
            entries = (
                [("ready", None, item) for item in queue.ready]
                + [("retry", due, item) for due, item in queue.retrying()]
                + [("paused", None, item) for item in queue.held]
            )
            for state, due, item in entries:
                message = messages.get(item.msg_id)
                if message is None:
                    continue
                if state == "retry" and _scheduled(item, message, now):
                    state = "scheduled"
                yield queue, state, due, item, message

    # -- commands ------------------------------------------------------------------

    def pause(self, pattern: str) -> list[str]:
        """Pause the matching queues (and queues created later that match); their names."""
        return self._scheduler.pause(pattern)

    def resume(self, pattern: str) -> list[str]:
        return self._scheduler.resume(pattern)

    def pause_job(self, job: str) -> int:
        """Hold the job's recipients in every queue, now and for later mail; how many wait.

        The rest of each queue keeps flowing; the held recipients count no failure.
        """
        return self._scheduler.pause_job(job)

    def resume_job(self, job: str) -> int:
        """The job's held recipients become ready at once; how many of the job wait."""
        return self._scheduler.resume_job(job)

    def schedule(self, pattern: str) -> list[str]:
        """Retry now: every recipient waiting for its retry time becomes ready."""
        return self._scheduler.schedule(pattern)

    def set_mode(self, pattern: str, mode: str) -> list[str]:
        """`normal` or `backoff` for the matching queues; their names."""
        return self._scheduler.set_mode(pattern, mode)

    def set_priority(self, pattern: str, priority: int) -> list[str]:
        """The matching queues' priority (0-100, replacing `queue-priority`); their names."""
        return self._scheduler.set_priority(pattern, priority)

    def set_message_priority(self, selection: RecipientFilter, priority: int) -> int:
        """The priority (0-100) of the queued messages `selection` picks; how many.

        A queue delivers its ready messages of higher priority first (unset: 50).
        """
        return self._scheduler.set_message_priority(selection, priority)

    def vmta_sources(self, vmta: str) -> list[str]:
        """The source keys (`IP HOSTNAME`, or `default`) of a vmta's sessions."""
        return self._scheduler.source_keys(vmta)

    def disable_source(self, pattern: str, ip: str, reenable_after: float | None) -> list[str]:
        """Disable the sources of IP `ip` for the matching queues; the `queue: source`s."""
        return self._scheduler.disable_sources(pattern, ip, reenable_after)

    def trace(self, request: TraceRequest) -> None:
        """Give the next session of a queue matching `request.pattern` the transcript."""
        self._scheduler.trace(request)

    def cancel_trace(self, request: TraceRequest) -> None:
        self._scheduler.cancel_trace(request)

    def disabled_sources(self, pattern: str = "*") -> list[DisabledSource]:
        """Sources `disable-source-ip` disabled for the matching queues, by queue."""
        now = self._scheduler.clock.seconds()
        return [
            DisabledSource(queue.name, key, left)
            for queue in self._scheduler.matching(pattern)
            for key, left in self._scheduler.sources.disabled_of(queue.name, now).items()
        ]

    def enable_sources(self, pattern: str, ip: str | None = None) -> int:
        """Enable the disabled sources (of IP `ip`, or all) of the matching queues; how many."""
        return self._scheduler.enable_sources(pattern, ip=ip)

    async def delete(self, selection: RecipientFilter, dsn: bool = False) -> int:
        """Bounce the waiting recipients `selection` picks (b records, `deleted by
        administrator`; a DSN to the sender only with `dsn`); how many."""
        return await self._scheduler.delete(selection, dsn=dsn)

    def reset_counters(self) -> None:
        """Zero every queue's counters (`reset counters`)."""
        for queue in self._scheduler.queues.values():
            queue.counters.reset()
