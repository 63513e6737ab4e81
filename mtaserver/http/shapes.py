"""PowerMTA's monitoring shapes: the data of `/status`, `/queues`, `/domains`, ...

PowerMTA's web monitor answers `?format=json|xml` with its own field names and
nesting (User's Guide, chapter 5, and `pmta --xml show status` in 6.2.1): counts are
`rcp` (recipients), `msg` (messages), `kb` (kilobytes, one decimal), `dom` (domains),
`conn` (connections); `/status` nests them as `traffic.{total,lastHr,lastMin,
topPerHr,topPerMin}.{in,out}`, `conn.{smtpIn,smtpOut}.{cur,max,top}`,
`queue.{smtp,pipe,...}.{rcp,dom,kb}` and `spool`. A list repeats its element, named in
the singular (`{"queue": [...]}`, `<queue>` once per queue), as PowerMTA's DOM output
(`queue[0].name`, `queue[0].rcp`, `queue[0].event[0].text`) shows.

The functions here are pure: they read frozen views (`QueueView`, `JobView`,
`WaitingRecipient`), the traffic counters and the settings, with the time passed in,
and return plain JSON-able data. `xmlout` writes the same data as XML. Fields PowerMTA
has that mean nothing here get a fixed value (docs/api.rst lists them: a license
serial, reception timings, spool file recycling...).
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mtaserver import __version__
from mtaserver.queue.control import JobView, QueueView, WaitingRecipient
from mtaserver.stats import HOUR, MINUTE, QueueEvents, RateCounter, Traffic, TrafficStats

#: PowerMTA's delivery types in `status.queue`, and which `<domain> type` counts in each.
QUEUE_TYPES: tuple[str, ...] = (
    "smtp",
    "pipe",
    "discard",
    "file",
    "alias",
    "bounceProcessor",
    "feedbackLoopProcessor",
)
_TYPE_OF = {"smtp": "smtp", "http-delivery": "pipe", "discard": "discard", "file": "file"}

def timestamp(seconds: float | None) -> str:
    """PowerMTA's `YYYY-MM-DD HH:MM:SS`, in UTC; "" for no time."""
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def kb(size: int) -> float:
    """Kilobytes with one decimal, as PowerMTA shows them."""
    return round(size / 1024, 1)


# -- /status ---------------------------------------------------------------------------


@functools.cache
def _host() -> dict[str, Any]:
    """What the machine is, read once (it does not change while we run)."""
    try:
        build = platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        build = ""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
    except (ValueError, OSError, AttributeError):
        ram = 0
    return {
        "os": {"name": platform.system(), "version": platform.release(), "build": build},
        "cpu": {"type": platform.machine(), "count": os.cpu_count() or 0},
        "ram": {"real": ram},
        "bits": struct.calcsize("P") * 8,
    }


def mta(host_name: str) -> dict[str, Any]:
    """`data.mta`: the product, the machine and the host name."""
    host = _host()
    return {
        "product": {
            "name": "mtaserver",
            "version": __version__,
            "buildDate": "",
            "revision": __version__,
            "bits": host["bits"],
        },
        "lak": {"serial": "", "instances": 1},
        "os": host["os"],
        "cpu": host["cpu"],
        "ram": host["ram"],
        "fullHostName": host_name or socket.getfqdn(),
        "userString": "",
        "hostId": 0,
        "webUI": {"protocol": 1},
    }


def _counts(traffic: Traffic, pick: Callable[[RateCounter], int]) -> dict[str, Any]:
    return {
        "rcp": pick(traffic.recipients),
        "msg": pick(traffic.messages),
        "kb": kb(pick(traffic.bytes)),
    }


