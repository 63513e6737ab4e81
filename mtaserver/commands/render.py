"""What `mtactl` prints, and `format=json-text` returns: commands' data as text tables.

The data of a command (`Commands.run`) is JSON for API clients; this turns it into
the plain tables and `key: value` lines an operator reads in a terminal. It only
formats: no state is read here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

#: A column of a PowerMTA-shaped table: title, the row's key, and how it prints.
Column = tuple[str, str, Callable[[Any], str]]


def _num(value: Any) -> str:
    return "0" if value is None else str(value)


def _kb(value: Any) -> str:
    return f"{float(value or 0):.1f}"


def _clock(value: Any) -> str:
    """A time as PowerMTA's tables print it: HH:MM:SS (UTC), or nothing."""
    if not value:
        return ""
    return time.strftime("%H:%M:%S", time.gmtime(float(value)))


def _stamp(value: Any) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(value)))


def printable(text: str) -> str:
    """`text` with control characters escaped (`\\x1b`): a terminal is a sink too, and a
    remote MX's reply text reaches this table."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _text(value: Any) -> str:
    return "" if value is None else printable(str(value))


_PMTA: dict[str, tuple[Column, ...]] = {
    "show queues": (
        ("queue", "name", _text),
        ("#rcpt", "recipients", _num),
        ("kbytes", "kb", _kb),
        ("conn", "connections", _num),
        ("st", "st", _text),
        ("retry", "nextRetry", _clock),
        ("last error", "lastError", _text),
    ),
    "show domains": (
        ("domain", "domain", _text),
        ("#rcpt", "recipients", _num),
        ("kbytes", "kb", _kb),
        ("conn", "connections", _num),
        ("last error", "lastError", _text),
    ),
    "show vmtas": (
        ("name", "vmta", _text),
        ("domains", "domains", _num),
        ("#rcpt", "recipients", _num),
        ("% total", "pct", _num),
        ("kbytes", "kb", _kb),
        ("conn", "connections", _num),
    ),
    "show jobs": (
        ("job-id", "job", _text),
        ("#rcpt", "recipients", _num),
        ("kbytes", "kb", _kb),
        ("paused", "pausedText", _text),
    ),
    "show disabled sources": (
        ("queue", "queue", _text),
        ("source", "source", _text),
        ("re-enabled in", "reenableText", _text),
    ),
}
_PMTA["show topqueues"] = _PMTA["show queues"]
_PMTA["show topdomains"] = _PMTA["show domains"]

_LIST: tuple[Column, ...] = (
    ("queue", "queue", _text),
    ("rcpt", "rcpt", _text),
    ("orig", "orig", _text),
    ("job-id", "job", _text),
    ("env-id", "envId", _text),
    ("msg-id", "msgId", _text),
    ("queued", "timeQueued", _stamp),
)
_LIST_PRIORITY: tuple[Column, ...] = (("priority", "priority", _text),)
_LIST_SCHEDULE: tuple[Column, ...] = (
    ("state", "state", _text),
    ("attempts", "attempts", _num),
    ("next attempt", "nextAttempt", _stamp),
)

#: Short error columns unless --errors asks for them in full.
_ERROR_WIDTH = 40


def pmta_table(rows: list[dict[str, Any]], columns: tuple[Column, ...]) -> str:
    """PowerMTA's table: titles over dashes, names left, numbers right, one row a line."""
    cells = [[fmt(row.get(key)) for _, key, fmt in columns] for row in rows]
    titles = [title for title, _, _ in columns]
    widths = [max([len(titles[i])] + [len(c[i]) for c in cells]) for i in range(len(columns))]
    right = [fmt in (_num, _kb) for _, _, fmt in columns]

    def line(values: list[str]) -> str:
        out = [
            v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)
        ]
        return " ".join(out).rstrip()

    lines = [line(titles), " ".join("-" * w for w in widths)]
    lines += [line(c) for c in cells]
    return "\n".join(lines)


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


def _prepared(command: str, data: Any, errors: bool) -> list[dict[str, Any]]:
    """Rows with the derived cells of a table (`st`, short errors, yes/no)."""
    rows = []
    for row in data:
        row = dict(row)
        if command.endswith("queues"):
            row["st"] = ("P" if row.get("paused") else "") + (
                "B" if row.get("mode") == "backoff" else "")  # fmt: skip
        error = row.get("lastError") or ""
        if error and not errors and len(error) > _ERROR_WIDTH:
            row["lastError"] = error[: _ERROR_WIDTH - 3] + "..."
        row["pausedText"] = "yes" if row.get("paused") else ""
        if "reenable_in" in row:
            left = row["reenable_in"]
            row["reenableText"] = "never (enable source)" if left is None else f"{left:.0f}s"
        rows.append(row)
    return rows


def render_text(command: str, data: Any, message: str = "", errors: bool = False) -> str:
    """What `mtactl` prints for a command's data: PowerMTA's table where it has one."""
    if command == "show status" and isinstance(data, dict):
        return _render_status(data)
    if command in _PMTA and isinstance(data, list):
        text = pmta_table(_prepared(command, data, errors), _PMTA[command])
        if command.endswith("queues") and any("rcptEvents" in row for row in data):
            text += "\n\n" + _rcpt_events(data)
        return f"{text}\n\n{message}" if message else text
    if command == "list" and isinstance(data, dict):
        shown = data.get("columns", {})
        columns = _LIST + (_LIST_PRIORITY if shown.get("priority") else ()) + (
            _LIST_SCHEDULE if shown.get("schedule") else ())  # fmt: skip
        text = pmta_table(data["recipients"], columns)
        return f"{text}\n\n{message}" if message else text
    if command in ("show settings", "show vmta-settings") and isinstance(data, dict):
        return _render_settings(data)
    if command == "resolve" and isinstance(data, dict):
        return _render_resolve(data)
    if command in ("check mfrom", "check rcpt") and isinstance(data, dict):
        return _render_mapping(data)
    if command in ("show version", "show license") and message:
        return message
    if isinstance(data, dict) and data and command in ("show settings",):
        return _render_mapping(data)
    if message:
        return message
    return _render_mapping(data) if isinstance(data, dict) else str(data)


