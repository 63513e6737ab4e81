"""The durable suppression list: millions of (scope, recipient) entries, crash-safe.

Lookups run on the reactor thread for every RCPT, so they touch no lock and, for a
miss (the common case), no disk: the index is in memory. Writes (`add`, `remove`,
`compact`, `import_csv`) block on fsync and are called from a thread pool.

On disk, in `<spool>/suppression/`:

- `snapshot.<gen>`: every live entry at the moment generation `gen` began. A header
  (`SUPSNAP1`, version, the 16-byte hash key), the entry records in hash order, the
  index (three little-endian u64 arrays: hash high halves, low halves, record
  offsets), and a trailer (`SUPEND01`, index offset, count, crc32 of the index, crc32
  of the trailer) that tells a complete snapshot from a torn one. Written to
  `.tmp`, fsync'd, renamed, directory fsync'd: a snapshot is whole or absent.
- `log.<gen>`: the changes since `snapshot.<gen>`, an append-only run of frames
  `b"SUP1" | kind | u32 length | u32 crc32(kind + payload) | payload`, kind `A` (add,
  the entry's JSON), `R` (remove) or `E` (the end marker of one `add`/`remove` call).
  A call's frames count only once their `E` is on disk: a bulk add is all or nothing,
  and one fdatasync covers the whole batch. Calls from several threads at once are
  group-committed: whatever queued while one fdatasync ran shares the next (16 threads
  of single adds: about 8 adds per sync). A call returns only once its frames are
  synced, and only then does `lookup` see them. A tail that is cut short, fails its
  checksum or lacks its `E` is cut off when the store is opened.

Memory: the snapshot's index is three `array('Q')` (24 bytes an entry) and the entry
itself stays on disk, read with one `pread` on a hit. Changes since the snapshot live
in a dict of hash -> log offset until `compact()` folds them into a new snapshot; the
owner calls `compact()` from its thread pool when `compaction_due()` says so.

Keys are hashed with a 128-bit keyed BLAKE2b (the key is random, kept in the
snapshot), so nobody can craft two recipients that share a slot; every hit is still
checked against the record it points to.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import json
import os
import secrets
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TextIO

import attrs

from mtaserver.fsutil import fsync_directory, truncate_durably
from mtaserver.suppression.model import (
    GLOBAL_SCOPE,
    Entry,
    SuppressionError,
    SuppressionSource,
    SuppressionType,
    format_csv,
    normalize_recipient,
    normalize_scope,
    parse_csv,
)

FRAME_MAGIC = b"SUP1"
KIND_ADD = b"A"
KIND_REMOVE = b"R"
KIND_END = b"E"
_FRAME = struct.Struct("<4scII")
_MAX_PAYLOAD = 1 << 16

SNAPSHOT_MAGIC = b"SUPSNAP1"
SNAPSHOT_END = b"SUPEND01"
SNAPSHOT_VERSION = 1
_SNAP_HEADER = struct.Struct("<8sI16s")
_SNAP_TRAILER = struct.Struct("<8sQQI")
_SNAP_TRAILER_SIZE = _SNAP_TRAILER.size + 4

_LOG_PREFIX = "log."
_SNAPSHOT_PREFIX = "snapshot."
_TMP_SUFFIX = ".tmp"

_REMOVED = -1
_GEN_SHIFT = 40
_OFFSET_MASK = (1 << _GEN_SHIFT) - 1
_LOW64 = (1 << 64) - 1
_READ_AHEAD = 2048

DEFAULT_COMPACT_AFTER = 100_000
SUPPRESSION_DIRECTORY = "suppression"
IMPORT_BATCH = 50_000


def suppression_directory(spool: str) -> str:
    """Where a spool's suppression list lives: `<spool>/suppression/`."""
    return os.path.join(spool, SUPPRESSION_DIRECTORY)


class SuppressionStoreError(Exception):
    """The store cannot be read or written: I/O error, corrupt snapshot, closed store."""


def _fdatasync(fd: int) -> None:
    getattr(os, "fdatasync", os.fsync)(fd)


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def frame(kind: bytes, payload: bytes) -> bytes:
    """One framed record."""
    return _FRAME.pack(FRAME_MAGIC, kind, len(payload), zlib.crc32(kind + payload)) + payload


