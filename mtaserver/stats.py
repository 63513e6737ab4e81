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

Pure bookkeeping with time passed in (`now`), no reactor imports.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from mtaserver.events import Event, Outcome

MINUTE = 60.0
HOUR = 3600.0

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


class RateCounter:
    """A count in one-second buckets for the last hour, and a total since start."""

    def __init__(self) -> None:
        self.total = 0
        self._buckets: deque[list[int]] = deque()

    def add(self, amount: int, now: float) -> None:
        if amount <= 0:
            return
        self.total += amount
        second = int(now)
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([second, amount])
        self._prune(now)

    def last(self, window: float, now: float) -> int:
        """The sum of what was added in the last `window` seconds."""
        self._prune(now)
        start = int(now) - int(window)
        return sum(amount for second, amount in reversed(self._buckets) if second > start)

    def reset(self) -> None:
        self.total = 0
        self._buckets.clear()

    def _prune(self, now: float) -> None:
        oldest = int(now) - int(HOUR)
        while self._buckets and self._buckets[0][0] <= oldest:
            self._buckets.popleft()


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
        self._seen_reception: dict[str, int] = {}

    def observe(self, journal: Any) -> ObservedJournal:
        """Wrap `journal` so that committed outcomes are counted here."""
        return ObservedJournal(journal, self)

    def record(self, events: Sequence[Event]) -> None:
        now = self.now()
        for event in events:
            if not isinstance(event, Outcome):
                continue
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
        self.inbound.add(delta["recipients"], delta["messages"], delta["bytes"], now)

    def reset(self) -> None:
        """`reset counters`: the windows and since-start figures (not Prometheus totals)."""
        self.started = self.now()
        for traffic in (self.inbound, self.outbound):
            traffic.reset()
        self.bounced.reset()
        self.deferred.reset()
