"""How many AUTH failures a client IP may have per minute, across all its sessions.

Password guessing runs over many connections, so the count lives here, shared by
every session of a listener, not in one session. Memory stays bounded: entries
older than the window are dropped, and at most `max_clients` IPs are tracked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

WINDOW = 60.0


class AuthFailureLimiter:
    """Counts AUTH failures per client IP over the last minute."""

    def __init__(self, now: Callable[[], float], max_clients: int = 100_000) -> None:
        self._now = now
        self._max_clients = max_clients
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, ip: str) -> deque[float]:
        times = self._failures.get(ip)
        if times is None:
            return deque()
        cutoff = self._now() - WINDOW
        while times and times[0] <= cutoff:
            times.popleft()
        if not times:
            del self._failures[ip]
        return times

    def failures(self, ip: str) -> int:
        """Failures of `ip` within the last minute."""
        return len(self._recent(ip))

    def blocked(self, ip: str, limit: int) -> bool:
        """True once `ip` has had `limit` failures within the last minute."""
        return self.failures(ip) >= limit

    def record(self, ip: str) -> int:
        """Note one failure; return the failures of `ip` within the last minute."""
        times = self._recent(ip)
        if ip not in self._failures:
            if len(self._failures) >= self._max_clients:
                self._failures.pop(next(iter(self._failures)))
            self._failures[ip] = times
        times.append(self._now())
        return len(times)