def _traffic(stats: TrafficStats, now: float) -> dict[str, Any]:
    windows: dict[str, Callable[[RateCounter], int]] = {
        "total": lambda c: c.total,
        "lastHr": lambda c: c.last(HOUR, now),
        "lastMin": lambda c: c.last(MINUTE, now),
        "topPerHr": lambda c: c.top_per_hr,
        "topPerMin": lambda c: c.top_per_min,
    }
    out: dict[str, Any] = {
        name: {
            "out": _counts(stats.outbound, pick),
            "in": _counts(stats.inbound, pick),
            "bounceProcessed": pick(stats.bounce_processed),
            "feedbackLoopProcessed": pick(stats.feedback_loop_processed),
        }
        for name, pick in windows.items()
    }
    out["perf"] = {
        "lastMin": {"in": {"count": 0, "mailFromTime": 0, "dataTime": 0, "totalTime": 0}}
    }
    return out


@attrs.frozen
class Connections:
    """Open connections now and the configured caps (`total-max-smtp-in`/`-out`)."""

    smtp_in: int
    smtp_out: int
    max_in: int
    max_out: int


def status(
    stats: TrafficStats,
    queues: Iterable[QueueView],
    type_of: Callable[[QueueView], str],
    connections: Connections,
    names_cached: int,
    now: float,
) -> dict[str, Any]:
    """`data.status` of `/status`.

    `type_of` gives a queue's `<domain> type` (smtp, discard, file, http-delivery).
    """
    by_type: dict[str, dict[str, Any]] = {
        name: {"rcp": 0, "domains": set(), "bytes": 0} for name in QUEUE_TYPES
    }
    recipients = messages = 0
    for queue in queues:
        recipients += queue.recipients
        messages += queue.messages
        row = by_type[_TYPE_OF.get(type_of(queue), "smtp")]
        row["rcp"] += queue.recipients
        row["bytes"] += queue.bytes
        if queue.recipients:
            row["domains"].add(queue.domain)
    return {
        "timeNow": timestamp(now),
        "startupTime": timestamp(stats.started),
        "shuttingDown": False,
        "traffic": _traffic(stats, now),
        "conn": {
            "smtpIn": {
                "cur": connections.smtp_in,
                "max": connections.max_in,
                "top": stats.connections_in.value,
            },
            "smtpOut": {
                "cur": connections.smtp_out,
                "max": connections.max_out,
                "top": stats.connections_out.value,
            },
        },
        "resolver": {"namesCached": names_cached, "queriesPending": 0, "queriesActive": 0},
        "queue": {
            name: {"rcp": row["rcp"], "dom": len(row["domains"]), "kb": kb(row["bytes"])}
            for name, row in by_type.items()
        },
        "spool": {
            "initPct": 100,
            "dirs": 1,
            "files": {"inUse": messages, "recycled": 0, "total": messages},
            "totalRcp": recipients,
            "maxRcp": 0,
        },
        "status": "running",
    }


# -- queues, domains, vmtas, jobs ------------------------------------------------------


def error_events(events: QueueEvents | None) -> list[dict[str, Any]]:
    """A queue's last errors, oldest first, as PowerMTA's `event` list (`--errors`)."""
    if events is None:
        return []
    return [{"type": "error", "time": timestamp(e.time), "text": e.text} for e in events.errors]


def queue_item(
    queue: QueueView, events: QueueEvents | None = None, errors: bool = False
) -> dict[str, Any]:
    """One `<queue>` of `/queues`; its error events with `errors`."""
    item: dict[str, Any] = {
        "name": queue.name,
        "domain": queue.domain,
        "vmta": queue.vmta,
        "rcp": queue.recipients,
        "msg": queue.messages,
        "kb": kb(queue.bytes),
        "conn": queue.connections,
        "paused": queue.paused,
        "mode": queue.mode,
        "retryTime": timestamp(queue.next_retry),
        "oldest": timestamp(queue.oldest),
        "lastError": queue.last_error,
    }
    if errors:
        item["event"] = error_events(events)
    return item


