"""Traffic counters for monitoring: last minute, last hour and since start.

The scheduler and reception already count what they do (`Queue.counters`,
`ReceptionStats`), but as plain totals that `reset counters` zeroes. Monitoring also
wants rates over a sliding window and Prometheus wants totals that never go down, so
this module keeps both, fed from two places without changing either owner:

* outbound: `TrafficStats.observe(journal)` wraps the journal the scheduler appends
  its `Outcome` events to; each durable outcome is counted (recipients, messages,
  bytes, per queue, and the delivery latency of `d` records);
* inbound: `TrafficStats.sample_reception(stats)` turns `ReceptionStats` totals into
  deltas, and is called on every read and by a periodic timer of the mgmt service.

The monitoring API (PowerMTA's `/status`, `/queueDetail`) also wants the busiest
minute and hour seen (`RateCounter.top_per_min`/`top_per_hr`), the most connections
open at once (`Peak`), the report messages the processors took, and each queue's last
recipient events and errors (`QueueEvents`, bounded per queue and in the number of
queues kept).

Pure bookkeeping with time passed in (`now`), no reactor imports.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from mtaserver.events import Event, Outcome, QueueFailure, RemoteReport

MINUTE = 60.0
HOUR = 3600.0

#: Recent events kept per queue for the monitoring detail views (PowerMTA shows the
#: last 50 recipient events and the last 10 errors of a queue).
RCPT_EVENTS_KEPT = 50
ERRORS_KEPT = 10
#: Queues whose recent events are kept, the most recently active ones: memory stays
#: bounded (about 50 small records a queue) however many domains mail goes to.
QUEUES_TRACKED = 1000

#: Delivery latency buckets (seconds from queued to delivered), Prometheus style.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.1,
    0.5,
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    86400.0,
)


class _Window:
    """A sliding sum over the last `span` seconds, in one-second buckets, and its peak.

    The sum is kept up to date as buckets enter and leave, so reading it is O(1) and
    adding is amortised O(1): the hot path (every committed outcome) never walks an
    hour of buckets.
    """

    def __init__(self, span: float) -> None:
        self.span = int(span)
        self.sum = 0
        self.top = 0  # the highest sum seen since start (or `reset counters`)
        self._buckets: deque[list[int]] = deque()

    def add(self, amount: int, now: float) -> None:
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([second, amount])
        self.sum += amount
        self.prune(now)
        self.top = max(self.top, self.sum)

    def prune(self, now: float) -> None:
        oldest = int(now) - self.span
        while self._buckets and self._buckets[0][0] <= oldest:
            self.sum -= self._buckets.popleft()[1]

    def since(self, start: int) -> int:
        """The sum of the buckets after second `start` (for windows shorter than the span)."""
        return sum(amount for second, amount in reversed(self._buckets) if second > start)

    def reset(self) -> None:
        self.sum = self.top = 0
        self._buckets.clear()


class RateCounter:
    """A count for the last minute and the last hour, their peaks, and a total since start.

    The peaks (`top_per_min`, `top_per_hr`) are PowerMTA's "Top/Min." and "Top/Hour":
    the highest count any sliding minute or hour has seen since start.
    """

    def __init__(self) -> None:
        self.total = 0
        self._minute = _Window(MINUTE)
        self._hour = _Window(HOUR)

    def add(self, amount: int, now: float) -> None:
        if amount <= 0:
            return
        self.total += amount
        self._minute.add(amount, now)
        self._hour.add(amount, now)

    def last(self, window: float, now: float) -> int:
        """The sum of what was added in the last `window` seconds (at most an hour)."""
        if window == MINUTE:
            self._minute.prune(now)
            return self._minute.sum
        self._hour.prune(now)
        if window >= HOUR:
            return self._hour.sum
        return self._hour.since(int(now) - int(window))

    @property
    def top_per_min(self) -> int:
        return self._minute.top

    @property
    def top_per_hr(self) -> int:
        return self._hour.top

    def reset(self) -> None:
        self.total = 0
        self._minute.reset()
        self._hour.reset()


@attrs.define
class Traffic:
    """Recipients, messages and bytes in one direction."""

    recipients: RateCounter = attrs.field(factory=RateCounter)
    messages: RateCounter = attrs.field(factory=RateCounter)
    bytes: RateCounter = attrs.field(factory=RateCounter)

    def add(self, recipients: int, messages: int, size: int, now: float) -> None:
        self.recipients.add(recipients, now)
        self.messages.add(messages, now)
        self.bytes.add(size, now)

    def summary(self, now: float) -> dict[str, dict[str, int]]:
        """`{"lastMin": {...}, "lastHr": {...}, "total": {...}}` of rcpts, msgs, bytes."""

        def row(pick: Callable[[RateCounter], int]) -> dict[str, int]:
            return {
                "recipients": pick(self.recipients),
                "messages": pick(self.messages),
                "bytes": pick(self.bytes),
            }

        return {
            "lastMin": row(lambda c: c.last(MINUTE, now)),
            "lastHr": row(lambda c: c.last(HOUR, now)),
            "total": row(lambda c: c.total),
        }

    def reset(self) -> None:
        for counter in (self.recipients, self.messages, self.bytes):
            counter.reset()


@attrs.define
class Histogram:
    """Cumulative-free bucket counts; `cumulative()` gives Prometheus's `le` form."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = attrs.field(factory=list)
    sum: float = 0.0
    count: int = 0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


