"""A reception worker's copy of the suppression list: read-only, current at every RCPT.

The master owns the suppression store (automatic adds from its journal, the HTTP API,
`mtactl suppression`, compaction). A worker checks each `RCPT` against the same
files, opened read-only (`SuppressionStore.open(readonly=True)` never cuts, cleans
or writes anything), and before each check reads what the master has committed to
the store's log since (`SuppressionStore.catch_up`: one or two `stat`s when nothing
changed). So a suppression the master made durable before a `RCPT` arrives is
enforced at that `RCPT`, as in one process. After a compaction (new files) the copy
is opened again, on the spot: rare, and bounded by the snapshot's load time.

The `b` records of recipients dropped under `suppressed-recipient-action drop` go to
the master's journal through the hand-off, like the message's `Received`. The
`refused`/`dropped` counters of `show suppression` count the master's own checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from twisted.internet import defer

from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope
from mtaserver.runtime import RunInThread
from mtaserver.suppression.model import Entry
from mtaserver.suppression.service import SuppressionService, dropped_outcomes
from mtaserver.suppression.store import SuppressionStore
from mtaserver.workers.handoff import HandoffJournal


class WorkerSuppression(SuppressionService):
    """`SuppressionService` for reception in a worker: lookups only, kept current."""

    def __init__(
        self,
        holder: ConfigHolder,
        directory: str,
        run_in_thread: RunInThread,
        clock: Any,
        handoff: HandoffJournal,
    ) -> None:
        super().__init__(
            holder, SuppressionStore.open(directory, readonly=True), run_in_thread, clock
        )
        self.directory = directory
        self.handoff = handoff

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        # Not the base's: a worker neither compacts nor follows the journal.
        self.running = True

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - Twisted's name
        self.running = False
        return self.run_in_thread(self.store.close)

    def check(self, recipient: str, sender: str, lists: Iterable[str] = ()) -> Entry | None:
        """The base's check, on the store as the master last committed it."""
        if not self.store.catch_up():
            old, self.store = self.store, SuppressionStore.open(self.directory, readonly=True)
            old.close()
        return super().check(recipient, sender, lists)

    async def record_dropped(
        self, envelope: Envelope, dropped: Sequence[tuple[str, Entry]], first_index: int
    ) -> None:
        """The `b` records of dropped recipients, journaled by the master."""
        if not dropped:
            return
        events = dropped_outcomes(envelope, dropped, first_index, self.clock.seconds())
        self.counters.dropped += len(dropped)
        await self.handoff.append(events)