def encode_entry(entry: Entry) -> bytes:
    """An entry's record payload: a compact JSON array."""
    fields = [
        entry.scope,
        entry.recipient,
        entry.type.value,
        entry.source.value,
        entry.description,
        entry.created,
        entry.updated,
    ]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_SOURCES = {member.value: member for member in SuppressionSource}


def decode_entry(payload: bytes) -> Entry:
    """The entry a record payload holds (written by us, so trusted once its CRC matched)."""
    scope, recipient, flags, source, description, created, updated = json.loads(payload)
    return Entry(
        scope, recipient, SuppressionType(flags), _SOURCES[source], description, created, updated
    )


def _name(prefix: str, gen: int) -> str:
    return f"{prefix}{gen:016d}"


def _generations(names: Iterable[str], prefix: str) -> list[int]:
    gens = []
    for name in names:
        digits = name[len(prefix) :]
        if name.startswith(prefix) and len(digits) == 16 and digits.isdigit():
            gens.append(int(digits))
    return sorted(gens)


class _FileReader:
    """A read-only descriptor for `pread`; closed when the last view holding it goes.

    Compaction swaps in new files while a lookup on the reactor thread may still hold
    the old view; closing by reference count means that lookup reads a valid (even if
    unlinked) file instead of a descriptor number since reused.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read_frame(self, offset: int) -> tuple[bytes, bytes]:
        """(kind, payload) of the frame at `offset`; SuppressionStoreError if corrupt."""
        data = os.pread(self.fd, _READ_AHEAD, offset)
        if len(data) >= _FRAME.size:
            magic, kind, length, crc = _FRAME.unpack_from(data)
            end = _FRAME.size + length
            if magic == FRAME_MAGIC and length <= _MAX_PAYLOAD:
                if end > len(data):
                    data = os.pread(self.fd, end, offset)
                payload = data[_FRAME.size : end]
                if len(payload) == length and zlib.crc32(kind + payload) == crc:
                    return kind, payload
        raise SuppressionStoreError(f"corrupt suppression record at {self.path}:{offset}")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


def _u64_array(data: bytes) -> array.array[int]:
    values = array.array("Q")
    assert values.itemsize == 8
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _u64_bytes(values: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        values = array.array("Q", values)
        values.byteswap()
    return values.tobytes()


@attrs.frozen(eq=False)
class _Base:
    """A loaded snapshot: its sorted hash index in arrays, its records on disk."""

    generation: int
    hi: array.array[int]
    lo: array.array[int]
    offsets: array.array[int]
    reader: _FileReader | None

    @property
    def count(self) -> int:
        return len(self.hi)

    def find(self, h: int) -> int:
        """The record offset of hash `h`, or -1."""
        hi = h >> 64
        lo = h & _LOW64
        his = self.hi
        i = bisect.bisect_left(his, hi)
        n = len(his)
        while i < n and his[i] == hi:
            if self.lo[i] == lo:
                return int(self.offsets[i])
            i += 1
        return -1

    def start_after(self, h: int) -> int:
        """The index of the first record whose hash is greater than `h`."""
        i = bisect.bisect_left(self.hi, h >> 64)
        n = len(self.hi)
        while i < n and (self.hi[i] << 64 | self.lo[i]) <= h:
            i += 1
        return i


def _empty_base() -> _Base:
    return _Base(0, array.array("Q"), array.array("Q"), array.array("Q"), None)


@attrs.frozen(eq=False)
class _Layers:
    """What a lookup reads, swapped as one reference so it never sees half a change.

    `active` holds the changes in the current log (hash -> location or _REMOVED),
    `frozen` those of the previous log while `compact()` folds them into the next
    snapshot (empty otherwise), `base` the snapshot. A location is
    `generation << 40 | offset` into `logs[generation]`.
    """

    active: dict[int, int]
    frozen: Mapping[int, int]
    base: _Base
    logs: Mapping[int, _FileReader]


@attrs.frozen
class SearchPage:
    """One page of a search: the entries, and the cursor of the next page (None: last)."""

    entries: list[Entry]
    cursor: str | None


class SuppressionStore:
    """The suppression list of one spool. Open with `SuppressionStore.open(directory)`."""

    def __init__(
        self,
        directory: str,
        key: bytes,
        layers: _Layers,
        count: int,
        log_gen: int,
        log_records: int,
        compact_after: int,
        sync: Callable[[int], None],
        readonly: bool = False,
    ) -> None:
        self.directory = directory
        self.readonly = readonly
        self._key = key
        self._hasher = _hasher(key)
        self._layers = layers
        self._count = count
        self._log_gen = log_gen
        self._log_path = os.path.join(directory, _name(_LOG_PREFIX, log_gen))
        self._log_fd = -1
        self._log_size = 0
        if not readonly:
            self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._log_size = os.fstat(self._log_fd).st_size
        self._log_records = log_records
        self._compact_after = compact_after
        self._sync = sync
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._closed = False
        self._replayed_end = 0  # a read-only copy: where `catch_up` goes on reading
        # Group commit: calls queue their frames and the changes they make; one of them
        # writes and syncs everything queued while the previous sync ran, then publishes
        # the changes to the index and wakes the others. `_unpublished` lets later calls
        # see queued changes (for `created` and the count) before they are durable.
        self._durable = threading.Condition(self._lock)
        self._queue = bytearray()
        self._queue_changes: list[tuple[int, int]] = []
        self._queue_records = 0
        self._queue_delta = 0
        self._unpublished: dict[int, tuple[int, Entry | None]] = {}
        self._in_flight = 0
        self._flushing = False
        self._group = 0
        self._done = -1
        self._failures: dict[int, SuppressionStoreError] = {}

    # -- opening and recovery ---------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str,
        *,
        compact_after: int = DEFAULT_COMPACT_AFTER,
        sync: Callable[[int], None] = _fdatasync,
        readonly: bool = False,
    ) -> SuppressionStore:
        """Open (or create) the store in `directory`, cutting off a torn log tail.

        `sync` makes a log write durable (fdatasync; tests count its calls).
        Blocking: reads the snapshot index and replays the logs after it.

        `readonly` (a reception worker's copy, while the server writes the store) changes
        nothing on disk: no clean-up, no log created, a torn or unfinished tail is
        skipped rather than cut, and every write raises SuppressionStoreError.
        """
        if not readonly:
            os.makedirs(directory, exist_ok=True)
        names = os.listdir(directory)
        for name in names:
            if name.endswith(_TMP_SUFFIX) and not readonly:  # an unfinished compaction
                os.unlink(os.path.join(directory, name))
        snapshots = _generations(names, _SNAPSHOT_PREFIX)
        if snapshots:
            gen = snapshots[-1]
            key, base = _load_snapshot(os.path.join(directory, _name(_SNAPSHOT_PREFIX, gen)), gen)
        else:
            gen, key, base = 0, secrets.token_bytes(16), _empty_base()
        logs = [g for g in _generations(names, _LOG_PREFIX) if g >= gen] or [gen]
        for old in snapshots[:-1] if not readonly else ():
            os.unlink(os.path.join(directory, _name(_SNAPSHOT_PREFIX, old)))
        for old in _generations(names, _LOG_PREFIX) if not readonly else ():
            if old < gen:
                os.unlink(os.path.join(directory, _name(_LOG_PREFIX, old)))
        hasher = _hasher(key)
        active: dict[int, int] = {}
        count = base.count
        readers: dict[int, _FileReader] = {}
        log_records = 0
        replayed_end: list[int] = []
        for log_gen in logs:
            path = os.path.join(directory, _name(_LOG_PREFIX, log_gen))
            if not os.path.exists(path):
                if readonly:
                    continue
                with open(path, "ab"):
                    pass
                fsync_directory(directory)
            log_records = 0
            replayed_end = []
            for offset, kind, payload in _replay(path, not readonly, 0, replayed_end):
                scope, recipient = json.loads(payload)[:2]
                h = _hash(hasher, scope, recipient)
                live = _is_live(active, {}, base, h)
                if kind == KIND_ADD:
                    active[h] = log_gen << _GEN_SHIFT | offset
                    count += not live
                else:
                    _forget(active, {}, base, h)
                    count -= live
                log_records += 1
            readers[log_gen] = _FileReader(path)
        layers = _Layers(active=active, frozen={}, base=base, logs=readers)
        store = cls(
            directory, key, layers, count, logs[-1], log_records, compact_after, sync, readonly
        )
        store._replayed_end = replayed_end[0] if replayed_end else 0
        return store

    def catch_up(self) -> bool:
        """A read-only copy: apply what the writer has committed since; cheap when nothing.

        One or two `stat`s when nothing changed, so it can run before every lookup.
        False when the store must be opened again: the writer compacted it (or had not
        created its log when this copy was opened). Reactor thread, like lookups.
        """
        if not self.readonly:
            return True
        if os.path.exists(os.path.join(self.directory, _name(_LOG_PREFIX, self._log_gen + 1))):
            return False
        layers = self._layers
        if self._log_gen not in layers.logs:
            return False
        try:
            size = os.stat(self._log_path).st_size
        except FileNotFoundError:
            return False
        if size <= self._replayed_end:
            return True
        ends: list[int] = []
        for offset, kind, payload in _replay(self._log_path, False, self._replayed_end, ends):
            scope, recipient = json.loads(payload)[:2]
            h = _hash(self._hasher, scope, recipient)
            live = _is_live(layers.active, layers.frozen, layers.base, h)
            if kind == KIND_ADD:
                layers.active[h] = self._log_gen << _GEN_SHIFT | offset
                self._count += not live
            else:
                _forget(layers.active, layers.frozen, layers.base, h)
                self._count -= live
        self._replayed_end = ends[0]
        return True

    # -- lookups (reactor thread) ------------------------------------------------------

    def lookup(
        self,
        recipient: str,
        scopes: Sequence[str] = (GLOBAL_SCOPE,),
        type: SuppressionType | None = None,  # noqa: A002 - SparkPost's word
    ) -> Entry | None:
        """The first entry suppressing `recipient` in one of `scopes`, in their order.

        `scopes` are normalised scope names (`domain_scope()`, `source_scope()`);
        with `type`, only an entry covering that type counts. No lock, no disk for a miss,
        one `pread` for a hit: cheap enough for the reactor thread.
        """
        if self._closed:
            raise SuppressionStoreError("the suppression store is closed")
        address = recipient.strip().lower()
        layers = self._layers
        hasher = self._hasher
        for scope in scopes:
            h = _hash(hasher, scope, address)
            entry = self._read(layers, h)
            if entry is None or entry.scope != scope or entry.recipient != address:
                continue
            if type is None or entry.type & type:
                return entry
        return None

    def get(self, scope: str, recipient: str) -> Entry | None:
        """The entry for exactly (scope, recipient), or None."""
        return self.lookup(recipient, (normalize_scope(scope),))

    def count(self) -> int:
        """How many entries are live."""
        return self._count

    def _read(self, layers: _Layers, h: int) -> Entry | None:
        location = layers.active.get(h)
        if location is None:
            location = layers.frozen.get(h)
        if location is not None:
            if location == _REMOVED:
                return None
            reader = layers.logs[location >> _GEN_SHIFT]
            offset = location & _OFFSET_MASK
        else:
            offset = layers.base.find(h)
            if offset < 0 or layers.base.reader is None:
                return None
            reader = layers.base.reader
        kind, payload = reader.read_frame(offset)
        if kind != KIND_ADD:
            raise SuppressionStoreError(f"suppression index points at a {kind!r} record")
        return decode_entry(payload)

    # -- writes (thread pool) --------------------------------------------------------

    def add(self, entries: Iterable[Entry]) -> int:
        """Add or replace entries, durably: one write and one fdatasync for the batch.

        An entry whose (scope, recipient) exists replaces it but keeps its `created`.
        Within one call the last entry for a key wins. Returns how many were new.
        Concurrent calls from several threads share writes and syncs (group commit).
        Blocking: call from a thread.
        """
        batch = list(entries)
        for entry in batch:
            if not isinstance(entry, Entry):
                raise TypeError(f"add() takes Entry objects, not {type(entry).__name__}")
        if not batch:
            return 0
        with self._lock:
            self._check_writable()
            layers = self._layers
            pending: dict[int, Entry] = {}
            new = 0
            for entry in batch:
                h = _hash(self._hasher, entry.scope, entry.recipient)
                old = pending.get(h)
                if old is None:
                    old = self._current(layers, h)
                    new += old is None
                if old is not None and old.created != entry.created:
                    entry = attrs.evolve(entry, created=old.created)
                pending[h] = entry
            for h, entry in pending.items():
                self._enqueue(h, frame(KIND_ADD, encode_entry(entry)), entry)
            self._queue += frame(KIND_END, str(len(pending)).encode())
            self._queue_delta += new
            self._commit()
            return new

    def remove(self, scope: str, recipient: str) -> bool:
        """Remove the entry for (scope, recipient) durably; False if there was none.

        Blocking: call from a thread.
        """
        scope = normalize_scope(scope)
        address = normalize_recipient(recipient)
        with self._lock:
            self._check_writable()
            h = _hash(self._hasher, scope, address)
            if self._current(self._layers, h) is None:
                return False
            payload = json.dumps([scope, address], ensure_ascii=False).encode("utf-8")
            self._enqueue(h, frame(KIND_REMOVE, payload), None)
            self._queue += frame(KIND_END, b"1")
            self._queue_delta -= 1
            self._commit()
            return True

    def _current(self, layers: _Layers, h: int) -> Entry | None:
        """The entry for `h` including queued changes: what the next write builds on."""
        queued = self._unpublished.get(h)
        if queued is not None:
            return queued[1]
        return self._read(layers, h)

    def _enqueue(self, h: int, data: bytes, entry: Entry | None) -> None:
        offset = self._log_size + self._in_flight + len(self._queue)
        location = self._log_gen << _GEN_SHIFT | offset if entry is not None else _REMOVED
        self._queue += data
        self._queue_changes.append((h, location))
        self._queue_records += 1
        self._unpublished[h] = (self._group, entry)

    def _commit(self) -> None:
        """Wait (lock held) until the queued group is written, writing it if nobody is."""
        group = self._group
        while self._done < group:
            if self._flushing:
                self._durable.wait()
            else:
                self._flush()
        error = self._failures.get(group)
        if error is not None:
            raise error

    def _drain(self) -> None:
        """Write whatever is queued and wait for the write in flight (lock held)."""
        while self._flushing or self._queue:
            if self._flushing:
                self._durable.wait()
            else:
                self._flush()

    def _flush(self) -> None:
        """Write and sync the queue outside the lock, then publish it (lock held)."""
        data, changes = self._queue, self._queue_changes
        records, delta, group = self._queue_records, self._queue_delta, self._group
        self._queue, self._queue_changes = bytearray(), []
        self._queue_records = self._queue_delta = 0
        self._group += 1
        self._flushing = True
        self._in_flight = len(data)
        fd, start = self._log_fd, self._log_size
        error: OSError | None = None
        broken = False
        self._lock.release()
        try:
            _write_all(fd, data)
            self._sync(fd)
        except OSError as e:
            error = e
            # Take the partial write back out, so later frames are not appended after
            # ones that recovery would cut off (and cut off with them).
            try:
                os.ftruncate(fd, start)
            except OSError:
                broken = True
        finally:
            self._lock.acquire()
        self._flushing = False
        self._in_flight = 0
        if error is None:
            self._log_size = start + len(data)
            self._log_records += records
            self._count += delta
            layers = self._layers
            for h, location in changes:
                if location == _REMOVED:
                    _forget(layers.active, layers.frozen, layers.base, h)
                else:
                    layers.active[h] = location
                if self._unpublished.get(h, (None,))[0] == group:
                    del self._unpublished[h]
            self._done = group
        else:
            # What was queued meanwhile was placed after the failed write: fail it too.
            failure = SuppressionStoreError(f"cannot write {self._log_path}: {error}")
            failure.__cause__ = error
            last = group
            if self._queue:
                last = self._group
                self._queue, self._queue_changes = bytearray(), []
                self._queue_records = self._queue_delta = 0
                self._group += 1
            for failed in range(group, last + 1):
                self._failures[failed] = failure
            for old in [g for g in self._failures if g < group - 1000]:
                del self._failures[old]
            self._unpublished.clear()
            self._done = last
            if broken:
                self._closed = True
        self._durable.notify_all()

    def _check_open(self) -> None:
        if self._closed:
            raise SuppressionStoreError("the suppression store is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise SuppressionStoreError("this copy of the suppression store is read-only")

    # -- compaction ------------------------------------------------------------------

    def compaction_due(self) -> bool:
        """Whether the log holds enough changes that `compact()` is worth its cost.

        Due after `compact_after` records or half the snapshot's size, whichever is
        larger, so the rewriting work stays proportional to the changes.
        """
        return self._log_records >= max(self._compact_after, self._layers.base.count // 2)

    def compact(self) -> None:
        """Fold the log into a new snapshot; adds and lookups go on meanwhile.

        The log is rotated first (under the lock, quickly); the snapshot of the old
        snapshot plus the old log is then written outside the lock, to a temporary name,
        fsync'd, renamed and the directory fsync'd; only then are the old files deleted.
        A crash at any point leaves either the old snapshot and both logs, or the new
        snapshot and the new log: both replay to the same entries. Blocking.
        """
        with self._compact_lock:
            with self._lock:
                self._check_writable()
                self._drain()
                self._check_open()
                old = self._layers
                gen = self._log_gen + 1
                path = os.path.join(self.directory, _name(_LOG_PREFIX, gen))
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
                fsync_directory(self.directory)
                os.close(self._log_fd)
                self._log_fd, self._log_path, self._log_gen = fd, path, gen
                self._log_size = 0
                self._log_records = 0
                frozen = dict(old.frozen)
                frozen.update(old.active)
                self._layers = _Layers(
                    active={},
                    frozen=frozen,
                    base=old.base,
                    logs={**old.logs, gen: _FileReader(path)},
                )
            new_base = _write_snapshot(self.directory, gen, self._key, old.base, frozen, old.logs)
            with self._lock:
                current = self._layers
                self._layers = _Layers(
                    active=current.active,
                    frozen={},
                    base=new_base,
                    logs={gen: current.logs[gen]},
                )
            names = os.listdir(self.directory)
            for prefix in (_LOG_PREFIX, _SNAPSHOT_PREFIX):
                for stale in _generations(names, prefix):
                    if stale < gen:
                        os.unlink(os.path.join(self.directory, _name(prefix, stale)))
            fsync_directory(self.directory)

    # -- reading everything (thread pool) ---------------------------------------------

    def export(self) -> Iterator[Entry]:
        """Every live entry, in the store's stable (hash) order; blocking, read lazily.

        Entries added or removed while iterating may or may not appear.
        """
        for _, payload in self._records_after(-1):
            yield decode_entry(payload)

    def _records_after(self, after: int) -> Iterator[tuple[int, bytes]]:
        """(hash, payload) of each live entry whose hash is greater than `after`."""
        self._check_open()
        with self._lock:
            layers = self._layers
            overlay = dict(layers.frozen)
            overlay.update(layers.active)
        keys = sorted(overlay)
        j = bisect.bisect_right(keys, after)
        base = layers.base
        i = base.start_after(after)
        n = base.count
        while i < n or j < len(keys):
            bh = base.hi[i] << 64 | base.lo[i] if i < n else None
            oh = keys[j] if j < len(keys) else None
            if oh is not None and (bh is None or oh <= bh):
                if oh == bh:
                    i += 1
                j += 1
                location = overlay[oh]
                if location == _REMOVED:
                    continue
                reader = layers.logs[location >> _GEN_SHIFT]
                _, payload = reader.read_frame(location & _OFFSET_MASK)
                yield oh, payload
            else:
                assert bh is not None and base.reader is not None
                _, payload = base.reader.read_frame(base.offsets[i])
                i += 1
                yield bh, payload

    def search(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        types: SuppressionType | None = None,
        sources: Iterable[SuppressionSource] | None = None,
        scope: str | None = None,
        cursor: str | None = None,
        limit: int = 1000,
    ) -> SearchPage:
        """Entries updated in [since, until), of any of `types` and `sources`, in `scope`.

        Pages follow SparkPost's cursor style: pass the returned `cursor` to get the next
        page; None means there is none. The order is stable (by key hash), so entries
        added during paging are seen at most once. Blocking: scans the store.
        """
        if limit < 1:
            raise SuppressionError("limit must be at least 1")
        wanted_sources = frozenset(sources) if sources is not None else None
        wanted_scope = normalize_scope(scope) if scope is not None else None
        after = _parse_cursor(cursor)
        found: list[Entry] = []
        last = after
        for h, payload in self._records_after(after):
            last = h
            entry = decode_entry(payload)
            if since is not None and entry.updated < since:
                continue
            if until is not None and entry.updated >= until:
                continue
            if types is not None and not entry.type & types:
                continue
            if wanted_sources is not None and entry.source not in wanted_sources:
                continue
            if wanted_scope is not None and entry.scope != wanted_scope:
                continue
            found.append(entry)
            if len(found) == limit:
                return SearchPage(found, f"{last:032x}")
        return SearchPage(found, None)

    # -- CSV ---------------------------------------------------------------------------

    def import_csv(
        self,
        lines: Iterable[str],
        *,
        now: int,
        scope: str = GLOBAL_SCOPE,
        source: SuppressionSource = SuppressionSource.MANUALLY_ADDED,
    ) -> int:
        """Parse a CSV upload (`model.parse_csv`) and add it; returns the rows' entries.

        The whole file is checked before anything is written: one bad line refuses the
        upload with CsvImportError naming the line. It is then added in batches of
        `IMPORT_BATCH`, each durable on its own. Blocking.
        """
        entries = parse_csv(lines, now=now, scope=scope, source=source)
        for start in range(0, len(entries), IMPORT_BATCH):
            self.add(entries[start : start + IMPORT_BATCH])
        return len(entries)

    def export_csv(self, out: TextIO) -> int:
        """Write every entry as CSV (one row per type); returns the number of rows."""
        return format_csv(self.export(), out)

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the files; further calls raise SuppressionStoreError."""
        with self._lock:
            if self._closed:
                return
            self._drain()
            self._closed = True
            if self._log_fd >= 0:
                os.close(self._log_fd)
            layers = self._layers
            for reader in layers.logs.values():
                reader.close()
            if layers.base.reader is not None:
                layers.base.reader.close()

    def __enter__(self) -> SuppressionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hasher(key: bytes) -> hashlib.blake2b:
    """The keyed BLAKE2b every key hash starts from (copying it beats keying anew)."""
    return hashlib.blake2b(digest_size=16, key=key)


def _hash(hasher: hashlib.blake2b, scope: str, recipient: str) -> int:
    """The 128-bit index hash of (scope, recipient); neither contains a line break."""
    h = hasher.copy()
    h.update(f"{scope}\n{recipient}".encode())
    return int.from_bytes(h.digest(), "big")


def _parse_cursor(cursor: str | None) -> int:
    if cursor is None:
        return -1
    if len(cursor) != 32 or not all(c in "0123456789abcdef" for c in cursor):
        raise SuppressionError(f"not a search cursor: {cursor!r}")
    return int(cursor, 16)


def _is_live(active: Mapping[int, int], frozen: Mapping[int, int], base: _Base, h: int) -> bool:
    location = active.get(h)
    if location is None:
        location = frozen.get(h)
    if location is not None:
        return location != _REMOVED
    return base.find(h) >= 0


def _forget(active: dict[int, int], frozen: Mapping[int, int], base: _Base, h: int) -> None:
    """Record a removal: a tombstone if an older layer still has the key, else nothing."""
    if h in frozen or base.find(h) >= 0:
        active[h] = _REMOVED
    else:
        active.pop(h, None)


def _replay(
    path: str, cut_torn_tail: bool = True, start: int = 0, end: list[int] | None = None
) -> Iterator[tuple[int, bytes, bytes]]:
    """(offset, kind, payload) of each committed record from `start`; truncates a torn tail.

    A reader that must not cut (a read-only copy) passes `end`, a list the offset after
    the last committed batch is appended to, to resume from there later.
    """
    good_end = start
    batch: list[tuple[int, bytes, bytes]] = []
    with open(path, "rb") as f:
        offset = start
        f.seek(start)
        while True:
            header = f.read(_FRAME.size)
            if len(header) < _FRAME.size:
                break
            magic, kind, length, crc = _FRAME.unpack(header)
            if magic != FRAME_MAGIC or length > _MAX_PAYLOAD:
                break
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(kind + payload) != crc:
                break
            if kind == KIND_END:
                yield from batch
                batch = []
                good_end = offset + _FRAME.size + length
            elif kind in (KIND_ADD, KIND_REMOVE):
                batch.append((offset, kind, payload))
            else:
                break
            offset += _FRAME.size + length
        size = os.fstat(f.fileno()).st_size
    if end is not None:
        end.append(good_end)
    if size > good_end and cut_torn_tail:
        truncate_durably(path, good_end)


def _load_snapshot(path: str, gen: int) -> tuple[bytes, _Base]:
    """The hash key and index of a snapshot; SuppressionStoreError if it is not whole."""
    reader = _FileReader(path)
    size = os.fstat(reader.fd).st_size
    header = os.pread(reader.fd, _SNAP_HEADER.size, 0)
    trailer = os.pread(reader.fd, _SNAP_TRAILER_SIZE, size - _SNAP_TRAILER_SIZE)
    broken = SuppressionStoreError(f"suppression snapshot {path} is damaged; refusing to open")
    if len(header) < _SNAP_HEADER.size or len(trailer) < _SNAP_TRAILER_SIZE:
        raise broken
    magic, version, key = _SNAP_HEADER.unpack(header)
    end, index_offset, count, index_crc = _SNAP_TRAILER.unpack_from(trailer)
    (trailer_crc,) = struct.unpack_from("<I", trailer, _SNAP_TRAILER.size)
    if (
        magic != SNAPSHOT_MAGIC
        or version != SNAPSHOT_VERSION
        or end != SNAPSHOT_END
        or zlib.crc32(trailer[: _SNAP_TRAILER.size]) != trailer_crc
        or index_offset + 24 * count + _SNAP_TRAILER_SIZE != size
    ):
        raise broken
    index = os.pread(reader.fd, 24 * count, index_offset)
    if len(index) != 24 * count or zlib.crc32(index) != index_crc:
        raise broken
    hi = _u64_array(index[: 8 * count])
    lo = _u64_array(index[8 * count : 16 * count])
    offsets = _u64_array(index[16 * count :])
    return key, _Base(gen, hi, lo, offsets, reader)


def _frames_of(base: _Base) -> Iterator[bytes]:
    """The raw record frames of a snapshot, in order, read sequentially."""
    if base.reader is None or not base.count:
        return
    with os.fdopen(os.dup(base.reader.fd), "rb") as f:
        f.seek(_SNAP_HEADER.size)
        for _ in range(base.count):
            header = f.read(_FRAME.size)
            _, _, length, _ = _FRAME.unpack(header)
            yield header + f.read(length)


def _write_snapshot(
    directory: str,
    gen: int,
    key: bytes,
    base: _Base,
    overlay: Mapping[int, int],
    logs: Mapping[int, _FileReader],
) -> _Base:
    """Write base + overlay as `snapshot.<gen>` (tmp, fsync, rename, dir fsync); load it."""
    path = os.path.join(directory, _name(_SNAPSHOT_PREFIX, gen))
    tmp = path + _TMP_SUFFIX
    hi: array.array[int] = array.array("Q")
    lo: array.array[int] = array.array("Q")
    offsets: array.array[int] = array.array("Q")
    keys = sorted(overlay)
    try:
        _write_snapshot_file(tmp, key, base, overlay, keys, logs, hi, lo, offsets)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.rename(tmp, path)
    fsync_directory(directory)
    return _Base(gen, hi, lo, offsets, _FileReader(path))


def _write_snapshot_file(
    tmp: str,
    key: bytes,
    base: _Base,
    overlay: Mapping[int, int],
    keys: list[int],
    logs: Mapping[int, _FileReader],
    hi: array.array[int],
    lo: array.array[int],
    offsets: array.array[int],
) -> None:
    with open(tmp, "wb") as out:
        out.write(_SNAP_HEADER.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, key))
        position = _SNAP_HEADER.size

        def emit(h: int, data: bytes) -> None:
            nonlocal position
            out.write(data)
            hi.append(h >> 64)
            lo.append(h & _LOW64)
            offsets.append(position)
            position += len(data)

        def emit_overlay(h: int) -> None:
            location = overlay[h]
            if location != _REMOVED:
                kind, payload = logs[location >> _GEN_SHIFT].read_frame(location & _OFFSET_MASK)
                emit(h, frame(kind, payload))

        j = 0
        for i, data in enumerate(_frames_of(base)):
            bh = base.hi[i] << 64 | base.lo[i]
            while j < len(keys) and keys[j] < bh:
                emit_overlay(keys[j])
                j += 1
            if j < len(keys) and keys[j] == bh:
                emit_overlay(bh)
                j += 1
            else:
                emit(bh, data)
        for h in keys[j:]:
            emit_overlay(h)
        index = _u64_bytes(hi) + _u64_bytes(lo) + _u64_bytes(offsets)
        out.write(index)
        trailer = _SNAP_TRAILER.pack(SNAPSHOT_END, position, len(hi), zlib.crc32(index))
        out.write(trailer + struct.pack("<I", zlib.crc32(trailer)))
        out.flush()
        os.fsync(out.fileno())
