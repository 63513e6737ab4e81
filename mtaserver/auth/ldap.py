"""Directory authentication: `<ldap NAME>` scopes as password checkers, off the reactor.

`LdapChecker` is the reactor-side face of one `<ldap>` server. It answers
`check(user, password)` for SMTP AUTH (`auth-ldap NAME` in a `<source>`) and
`authenticate`/`is_member` for the management API (`ldap_access_level`, used
with `http-auth-ldap NAME` and `http-auth-ldap-group GROUP-DN LEVEL`).

* The ldap3 work (`ldap_directory.Directory`) runs through the injected
  `run_in_thread`, at most `max_concurrent` calls at once per server (a
  `DeferredSemaphore`), so a slow directory can hold only a few threads of the
  shared pool.
* Every directory call has a deadline of `timeout` on the reactor side as well
  as socket timeouts in the thread: a directory that is down or never answers
  gives `LdapUnavailable` / `TimeoutError` (SMTP `454 4.7.0`), never a hang and
  never a success.
* An empty user name or password is refused before the directory is asked (an
  empty simple bind is an anonymous bind and succeeds on many servers).
* A positive cache (`cache-ttl`, 0 turns it off) keyed by the user name and a
  PBKDF2 digest of the password under a random per-process salt, never the
  password itself. A wrong password is never cached; a different password
  always goes to the directory.

`LdapCheckers` maps `<ldap NAME>` to its checker for the running configuration
and rebuilds a checker when a reload changes that scope.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mtaserver.auth.checkers import IPasswordChecker
from mtaserver.auth.ldap_directory import (
    Directory,
    LdapEntry,
    LdapUnavailable,
    normalise_dn,
    user_filter,
)
from mtaserver.config.model import LdapSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import ACCESS_LEVELS, LdapGroupAccess
from mtaserver.runtime import RunInThread

__all__ = [
    "LdapChecker",
    "LdapCheckers",
    "LdapEntry",
    "LdapUnavailable",
    "ldap_access_level",
    "user_filter",
]

log = Logger()
T = TypeVar("T")

PBKDF2_ROUNDS = 10_000


@implementer(IPasswordChecker)
class LdapChecker:
    """Checks passwords against one `<ldap NAME>` directory (search, then bind as the entry)."""

    def __init__(
        self,
        settings: LdapSettings,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        *,
        max_concurrent: int = 4,
        max_cached: int = 10_000,
    ) -> None:
        self.settings = settings
        self.directory = Directory(settings, max_idle=max_concurrent)
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._slots = DeferredSemaphore(max_concurrent)
        self._salt = os.urandom(16)
        self._max_cached = max_cached
        # (user, digest) -> (expiry, entry); oldest first.
        self._cache: OrderedDict[tuple[str, bytes], tuple[float, LdapEntry]] = OrderedDict()
        self.directory_calls = 0  # thread calls started: lets tests see a cache hit

    # -- the IPasswordChecker face ---------------------------------------------------

    def check(self, user: str, password: str) -> Deferred[bool]:
        """True for a good login, False for a bad one; errback when the directory is out."""

        async def check() -> bool:
            return await self.authenticate(user, password) is not None

        return Deferred.fromCoroutine(check())

    # -- the management API's face -----------------------------------------------------

    async def authenticate(self, user: str, password: str) -> LdapEntry | None:
        """The user's entry for a good login, None for a bad one; raises on an outage."""
        if not user or not password:
            return None
        entry: LdapEntry | None = await self._within_timeout(self._authenticate(user, password))
        return entry

    async def _authenticate(self, user: str, password: str) -> LdapEntry | None:
        ttl = self.settings.cache_ttl
        key: tuple[str, bytes] | None = None
        if ttl > 0:
            digest: bytes = await self._run_in_thread(lambda: self._digest(user, password))
            key = (user, digest)
            cached = self._cached(key)
            if cached is not None:
                return cached
        entry: LdapEntry | None = await self._blocking(
            lambda: self.directory.authenticate(user, password)
        )
        if entry is not None and key is not None:
            self._remember(key, entry, ttl)
        return entry

    async def is_member(self, entry: LdapEntry, group_dn: str) -> bool:
        """Is the entry in the group: its `memberOf`, or `member`/`uniqueMember` of the group."""
        if normalise_dn(group_dn) in entry.member_of:
            return True
        member: bool = await self._within_timeout(
            self._blocking(lambda: self.directory.is_member(group_dn, entry.dn))
        )
        return member

    def close(self) -> Deferred[None]:
        """Unbind the idle service connections (in a thread: unbind writes to a socket)."""
        self._cache.clear()
        closed: Deferred[None] = self._run_in_thread(self.directory.close)
        return closed

    # -- the cache ----------------------------------------------------------------------

    def _digest(self, user: str, password: str) -> bytes:
        salt = self._salt + user.encode("utf-8", "surrogatepass")
        return hashlib.pbkdf2_hmac(
            "sha256", password.encode("utf-8", "surrogatepass"), salt, PBKDF2_ROUNDS
        )

    def _cached(self, key: tuple[str, bytes]) -> LdapEntry | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        expiry, entry = hit
        if expiry <= self._clock.seconds():
            del self._cache[key]
            return None
        return entry

    def _remember(self, key: tuple[str, bytes], entry: LdapEntry, ttl: float) -> None:
        now = self._clock.seconds()
        self._cache.pop(key, None)
        self._cache[key] = (now + ttl, entry)
        while len(self._cache) > self._max_cached:
            self._cache.popitem(last=False)
        # Drop expired entries from the old end, so memory follows live logins.
        while self._cache:
            oldest = next(iter(self._cache.values()))
            if oldest[0] > now:
                break
            self._cache.popitem(last=False)

    # -- threads and deadlines ------------------------------------------------------

    def _within_timeout(self, work: Awaitable[T]) -> Deferred[T]:
        """`work`, cancelled with `LdapUnavailable` if it has not answered within `timeout`.

        Cancelling reaches the Deferred `work` waits on: a thread already running keeps
        its slot until its socket timeouts end it, and work still waiting for a slot
        is skipped (`_blocking`), so abandoned calls cannot pile up behind a dead
        directory.
        """
        answer: Deferred[T] = Deferred.fromCoroutine(_awaited(work))
        answer.addTimeout(self.settings.timeout, self._clock, onTimeoutCancel=self._timed_out)
        return answer

    def _blocking(self, work: Callable[[], T]) -> Deferred[T]:
        """Run `work` in a thread, at most `max_concurrent` at once; skipped if cancelled."""
        answer: Deferred[T] = Deferred()

        def guarded() -> Any:
            if answer.called:
                return None  # the caller gave up while this waited for a slot
            self.directory_calls += 1
            return work()

        def forward(result: Any) -> None:
            if answer.called:
                if isinstance(result, Failure):
                    log.info(
                        "late LDAP failure from {uri}: {error}",
                        uri=self.settings.uri,
                        error=result.getErrorMessage(),
                    )
                return
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        def in_thread() -> Deferred[Any]:
            return self._run_in_thread(guarded)

        self._slots.run(in_thread).addBoth(forward)
        return answer

    def _timed_out(self, result: Any, timeout: float) -> Failure:
        return Failure(LdapUnavailable(f"{self.settings.uri}: no answer within {timeout:g}s"))