#: Recipient events `show queues` prints (PowerMTA's last 50), newest first.
MAX_EVENTS_SHOWN = 50


def _rcpt_events(rows: list[dict[str, Any]]) -> str:
    """PowerMTA's "Recipient Events" section: the shown queues' latest events."""
    events = sorted(
        (e for row in rows for e in row.get("rcptEvents", ())), key=lambda e: -e["time"]
    )
    counts = {kind: sum(1 for e in events if e["type"] == kind) for kind in
              ("delivered", "bounced", "deferred")}  # fmt: skip
    title = (
        f"Recipient Events (deliveries:{counts['delivered']}, bounces:{counts['bounced']}, "
        f"deferrals:{counts['deferred']})"
    )
    lines = [title, "-" * len(title)]
    for e in events[:MAX_EVENTS_SHOWN]:
        lines.append(
            " | ".join(
                printable(str(v)) for v in (e["type"], _stamp(e["time"]), e["source_ip"],
                                            e["rcpt"], e["job"], e["destination_ip"], e["diag"])
            )  # fmt: skip
        )
    return "\n".join(lines)


def _render_settings(data: Mapping[str, Any]) -> str:
    """`show settings D/V`: PowerMTA's two lists; without a queue, the summary."""
    if "settings" not in data:
        return _render_mapping(data)
    vmta = data["vmta"] if "queue" in data else data["settings"]
    parts = ["Virtual MTA Settings", "--------------------", _render_pairs(vmta)]
    if "queue" in data:
        title = f"Queue Settings ({data['queue']})"
        parts += ["", title, "-" * len(title), _render_pairs(data["settings"])]
    elif data.get("pools"):
        parts += ["", f"pools: {', '.join(data['pools'])}"]
    return "\n".join(parts)


def _render_pairs(values: Mapping[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or '""'
        lines.append(f"{key} {value}")
    return "\n".join(lines)


def _render_resolve(data: Mapping[str, Any]) -> str:
    hosts = [
        {
            "pref": h["pref"],
            "name": h["name"] + (" (no MX: the domain itself)" if h["implicit"] else ""),
            "ips": " ".join(h["ip"]) or h["status"],
        }
        for h in data["hosts"]
    ]
    columns: tuple[Column, ...] = (
        ("pref", "pref", _num),
        ("host name", "name", _text),
        ("IP addresses", "ips", _text),
    )
    lines = [f"status = {data['status']}", pmta_table(hosts, columns), ""]
    if data["routeError"]:
        lines.append(f"delivery route: {data['routeError']}")
    else:
        lines.append("delivery route (as the domain's settings choose):")
        lines += [f"  {t['pref']:>4} {t['host']} [{t['ip']}]:{t['port']}" for t in data["route"]]
    return "\n".join(lines)


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


def _uptime(seconds: float) -> str:
    """PowerMTA's uptime: days, then H:MM:SS (`0  0:20:01`)."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    return f"{days}  {rest // 3600}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def _render_status(data: Mapping[str, Any]) -> str:
    """`show status` as PowerMTA prints it: traffic in and out over three windows,
    connections, the queue and the state; then each acct file's health."""
    traffic, conn, queue = data["traffic"], data["conn"], data["queue"]
    now = float(data["startedAt"]) + float(data["uptime"])

    def row(label: str, *cells: Any) -> str:
        return f"{label:>11}" + "".join(f"{c:>10}" for c in cells)

    lines = [
        f"mtaserver v{data['version']} status on {data['hostName']} on {_stamp(now)}",
        "",
        "  Traffic    ------------inbound------------  ------------outbound-----------",
        row("", "rcpts", "msgs", "kbytes") + "  " + "".join(
            f"{c:>10}" for c in ("rcpts", "msgs", "kbytes")),  # fmt: skip
    ]
    for label, window in (("Total", "total"), ("Last Hour", "lastHr"), ("Last Min.", "lastMin")):
        cells = []
        for direction in ("in", "out"):
            counts = traffic[direction][window]
            cells += [counts["recipients"], counts["messages"], _kb(counts["bytes"] / 1024)]
        lines.append(row(label, *cells[:3]) + "  " + "".join(f"{c:>10}" for c in cells[3:]))
    lines += [
        "",
        row("Connections", "active", "total"),
        row("Inbound", conn["smtpIn"]["cur"], conn["smtpIn"]["total"]),
        row("Outbound", conn["smtpOut"]["cur"], conn["smtpOut"]["total"]),
        "",
        row("Queues", "rcpts", "msgs", "queues", "paused"),
        row("all", queue["recipients"], queue["messages"], queue["queues"], queue["paused"]),
        "",
        row("Status", "running")
        + f"    Started  {_stamp(data['startedAt'])}    Uptime   {_uptime(data['uptime'])}",
    ]
    for acct in data.get("acct", ()):
        health = "FAILING: " + acct["last_error"] if acct["failing"] else "ok"
        line = f"acct {acct['acct_file']}: {health}, {acct['errors']} error(s)"
        if acct["journal_truncations"]:
            line += (f", journal truncated {acct['journal_truncations']} time(s), "
                     f"{acct['journal_lost_bytes']} journal bytes lost")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)
