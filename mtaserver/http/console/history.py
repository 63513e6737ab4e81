"""The web console's charts: per-minute counters of the last hour, kept by the server.

A chart drawn from what the browser happened to see would start empty on every page
load; operators want "what happened in the last hour" the moment they open the
console. So the server keeps a ring buffer of one-minute buckets (`History`), fed
by sampling the same monotonic counters the traffic stats and `/metrics` report
(`TrafficStats.queue_totals` for delivered/bounced/deferred recipients, the inbound
recipients for reception), so the console, `show status` and Prometheus agree:

* each sample adds the growth since the previous sample to the current minute's
  bucket (a counter that went down, as the inbound one does on `reset counters`,
  is taken as a new baseline, never as a negative count), and sets the minute's
  queue size
  (recipients waiting) to the latest value;
* buckets older than `MINUTES` (a day) are dropped; the chart shows the last hour
  (`series`), the status page the day's sums (`totals`); minutes without a sample
  are reported as zero traffic with the queue size unknown (`None`).

The buffer lives in the management service, which `reload` does not rebuild, so it
survives a reload; it is memory only and starts empty after a restart.

Pure bookkeeping with time passed in (`now`); `history_service` wraps the sampling
in a `TimerService` on the injected clock.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.logger import Logger

log = Logger()

#: Minutes kept: a day, for the "last day" figures (1440 small buckets).
MINUTES = 1440
#: Minutes charted.
CHART_MINUTES = 60
#: Seconds between samples.
SAMPLE_INTERVAL = 5.0
#: The per-minute traffic series, in the order the console draws them.
SERIES = ("delivered", "bounced", "deferred", "received")


@attrs.define
class Minute:
    """One minute's bucket: traffic counted in it and the last queue size seen."""

    start: int  # epoch seconds, a multiple of 60
    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    received: int = 0
    queued: int | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class History:
    """A ring buffer of `MINUTES` per-minute buckets fed by `sample`."""

    def __init__(self, minutes: int = MINUTES) -> None:
        self.minutes = minutes
        self._buckets: deque[Minute] = deque()
        self._seen: dict[str, int] | None = None

    def sample(self, totals: dict[str, int], queued: int, now: float) -> None:
        """Count the growth of `totals` (keys of `SERIES`) since the last sample."""
        bucket = self._bucket(now)
        if self._seen is not None:
            for name in SERIES:
                growth = totals.get(name, 0) - self._seen.get(name, 0)
                if growth > 0:
                    setattr(bucket, name, getattr(bucket, name) + growth)
        self._seen = {name: int(totals.get(name, 0)) for name in SERIES}
        bucket.queued = queued

    def series(self, now: float, minutes: int = CHART_MINUTES) -> list[dict[str, Any]]:
        """The last `minutes` minutes, oldest first, one entry per minute (gaps filled)."""
        current = int(now) // 60 * 60
        kept = {b.start: b for b in self._buckets if b.start > current - minutes * 60}
        out = []
        for index in range(minutes - 1, -1, -1):
            start = current - index * 60
            out.append((kept.get(start) or Minute(start)).to_json())
        return out

    def totals(self, now: float, minutes: int = MINUTES) -> dict[str, int]:
        """Each series summed over the last `minutes` minutes (the "last day" figures)."""
        first = int(now) // 60 * 60 - (minutes - 1) * 60
        kept = [b for b in self._buckets if b.start >= first]
        return {name: sum(getattr(b, name) for b in kept) for name in SERIES}

    def _bucket(self, now: float) -> Minute:
        start = int(now) // 60 * 60
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(Minute(start))
        while self._buckets and self._buckets[0].start <= start - self.minutes * 60:
            self._buckets.popleft()
        return self._buckets[-1]


def traffic_totals(traffic: Any, reception: Any) -> dict[str, int]:
    """The monotonic counters of `TrafficStats` that the history follows."""
    if reception is not None:
        traffic.sample_reception(reception)
    totals = traffic.queue_totals.values()
    return {
        "delivered": sum(t.delivered for t in totals),
        "bounced": sum(t.bounced for t in totals),
        "deferred": sum(t.deferred for t in totals),
        "received": int(traffic.inbound.recipients.total),
    }


def history_service(history: History, commands: Any, clock: Any) -> TimerService:
    """A timer sampling the server's counters into `history` every `SAMPLE_INTERVAL`."""

    def sample() -> None:
        try:
            history.sample(
                traffic_totals(commands.traffic, commands.reception),
                commands.control.totals().recipients,
                clock.seconds(),
            )
        except Exception:
            log.failure("sampling the console history failed")

    timer = TimerService(SAMPLE_INTERVAL, sample)
    timer.clock = clock
    timer.setName("console-history")
    return timer
