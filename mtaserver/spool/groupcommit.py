"""Group commit: whatever arrives while one batch is being synced goes in the next.

This is what lets a thousand SMTP sessions share a handful of fsyncs. It owns no
I/O; the journal and the message store give it a `run_batch` that does theirs,
and it guarantees at most one batch in flight, in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Collects items and hands them to `run_batch` one batch at a time.

    `run_batch(items)` returns a Deferred firing with one result per item, in
    order; a result that is an Exception fails only that item's Deferred, a failed
    batch Deferred fails them all. `batches` counts the batches run (tests use it
    to check that concurrent commits share syncs).
    """

    def __init__(
        self, run_batch: Callable[[list[Item]], Deferred[Sequence[Result | Exception]]]
    ) -> None:
        self._run_batch = run_batch
        self._waiting: list[tuple[Item, Deferred[Result]]] = []
        self._busy = False
        self.batches = 0

    def submit(self, item: Item) -> Deferred[Result]:
        """Queue `item`; the Deferred fires when its batch is durable."""
        d: Deferred[Result] = Deferred()
        self._waiting.append((item, d))
        if not self._busy:
            self._next()
        return d

    def _next(self) -> None:
        if not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        self._busy = True
        self.batches += 1
        try:
            running = self._run_batch([item for item, _ in batch])
        except Exception:
            running = Deferred()
            running.errback(Failure())
        running.addBoth(self._done, batch)

    def _done(
        self,
        outcome: Sequence[Result | Exception] | Failure,
        batch: list[tuple[Item, Deferred[Result]]],
    ) -> None:
        for i, (_, d) in enumerate(batch):
            if isinstance(outcome, Failure):
                d.errback(outcome)
                continue
            result = outcome[i]
            if isinstance(result, Exception):
                d.errback(Failure(result))
            else:
                d.callback(result)
        # Still busy while the callbacks ran: a submit from one of them waits for
        # the next batch instead of starting a second one in parallel.
        self._busy = False
        self._next()
