"""`<bounce-processor>` and `<feedback-loop-processor>`: the filter between intake and
the delivery queues, turning received reports into `rb`, `rs` and `f` records.

PowerMTA describes remote bounce processing as "a filter located after receipt of an
email and before it is routed to a delivery queue" (User's Guide 12.6), and that is
where `ReportProcessor` sits: reception and the API hand accepted envelopes to
`ReportProcessor.enqueue` instead of the scheduler's. A message whose every recipient
is on a processor's `<address-list>` is taken; anything else goes straight on.

Nothing acknowledged is lost: the message is already spooled and journaled (`r`
records) when it gets here, and the processor only reads it. Parsing (`dsn.parse_bounce`,
`arf.parse_arf`, over the first `MAX_PARSE_BYTES` of the message, through
`mtaserver.inbound.reports`) runs in the thread pool. The records are journaled as
`RemoteReport` events, so the acct files and their webhooks write them like every
other record. Then the message ends one way:

* **matched** (a report was read): delivered onward with `deliver-matched-email yes`,
  else removed from the spool (journal `Removed`, no `d` record);
* **unmatched** (not a report): delivered with `deliver-unmatched-email yes` (the
  default), and a copy goes to each `forward-unmatched-to`;
* **error** (it has the form of a report: null sender, `multipart/report`, a
  delivery-status or feedback-report part, but no recipient could be read; or it could
  not be read at all): always delivered ("Failed emails always proceed to delivery")
  and a copy goes to each `forward-errors-to`.

Delivered onward means the scheduler's usual queues for the recipients' domains. A
crash before the message is removed or handed on makes the restart process it again
(`take_recovered`): its records are at least once, never lost. A message that went to
the scheduler already and has a failed delivery attempt is restored there, not
processed again; one handed on whose queue never got to try it (a queue-level failure
only) is processed again, and its records repeated. A message whose records cannot be journaled
(a spool error) is left in the spool, logged, and processed at the next start.

Only mail received over SMTP or the API comes here: the DSNs this server generates
itself go straight to the scheduler (their failures are already `b` records).

`on_remote_bounce` and `on_complaint` are subscriber lists: each callable gets every
`rb`/`rs` (respectively `f`) `RemoteReport` once it is journaled. The suppression list
subscribes there; a subscriber's exception is logged and does not stop the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mtaserver.config.model import ReportProcessorSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Event, Recipient, RemoteReport
from mtaserver.inbound.reports import (
    ERROR,
    MATCHED,
    MAX_PARSE_BYTES,
    UNMATCHED,
    Verdict,
    processor_for,
    read_report,
)
from mtaserver.runtime import RunInThread

log = Logger()

Subscriber = Callable[[RemoteReport], object]


class ReportStore(Protocol):
    """What the processor needs of `mtaserver.spool.MessageStore`."""

    def open_body(self, msg_id: str) -> Any: ...

    def read_body(self, msg_id: str) -> defer.Deferred[bytes]: ...

    def begin(self) -> Any: ...

    def remove(self, msg_id: str) -> defer.Deferred[None]: ...


class ReportJournal(Protocol):
    def append(self, events: Sequence[Event]) -> defer.Deferred[Any]: ...


class Enqueue(Protocol):
    """The scheduler's `enqueue`."""

    def __call__(
        self,
        envelope: Envelope,
        pending: Iterable[int] | None = None,
        failed_attempts: int = 0,
        retry_at: float | None = None,
    ) -> None: ...


def _read_head(store: ReportStore, msg_id: str, limit: int) -> bytes:
    """The first `limit` bytes of a spooled message (blocking: in a thread)."""
    with store.open_body(msg_id) as body:
        data: bytes = body.read(limit)
        return data


