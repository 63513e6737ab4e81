"""AUTH failure throttling, per client IP and per account, across all sessions.

Password guessing runs over many connections, so the counts live here, shared by
every session of a listener, not in one session. Two limits apply:

* per client IP, a rate (`smtp-max-auth-failure-rate` of the `<source>`, e.g.
  `5/m`; `max-auth-failures-per-minute` when it is unset): once reached the
  session ends with 421;
* per account, whatever the IPs: `max-auth-failures-per-user` failures within
  `auth-lockout-time` lock the account for `auth-lockout-time`. While locked,
  AUTH for it answers 454 4.7.0 without checking the password, so guessing from
  many addresses gains nothing, the right password included.

Account names are compared case-folded (LDAP lookups ignore case, so `Alice`
must not be a fresh account). Memory stays bounded: old entries are dropped and
at most `max_clients` IPs and as many accounts are tracked. Time comes from the
injected `now`, so tests drive it with `task.Clock`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

WINDOW = 60.0


def _forget_oldest(table: MutableMapping[str, Any], limit: int) -> None:
    if len(table) >= limit:
        table.pop(next(iter(table)))


class AuthFailureLimiter:
    """Counts AUTH failures per client IP and per account."""

    def __init__(self, now: Callable[[], float], max_clients: int = 100_000) -> None:
        self._now = now
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}
        self._user_failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._window = WINDOW  # the longest per-IP window asked about so far

    @staticmethod
    def _prune(table: dict[str, deque[float]], key: str, cutoff: float) -> deque[float]:
        times = table.get(key)
        if times is None:
            return deque()
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del table[key]
        return times

    def _recent(self, ip: str, window: float) -> int:
        self._window = max(self._window, window)
        times = self._prune(self._failures, ip, self._now() - self._window)
        cutoff = self._now() - window
        return sum(1 for t in times if t > cutoff)

    def failures(self, ip: str, window: float = WINDOW) -> int:
        """Failures of `ip` within the last `window` seconds."""
        return self._recent(ip, window)

    def blocked(self, ip: str, limit: int, window: float = WINDOW) -> bool:
        """True once `ip` has had `limit` failures within the last `window` seconds."""
        return self._recent(ip, window) >= limit

    def record(self, ip: str, window: float = WINDOW) -> int:
        """Note one failure of `ip`; return its failures within the last `window` seconds."""
        times = self._prune(self._failures, ip, self._now() - max(self._window, window))
        if ip not in self._failures:
            _forget_oldest(self._failures, self._max_clients)
            self._failures[ip] = times
        times.append(self._now())
        return self._recent(ip, window)

    # -- per account ----------------------------------------------------------------

    def user_locked(self, user: str) -> bool:
        """True while `user` is locked out after too many failures."""
        key = user.casefold()
        until = self._locked_until.get(key)
        if until is None:
            return False
        if self._now() < until:
            return True
        del self._locked_until[key]
        return False

    def record_user(self, user: str, limit: int, lockout: float) -> bool:
        """Note one failure for `user`; True when this one locks the account.

        `limit` failures within `lockout` seconds lock it for `lockout` seconds;
        a `limit` of 0 turns the per-account lockout off.
        """
        if limit <= 0:
            return False
        key = user.casefold()
        times = self._prune(self._user_failures, key, self._now() - lockout)
        if key not in self._user_failures:
            _forget_oldest(self._user_failures, self._max_clients)
            self._user_failures[key] = times
        times.append(self._now())
        if len(times) < limit:
            return False
        del self._user_failures[key]
        _forget_oldest(self._locked_until, self._max_clients)
        self._locked_until[key] = self._now() + lockout
        return True
