"""The suppression list in the running server: checks, writes, automatic adds, upkeep.

`SuppressionService` owns the spool's `SuppressionStore` for the server's lifetime and
is what reception (SMTP `RCPT`, the Transmissions API), the SparkPost-style HTTP API
and `mtactl suppression` talk to:

* `check` runs on the reactor for every recipient (in-memory index, no lock): the
  scopes are `global`, `domain:<sender's domain>` and `source:<name>` for each of the
  client's `suppression-lists`, in that order;
* writes (`add`, `remove`, `import_csv`) block on fsync and go through the thread pool;
* a compaction check runs every `COMPACT_INTERVAL` seconds and folds the log into a new
  snapshot in the pool when the store says it is due;
* automatic adds follow the journal as a named consumer (`suppression`), the way the
  acct writers do: every `b`/`rb` record whose bounce category is in
  `suppress-on-bounce-categories`, and every `f` record while `suppress-on-complaint`
  is on, adds its recipient to the global scope. The consumer's journal position is
  saved (`journal.position` beside the store) only after the adds are durable, so a
  kill -9 at any point re-reads and re-adds (an add is an idempotent upsert) rather
  than losing a suppression; the journal keeps the segments until the consumer has read
  them. Each automatic add is logged and counted (`added_automatically`).

`drop` mode (`suppressed-recipient-action drop`) journals a `b` `Outcome` for the
dropped recipients (`record_dropped`), so the acct files and webhooks show them like
any failed recipient, with category `policy-related` and no DSN.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TextIO

import attrs
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mtaserver.accounting.records import records_from_event
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import (
    Envelope,
    Event,
    Outcome,
    QueueFailure,
    Received,
    Recipient,
    Removed,
)
from mtaserver.fsutil import atomic_write
from mtaserver.runtime import RunInThread
from mtaserver.spool.errors import SpoolIOError
from mtaserver.spool.journal import JournalPosition, list_segments, read_events
from mtaserver.suppression.model import (
    GLOBAL_SCOPE,
    Entry,
    SuppressionError,
    SuppressionSource,
    domain_scope,
    source_scope,
)
from mtaserver.suppression.store import SearchPage, SuppressionStore, SuppressionStoreError

log = Logger()

#: Seconds between compaction checks (the check is a comparison; the work is rare).
COMPACT_INTERVAL = 60.0
#: At most one journal catch-up a second: a busy server pays one position write a second.
CATCH_UP_INTERVAL = 1.0
CONSUMER_NAME = "suppression"
POSITION_FILE = "journal.position"

REFUSED_TEXT = "recipient is on the suppression list"
DROP_STATUS = "5.7.1"
DROP_CATEGORY = "policy-related"


class JournalLike(Protocol):
    """What the service needs of `mtaserver.spool.Journal`."""

    directory: str

    def end(self) -> JournalPosition: ...

    def append(self, events: Sequence[Event]) -> defer.Deferred[Any]: ...

    def subscribe(self, callback: Any) -> None: ...

    def add_consumer(self, name: str, position: JournalPosition | None = None) -> None: ...

    def set_consumer_position(self, name: str, position: JournalPosition) -> None: ...


@attrs.define
class SuppressionCounters:
    """What the suppression list did since start (`show suppression`, metrics)."""

    added_automatically: int = 0
    refused: int = 0  # recipients refused at RCPT or by the Transmissions API
    dropped: int = 0  # recipients accepted and dropped (`drop`), each with a `b` record


def sender_domain(sender: str) -> str | None:
    """The domain of a reverse-path, None for the null sender or a bare local part."""
    local, at, domain = sender.rpartition("@")
    return domain.lower() if at and local and domain else None


def scopes_for(sender: str, lists: Iterable[str]) -> list[str]:
    """The scopes a recipient of mail from `sender` on a source with `lists` is checked in."""
    return list(_scopes(sender_domain(sender), tuple(lists)))


@functools.lru_cache(maxsize=4096)
def _scopes(domain: str | None, lists: tuple[str, ...]) -> tuple[str, ...]:
    """Cached: checking the domain's labels was a twentieth of a one-recipient
    transmission's CPU, and senders repeat (the cache is bounded, so hostile senders
    only evict)."""
    scopes = [GLOBAL_SCOPE]
    if domain is not None:
        with contextlib.suppress(SuppressionError):  # a domain no entry can be stored under
            scopes.append(domain_scope(domain))
    for name in lists:
        with contextlib.suppress(SuppressionError):
            scopes.append(source_scope(name))
    return tuple(scopes)


def automatic_entries(
    events: Iterable[Event], categories: frozenset[str], complaints: bool
) -> list[tuple[Entry, str, str]]:
    """(entry, record type, category) for every record that suppresses its recipient.

    `b` and `rb` records of a category in `categories` give `Bounce Rule` entries;
    every `f` record gives a `Spam Complaint` entry while `complaints` is on. Records
    whose recipient is not a storable address are skipped (a hostile DSN cannot fill the
    list with junk that then breaks an export).
    """
    found: list[tuple[Entry, str, str]] = []
    for event in events:
        if isinstance(event, Received | QueueFailure | Removed):
            continue
        if isinstance(event, Outcome) and event.record != "b":
            continue
        for record in records_from_event(event):
            kind = record.get("type", "")
            category = record.get("bounceCat", "")
            if record.get("dsnDiag", "").startswith(REFUSED_TEXT):
                continue  # our own drop of a suppressed recipient: already on the list
            if kind in ("b", "rb") and category in categories:
                source = SuppressionSource.BOUNCE_RULE
                description = f"{kind} record: {category} {record.get('dsnStatus', '')}".strip()
            elif kind == "f" and complaints:
                source = SuppressionSource.SPAM_COMPLAINT
                description = "f record: feedback-loop complaint"
            else:
                continue
            try:
                now = int(getattr(event, "time", 0) or 0)
                entry = Entry.make(
                    record.get("rcpt", ""),
                    now=now,
                    source=source,
                    description=description[:200],
                )
            except (SuppressionError, ValueError):
                continue
            found.append((entry, kind, category))
    return found


def dropped_outcomes(
    envelope: Envelope, dropped: Sequence[tuple[str, Entry]], first_index: int, now: float
) -> list[Event]:
    """The `b` records of recipients dropped under `suppressed-recipient-action drop`."""
    events: list[Event] = []
    for offset, (address, entry) in enumerate(dropped):
        one = attrs.evolve(envelope, recipients=(Recipient(address),))
        events.append(
            Outcome(
                record="b",
                msg_id=envelope.msg_id,
                rcpt_indexes=(first_index + offset,),
                time=now,
                envelope=one,
                dsn_action="failed",
                dsn_status=DROP_STATUS,
                dsn_diag=f"{REFUSED_TEXT} ({entry.scope})",
                bounce_cat=DROP_CATEGORY,
                vmta=envelope.vmta or "",
                vmta_pool=envelope.vmta_pool or "",
            )
        )
    return events


class SuppressionService(Service):
    """The store, its upkeep and its writers; one per server."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: SuppressionStore,
        run_in_thread: RunInThread,
        clock: Any,
        journal: JournalLike | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.journal = journal
        self.counters = SuppressionCounters()
        self._compactor = task.LoopingCall(self._compact_if_due)
        self._compactor.clock = clock
        self._compacting: defer.Deferred[None] | None = None
        self._position: JournalPosition | None = None
        if journal is not None:  # registered at once, so the journal keeps what it needs
            self._position = self._load_position(journal)
            journal.add_consumer(CONSUMER_NAME, self._position)
        self._catching_up: defer.Deferred[None] | None = None
        self._catch_up_call: Any = None
        self._last_catch_up = float("-inf")
        self._stopped = False

    @classmethod
    def open(
        cls,
        holder: ConfigHolder,
        directory: str,
        run_in_thread: RunInThread,
        clock: Any,
        journal: JournalLike | None = None,
    ) -> SuppressionService:
        """Open the store in `directory` (blocking: before the reactor runs, like the spool).

        A store that cannot be opened (a damaged snapshot, an unreadable directory) is a
        ValueError naming it: the server refuses to start rather than mail suppressed
        recipients.
        """
        try:
            store = SuppressionStore.open(directory)
        except (SuppressionStoreError, OSError) as exc:
            raise ValueError(f"suppression list {directory}: {exc}") from exc
        return cls(holder, store, run_in_thread, clock, journal)

    # -- lifetime ----------------------------------------------------------------------

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self._compactor.start(COMPACT_INTERVAL, now=False)
        if self.journal is not None:
            self.journal.subscribe(self._journal_committed)
            self._journal_committed()
        log.info(
            "suppression list {directory}: {count} entries",
            directory=self.store.directory,
            count=self.store.count(),
        )

    async def _stop(self) -> None:
        self._stopped = True
        if self._compactor.running:
            self._compactor.stop()
        if self._catch_up_call is not None and self._catch_up_call.active():
            self._catch_up_call.cancel()
        for running in (self._catching_up, self._compacting):
            if running is not None:
                await running
        await self.run_in_thread(self.store.close)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - Twisted's name
        super().stopService()
        return defer.Deferred.fromCoroutine(self._stop())

    # -- reception (reactor thread) ------------------------------------------------------

    def check(self, recipient: str, sender: str, lists: Iterable[str] = ()) -> Entry | None:
        """The entry suppressing `recipient` for mail from `sender`, or None."""
        return self.store.lookup(recipient, scopes_for(sender, lists))

    def refused(self, entry: Entry, recipient: str, sender: str, where: str) -> None:
        """Count and log one refused recipient."""
        self.counters.refused += 1
        log.info(
            "suppressed recipient {recipient} refused ({where}, from {sender}, scope {scope})",
            recipient=recipient,
            where=where,
            sender=sender,
            scope=entry.scope,
        )

    async def record_dropped(
        self, envelope: Envelope, dropped: Sequence[tuple[str, Entry]], first_index: int
    ) -> None:
        """Journal a `b` for recipients accepted and dropped (`suppressed-recipient-action drop`).

        `envelope` is the spooled message's (its recipients are the kept ones); the
        dropped recipients get the indexes after them, so the record never marks a kept
        recipient final and recovery ignores them.
        """
        if not dropped or self.journal is None:
            return
        events = dropped_outcomes(envelope, dropped, first_index, self.clock.seconds())
        self.counters.dropped += len(dropped)
        await self.journal.append(events)

    # -- writes (thread pool) -----------------------------------------------------------

    def add(self, entries: Iterable[Entry]) -> defer.Deferred[int]:
        """Add or replace entries durably; fires with how many were new."""
        batch = list(entries)
        return self.run_in_thread(lambda: self.store.add(batch))

    def remove(self, scope: str, recipient: str) -> defer.Deferred[bool]:
        """Remove one entry durably; fires with False if there was none."""
        return self.run_in_thread(lambda: self.store.remove(scope, recipient))

    def import_csv(self, text: str, scope: str = GLOBAL_SCOPE) -> defer.Deferred[int]:
        """Parse a CSV upload and add it (all or nothing per file: a bad line refuses it)."""
        now = int(self.clock.seconds())
        return self.run_in_thread(
            lambda: self.store.import_csv(text.splitlines(keepends=True), now=now, scope=scope)
        )

    def export_csv(self, out: TextIO) -> defer.Deferred[int]:
        """Write every entry as CSV to `out` in the pool; fires with the row count."""
        return self.run_in_thread(lambda: self.store.export_csv(out))

    def search(self, **criteria: Any) -> defer.Deferred[SearchPage]:
        """`SuppressionStore.search` in the pool (it scans the store)."""
        return self.run_in_thread(lambda: self.store.search(**criteria))

    def entries_for(self, recipient: str) -> defer.Deferred[list[Entry]]:
        """Every entry for `recipient`, whatever its scope (a scan, in the pool)."""
        address = recipient.strip().lower()

        def scan() -> list[Entry]:
            return [e for e in self.store.export() if e.recipient == address]

        return self.run_in_thread(scan)

    # -- compaction ---------------------------------------------------------------------

    def _compact_if_due(self) -> defer.Deferred[None] | None:
        if self._compacting is not None or self._stopped or not self.store.compaction_due():
            return None

        async def compact() -> None:
            try:
                await self.run_in_thread(self.store.compact)
                log.info("suppression list compacted: {count} entries", count=self.store.count())
            except Exception:
                log.failure("suppression list compaction failed")
            finally:
                self._compacting = None

        running = defer.Deferred.fromCoroutine(compact())
        if not running.called:
            self._compacting = running
        return None

    # -- automatic adds from the journal -------------------------------------------------

    def _position_path(self) -> str:
        return os.path.join(self.store.directory, POSITION_FILE)

    def _load_position(self, journal: JournalLike) -> JournalPosition:
        """The saved position, or the journal's end (history before the first start is not read)."""
        try:
            with open(self._position_path(), encoding="utf-8") as f:
                segment, offset = json.load(f)
            return JournalPosition(int(segment), int(offset))
        except FileNotFoundError:
            position = journal.end()
            # written (with its fsyncs) in the pool; until then a restart starts at the end too
            self.run_in_thread(lambda: self._save_position(position)).addErrback(
                lambda f: log.failure(
                    "suppression: could not save {path}", f, path=self._position_path()
                )  # fmt: skip
            )
            return position
        except (OSError, ValueError, TypeError) as exc:
            log.error(
                "suppression: unreadable {path} ({error}); following the journal from its end",
                path=self._position_path(),
                error=str(exc),
            )
            return journal.end()

    def _save_position(self, position: JournalPosition) -> None:
        atomic_write(self._position_path(), json.dumps([position.segment, position.offset]))

    def _journal_committed(self) -> None:
        """After every journal commit: catch up now, or within CATCH_UP_INTERVAL."""
        if self._stopped or self._catching_up is not None:
            return
        if self._catch_up_call is not None and self._catch_up_call.active():
            return
        wait = self._last_catch_up + CATCH_UP_INTERVAL - self.clock.seconds()
        if wait > 0:
            self._catch_up_call = self.clock.callLater(wait, self._journal_committed)
            return
        self._last_catch_up = self.clock.seconds()
        running = defer.Deferred.fromCoroutine(self._catch_up())
        if not running.called:  # it may finish at once (nothing new), clearing nothing
            self._catching_up = running

    async def _catch_up(self) -> None:
        journal = self.journal
        assert journal is not None and self._position is not None
        start, end = self._position, journal.end()
        if end < start:  # the journal was cut or replaced between runs: follow the new one
            log.error(
                "suppression: journal ends at {end}, before our position {start}; "
                "following it from its end",
                end=end,
                start=start,
            )
            start = end
            self._position = end
        settings = self.holder.config.settings
        categories = settings.suppress_on_bounce_categories
        complaints = settings.suppress_on_complaint

        def work() -> tuple[JournalPosition, list[tuple[Entry, str, str]]]:
            begin = start
            try:
                events = list(read_events(journal.directory, begin, end))
            except SpoolIOError as exc:  # our segment is gone: read what the journal has
                begin = JournalPosition(list_segments(journal.directory)[0], 0)
                log.error(
                    "suppression: {error}; reading the journal again from {segment}",
                    error=str(exc),
                    segment=begin.segment,
                )
                events = list(read_events(journal.directory, begin, end))
            position = events[-1][0] if events else begin
            found = automatic_entries((event for _, event in events), categories, complaints)
            if found:
                self.store.add(entry for entry, _, _ in found)
            if position != self._position:
                self._save_position(position)
            return position, found

        try:
            if end != start:
                position, found = await self.run_in_thread(work)
                self._position = position
                journal.set_consumer_position(CONSUMER_NAME, position)
                for entry, kind, category in found:
                    self.counters.added_automatically += 1
                    log.info(
                        "suppressed {recipient} after a {kind} record ({category})",
                        recipient=entry.recipient,
                        kind=kind,
                        category=category or "complaint",
                    )
        except Exception:
            log.failure("suppression: reading the journal for automatic adds failed")
        finally:
            self._catching_up = None
        if not self._stopped and journal.end() != self._position:
            self._journal_committed()
