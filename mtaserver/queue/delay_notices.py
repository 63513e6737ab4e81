"""Delay DSNs: PowerMTA's `notify-of-delay-every` for recipients that asked NOTIFY=DELAY.

A recipient that asked NOTIFY=DELAY (RFC 3461) and is still queued after the
queue's `notify-of-delay-every` (default 4h) gets a `delayed` DSN to the sender
(Action: delayed, the last attempt's 4.x.x status and reply, Will-Retry-Until: when
`bounce-after` gives up), and another each further interval it waits: one notice per
window `[k * interval, (k + 1) * interval)` of its time in the queue, k >= 1.
Recipients without NOTIFY (or with NOTIFY=NEVER, or FAILURE/SUCCESS only) get none:
the guide ties these notices to NOTIFY=DELAY, and RFC 3461 leaves the default to the
MTA. The DSN gating of `DsnSender` applies (null sender, our own DSNs,
`suppress-local-dsn`, `deliver-local-dsn`).

No timer per recipient: the scheduler asks at each failed attempt (`t` records and
queue-level failures, `transient` and `queue_failed`), when the recipient is in hand
anyway; a notice is therefore sent at the first failure in a new window, and a
queue that is never tried (paused) sends none. What is remembered is small and only
for recipients that asked: per message, per recipient index, the time of the last
notice. After a restart, recovery's last attempt time stands in for it (`restored`),
so a window already reported before the restart is not reported again. A delay DSN
writes no acct record of its own for the recipient (it stays queued, with the `t` of
its attempt); the DSN is a message of ours with its own `r` and `d`/`b` records, like
a bounce's.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mtaserver.config.model import DomainSettings
from mtaserver.events import Envelope, Outcome
from mtaserver.message.dsn import FailedRecipient, notify_wants
from mtaserver.queue.model import MessageState, WorkItem

log = Logger()

Send = Callable[[Envelope, Sequence[FailedRecipient], "bytes | None"], Awaitable[bool]]


def notice_due(queued: float, last: float | None, now: float, every: float | None) -> bool:
    """Is a delay notice due at `now` for a recipient queued at `queued`?

    One per window of `every` seconds in the queue from the first full interval on:
    due when `now` is in a later window than `last` (the previous notice, or None).
    """
    if every is None or every <= 0:
        return False
    window = math.floor((now - queued) / every)
    if window < 1:
        return False
    return last is None or window > math.floor((last - queued) / every)


def asks_delay(envelope: Envelope, indexes: Iterable[int]) -> list[int]:
    """The indexes whose recipient asked NOTIFY=DELAY."""
    return [i for i in indexes if notify_wants(envelope.recipients[i], "delayed")]


class DelayNotices:
    """Decides, at each failed attempt, whether a delay DSN is due, and sends it."""

    def __init__(self, send: Send, may_send: Callable[[Envelope], bool], clock: IReactorTime):
        self.send = send
        self.may_send = may_send
        self.clock = clock
        #: msg_id -> recipient index -> time of its last notice (or last attempt, restored)
        self.last: dict[str, dict[int, float]] = {}
        self.sent = 0

    async def transient(
        self, settings: DomainSettings, outcome: Outcome, body: bytes | None
    ) -> None:
        """A `t` record: its recipients were tried and will be retried."""
        if not any(r.notify for r in outcome.envelope.recipients):
            return
        # An outcome's envelope holds only its recipients, in the order of rcpt_indexes.
        envelope = outcome.envelope
        await self._check(
            settings,
            outcome.msg_id,
            envelope,
            list(range(len(envelope.recipients))),
            outcome.rcpt_indexes,
            outcome.dsn_status,
            outcome.dsn_diag.removeprefix("smtp;"),
            outcome.dsn_mta.split(" ")[0] if outcome.dsn_mta else "",
            body,
        )

    async def queue_failed(
        self,
        settings: DomainSettings,
        waiting: Iterable[WorkItem],
        messages: Mapping[str, MessageState],
        status: str,
        diag: str,
        remote_mta: str,
    ) -> None:
        """A queue-level failure (`tq`): the queue's recipients in `waiting` wait on."""
        if settings.notify_of_delay_every is None:
            return
        for item in waiting:
            message = messages.get(item.msg_id)
            if message is None:
                continue
            envelope, indexes = message.envelope, item.rcpt_indexes
            if not any(envelope.recipients[i].notify for i in indexes):
                continue
            await self._check(
                settings,
                envelope.msg_id,
                envelope,
                list(indexes),
                indexes,
                status,
                diag,
                remote_mta.split(" ")[0],
                None,
            )

    async def _check(
        self,
        settings: DomainSettings,
        msg_id: str,
        envelope: Envelope,
        positions: list[int],
        indexes: Sequence[int],
        status: str,
        diag: str,
        remote_mta: str,
        body: bytes | None,
    ) -> None:
        """`positions` in `envelope.recipients` stand for the message's `indexes`."""
        every = settings.notify_of_delay_every
        if every is None or not self.may_send(envelope):
            return
        now = self.clock.seconds()
        queued = envelope.time_queued
        seen = self.last.get(msg_id, {})
        due = [
            (pos, index)
            for pos, index in zip(positions, indexes, strict=True)
            if notify_wants(envelope.recipients[pos], "delayed")
            and notice_due(queued, seen.get(index), now, every)
        ]
        if not due:
            return
        until = queued + settings.bounce_after
        reports = [
            FailedRecipient(
                envelope.recipients[pos],
                "delayed",
                status if status.startswith("4.") else "4.0.0",
                diag,
                remote_mta,
                will_retry_until=until,
            )
            for pos, _ in due
        ]
        marks = self.last.setdefault(msg_id, {})
        for _, index in due:
            marks[index] = now
        try:
            if await self.send(envelope, reports, body):
                self.sent += 1
        except Exception:
            log.failure("could not queue a delay DSN for {msg_id}", msg_id=msg_id)

    def restored(
        self, envelope: Envelope, pending: Sequence[tuple[int, int, float | None]]
    ) -> None:
        """Recovery's (index, failed attempts, last attempt): a window is reported once."""
        marks = {
            index: last
            for index, attempts, last in pending
            if attempts and last is not None and notify_wants(envelope.recipients[index], "delayed")
        }
        if marks:
            self.last[envelope.msg_id] = marks

    def forget(self, msg_id: str) -> None:
        """Every recipient of the message is final."""
        self.last.pop(msg_id, None)
