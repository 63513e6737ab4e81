"""Which source (`smtp-source-host`) a new session of a queue uses, and disabled sources.

The scheduler picks a session's source here, not the deliverer, so that what a reply
says about the connection can act on the source that made it: a reply matching a
`disable-source-ip` pattern disables that source *for that queue* (PowerMTA's
"disable source IP domain/vmta") until `reenable-after=` (else the domain's
`reenable-source-ip-after`; else never: until `enable source` or a restart). The queue's
next sessions use its other sources; when every one is disabled the queue waits
until the first is enabled again.

A source is keyed by its IP *and* its EHLO host name (`SourceKey`, shown as
"IP HOSTNAME"): two `smtp-source-host` lines of the same IP with different names are
two sources, disabled one by one. A vmta without `smtp-source-host` has one source,
the default (key `DEFAULT`: the system's address and the vmta's host name).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from mtaserver.config.values import IPNetwork, Rate, SourceHost, parse_interval

#: The key of a vmta's default source (no `smtp-source-host` lines).
DEFAULT = "default"


def source_key(source: SourceHost | None) -> str:
    """`IP HOSTNAME` of a source (both: one IP may stand under several names), or DEFAULT."""
    return DEFAULT if source is None else f"{source.ip} {source.host_name}"


@attrs.define
class SourceChoice:
    """A session's source: None is the vmta's default source."""

    source: SourceHost | None

    @property
    def key(self) -> str:
        return source_key(self.source)


@attrs.define
class SourceIps:
    """Per-queue source rotation and the sources disabled by `disable-source-ip`."""

    #: queue name -> next turn in its vmta's source list.
    _turns: dict[str, int] = attrs.field(factory=dict)
    #: (queue name, source key) -> when it is enabled again (None: never).
    disabled: dict[tuple[str, str], float | None] = attrs.field(factory=dict)
    #: (domain, source IP) -> sessions open (`source-ip-max-smtp-out`).
    active: dict[tuple[str, str], int] = attrs.field(factory=dict)
    #: (domain, source IP) -> earliest next connection (`source-ip-max-connect-rate`).
    next_connect: dict[tuple[str, str], float] = attrs.field(factory=dict)
    #: (domain, source IP) -> earliest next message (`source-ip-max-msg-rate`).
    next_send: dict[tuple[str, str], float] = attrs.field(factory=dict)

    def choose(
        self,
        queue: str,
        hosts: Sequence[SourceHost],
        now: float,
        allowed: Callable[[SourceHost], bool] = lambda source: True,
    ) -> SourceChoice | None:
        """The next enabled source of `queue` in turn that `allowed` lets open a connection
        (the per-IP limits); None when there is none now."""
        self._reenable(now)
        candidates: Sequence[SourceHost | None] = hosts or (None,)
        turn = self._turns.get(queue, 0)
        for step in range(len(candidates)):
            source = candidates[(turn + step) % len(candidates)]
            if (queue, source_key(source)) in self.disabled:
                continue
            if source is not None and not allowed(source):
                continue
            self._turns[queue] = turn + step + 1
            return SourceChoice(source)
        return None

    def opened(self, domain: str, source: SourceHost | None) -> None:
        if source is not None:
            key = (domain, source.ip)
            self.active[key] = self.active.get(key, 0) + 1

    def closed(self, domain: str, source: SourceHost | None) -> None:
        if source is not None:
            key = (domain, source.ip)
            self.active[key] -= 1
            if not self.active[key]:
                del self.active[key]

    def disable(self, queue: str, key: str, now: float, reenable_after: float | None) -> None:
        """Disable `key` for `queue`; a later disable of the same source sets a new end."""
        self.disabled[(queue, key)] = None if reenable_after is None else now + reenable_after

    def enable(self, queues: Sequence[str], key: str | None = None, ip: str | None = None) -> int:
        """Enable the sources (all, `key`, or those of `ip`) of the named queues; how many."""
        names = set(queues)
        gone = [
            k
            for k in self.disabled
            if k[0] in names
            and (key is None or k[1] == key)
            and (ip is None or k[1].split(" ", 1)[0] == ip)
        ]
        for k in gone:
            del self.disabled[k]
        return len(gone)

    def next_reenable(self, queue: str) -> float | None:
        """The earliest time one of `queue`'s disabled sources is enabled again."""
        times = [t for (name, _), t in self.disabled.items() if name == queue and t is not None]
        return min(times, default=None)

    def disabled_of(self, queue: str, now: float) -> dict[str, float | None]:
        """`queue`'s disabled sources: key -> seconds until enabled again (None: never)."""
        self._reenable(now)
        return {
            key: None if until is None else until - now
            for (name, key), until in sorted(self.disabled.items())
            if name == queue
        }

    def _reenable(self, now: float) -> None:
        due = [k for k, until in self.disabled.items() if until is not None and until <= now]
        for k in due:
            del self.disabled[k]


def rate_interval(limits: Sequence[tuple[IPNetwork, Any]], ip_text: str) -> float:
    """Seconds between events of a `source-ip-max-*-rate` for source IP `ip_text`: the
    strictest rate of the CIDRs holding it; 0 when none applies."""
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        return 0.0
    intervals = [
        1 / rate.per_second
        for network, rate in limits
        if isinstance(rate, Rate) and ip.version == network.version and ip in network
    ]
    return max(intervals, default=0.0)


def reenable_after(actions: Sequence[str], default: float | None) -> float | None:
    """The pattern's `reenable-after=INTERVAL`, else the domain's `reenable-source-ip-after`."""
    for action in actions:
        if action.startswith("reenable-after="):
            return parse_interval(action.partition("=")[2])
    return default
