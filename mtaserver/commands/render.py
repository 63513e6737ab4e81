"""What `mtactl` prints, and `format=json-text` returns: commands' data as text tables.

The data of a command (`Commands.run`) is JSON for API clients; this turns it into
the plain tables and `key: value` lines an operator reads in a terminal. It only
formats: no state is read here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The columns of a roll-up of queues (`show domains`, `show vmtas`): one row per
#: domain or vmta, after its name.
_ROLLUP = (
    "queues",
    "recipients",
    "messages",
    "paused",
    "connections",
    "delivered",
    "bounced",
    "deferred",
)

_COLUMNS: dict[str, tuple[str, ...]] = {
    "show queues": (
        "name",
        "recipients",
        "messages",
        "paused",
        "mode",
        "connections",
        "delivered",
        "bounced",
        "deferred",
        "scheduled",
    ),
    "show domains": ("domain", *_ROLLUP),
    "show vmtas": ("vmta", *_ROLLUP),
    "show jobs": ("job", "messages", "recipients", "paused"),
    "list": ("queue", "msgId", "rcpt", "job", "attempts", "state"),
    "show disabled sources": ("queue", "source", "reenable_in"),
}


def table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A plain text table with a header line, columns padded to their widest cell."""
    cells = [list(columns)] + [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "-"
    return str(value)


def render_text(command: str, data: Any, message: str = "") -> str:
    """What `mtactl` prints for a command's data."""
    if command == "show status" and isinstance(data, dict):
        return _render_status(data)
    if command in _COLUMNS:
        rows = data["recipients"] if command == "list" else data
        text = table(rows, _COLUMNS[command])
        return f"{text}\n{message}" if message else text
    if isinstance(data, dict) and data and command in ("show settings", "show version"):
        return _render_mapping(data)
    if message:
        return message
    return _render_mapping(data) if isinstance(data, dict) else str(data)


def _render_mapping(data: Mapping[str, Any], indent: str = "") -> str:
    lines = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            lines.append(f"{indent}{key}:")
            lines.append(_render_mapping(value, indent + "  "))
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: {', '.join(_cell(v) for v in value)}")
        else:
            lines.append(f"{indent}{key}: {_cell(value)}")
    return "\n".join(line for line in lines if line)


def _render_status(data: Mapping[str, Any]) -> str:
    traffic = data["traffic"]
    rows = []
    for direction in ("in", "out"):
        for window in ("lastMin", "lastHr", "total"):
            rows.append({"traffic": direction, "window": window, **traffic[direction][window]})
    conn, queue = data["conn"], data["queue"]
    head = (
        f"mtaserver {data['version']} on {data['hostName']}, up {int(data['uptime'])}s\n"
        f"connections: in {conn['smtpIn']['cur']}, out {conn['smtpOut']['cur']}\n"
        f"queued: {queue['recipients']} recipient(s) in {queue['messages']} message(s), "
        f"{queue['queues']} queue(s), {queue['paused']} paused\n"
    )
    for acct in data.get("acct", ()):
        health = "FAILING: " + acct["last_error"] if acct["failing"] else "ok"
        head += f"acct {acct['acct_file']}: {health}, {acct['errors']} error(s)"
        if acct["journal_truncations"]:
            head += (f", journal truncated {acct['journal_truncations']} time(s), "
                     f"{acct['journal_lost_bytes']} journal bytes lost")  # fmt: skip
        head += "\n"
    return head + table(rows, ("traffic", "window", "recipients", "messages", "bytes"))
