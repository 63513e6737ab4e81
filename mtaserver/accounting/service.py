"""The acct file writers as a service: one `AcctFileWriter` per `<acct-file>`, fed by the journal.

Each writer is a named journal consumer (`acct:<path>`), so the journal keeps
segments until every writer has passed them, and a writer that was down catches up
from its checkpoint. After every journal commit each writer is asked to catch up;
their catch-ups are serialised inside the writer and never block the reactor.

Built with `from_holder`, the service follows reloads: an `<acct-file>` added to the
config gets a writer (reading the journal from its oldest segment, like any new acct
file), a removed one is caught up, stopped and forgotten by the journal, and one whose
settings changed is caught up and replaced by a writer with the new settings.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.accounting.pipe import AcctPipeWriter
from mtaserver.accounting.privacy import record_policy
from mtaserver.accounting.writer import AcctFileWriter
from mtaserver.config.model import AcctFileSettings, Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.runtime import RunInThread
from mtaserver.spool.journal import (
    Journal,
    JournalPosition,
    list_segments,
    next_record,
    read_events,
)

log = Logger()

WriterFactory = Callable[[AcctFileSettings], AcctFileWriter[JournalPosition]]

#: At most one acct catch-up (and checkpoint) a second per file: records reach the
#: file within a second, and a busy server pays one checkpoint, not one per commit.
CATCH_UP_INTERVAL = 1.0


def acct_key(path: str) -> str:
    """How an `<acct-file>` is known: its absolute path, or `|command args` for a pipe."""
    return path if path.startswith("|") else os.path.abspath(path)


def writer_for(
    acct: AcctFileSettings, journal: Journal, run_in_thread: RunInThread, clock: Any
) -> AcctFileWriter[JournalPosition]:
    """An AcctFileWriter for one `<acct-file>`, reading `journal` from its first segment.

    `<acct-file |command args>` gets an `AcctPipeWriter` instead (same interface): the
    command is started with `clock` as the reactor (`spawnProcess`).
    """
    if acct.path.startswith("|"):
        return _pipe_for(acct, journal, run_in_thread, clock)  # type: ignore[return-value]
    path = os.path.abspath(acct.path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record_fields = dict(acct.record_fields) or None
    headers = tuple(dict.fromkeys(m.header for m in acct.map_header_to_field))
    name = f"acct:{path}"
    journal.add_consumer(name)
    first = JournalPosition(list_segments(journal.directory)[0], 0)
    return AcctFileWriter(
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
        min_interval=CATCH_UP_INTERVAL,
        move_to=_move_to(acct),
        world_readable=acct.world_readable,
        policy=record_policy(acct.user_string, acct.privacy_policy),
    )


def _move_to(acct: AcctFileSettings) -> str | None:
    """`move-to DIR`, made if missing: where the acct file's rotated files go."""
    if not acct.move_to:
        return None
    path = os.path.abspath(acct.move_to)
    os.makedirs(path, exist_ok=True)
    return path


def _pipe_for(
    acct: AcctFileSettings, journal: Journal, run_in_thread: RunInThread, reactor: Any
) -> AcctPipeWriter[JournalPosition]:
    name = _consumer_name(acct)
    journal.add_consumer(name)
    first = JournalPosition(list_segments(journal.directory)[0], 0)
    return AcctPipeWriter(
        acct.path,
        reactor=reactor,
        read_events=functools.partial(read_events, journal.directory),
        start_position=first,  # not checkpointed: after a restart, at least once
        run_in_thread=run_in_thread,
        clock=reactor,
        journal_end=journal.end,
        on_position=functools.partial(journal.set_consumer_position, name),
        records=acct.records,
        record_fields=dict(acct.record_fields) or None,
        header_fields=tuple(dict.fromkeys(m.header for m in acct.map_header_to_field)),
        policy=record_policy(acct.user_string, acct.privacy_policy),
    )


