"""The scheduler's in-memory state: messages, work items and per-queue bookkeeping.

A queued message keeps only its `Envelope` and the set of recipients not yet final;
its body stays in the spool until a session needs it. A `WorkItem` is the recipients
of one message that go to one queue together (at most `max-rcpt-per-transaction`).
"""

from __future__ import annotations

import heapq
import itertools
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import cast, overload

import attrs
from twisted.internet import defer

from mtaserver.events import Envelope, Recipient

_sequence = itertools.count()


_SPAN_CACHE_LIMIT = 65_536
_spans: dict[tuple[int, int], tuple[int, ...]] = {}
_indexes: tuple[int, ...] = tuple(range(1024))


def index_span(start: int, stop: int) -> tuple[int, ...]:
    """The tuple `(start, ..., stop - 1)`, one shared object for every message that needs it.

    Work items of a 1,000-recipient message hold the same `(0, ..., 999)`, and every
    single-recipient message the same `(0,)`: a million queued recipients then cost no
    index tuples and no int objects of their own (P4: 8-40 bytes each before).
    """
    key = (start, stop)
    span = _spans.get(key)
    if span is None:
        global _indexes
        if stop > len(_indexes):
            _indexes = tuple(range(max(stop, 2 * len(_indexes))))
        span = _indexes[start:stop]
        if len(_spans) < _SPAN_CACHE_LIMIT:
            _spans[key] = span
    return span


def shared_indexes(indexes: Sequence[int]) -> tuple[int, ...]:
    """`tuple(indexes)` (sorted, unique), shared when it is a run of consecutive indexes."""
    if indexes and indexes[-1] - indexes[0] == len(indexes) - 1:
        return index_span(indexes[0], indexes[-1] + 1)
    return tuple(indexes)


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

#: Messages with at least this many recipients keep them packed (`PackedRecipients`).
PACK_RECIPIENTS_FROM = 16


