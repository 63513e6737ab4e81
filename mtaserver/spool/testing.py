"""Ways to run the spool's thread work in tests, for this package and its users.

`run_now` runs the work inline (the reactor-less unit tests); `ManualThreads` holds
it until the test says go, which is how a test makes commits pile up behind a
running sync; `ThreadLoop` runs it in real threads and brings the results back to
the test's thread, a stand-in for the reactor that can be started once per test.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from mtaserver.events import Envelope, Recipient

T = TypeVar("T")


def run_now(work: Callable[[], T]) -> Deferred[T]:
    """Run `work` at once on the calling thread."""
    try:
        return succeed(work())
    except Exception:
        return fail(Failure())


class ManualThreads:
    """Queues the work; `run_all` runs what is queued, including what that queues."""

    def __init__(self) -> None:
        self.queued: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self.queued.append((work, d))
        return d

    def run_one(self) -> bool:
        if not self.queued:
            return False
        work, d = self.queued.pop(0)
        try:
            result = work()
        except Exception:
            d.errback(Failure())
        else:
            d.callback(result)
        return True

    def run_all(self) -> None:
        while self.run_one():
            pass


class ThreadLoop:
    """Real worker threads; results are delivered on the thread that calls `run_until`."""

    def __init__(self, workers: int = 8) -> None:
        self._pool = ThreadPoolExecutor(workers)
        self._done: queue.Queue[Callable[[], None]] = queue.Queue()

    def __call__(self, work: Callable[[], T]) -> Deferred[T]:
        d: Deferred[T] = Deferred()

        def run() -> None:
            try:
                result = work()
            except Exception:
                failure = Failure()
                self._done.put(lambda: d.errback(failure))
            else:
                self._done.put(lambda: d.callback(result))

        self._pool.submit(run)
        return d

    def run_until(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Deliver results until `condition()` holds; TimeoutError after `timeout` s."""
        while not condition():
            try:
                self._done.get(timeout=timeout)()
            except queue.Empty:
                raise TimeoutError("thread work did not finish") from None

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def make_envelope(
    msg_id: str, recipients: int = 2, time_queued: float = 1_700_000_000.0
) -> Envelope:
    """A plain envelope with `recipients` recipients r0@example.com, r1@..."""
    return Envelope(
        msg_id=msg_id,
        sender="sender@example.org",
        recipients=tuple(Recipient(f"r{i}@example.com") for i in range(recipients)),
        time_queued=time_queued,
    )


def result_of(d: Deferred[T]) -> T:
    """The result of a fired Deferred, raising its exception if it failed."""
    outcome: list[Any] = []
    d.addBoth(outcome.append)
    if not outcome:
        raise AssertionError(f"{d!r} has not fired")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return cast(T, outcome[0])
