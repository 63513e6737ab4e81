"""`suppression show|add|remove|import|export`: the suppression list from `mtactl`.

    mtactl suppression add user@example.com [--scope=domain:news.example]
                           [--type=non_transactional] [--description="asked by phone"]
    mtactl suppression remove user@example.com [--scope=...]
    mtactl suppression show [user@example.com] [--scope=...]
    mtactl suppression import list.csv [--scope=...]    (mtactl sends the file's content)
    mtactl suppression export [--scope=...] > list.csv

The CSV is SparkPost's (`recipient,type,source,description,scope,created,updated`;
only `recipient` is required on import, and a bad line refuses the whole file, naming
the line). Without `--scope` a change is to the `global` scope; `show RECIPIENT`
without `--scope` lists the recipient's entries in every scope (a scan of the list,
in the thread pool). Writes are durable (fsync'd) before the reply.
"""

from __future__ import annotations

import io
from typing import Any

from mtaserver.commands.grammar import Command, CommandError
from mtaserver.commands.render import table
from mtaserver.suppression.model import (
    GLOBAL_SCOPE,
    Entry,
    SuppressionError,
    SuppressionSource,
    SuppressionType,
    format_csv,
    normalize_scope,
)
from mtaserver.suppression.service import SuppressionService

COLUMNS = ("recipient", "scope", "type", "source", "description", "updated")


def _row(entry: Entry) -> dict[str, Any]:
    data = entry.to_json()
    data["type"] = ",".join(entry.type.words)
    return data


class SuppressionCommands:
    """Runs the `suppression ...` commands against the server's `SuppressionService`."""

    def __init__(self, suppression: SuppressionService | None) -> None:
        self.suppression = suppression

    async def run(self, command: Command) -> tuple[Any, str]:
        """(data, message) of one `suppression` command; CommandError when it cannot run."""
        if self.suppression is None:
            raise CommandError("the suppression list is not available in this server")
        try:
            handler = getattr(self, "_" + command.spec.words[1])
            result: tuple[Any, str] = await handler(self.suppression, command)
        except SuppressionError as exc:
            raise CommandError(f"{command.spec.usage}: {exc}") from None
        return result

    @staticmethod
    def _scope(command: Command) -> str:
        return normalize_scope(command.options.get("scope", GLOBAL_SCOPE))

    async def _show(self, service: SuppressionService, command: Command) -> tuple[Any, str]:
        if not command.args:
            count = service.store.count()
            counters = service.counters
            data = {
                "entries": count,
                "addedAutomatically": counters.added_automatically,
                "refused": counters.refused,
                "dropped": counters.dropped,
            }
            return data, (
                f"{count} entries; since start: {counters.added_automatically} added "
                f"automatically, {counters.refused} refused, {counters.dropped} dropped"
            )
        recipient = command.args[0]
        if "scope" in command.options:
            entry = service.store.get(self._scope(command), recipient)
            entries = [entry] if entry is not None else []
        else:
            entries = await service.entries_for(recipient)
        rows = [_row(e) for e in entries]
        if not rows:
            return rows, f"{recipient} is not on the suppression list"
        return rows, table(rows, COLUMNS)

    async def _add(self, service: SuppressionService, command: Command) -> tuple[Any, str]:
        word = command.options.get("type")
        entry = Entry.make(
            command.args[0],
            now=int(service.clock.seconds()),
            scope=self._scope(command),
            type=SuppressionType.from_word(word) if word else SuppressionType.BOTH,
            source=SuppressionSource.MANUALLY_ADDED,
            description=command.options.get("description", ""),
        )
        new = await service.add([entry])
        what = "added" if new else "updated"
        return _row(entry), f"{entry.recipient} {what} ({entry.scope})"

    async def _remove(self, service: SuppressionService, command: Command) -> tuple[Any, str]:
        scope = self._scope(command)
        removed = await service.remove(scope, command.args[0])
        if not removed:
            raise CommandError(f"{command.args[0]} is not on the suppression list ({scope})")
        return {"removed": command.args[0], "scope": scope}, f"{command.args[0]} removed ({scope})"

    async def _import(self, service: SuppressionService, command: Command) -> tuple[Any, str]:
        if not command.input:
            raise CommandError(f"{command.spec.usage}: no CSV given")
        count = await service.import_csv(command.input, self._scope(command))
        return {"imported": count}, f"{count} entries imported"

    async def _export(self, service: SuppressionService, command: Command) -> tuple[Any, str]:
        out = io.StringIO()
        if "scope" in command.options:
            scope = self._scope(command)

            def rows() -> str:
                format_csv((e for e in service.store.export() if e.scope == scope), out)
                return out.getvalue()

            return await service.run_in_thread(rows), ""
        await service.export_csv(out)
        return out.getvalue(), ""