def queue_detail(queue: QueueView, events: QueueEvents | None) -> dict[str, Any]:
    """`/queueDetail`: the queue, its counters, last errors and last recipient events."""
    item = queue_item(queue, events, errors=True)
    item["pool"] = queue.pool or ""
    item["counters"] = {
        "deliveries": queue.delivered,
        "bounces": queue.bounced,
        "deferrals": queue.deferred,
        "connections": queue.connections_total,
    }
    item["rcptEvent"] = [
        {
            "type": e.type,
            "time": timestamp(e.time),
            "rcpt": e.rcpt,
            "jobId": e.job,
            "sourceIp": e.source_ip,
            "destinationIp": e.destination_ip,
            "text": e.diag,
        }
        for e in (events.rcpt if events is not None else ())
    ]
    return item


def _rollup(
    name: str, queues: list[QueueView], recent: Mapping[str, QueueEvents], errors: bool
) -> dict[str, Any]:
    """The sums of a group of queues (a domain's or a vmta's)."""
    merged = sorted(
        (e for q in queues if (ev := recent.get(q.name)) for e in ev.errors),
        key=lambda e: e.time,
    )
    last = merged[-1].text if merged else next((q.last_error for q in queues if q.last_error), "")
    item: dict[str, Any] = {
        "name": name,
        "rcp": sum(q.recipients for q in queues),
        "msg": sum(q.messages for q in queues),
        "kb": kb(sum(q.bytes for q in queues)),
        "conn": sum(q.connections for q in queues),
        "queues": len(queues),
        "paused": sum(1 for q in queues if q.paused),
        "lastError": last,
    }
    if errors:
        item["event"] = [
            {"type": "error", "time": timestamp(e.time), "text": e.text} for e in merged[-10:]
        ]
    return item


def group(
    queues: Iterable[QueueView], key: Callable[[QueueView], str]
) -> dict[str, list[QueueView]]:
    groups: dict[str, list[QueueView]] = {}
    for queue in queues:
        groups.setdefault(key(queue), []).append(queue)
    return groups


def domain_items(
    queues: Iterable[QueueView], recent: Mapping[str, QueueEvents], errors: bool
) -> list[dict[str, Any]]:
    """The `<domain>`s of `/domains`: each domain's queues summed over its vmtas."""
    return [
        _rollup(name, members, recent, errors)
        for name, members in group(queues, lambda q: q.domain).items()
    ]


def vmta_items(
    queues: Iterable[QueueView], names: Iterable[str], recent: Mapping[str, QueueEvents]
) -> list[dict[str, Any]]:
    """The `<vmta>`s of `/vmtas`: `dom` domains, `rcp`, `pct` (% of all recipients)..."""
    groups = group(queues, lambda q: q.vmta)
    for name in names:  # configured vmtas with nothing queued are listed too
        groups.setdefault(name, [])
    everyone = sum(q.recipients for members in groups.values() for q in members)
    items = []
    for name, members in groups.items():
        item = _rollup(name, members, recent, errors=False)
        item["dom"] = len({q.domain for q in members if q.recipients})
        item["pct"] = round(100 * item["rcp"] / everyone) if everyone else 0
        items.append(item)
    return items


def job_item(job: JobView) -> dict[str, Any]:
    """One `<job>` of `/jobs`."""
    return {
        "name": job.job,
        "rcp": job.recipients,
        "msg": job.messages,
        "kb": kb(job.bytes),
        "paused": job.paused,
    }


def recipient_item(row: WaitingRecipient) -> dict[str, Any]:
    """One `<recipient>` of `/listQueue`."""
    return {
        "queue": row.queue,
        "rcpt": row.rcpt,
        "orig": row.orig,
        "jobId": row.job,
        "envId": row.env_id,
        "msgId": row.msg_id,
        "state": row.state,
        "attempts": row.attempts,
        "retryTime": timestamp(row.next_attempt),
        "timeQueued": timestamp(row.time_queued),
        "kb": kb(row.size),
    }


SORT_KEYS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "name": lambda item: item["name"],
    "rcpt": lambda item: (-item["rcp"], item["name"]),
    "size": lambda item: (-item["kb"], item["name"]),
}
