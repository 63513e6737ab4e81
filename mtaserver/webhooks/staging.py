"""Durable webhook batches cut from an acct file: the cursor, the staged files, rotation.

The acct file is the source of truth (`mtaserver.accounting.writer` writes it exactly
once). A batcher follows it with a *cursor* — the file's name, its inode and a byte
offset — and cuts *batches* of whole records from it into a staging directory next to
it (`.<acct-name>.webhook/`), one file per batch named by its sequence number. A staged
batch is removed only after the endpoint answered 2xx, so nothing staged is lost.

Crash safety rests on an order: a batch file is written to a temporary name, fsync'd
and renamed into place (and the directory fsync'd) before the cursor moves past its
bytes; the cursor file is replaced the same way. A batch file also records the cursor
after it, so a crash between the two writes is repaired on recovery by moving the
cursor to the newest batch's end. `kill -9` at any moment therefore neither loses a
record nor stages one twice; only the batch in flight is sent again (with the same
batch id, `<stream>-<seq>`, so receivers can de-duplicate).

Only committed bytes are read: the writer's checkpoint (`.<name>.ckpt`) says how much
of the live file is final (the writer may be mid-line, and truncates what follows the
checkpoint after a crash). Batches end on a record boundary (a CSV record may hold a
quoted line break) and never span two files. Rotation (`acct.csv` -> `acct-<stamp>.csv`)
is followed by inode: when the live file's inode changes, the rest of the old one is
read under its rotated name, then any later rotated files, then the new live file.
A cursor that starts fresh starts at the beginning of the current live file.

Everything here blocks: run it in a thread, one call at a time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import attrs
from twisted.logger import Logger

from mtaserver.accounting.checkpoint import checkpoint_path, load_checkpoint
from mtaserver.accounting.rotation import rotated_at, split_name
from mtaserver.fsutil import atomic_write

log = Logger()

CURSOR_NAME = "cursor.json"
BATCH_SUFFIX = ".batch"
_BATCH_NAME = re.compile(r"(\d{12})\.batch")
_HEADER_PROBE = 1 << 16


@attrs.frozen
class Cursor:
    """Everything before `offset` in `file` (inode `inode`; 0 = not yet known) is staged."""

    stream: str
    next_seq: int
    file: str
    inode: int
    offset: int

    def to_json(self) -> dict[str, object]:
        return attrs.asdict(self)


@attrs.frozen
class StagedBatch:
    """A batch waiting in the staging directory."""

    seq: int
    batch_id: str
    path: str
    size: int  # bytes of records (the CSV header and compression not counted)
    lines: int = 0


@attrs.frozen
class BatchContent:
    """A staged batch read back: its id, the CSV header row (or b"") and its records."""

    batch_id: str
    header: bytes
    records: bytes


def staging_directory(acct_path: str) -> str:
    """`dir/acct.csv` -> `dir/.acct.csv.webhook`."""
    directory, name = os.path.split(acct_path)
    return os.path.join(directory, f".{name}.webhook")


def complete_prefix(data: bytes, csv: bool) -> int:
    """The length of the longest prefix of `data` made of whole records (LF-ended lines).

    In CSV a line break inside a quoted field does not end a record, so line ends are
    only counted where the number of quotes seen so far is even. `data` must start on
    a record boundary.
    """
    if not csv or b'"' not in data:
        return data.rfind(b"\n") + 1
    last = 0
    start = 0
    odd = False
    while True:
        nl = data.find(b"\n", start)
        if nl < 0:
            return last
        if data.count(b'"', start, nl) & 1:
            odd = not odd
        if not odd:
            last = nl + 1
        start = nl + 1


def first_record_end(data: bytes, csv: bool) -> int:
    """The length of the first whole record in `data`, 0 if there is none."""
    start = 0
    odd = False
    while True:
        nl = data.find(b"\n", start)
        if nl < 0:
            return 0
        if csv and data.count(b'"', start, nl) & 1:
            odd = not odd
        if not odd:
            return nl + 1
        start = nl + 1


def _write_durably(path: str, chunks: list[bytes]) -> None:
    atomic_write(path, chunks, temporary=path + ".tmp")


@attrs.define
class _Source:
    """An open acct file to read: `end` is how far its bytes are final."""

    name: str
    fd: int
    inode: int
    end: int
    live: bool


class BatchStager:
    """Cuts batches from one acct file into its staging directory (blocking; one caller)."""

    def __init__(self, acct_path: str, max_bytes: int, stream: str | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.acct_path = os.path.abspath(acct_path)
        self.directory = os.path.dirname(self.acct_path)
        self.name = os.path.basename(self.acct_path)
        self.csv = not self.acct_path.endswith(".json")
        self.max_bytes = max_bytes
        self.staging = staging_directory(self.acct_path)
        self._cursor_path = os.path.join(self.staging, CURSOR_NAME)
        self._ckpt_path = checkpoint_path(self.acct_path)
        self._new_stream = stream
        self.cursor: Cursor | None = None

    # -- cursor and batch files -----------------------------------------------------

    def _batch_path(self, seq: int) -> str:
        return os.path.join(self.staging, f"{seq:012d}{BATCH_SUFFIX}")

    def _save_cursor(self, cursor: Cursor) -> None:
        _write_durably(self._cursor_path, [json.dumps(cursor.to_json()).encode()])
        self.cursor = cursor

    def _load_cursor(self) -> Cursor | None:
        try:
            with open(self._cursor_path, encoding="utf-8") as f:
                data = json.load(f)
            return Cursor(
                stream=str(data["stream"]),
                next_seq=int(data["next_seq"]),
                file=str(data["file"]),
                inode=int(data["inode"]),
                offset=int(data["offset"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{self._cursor_path}: unreadable webhook cursor: {e}") from e

    def _batch_id(self, seq: int) -> str:
        assert self.cursor is not None
        return f"{self.cursor.stream}-{seq}"

    def _staged_seqs(self) -> list[int]:
        seqs = []
        for name in os.listdir(self.staging):
            m = _BATCH_NAME.fullmatch(name)
            if m:
                seqs.append(int(m.group(1)))
        return sorted(seqs)

    @staticmethod
    def _read_meta(path: str) -> tuple[dict[str, object], int]:
        with open(path, "rb") as f:
            line = f.readline(1 << 20)
            size = os.fstat(f.fileno()).st_size
        if not line.endswith(b"\n"):
            raise ValueError(f"{path}: torn batch header")
        return json.loads(line), size - len(line)

    def recover(self) -> list[StagedBatch]:
        """Load (or create) the cursor, repair it from the newest batch, list the batches."""
        os.makedirs(self.staging, exist_ok=True)
        for name in os.listdir(self.staging):
            if name.endswith(".tmp"):
                os.remove(os.path.join(self.staging, name))
        cursor = self._load_cursor()
        if cursor is None:
            stream = self._new_stream or os.urandom(8).hex()
            cursor = Cursor(stream, 1, self.name, 0, 0)
            self._save_cursor(cursor)
        self.cursor = cursor
        seqs = self._staged_seqs()
        if seqs and seqs[-1] >= cursor.next_seq:
            # Crashed after a batch was staged but before the cursor moved past it.
            meta, _ = self._read_meta(self._batch_path(seqs[-1]))
            end = meta["end"]
            assert isinstance(end, dict)
            self._save_cursor(
                attrs.evolve(
                    cursor,
                    next_seq=seqs[-1] + 1,
                    file=str(end["file"]),
                    inode=int(end["inode"]),
                    offset=int(end["offset"]),
                )
            )
        batches = []
        for seq in seqs:
            path = self._batch_path(seq)
            meta, size = self._read_meta(path)
            batches.append(
                StagedBatch(seq, str(meta["id"]), path, size, int(str(meta.get("lines", 0))))
            )
        return batches

    def read(self, batch: StagedBatch) -> BatchContent:
        """A staged batch's id, CSV header and records."""
        with open(batch.path, "rb") as f:
            meta = json.loads(f.readline(1 << 20))
            records = f.read()
        return BatchContent(str(meta["id"]), str(meta["header"]).encode("utf-8"), records)

    def remove(self, batch: StagedBatch) -> None:
        """Forget a batch the endpoint has accepted."""
        with suppress(FileNotFoundError):
            os.remove(batch.path)

    # -- following the acct file ----------------------------------------------------

    def _rotated_key(self, name: str) -> tuple[float, int] | None:
        when = rotated_at(self.acct_path, name)
        if when is None:
            return None
        stem, suffix = split_name(self.acct_path)
        tail = name[len(stem) + 15 : len(name) - len(suffix)]  # "-<n>" or ""
        return when, int(tail[1:]) if tail.startswith("-") and tail[1:].isdigit() else 0

    def _rotated_files(self) -> list[str]:
        names = []
        for name in os.listdir(self.directory):
            if self._rotated_key(name) is not None:
                names.append(name)
        return sorted(names, key=lambda n: self._rotated_key(n) or (0.0, 0))

    def _committed_end(self, fd: int, inode: int) -> int | None:
        """How much of the live file (open as `fd`) is final; None while rotating."""
        try:
            ckpt = load_checkpoint(self._ckpt_path)
        except ValueError:
            ckpt = None  # a damaged checkpoint: the writer will complain; use whole records
        size = os.fstat(fd).st_size
        if ckpt is None:
            return size
        try:
            still_live = os.stat(self.acct_path).st_ino == inode
        except FileNotFoundError:
            still_live = False
        if ckpt.rotated_to is not None or not still_live:
            return None  # a rotation is under way: look again next time
        return min(ckpt.size, size)

    def _open(self, name: str) -> tuple[int, int] | None:
        try:
            fd = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        except FileNotFoundError:
            return None
        return fd, os.fstat(fd).st_ino

    @contextmanager
    def _source(self) -> Iterator[_Source | None]:
        """The file the cursor points into, open, or None if there is nothing to read."""
        source = self._find_source()
        try:
            yield source
        finally:
            if source is not None:
                os.close(source.fd)

    def _find_source(self) -> _Source | None:
        cursor = self.cursor
        assert cursor is not None
        if cursor.file != self.name:  # a rotated file
            opened = self._open(cursor.file)
            if opened is None:
                log.error("acct file {name} was removed before it was all sent to the "
                          "webhook (from byte {offset}): those records are lost",
                          name=cursor.file, offset=cursor.offset)  # fmt: skip
                self._advance()
                return self._find_source()
            fd, inode = opened
            return _Source(cursor.file, fd, inode, os.fstat(fd).st_size, live=False)
        opened = self._open(self.name)
        if opened is None:
            return None  # the writer has not created it yet
        fd, inode = opened
        if cursor.inode == 0:
            cursor = attrs.evolve(cursor, inode=inode)
            self.cursor = cursor
        if inode == cursor.inode:
            end = self._committed_end(fd, inode)
            if end is None:
                os.close(fd)
                return None
            return _Source(self.name, fd, inode, end, live=True)
        os.close(fd)
        for name in self._rotated_files():
            opened = self._open(name)
            if opened is None:
                continue
            fd, rotated_inode = opened
            if rotated_inode == cursor.inode:
                self._save_cursor(attrs.evolve(cursor, file=name))
                return _Source(name, fd, rotated_inode, os.fstat(fd).st_size, live=False)
            os.close(fd)
        log.error("acct file {path} was rotated and its old file is gone before it was all "
                  "sent to the webhook: records after byte {offset} are lost",
                  path=self.acct_path, offset=cursor.offset)  # fmt: skip
        self._save_cursor(attrs.evolve(cursor, inode=0, offset=0))
        return self._find_source()

    def _advance(self) -> None:
        """Move the cursor from a finished rotated file to the next file."""
        cursor = self.cursor
        assert cursor is not None
        current = self._rotated_key(cursor.file) or (0.0, 0)
        later = [n for n in self._rotated_files() if (self._rotated_key(n) or (0.0, 0)) > current]
        if later:
            opened = self._open(later[0])
            inode = 0
            if opened is not None:
                os.close(opened[0])
                inode = opened[1]
            self._save_cursor(attrs.evolve(cursor, file=later[0], inode=inode, offset=0))
        else:
            self._save_cursor(attrs.evolve(cursor, file=self.name, inode=0, offset=0))

    def _header(self, source: _Source) -> bytes | None:
        """The CSV header row of `source` (b"" for JSON); None if not yet complete."""
        if not self.csv:
            return b""
        probe = os.pread(source.fd, min(_HEADER_PROBE, source.end), 0)
        n = first_record_end(probe, True)
        return probe[:n] if n else None

    # -- staging ---------------------------------------------------------------------

    def stage(self, flush: bool, limit: int = 0) -> tuple[list[StagedBatch], int]:
        """Stage every full batch (and, with `flush`, the rest) of whole records.

        Returns the new batches and how many bytes are waiting for a later batch (-1
        when it stopped at `limit` batches, so the caller can send those and come
        back). A rotated file's remaining records are staged at once: it will not grow.
        """
        new: list[StagedBatch] = []
        while True:
            if limit and len(new) >= limit:
                return new, -1
            with self._source() as source:
                if source is None:
                    return new, 0
                header = self._header(source)
                if header is None:
                    return new, 0
                cursor = self.cursor
                assert cursor is not None
                offset = max(cursor.offset, len(header))
                available = source.end - offset
                if available <= 0 or (source.live and available < self.max_bytes and not flush):
                    if not source.live:
                        self._advance()
                        continue
                    return new, max(available, 0)
                data = os.pread(source.fd, min(available, self.max_bytes), offset)
                n = complete_prefix(data, self.csv)
                if n == 0 and available > len(data):  # one record longer than max_bytes
                    data = os.pread(source.fd, available, offset)
                    n = first_record_end(data, self.csv)
                if n == 0:
                    if not source.live:
                        log.warn("acct file {name}: {size} bytes at its end are not a whole "
                                 "record; not sent", name=source.name, size=available)  # fmt: skip
                        self._advance()
                        continue
                    return new, available
                new.append(self._stage_one(source, header, offset, data[:n]))

    def _stage_one(
        self, source: _Source, header: bytes, offset: int, records: bytes
    ) -> StagedBatch:
        cursor = self.cursor
        assert cursor is not None
        seq = cursor.next_seq
        after = attrs.evolve(
            cursor, next_seq=seq + 1, file=source.name, inode=source.inode,
            offset=offset + len(records),
        )  # fmt: skip
        lines = records.count(b"\n")
        meta = {
            "id": self._batch_id(seq),
            "seq": seq,
            "file": source.name,
            "start": offset,
            "lines": lines,
            "header": header.decode("utf-8", "replace"),
            "end": {"file": after.file, "inode": after.inode, "offset": after.offset},
        }
        path = self._batch_path(seq)
        _write_durably(path, [json.dumps(meta).encode() + b"\n", records])
        self._save_cursor(after)
        return StagedBatch(seq, str(meta["id"]), path, len(records), lines)