@attrs.define
class QueueTotals:
    """Monotonic per-queue totals for Prometheus (never reset)."""

    delivered: int = 0
    bounced: int = 0
    deferred: int = 0


@attrs.frozen
class RcptEvent:
    """One recipient's delivery, bounce or deferral, as a queue's detail view lists it."""

    type: str  # delivered | bounced | deferred
    time: float
    rcpt: str
    job: str
    source_ip: str
    destination_ip: str
    diag: str


@attrs.frozen
class QueueError:
    """A failure recorded against a queue: a deferral, a bounce or a queue-level failure."""

    time: float
    text: str


@attrs.define
class QueueEvents:
    """The recent events of one queue, bounded."""

    rcpt: deque[RcptEvent] = attrs.field(factory=lambda: deque(maxlen=RCPT_EVENTS_KEPT))
    errors: deque[QueueError] = attrs.field(factory=lambda: deque(maxlen=ERRORS_KEPT))


_EVENT_TYPES = {"d": "delivered", "b": "bounced", "t": "deferred"}


class Peak:
    """PowerMTA's "top" connections: the most open at once, which `reset counters` zeroes.

    The owners of the connections (reception, the scheduler's slots) keep their own
    running maximum since start; this follows it and the current count. A maximum
    that has not grown since the last sample is not taken again, so a peak from before
    a reset does not come back.
    """

    def __init__(self) -> None:
        self.value = 0
        self._seen = 0

    def sample(self, current: int, top: int) -> None:
        if top > self._seen:
            self.value = max(self.value, top)
        self._seen = top
        self.value = max(self.value, current)

    def reset(self) -> None:
        self.value = 0


class ObservedJournal:
    """The scheduler's journal, counting each durable `Outcome` once it is committed."""

    def __init__(self, journal: Any, stats: TrafficStats) -> None:
        self.journal = journal
        self.stats = stats

    def append(self, events: Sequence[Event]) -> Any:
        deferred = self.journal.append(events)

        def committed(result: Any) -> Any:
            self.stats.record(events)
            return result

        deferred.addCallback(committed)
        return deferred

    def __getattr__(self, name: str) -> Any:
        return getattr(self.journal, name)


