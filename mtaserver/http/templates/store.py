"""Where stored templates live: one JSON file per template, `<spool>/templates/<id>.json`.

Every read and write runs in the thread pool (`RunInThread`), never on the reactor.
A write is `fsutil.atomic_write` (temporary file, fsync, rename, directory fsync):
after a crash a template is either the old version or the new one. A create is
exclusive even between processes: the new file is written under a temporary name
and hard-linked to its final name, which fails when the id exists. Nothing is
cached in memory, so every process that serves the API (and a restart) sees the
same templates; a template is a few kilobytes and a transmission reads one file.

Ids are checked (`model.TEMPLATE_ID`: letters, digits, `-`, `_`) before they become
file names, so no id reaches outside the directory. A file that cannot be read or
decoded is logged and treated as absent rather than failing every listing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from mtaserver.fsutil import atomic_write, fsync_directory
from mtaserver.http.templates.model import valid_id
from mtaserver.runtime import RunInThread

log = Logger()

#: Templates one server keeps; a create beyond it is refused (a listing stays cheap).
MAX_TEMPLATES = 10_000
SUFFIX = ".json"


class TemplateExists(Exception):
    """A create for an id that is taken."""


class TooManyTemplates(Exception):
    """A create beyond `MAX_TEMPLATES`."""


class TemplateStore:
    """The templates directory; every method is async and does its I/O in a thread."""

    def __init__(self, directory: str, run_in_thread: RunInThread) -> None:
        self.directory = directory
        self.run_in_thread = run_in_thread
        # One change at a time in this process: a PUT reads, changes and writes.
        self.lock = DeferredLock()

    def _path(self, template_id: str) -> str:
        if not valid_id(template_id):
            raise ValueError(f"not a template id: {template_id!r}")
        return os.path.join(self.directory, template_id + SUFFIX)

    async def get(self, template_id: str) -> dict[str, Any] | None:
        """The stored record, or None."""
        if not valid_id(template_id):
            return None
        path = self._path(template_id)
        result: dict[str, Any] | None = await self.run_in_thread(lambda: _read(path))
        return result

    async def list(self) -> list[dict[str, Any]]:
        """Every stored record, by id."""
        directory = self.directory

        def read_all() -> list[dict[str, Any]]:
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                return []
            records = []
            for name in names:
                if name.endswith(SUFFIX) and valid_id(name[: -len(SUFFIX)]):
                    record = _read(os.path.join(directory, name))
                    if record is not None:
                        records.append(record)
            return records

        records: list[dict[str, Any]] = await self.run_in_thread(read_all)
        return records

    async def create(self, record: dict[str, Any]) -> None:
        """Store a new template; TemplateExists or TooManyTemplates."""
        path = self._path(record["id"])
        data = _encode(record)
        directory = self.directory

        def create() -> None:
            os.makedirs(directory, exist_ok=True)
            if len(os.listdir(directory)) >= MAX_TEMPLATES:
                raise TooManyTemplates()
            fd, temporary = tempfile.mkstemp(prefix=".new.", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
                    stream.flush()
                    os.fsync(stream.fileno())
                try:
                    os.link(temporary, path)  # exclusive: fails when the id is taken
                except FileExistsError:
                    raise TemplateExists() from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary)
            fsync_directory(directory)

        await self.lock.run(self.run_in_thread, create)

    async def update(
        self, template_id: str, change: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Read, `change` and write back one template (None: no such template).

        `change` may raise (an APIError for a bad body): then nothing is written.
        """
        await self.lock.acquire()
        try:
            record = await self.get(template_id)
            if record is None:
                return None
            new = change(record)
            path = self._path(template_id)
            data = _encode(new)
            await self.run_in_thread(lambda: atomic_write(path, data, permissions=0o600))
            return new
        finally:
            self.lock.release()

    async def delete(self, template_id: str) -> bool:
        """Remove a template; False when there was none."""
        if not valid_id(template_id):
            return False
        path = self._path(template_id)
        directory = self.directory

        def delete() -> bool:
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            fsync_directory(directory)
            return True

        removed: bool = await self.lock.run(self.run_in_thread, delete)
        return removed


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as stream:
            data = json.loads(stream.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.error("template file {path} unreadable: {error}", path=path, error=str(exc))
        return None
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        log.error("template file {path} is not a template", path=path)
        return None
    return data
