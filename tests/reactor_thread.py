"""A Twisted reactor running in a daemon thread for the whole test session.

End-to-end tests drive real servers and real clients (smtplib, aiosmtpd, requests)
from the test thread, while the code under test runs on the reactor as it would in
production. `run_in_reactor` calls a function or coroutine function on the reactor
thread and waits for its result (a Deferred or coroutine is awaited).
`run_in_thread` is the server's own way of running blocking work: the reactor's
thread pool (the one `run_in_thread` of the test suite; `conftest.py` hands it out
as a fixture too).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.threads import deferToThreadPool

_started = threading.Lock()


def ensure_reactor() -> None:
    """Start the reactor thread once; later calls do nothing.

    The flag lives on the reactor, not in this module: tests import this module both
    as `reactor_thread` and as `tests.reactor_thread`, which makes two module objects.
    """
    with _started:
        if getattr(reactor, "_test_thread", None) is None:
            thread = threading.Thread(
                target=reactor.run,  # type: ignore[attr-defined]
                kwargs={"installSignalHandlers": False},
                name="twisted-reactor",
                daemon=True,
            )
            reactor._test_thread = thread  # type: ignore[attr-defined]
            thread.start()


def run_in_reactor(fn: Callable[..., Any], *args: Any, timeout: float = 10, **kwargs: Any) -> Any:
    """Run `fn(*args, **kwargs)` on the reactor thread and return its (awaited) result."""
    ensure_reactor()

    def call() -> Any:
        result = fn(*args, **kwargs)
        if hasattr(result, "__await__") and not isinstance(result, defer.Deferred):
            result = defer.Deferred.fromCoroutine(result)
        if isinstance(result, defer.Deferred):
            result.addTimeout(timeout, reactor)  # type: ignore[arg-type]
        return result

    return threads.blockingCallFromThread(reactor, call)  # type: ignore[arg-type]


def run_in_thread(work: Callable[[], Any]) -> defer.Deferred[Any]:
    """Run blocking `work` on the reactor's thread pool, as the server does (call on the
    reactor thread)."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), work)  # type: ignore[attr-defined]