class TrafficStats:
    """Inbound and outbound traffic, per-queue totals and delivery latency."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.started = now()
        self.inbound = Traffic()
        self.outbound = Traffic()
        self.bounced = RateCounter()
        self.deferred = RateCounter()
        self.queue_totals: dict[str, QueueTotals] = {}
        self.received_total = 0
        self.latency = Histogram()
        #: Report messages the `<bounce-processor>`s and `<feedback-loop-processor>`s took.
        self.bounce_processed = RateCounter()
        self.feedback_loop_processed = RateCounter()
        #: The most simultaneous connections since start or `reset counters`.
        self.connections_in = Peak()
        self.connections_out = Peak()
        self.recent: dict[str, QueueEvents] = {}
        self._seen_reception: dict[str, int] = {}

    def observe(self, journal: Any) -> ObservedJournal:
        """Wrap `journal` so that committed outcomes are counted here."""
        return ObservedJournal(journal, self)

    def record(self, events: Sequence[Event]) -> None:
        now = self.now()
        reports: dict[str, set[str]] = {"bounce": set(), "fbl": set()}
        for event in events:
            if isinstance(event, QueueFailure):
                self._queue_events(event.queue).errors.append(
                    QueueError(event.time, event.dsn_diag)
                )
                continue
            if isinstance(event, RemoteReport):
                reports["fbl" if event.record == "f" else "bounce"].add(event.msg_id)
                continue
            if not isinstance(event, Outcome):
                continue
            self._remember(event)
            count = len(event.rcpt_indexes)
            totals = self.queue_totals.setdefault(event.queue, QueueTotals())
            if event.record == "d":
                totals.delivered += count
                self.outbound.add(count, 1, event.dlv_size, now)
                self.latency.observe(max(event.time - event.envelope.time_queued, 0.0), count)
            elif event.record == "b":
                totals.bounced += count
                self.bounced.add(count, now)
            elif event.record == "t":
                totals.deferred += count
                self.deferred.add(count, now)
        self.bounce_processed.add(len(reports["bounce"]), now)
        self.feedback_loop_processed.add(len(reports["fbl"]), now)

    def _queue_events(self, queue: str) -> QueueEvents:
        events = self.recent.pop(queue, None)  # re-inserted last: the most recent queue
        if events is None:
            events = QueueEvents()
            while len(self.recent) >= QUEUES_TRACKED:
                del self.recent[next(iter(self.recent))]  # the least recently active
        self.recent[queue] = events
        return events

    def _remember(self, outcome: Outcome) -> None:
        kind = _EVENT_TYPES.get(outcome.record)
        if kind is None or not outcome.queue:
            return
        events = self._queue_events(outcome.queue)
        for recipient in outcome.envelope.recipients:
            events.rcpt.append(
                RcptEvent(
                    kind,
                    outcome.time,
                    recipient.address,
                    outcome.envelope.job_id or "",
                    outcome.dlv_source_ip,
                    outcome.dlv_destination_ip,
                    outcome.dsn_diag,
                )
            )
        if outcome.record != "d" and outcome.dsn_diag:
            events.errors.append(QueueError(outcome.time, outcome.dsn_diag))

    def sample_connections(self, outbound: int, outbound_top: int) -> None:
        """Bring the outbound connection peak up to date (on reads and by a timer)."""
        self.connections_out.sample(outbound, outbound_top)

    def sample_reception(self, reception: Any) -> None:
        """Count what `ReceptionStats` received since the previous sample."""
        now = self.now()
        current = {
            "recipients": int(reception.recipients_received),
            "messages": int(reception.messages_received),
            "bytes": int(reception.bytes_received),
        }
        delta = {k: max(v - self._seen_reception.get(k, 0), 0) for k, v in current.items()}
        self._seen_reception = current
        self.received_total += delta["messages"]
        self.connections_in.sample(
            int(getattr(reception, "sessions_current", 0)),
            int(getattr(reception, "sessions_top", 0)),
        )
        self.inbound.add(delta["recipients"], delta["messages"], delta["bytes"], now)

    def reset(self) -> None:
        """`reset counters`: the windows and since-start figures (not Prometheus totals)."""
        self.started = self.now()
        for traffic in (self.inbound, self.outbound):
            traffic.reset()
        self.bounced.reset()
        self.deferred.reset()
        self.bounce_processed.reset()
        self.feedback_loop_processed.reset()
        self.connections_in.reset()
        self.connections_out.reset()