async def _awaited(work: Awaitable[T]) -> T:
    return await work


class LdapCheckers(Mapping[str, LdapChecker]):
    """The running configuration's `<ldap NAME>` scopes as checkers, rebuilt on change.

    Looked up at each AUTH, so a reload that adds, changes or removes an `<ldap>`
    scope takes effect on the next login; a changed scope gets a new checker (new
    connections, empty cache) and the old one's connections are closed.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        **checker_options: Any,
    ) -> None:
        self._holder = holder
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._options = checker_options
        self._checkers: dict[str, LdapChecker] = {}

    def __getitem__(self, name: str) -> LdapChecker:
        settings = self._holder.config.ldap[name]
        checker = self._checkers.get(name)
        if checker is None or checker.settings != settings:
            if checker is not None:
                checker.close()
            checker = LdapChecker(settings, self._run_in_thread, self._clock, **self._options)
            self._checkers[name] = checker
        return checker

    def __iter__(self) -> Iterator[str]:
        return iter(self._holder.config.ldap)

    def __len__(self) -> int:
        return len(self._holder.config.ldap)

    def close(self) -> None:
        for checker in self._checkers.values():
            checker.close()
        self._checkers.clear()


def _rank(level: str) -> int:
    return ACCESS_LEVELS.index(level) if level in ACCESS_LEVELS else 0


async def ldap_access_level(
    checker: LdapChecker,
    user: str,
    password: str,
    groups: tuple[LdapGroupAccess, ...],
) -> str | None:
    """The management access level of an HTTP Basic login checked against the directory.

    None for a bad login; otherwise the highest `http-auth-ldap-group` level among
    the groups the user belongs to, or "none" when they belong to none of them.
    Raises `LdapUnavailable` (or `TimeoutError`) when the directory cannot answer.
    """
    entry = await checker.authenticate(user, password)
    if entry is None:
        return None
    best = "none"
    for group in sorted(groups, key=lambda g: _rank(g.level), reverse=True):
        if _rank(group.level) <= _rank(best):
            break
        if await checker.is_member(entry, group.group_dn):
            best = group.level
    return best