class ReportProcessor(Service):
    """The processors of the running config, between intake and the scheduler."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: ReportStore,
        journal: ReportJournal,
        enqueue: Enqueue,
        run_in_thread: RunInThread,
        clock: Callable[[], float],
    ) -> None:
        self.holder = holder
        self.store = store
        self.journal = journal
        self._enqueue = enqueue
        self._run_in_thread = run_in_thread
        self._clock = clock
        self.on_remote_bounce: list[Subscriber] = []
        self.on_complaint: list[Subscriber] = []
        self._recovered: list[tuple[Envelope, ReportProcessorSettings]] = []
        self._running: set[defer.Deferred[Verdict]] = set()

    # -- entering -----------------------------------------------------------------

    def enqueue(
        self,
        envelope: Envelope,
        pending: Iterable[int] | None = None,
        failed_attempts: int = 0,
        retry_at: float | None = None,
    ) -> None:
        """Take a processor's message, or hand the envelope to the scheduler unchanged."""
        processor = None
        if pending is None and not failed_attempts:
            processor = processor_for(self.holder.config.report_processors, envelope.recipients)
        if processor is None:
            self._enqueue(envelope, pending, failed_attempts, retry_at)
            return
        self._start(envelope, processor)

    def take_recovered(self, messages: Iterable[Any]) -> set[str]:
        """The msg_ids of recovered messages (`RecoveredMessage`s) this processor takes.

        A message is taken when every recipient is still pending without a failed
        attempt (it never reached a delivery queue) and a processor lists them all; the
        caller restores the others to the scheduler. They are processed at start.
        """
        taken: set[str] = set()
        processors = self.holder.config.report_processors
        for message in messages:
            envelope = message.envelope
            fresh = len(message.pending) == len(envelope.recipients) and not any(
                p.attempts for p in message.pending
            )
            processor = processor_for(processors, envelope.recipients) if fresh else None
            if processor is not None:
                self._recovered.append((envelope, processor))
                taken.add(envelope.msg_id)
        return taken

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        recovered, self._recovered = self._recovered, []
        for envelope, processor in recovered:
            self._start(envelope, processor)

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted's name
        super().stopService()
        return defer.DeferredList(list(self._running), consumeErrors=True)

    def _start(self, envelope: Envelope, processor: ReportProcessorSettings) -> None:
        deferred = defer.Deferred.fromCoroutine(self.process(envelope, processor))
        self._running.add(deferred)
        deferred.addErrback(
            lambda f: log.failure("processing {msg_id} failed", f, msg_id=envelope.msg_id)
        )
        deferred.addBoth(lambda _: self._running.discard(deferred))

    # -- processing -----------------------------------------------------------------

    async def process(self, envelope: Envelope, processor: ReportProcessorSettings) -> Verdict:
        """Read, record, forward, then deliver onward or remove one message."""
        msg_id = envelope.msg_id
        try:
            raw = await self._run_in_thread(
                functools.partial(_read_head, self.store, msg_id, MAX_PARSE_BYTES)
            )
            verdict: Verdict = await self._run_in_thread(
                functools.partial(read_report, raw, envelope, processor.kind, self._clock())
            )
        except Exception as exc:
            log.error(
                "{kind}: cannot read {msg_id}: {error}",
                kind=processor.kind,
                msg_id=msg_id,
                error=exc,
            )
            verdict = Verdict(ERROR)
        log.info(
            "{kind}: {msg_id} {outcome}, {count} record(s)",
            kind=processor.kind,
            msg_id=msg_id,
            outcome=verdict.outcome,
            count=len(verdict.events),
        )
        forward_to = {
            MATCHED: (),
            UNMATCHED: processor.forward_unmatched_to,
            ERROR: processor.forward_errors_to,
        }[verdict.outcome]
        if forward_to:
            await self._forward(envelope, forward_to)
        if verdict.events:
            await self.journal.append(list(verdict.events))
            self._notify(verdict.events)
        deliver = {
            MATCHED: processor.deliver_matched_email,
            UNMATCHED: processor.deliver_unmatched_email,
            ERROR: True,
        }[verdict.outcome]
        if deliver:
            self._enqueue(envelope)
        else:
            await self.store.remove(msg_id)
        return verdict

    async def _forward(self, envelope: Envelope, addresses: Sequence[str]) -> None:
        """Spool a copy of the message (same sender and body) to `addresses`, and queue it."""
        try:
            body = await self.store.read_body(envelope.msg_id)
            writer = self.store.begin()
            writer.write(body)
            copy = attrs.evolve(
                envelope,
                msg_id=writer.msg_id,
                recipients=tuple(Recipient(a) for a in addresses),
                time_queued=self._clock(),
            )
            await writer.commit(copy)
        except Exception as exc:
            log.error(
                "cannot forward {msg_id} to {to}: {error}",
                msg_id=envelope.msg_id,
                to=", ".join(addresses),
                error=exc,
            )
            return
        log.info("forwarded {msg_id} as {copy}", msg_id=envelope.msg_id, copy=copy.msg_id)
        self._enqueue(copy)

    def _notify(self, events: Iterable[RemoteReport]) -> None:
        for event in events:
            subscribers = self.on_complaint if event.record == "f" else self.on_remote_bounce
            for subscriber in list(subscribers):
                try:
                    subscriber(event)
                except Exception:
                    log.failure("a report subscriber failed on {msg_id}", msg_id=event.msg_id)
