"""Who may hold an inbound SMTP connection: per-IP and total caps, and a descriptor reserve.

Every idle connection costs a file descriptor, and descriptors are shared with the
management port, the Transmissions API, outbound deliveries and spool writes. A
client that opens thousands of connections must not be able to starve those, so a
new SMTP session is admitted only while

* its client IP holds fewer than the `<source>`'s `max-smtp-in` sessions (Postfix's
  per-client concurrency limit; trusted sources too, operators raise it for their
  injectors),
* all listeners together hold fewer than `total-max-smtp-in`, and
* more than a reserve of descriptors are still free under RLIMIT_NOFILE.

The excess gets `421 4.7.0` and is closed. `raise_nofile_limit` lifts the soft
limit to the hard one at start, so the reserve matters only when the hard limit is
low. Nothing here imports the reactor; the descriptor count is injectable for tests.
"""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable

import attrs

from mtaserver import smtp_reply as R
from mtaserver.smtp_reply import Reply


def open_descriptors() -> int | None:
    """How many descriptors this process has open, or None where that cannot be read."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory))
        except OSError:
            continue
    return None


def nofile_soft_limit() -> int | None:
    """The RLIMIT_NOFILE soft limit, None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def fd_reserve(limit: int) -> int:
    """Descriptors kept back from SMTP reception: a tenth of the limit, 32 to 256."""
    return min(256, max(32, limit // 10))


# The soft limit we ask for when the hard limit is unlimited (macOS reports that).
UNLIMITED_TARGET = 1 << 20


def raise_nofile_limit() -> tuple[int, int, int]:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit: (old soft, new soft, hard).

    A refusal (some container runtimes) leaves the soft limit as it was; the caller
    logs the outcome either way.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    new_soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return int(soft), int(new_soft), int(hard)


@attrs.define
class InboundConnections:
    """The admitted SMTP sessions of the whole server, by client IP; shared by listeners."""

    count_descriptors: Callable[[], int | None] = open_descriptors
    descriptor_limit: Callable[[], int | None] = nofile_soft_limit
    per_ip: dict[str, int] = attrs.field(factory=dict)
    total: int = 0
    #: Admissions that may still skip the descriptor count (see `descriptors_short`).
    _uncounted: int = attrs.field(default=0, init=False)

    def admit(self, client_ip: str, max_per_ip: int, max_total: int) -> Reply | None:
        """Count a new session in, or return the 421 that refuses it."""
        if self.per_ip.get(client_ip, 0) >= max_per_ip:
            return R.TOO_MANY_CONNECTIONS_FROM_IP
        if self.total >= max_total:
            return R.TOO_MANY_CONNECTIONS
        if self.descriptors_short():
            return R.NO_DESCRIPTORS
        self.per_ip[client_ip] = self.per_ip.get(client_ip, 0) + 1
        self.total += 1
        return None

    def release(self, client_ip: str) -> None:
        """An admitted session has ended."""
        left = self.per_ip.get(client_ip, 0) - 1
        if left > 0:
            self.per_ip[client_ip] = left
        else:
            self.per_ip.pop(client_ip, None)
        self.total = max(0, self.total - 1)

    def descriptors_short(self) -> bool:
        """True when fewer than the reserve of descriptors are free.

        Counting means listing /proc/self/fd (about 80 µs, 3 % of a message's CPU in
        P1 when done per connection). Far from the reserve it need not be exact: with
        S descriptors spare beyond the reserve, the next min(64, S // 16) admissions
        skip the count, so 16 descriptors per admitted session could go elsewhere
        before the reserve is reached. Near the reserve every admission counts.
        """
        if self._uncounted > 0:
            self._uncounted -= 1
            return False
        limit = self.descriptor_limit()
        if limit is None:
            return False
        used = self.count_descriptors()
        if used is None:
            return False
        spare = limit - used - fd_reserve(limit)
        self._uncounted = min(64, spare // 16) if spare > 0 else 0
        return spare < 0