def _consumer_name(acct: AcctFileSettings) -> str:
    return f"acct:{acct_key(acct.path)}"


def _writer_settings(acct: AcctFileSettings) -> tuple[Any, ...]:
    """What a writer is built from: a reload that changes only webhooks keeps the writer."""
    return (
        acct.records,
        acct.record_fields,
        acct.map_header_to_field,
        acct.max_size,
        acct.move_interval,
        acct.delete_after,
        acct.sync,
        acct.move_to,
        acct.world_readable,
        acct.user_string,
        acct.privacy_policy,
    )


class AcctService(Service):
    """Starts, feeds, rotates and stops the acct file writers."""

    def __init__(
        self,
        writers: list[AcctFileWriter[JournalPosition]],
        journal: Journal,
        settings: list[AcctFileSettings] | None = None,
        make_writer: WriterFactory | None = None,
    ) -> None:
        """`settings[i]` built `writers[i]`; with `make_writer`, `apply` can follow reloads."""
        self.writers = writers
        self.journal = journal
        self._settings = dict(zip(map(id, writers), settings or (), strict=False))
        self._make_writer = make_writer
        self._changing: defer.Deferred[Any] = defer.succeed(None)

    @classmethod
    def from_holder(
        cls, holder: ConfigHolder, journal: Journal, run_in_thread: RunInThread, clock: Any
    ) -> AcctService:
        """The writers of the running config, kept in step with every reload."""

        def make_writer(acct: AcctFileSettings) -> AcctFileWriter[JournalPosition]:
            return writer_for(acct, journal, run_in_thread, clock)

        accts = list(holder.config.acct_files)
        service = cls([make_writer(a) for a in accts], journal, accts, make_writer)
        holder.on_reload(service.reloaded)
        return service

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: apply the new config's `<acct-file>`s."""
        self.apply(new.acct_files)

    def apply(self, accts: tuple[AcctFileSettings, ...]) -> defer.Deferred[Any]:
        """Add, replace and retire writers so that they match `accts`.

        Changes are queued one reload after another, so two quick reloads never run
        two writers on one file.
        """
        self._changing = self._changing.addBoth(lambda _: self._apply(accts))
        return self._changing

    def _apply(self, accts: tuple[AcctFileSettings, ...]) -> defer.Deferred[Any]:
        assert self._make_writer is not None, "apply needs make_writer"
        wanted = {acct_key(a.path): a for a in accts}
        retiring: list[defer.Deferred[Any]] = []
        for writer in list(self.writers):
            acct = self._settings.get(id(writer))
            new = wanted.get(writer.path)
            if (
                acct is not None
                and new is not None
                and _writer_settings(acct) == _writer_settings(new)
            ):
                del wanted[writer.path]
                self._settings[id(writer)] = new
                continue
            self.writers.remove(writer)
            self._settings.pop(id(writer), None)
            log.info("acct file {path}: stopping (config reloaded)", path=writer.path)
            d = self._final(writer) if self.running else defer.succeed(None)
            if new is None and acct is not None:
                d.addBoth(self._forget, _consumer_name(acct))
            retiring.append(d)
        done = defer.gatherResults(retiring, consumeErrors=True)
        done.addBoth(lambda _: self._add(list(wanted.values())))
        return done

    def _forget(self, result: object, name: str) -> None:
        """The journal no longer keeps segments for a removed acct file."""
        self.journal.remove_consumer(name)

    def _add(self, accts: list[AcctFileSettings]) -> None:
        assert self._make_writer is not None
        for acct in accts:
            try:
                writer = self._make_writer(acct)
            except (OSError, ValueError) as exc:
                log.error("acct file {path} not started: {error}", path=acct.path, error=exc)
                continue
            self.writers.append(writer)
            self._settings[id(writer)] = acct
            log.info("acct file {path}: started (config reloaded)", path=writer.path)
            if self.running:
                writer.start().addErrback(self._start_failed, writer.path)

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
