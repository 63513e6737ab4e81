"""Outbound connection slots: who holds one, who is about to take work, who idles.

Every count that limits sessions changes here and nowhere else, so they cannot drift:

* `queue.active`: sessions of the queue (limited by `max-smtp-out`, one in backoff);
* `total`: sessions of every queue (limited by `total-max-smtp-out`);
* `queue.connecting`: sessions that will take a ready item but have not yet (a new
  session before its first transaction, an idle one just woken), so the scheduler
  does not start another session for the same item;
* `queue.idle`: sessions holding their connection open for the queue's next message.

A session's life is `open` -> (`took_work` once, then `hold_idle`/`wake_idle` any
number of times) -> `close`.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from mtaserver.config.model import Config, DomainSettings
from mtaserver.queue.model import Queue


class ConnectionSlots:
    """The session counts of every queue and of the whole server."""

    def __init__(self) -> None:
        self.total = 0
        self.top = 0  # the most sessions open at once since start (PowerMTA's "top")

    def limit(self, queue: Queue, settings: DomainSettings, config: Config) -> int:
        """How many sessions `queue` may run: `max-smtp-out` of domain and vmta.

        In backoff mode the domain's limit is `backoff-max-smtp-out` (one when unset);
        the vmta's `max-smtp-out` caps both.
        """
        limit = settings.max_smtp_out
        if queue.mode == "backoff":
            limit = settings.backoff_max_smtp_out or 1  # at the backoff rate
        vmta = config.vmtas.get(queue.vmta)
        if vmta is not None and vmta.max_smtp_out:
            limit = min(limit, vmta.max_smtp_out)
        return max(limit, 1)

    def unclaimed(self, queue: Queue) -> bool:
        """Ready work that no session is about to take."""
        return len(queue.ready) > queue.connecting

    def open(self, queue: Queue) -> None:
        """A new session of `queue` starts; it is about to take a ready item."""
        queue.active += 1
        queue.connecting += 1
        self.total += 1
        self.top = max(self.top, self.total)
        queue.counters.connections += 1

    def took_work(self, queue: Queue) -> None:
        """A session that was about to take an item (new, or woken from idle) did."""
        queue.connecting -= 1

    def close(self, queue: Queue, took_work: bool) -> None:
        """A session ended; if it never asked for work it still counted as connecting."""
        if not took_work:
            queue.connecting -= 1
        queue.active -= 1
        self.total -= 1

    def wake_idle(self, queue: Queue) -> None:
        """Give unclaimed ready work to sessions idling on the queue."""
        while queue.idle and self.unclaimed(queue):
            queue.connecting += 1
            queue.idle.pop(0).callback(True)

    async def hold_idle(self, queue: Queue, clock: IReactorTime, seconds: float) -> bool:
        """Idle up to `seconds` for the queue's next item; True when woken with work.

        A woken session counts as connecting until it takes the item (`wake_idle`
        counted it), which this does on its behalf.
        """
        waiter: defer.Deferred[bool] = defer.Deferred()
        queue.idle.append(waiter)
        timer = clock.callLater(seconds, self.release_idle, queue, waiter)
        woken = await waiter
        if timer.active():
            timer.cancel()
        if woken:
            self.took_work(queue)
        return woken

    @staticmethod
    def release_idle(queue: Queue, waiter: defer.Deferred[bool] | None = None) -> None:
        """End idle holds: `waiter` alone, or every one of the queue's."""
        waiters = [waiter] if waiter is not None else list(queue.idle)
        for held in waiters:
            if held in queue.idle:
                queue.idle.remove(held)
                held.callback(False)

    def release_one_idle(self, queues: Iterable[Queue], except_queue: Queue) -> None:
        """End one idle session of another queue, to free its slot under the total cap."""
        for other in queues:
            if other is not except_queue and other.idle:
                self.release_idle(other, other.idle[0])
                return

    def at_total(self, total_max: int) -> bool:
        return self.total >= total_max

    def wanted_elsewhere(self, queues: Iterable[Queue], queue: Queue, total_max: int) -> bool:
        """At `total-max-smtp-out`, another queue with work needs this session's slot."""
        if not self.at_total(total_max):
            return False
        return any(q.ready and not q.paused for q in queues if q is not queue)
