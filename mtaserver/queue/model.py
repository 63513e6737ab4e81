"""The scheduler's in-memory state: messages, work items and per-queue bookkeeping.

A queued message keeps only its `Envelope` and the set of recipients not yet final;
its body stays in the spool until a session needs it. A `WorkItem` is the recipients
of one message that go to one queue together (at most `max-rcpt-per-transaction`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

import attrs
from twisted.internet import defer

from mtaserver.events import Envelope

_sequence = itertools.count()


@attrs.define(slots=True)
class WorkItem:
    msg_id: str
    rcpt_indexes: tuple[int, ...]
    failed_attempts: int = 0


@attrs.define(slots=True)
class MessageState:
    envelope: Envelope
    pending: set[int]


@attrs.define
class QueueCounters:
    """What a queue has done since start (or `reset counters`)."""

    delivered: int = 0
    bounced: int = 0
    deferred: int = 0
    connections: int = 0
    connection_failures: int = 0

    def reset(self) -> None:
        self.delivered = self.bounced = self.deferred = 0
        self.connections = self.connection_failures = 0


@attrs.define
class Queue:
    """One `domain/vmta` queue: ready work, retry heap, pause state and mode."""

    name: str
    domain: str
    vmta: str
    pool: str | None = None
    ready: deque[WorkItem] = attrs.field(factory=deque)
    retry: list[tuple[float, int, WorkItem]] = attrs.field(factory=list)
    #: Items of paused jobs (`pause job`), taken out of `ready` until their job resumes.
    held: list[WorkItem] = attrs.field(factory=list)
    paused: bool = False
    mode: str = "normal"  # normal | backoff
    backoff_since: float = 0.0
    active: int = 0  # sessions running
    connecting: int = 0  # sessions about to take an item (new, or woken from idle)
    idle: list[defer.Deferred[bool]] = attrs.field(factory=list)  # sessions holding open
    consecutive_failures: int = 0
    next_send_at: float = 0.0
    next_connect_at: float = 0.0  # max-connect-rate: the next connection's earliest time
    priority: int | None = None  # `set priority --queue`: replaces its queue-priority
    last_error: str = ""
    counters: QueueCounters = attrs.field(factory=QueueCounters)

    def add_retry(self, due: float, item: WorkItem) -> None:
        heapq.heappush(self.retry, (due, next(_sequence), item))

    def next_due(self) -> float | None:
        return self.retry[0][0] if self.retry else None

    def pop_due(self, now: float) -> list[WorkItem]:
        due = []
        while self.retry and self.retry[0][0] <= now:
            _, _, item = heapq.heappop(self.retry)
            due.append(item)
        return due

    def retrying(self) -> list[tuple[float, WorkItem]]:
        """The items waiting for their retry time, (due, item) in the order they are due."""
        return [(due, item) for due, _, item in sorted(self.retry, key=lambda e: e[:2])]

    def waiting(self) -> list[WorkItem]:
        """Every waiting item, ready first, then in retry (in heap order), then held."""
        return list(self.ready) + [item for _, _, item in self.retry] + self.held

    def schedule_now(self) -> None:
        """Every item waiting for its retry time becomes ready, in the order due."""
        self.ready.extend(item for _, item in self.retrying())
        self.retry.clear()

    def take_all(self) -> list[WorkItem]:
        """Every waiting item, ready, in retry or held (for delete, bounce-queue, schedule)."""
        items = self.waiting()
        self.ready.clear()
        self.retry.clear()
        self.held.clear()
        return items

    @property
    def recipients(self) -> int:
        return sum(len(item.rcpt_indexes) for item in self.waiting())

    def message_ids(self) -> set[str]:
        """The messages with recipients waiting in this queue."""
        return {item.msg_id for item in self.waiting()}

    @property
    def messages(self) -> int:
        return len(self.message_ids())

    @property
    def size(self) -> int:
        return len(self.ready) + len(self.retry) + len(self.held)
