"""`Idempotency-Key` for `POST /api/v1/transmissions`: a retried request spools nothing new.

A client that lost the answer to a transmission (a timeout, a reset connection) can
send it again with the same `Idempotency-Key` header: within `KEEP_FOR` (24 h) the
server answers with the first 200 and spools nothing. Keys are per API key (the
`Authorization` value), so two clients cannot see each other's answers. The same key
with a different body is a client bug: 422, as Stripe answers. A second request with
a key whose first request is still being processed gets 409.

Only 200 answers are recorded: a refused request spooled nothing, so repeating it is
harmless. Each answer is one small file under `<spool>/idempotency/`, named by a
SHA-256 of (API key, idempotency key), written to a temporary name, fsync'd, renamed
and the directory fsync'd, all in the thread pool, before the 200 goes out; so it
survives a restart or kill -9. Expired files are removed at most once an hour, by
the thread that writes a new one.

The window that remains: a crash after the messages are committed and before the
record is durable. The client then gets no answer, retries, and the messages are
spooled a second time (at least once, never silently lost).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mtaserver.fsutil import atomic_write
from mtaserver.runtime import RunInThread

log = Logger()

KEEP_FOR = 24 * 3600.0
PRUNE_EVERY = 3600.0
MAX_KEY_LENGTH = 255
_KEY = re.compile(rb"[\x21-\x7e]+")
_TMP_SUFFIX = ".tmp"



class KeyError422(Exception):
    """The key was used before with another body."""


def valid_key(value: bytes) -> str | None:
    """The key as text, or None when it is not 1-255 printable ASCII characters."""
    value = value.strip()
    if not value or len(value) > MAX_KEY_LENGTH or not _KEY.fullmatch(value):
        return None
    return value.decode("ascii")


def record_name(api_key: bytes, key: str) -> str:
    """The file name of one (API key, idempotency key): nothing of either shows in it."""
    return hashlib.sha256(api_key + b"\x00" + key.encode("ascii")).hexdigest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class IdempotencyStore:
    """The recorded answers, one file each; every file operation runs in `run_in_thread`."""

    def __init__(
        self, directory: str, run_in_thread: RunInThread, clock: Callable[[], float]
    ) -> None:
        self.directory = directory
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._last_prune = 0.0
        self.in_flight: set[str] = set()

    async def lookup(self, name: str, digest: str) -> dict[str, Any] | None:
        """The recorded answer for `name`, None if none (or expired); KeyError422 on a new body."""
        now = self._clock()
        record: dict[str, Any] | None = await self._run_in_thread(lambda: self._read(name))
        if record is None or now - float(record.get("time", 0)) > KEEP_FOR:
            return None
        if record.get("body_sha256") != digest:
            raise KeyError422(name)
        response = record.get("response")
        return response if isinstance(response, dict) else None

    async def record(self, name: str, digest: str, response: dict[str, Any]) -> None:
        """Make the answer durable (fsync'd file and directory) before returning."""
        now = self._clock()
        data = json.dumps({"time": now, "body_sha256": digest, "response": response}).encode()
        prune = now - self._last_prune >= PRUNE_EVERY
        if prune:
            self._last_prune = now
        await self._run_in_thread(lambda: self._write(name, data, now, prune))

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.directory, name), "rb") as stream:
                record = json.loads(stream.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warn("unreadable idempotency record {name}: {error}", name=name, error=str(exc))
            return None
        return record if isinstance(record, dict) else None

    def _write(self, name: str, data: bytes, now: float, prune: bool) -> None:
        final = os.path.join(self.directory, name)
        # pruning compares file times with the same clock, hence mtime=now
        atomic_write(
            final,
            data,
            temporary=final + _TMP_SUFFIX,
            permissions=0o600,
            mtime=now,
            make_directory=True,
        )
        if prune:
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Remove records older than KEEP_FOR (by the file time `_write` set; a stale .tmp too)."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if now - entry.stat().st_mtime > KEEP_FOR:
                        os.unlink(entry.path)
                except OSError:
                    continue
