"""The acct file writers as a service: one `AcctFileWriter` per `<acct-file>`, fed by the journal.

Each writer is a named journal consumer (`acct:<path>`), so the journal keeps
segments until every writer has passed them, and a writer that was down catches up
from its checkpoint. After every journal commit each writer is asked to catch up;
their catch-ups are serialised inside the writer and never block the reactor.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.accounting.writer import AcctFileWriter
from mtaserver.config.model import AcctFileSettings
from mtaserver.runtime import RunInThread
from mtaserver.spool.journal import (
    Journal,
    JournalPosition,
    list_segments,
    next_record,
    read_events,
)

log = Logger()

#: At most one acct catch-up (and checkpoint) a second per file: records reach the
#: file within a second, and a busy server pays one checkpoint, not one per commit.
CATCH_UP_INTERVAL = 1.0


def writer_for(
    acct: AcctFileSettings, journal: Journal, run_in_thread: RunInThread, clock: Any
) -> AcctFileWriter[JournalPosition]:
    """An AcctFileWriter for one `<acct-file>`, reading `journal` from its first segment."""
    path = os.path.abspath(acct.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record_fields = dict(acct.record_fields) or None
    headers = tuple(dict.fromkeys(m.header for m in acct.map_header_to_field))
    name = f"acct:{path}"
    journal.add_consumer(name)
    first = JournalPosition(list_segments(journal.directory)[0], 0)
    writer = AcctFileWriter(
        path,
        read_events=functools.partial(read_events, journal.directory),
        start_position=first,
        run_in_thread=run_in_thread,
        clock=clock,
        position_from_pair=JournalPosition,
        journal_end=journal.end,
        on_position=functools.partial(journal.set_consumer_position, name),
        records=acct.records,
        record_fields=record_fields,
        header_fields=headers,
        sync=acct.sync,
        max_size=acct.max_size or None,
        move_interval=acct.move_interval,
        delete_after=acct.delete_after,
        found_end=journal.found_end,
        resync=functools.partial(next_record, journal.directory),
    )
    writer.min_interval = CATCH_UP_INTERVAL
    return writer


class AcctService(Service):
    """Starts, feeds, rotates and stops the acct file writers."""

    def __init__(self, writers: list[AcctFileWriter[JournalPosition]], journal: Journal) -> None:
        self.writers = writers
        self.journal = journal

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        for writer in self.writers:
            writer.start().addErrback(self._start_failed, writer.path)
        self.journal.subscribe(self.catch_up)

    @staticmethod
    def _start_failed(failure: Failure, path: str) -> None:
        log.failure("acct file {path} did not start", failure, path=path)

    def catch_up(self) -> None:
        for writer in self.writers:
            writer.catch_up()

    def status(self) -> list[dict[str, Any]]:
        """One entry per acct file: failing, errors, journal damage seen."""
        return [w.status() for w in self.writers]

    def rotate(self) -> defer.Deferred[Any]:
        """`rotate acct`: start a new file for every acct file."""
        return defer.gatherResults([w.rotate() for w in self.writers])

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted's name
        """A last catch-up, so a clean stop leaves every acct file complete."""
        super().stopService()
        return defer.gatherResults([self._final(w) for w in self.writers])

    @staticmethod
    def _final(writer: AcctFileWriter[JournalPosition]) -> defer.Deferred[Any]:
        writer.min_interval = 0.0
        d = writer.catch_up()
        d.addCallback(lambda _: writer.stop())
        return d