class PackedRecipients(Sequence[Recipient]):
    """A message's recipients as one string and an array of ends: ~25 bytes each, not ~135.

    A `Recipient` object (56 bytes) with its address string (50 + length) and its slot
    in a tuple is most of what a queued recipient of a bulk message costs (P4). Packed,
    the addresses are one string and their ends 4-byte integers; the few recipients
    with DSN parameters (ORCPT, NOTIFY) stay objects. Indexing builds a `Recipient`
    equal to the original, so every reader of `Envelope.recipients` (a sequence)
    sees the same values; equality and hashing are those of the tuple it replaces.
    """

    __slots__ = ("_addresses", "_ends", "_special")

    def __init__(self, recipients: Sequence[Recipient]) -> None:
        self._addresses = "".join([r.address for r in recipients])
        self._ends = array("I", itertools.accumulate(len(r.address) for r in recipients))
        special = {
            i: r for i, r in enumerate(recipients) if r.orcpt is not None or r.notify is not None
        }
        self._special = special or None

    def __len__(self) -> int:
        return len(self._ends)

    @overload
    def __getitem__(self, index: int) -> Recipient: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Recipient, ...]: ...

    def __getitem__(self, index: int | slice) -> Recipient | tuple[Recipient, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self._ends))))
        if index < 0:
            index += len(self._ends)
        end = self._ends[index]  # IndexError as a tuple's
        if self._special is not None and index in self._special:
            return self._special[index]
        start = self._ends[index - 1] if index else 0
        return Recipient(self._addresses[start:end])

    def __iter__(self) -> Iterator[Recipient]:
        for index in range(len(self._ends)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PackedRecipients, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def _interned(text: str | None) -> str | None:
    return None if text is None else sys.intern(text)


def compact_envelope(envelope: Envelope) -> Envelope:
    """The envelope the scheduler keeps: strings many messages share, shared once.

    A queue of a million messages holds few distinct senders, client names, virtual
    MTAs and job ids; interned, each is stored once instead of once per message, and
    a message without captured headers shares one empty mapping (an empty dict is 64
    bytes). The recipients of a message with many are packed (`PackedRecipients`).
    """
    sender = sys.intern(envelope.sender)
    src_mta = sys.intern(envelope.src_mta)
    vmta, pool = _interned(envelope.vmta), _interned(envelope.vmta_pool)
    job_id, user = _interned(envelope.job_id), _interned(envelope.smtp_user)
    headers = envelope.acct_headers or _NO_HEADERS
    recipients = envelope.recipients
    if len(recipients) >= PACK_RECIPIENTS_FROM and not isinstance(recipients, PackedRecipients):
        # A Sequence where the type says tuple: it reads the same (see PackedRecipients).
        recipients = cast(tuple[Recipient, ...], PackedRecipients(recipients))
    if (
        recipients is envelope.recipients
        and sender is envelope.sender
        and src_mta is envelope.src_mta
        and vmta is envelope.vmta
        and pool is envelope.vmta_pool
        and job_id is envelope.job_id
        and user is envelope.smtp_user
        and headers is envelope.acct_headers
    ):
        return envelope
    return attrs.evolve(
        envelope,
        sender=sender,
        src_mta=src_mta,
        vmta=vmta,
        vmta_pool=pool,
        job_id=job_id,
        smtp_user=user,
        acct_headers=headers,
        recipients=recipients,
    )


@attrs.define(slots=True)
class WorkItem:
    msg_id: str
    rcpt_indexes: tuple[int, ...]
    failed_attempts: int = 0


class PendingRecipients:
    """The recipient indexes of one message not yet final: one byte each, not a set entry.

    A `set[int]` costs 32-40 bytes a member (216 bytes for a single recipient); a
    bytearray of flags costs one, and the questions the scheduler asks (`i in pending`,
    how many are left, which ones) stay as cheap.
    """

    __slots__ = ("_flags", "_count")

    def __init__(self, size: int, indexes: Iterable[int] | None = None) -> None:
        if indexes is None:
            self._flags = bytearray(b"\x01") * size
            self._count = size
            return
        self._flags = bytearray(size)
        for index in indexes:
            self._flags[index] = 1
        self._count = self._flags.count(1)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and 0 <= index < len(self._flags) and self._flags[index] == 1

    def __iter__(self) -> Iterator[int]:
        """The pending indexes in ascending order."""
        flags = self._flags
        at = flags.find(1)
        while at >= 0:
            yield at
            at = flags.find(1, at + 1)

    def difference_update(self, indexes: Iterable[int]) -> None:
        """These recipients are final."""
        flags = self._flags
        for index in indexes:
            if 0 <= index < len(flags) and flags[index]:
                flags[index] = 0
                self._count -= 1

    def __repr__(self) -> str:
        return f"PendingRecipients({list(self)})"


@attrs.define(slots=True)
class MessageState:
    envelope: Envelope
    pending: PendingRecipients


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
    #: After a connection-level failure (`tq`), the time of the queue's next attempt:
    #: until then new mail waits for it instead of opening a connection of its own
    #: (Postfix's dead-destination cache), so a down destination costs one refused
    #: connection per retry, not one per arriving message. 0: connect at once.
    connect_retry_at: float = 0.0
    #: False after a refused connection, and for a queue restored from the spool until
    #: one of its sessions connects: until then the queue runs one session, not
    #: `max-smtp-out` (like Postfix's initial destination concurrency). A restart with
    #: a thousand queues for dead destinations then opens a thousand doomed
    #: connections, not twenty thousand, and live queues get their slots at once.
    connected: bool = True
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
        self.connect_retry_at = 0.0

    def select(self, pick: Callable[[WorkItem], tuple[int, ...]]) -> list[WorkItem]:
        """Take out the recipients `pick` names of each waiting item, where they wait.

        An item keeps its other recipients, its place (ready, retry time, held) and
        its attempts; the picked ones come back as new items.
        """
        taken: list[WorkItem] = []

        def keep(item: WorkItem) -> bool:
            picked = pick(item)
            if not picked:
                return True
            taken.append(WorkItem(item.msg_id, picked, item.failed_attempts))
            item.rcpt_indexes = tuple(i for i in item.rcpt_indexes if i not in picked)
            return bool(item.rcpt_indexes)

        self.ready = deque(item for item in self.ready if keep(item))
        self.retry = [entry for entry in self.retry if keep(entry[2])]
        heapq.heapify(self.retry)
        self.held = [item for item in self.held if keep(item)]
        return taken

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
