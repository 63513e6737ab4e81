"""The two reactor seams every service takes as constructor arguments.

`RunInThread` moves blocking work (fsync, parsing a whole message, password hashing)
off the reactor thread; `Clock` is the part of `IReactorTime` services schedule with.
Both are declared once here so that tests can pass `task.Clock()` and a synchronous
runner to any service, and production passes the reactor and its thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.threads import deferToThread, deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class RunInThread(Protocol):
    """Run a blocking callable off the reactor thread; fire with its result on it.

    Production passes `lambda f: deferToThreadPool(reactor, pool, f)`.
    """

    def __call__(self, f: Callable[[], T], /) -> defer.Deferred[T]: ...


class DelayedCall(Protocol):
    """The part of `IDelayedCall` services use."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of `IReactorTime` services use (typed without the zope plugin)."""

    def seconds(self) -> float: ...

    def callLater(  # noqa: N802 - Twisted's name
        self, delay: float, f: Callable[..., object], /, *args: Any, **kwargs: Any
    ) -> DelayedCall: ...


def default_run_in_thread(reactor: Any) -> RunInThread:
    """Run blocking work in `reactor`'s thread pool: the runner of a service built
    without one (the reactor's own pool is what twistd starts and stops)."""
    if hasattr(reactor, "getThreadPool"):
        return lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f)
    return deferToThread


class ThreadPoolService(Service):
    """The bounded pool for blocking work (fsync, file I/O, DKIM, LDAP).

    MultiService stops its children all at once, so services still finishing work
    in the pool (a last acct catch-up, a session's final journal record) would find
    it gone. The pool therefore stops after shutdown, once every service has.
    """

    def __init__(self, pool: ThreadPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self.pool.start()
        self.reactor.addSystemEventTrigger("after", "shutdown", self.pool.stop)
