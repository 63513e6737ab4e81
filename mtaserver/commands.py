"""The operator command language, shared by `POST /command` and `mtactl`.

    show status | show queues [--paused] | show domains | show vmtas | show jobs
    show settings | show version
    pause queue D/V | resume queue D/V | schedule D/V
    set queue --mode=backoff|normal D/V
    delete --queue=D/V [--jobId=J] | list --queue=D/V [--max=N]
    reload | test config [FILE] | rotate acct | reset counters

`parse` turns a line into a `Command` (or a `CommandError` naming what is wrong);
`Commands.run` executes it against the running server's parts and returns a
`CommandResult` with JSON-able `data` and a one-line `message`; `render_text` turns
the data into the tables `mtactl` prints (and `format=json-text` returns). Each
command states the access level it needs (`monitor` for reading, `admin` for
changing anything), so the HTTP layer checks access before anything runs.

Queue patterns are `domain/vmta`, a bare `domain` meaning every vmta, with `*` and
`?` wildcards (`sink.test/*`, `*/vmta1`, `*`).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from mtaserver import __version__
from mtaserver.config.files import PathRefused, conceal_outside, config_dir, config_file_path
from mtaserver.config.grammar import ConfigError
from mtaserver.config.load import load_config
from mtaserver.config.redact import redact_values
from mtaserver.config.reload import ConfigHolder
from mtaserver.runtime import RunInThread
from mtaserver.stats import HOUR, MINUTE, TrafficStats

if TYPE_CHECKING:
    from mtaserver.queue.model import Queue
    from mtaserver.queue.scheduler import Scheduler


QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_.*?\-]+(/[A-Za-z0-9_.*?{}\-]+)?")
DEFAULT_LIST_MAX = 1000


class CommandError(Exception):
    """A command that could not run: unknown, bad arguments, or a failure (HTTP 400)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


@attrs.frozen
class Spec:
    """A command's grammar: its options, positional arguments and access level."""

    words: tuple[str, ...]
    level: str
    usage: str
    options: Mapping[str, str] = attrs.field(factory=dict)  # name -> "flag" | "value"
    required: tuple[str, ...] = ()
    positional: tuple[int, int] = (0, 0)  # min, max


SPECS: tuple[Spec, ...] = (
    Spec(("show", "status"), "monitor", "show status"),
    Spec(("show", "queues"), "monitor", "show queues [--paused]", {"paused": "flag"}),
    Spec(("show", "domains"), "monitor", "show domains"),
    Spec(("show", "vmtas"), "monitor", "show vmtas"),
    Spec(("show", "jobs"), "monitor", "show jobs"),
    Spec(("show", "settings"), "monitor", "show settings"),
    Spec(("show", "version"), "monitor", "show version"),
    Spec(("pause", "queue"), "admin", "pause queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("resume", "queue"), "admin", "resume queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("schedule",), "admin", "schedule DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(
        ("set", "queue"),
        "admin",
        "set queue --mode=backoff|normal DOMAIN[/VMTA]",
        {"mode": "value"},
        ("mode",),
        (1, 1),
    ),
    Spec(
        ("delete",),
        "admin",
        "delete --queue=DOMAIN[/VMTA] [--jobId=JOB]",
        {"queue": "value", "jobId": "value"},
        ("queue",),
    ),
    Spec(
        ("list",),
        "monitor",
        "list --queue=DOMAIN[/VMTA] [--max=N]",
        {"queue": "value", "max": "value"},
        ("queue",),
    ),
    Spec(("reload",), "admin", "reload"),
    Spec(("test", "config"), "monitor", "test config [FILE]", positional=(0, 1)),
    Spec(("rotate", "acct"), "admin", "rotate acct"),
    Spec(("reset", "counters"), "admin", "reset counters"),
)


@attrs.frozen
class Command:
    spec: Spec
    options: Mapping[str, str]
    args: tuple[str, ...]

    @property
    def name(self) -> str:
        return " ".join(self.spec.words)

    @property
    def level(self) -> str:
        return self.spec.level


@attrs.frozen
class CommandResult:
    command: str
    data: Any
    message: str = ""


def usage() -> str:
    return "commands: " + "; ".join(spec.usage for spec in SPECS)


def parse(text: str) -> Command:
    """Parse one command line; `CommandError` with a clear message when it is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"cannot parse the command: {exc}") from None
    if not words:
        raise CommandError("empty command; " + usage())
    spec = next(
        (s for s in SPECS if tuple(w.lower() for w in words[: len(s.words)]) == s.words), None
    )
    if spec is None:
        raise CommandError(f"unknown command {' '.join(words[:2])!r}; " + usage())
    options: dict[str, str] = {}
    args: list[str] = []
    for word in words[len(spec.words) :]:
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            kind = spec.options.get(name)
            if kind is None:
                raise CommandError(f"{spec.usage}: unknown option --{name}")
            if kind == "flag" and has_value:
                raise CommandError(f"{spec.usage}: --{name} takes no value")
            if kind == "value" and not value:
                raise CommandError(f"{spec.usage}: --{name} needs a value (--{name}=...)")
            if name in options:
                raise CommandError(f"{spec.usage}: --{name} given twice")
            options[name] = value
        else:
            args.append(word)
    for name in spec.required:
        if name not in options:
            raise CommandError(f"{spec.usage}: --{name} is required")
    low, high = spec.positional
    if not low <= len(args) <= high:
        if high == 0:
            raise CommandError(f"{spec.usage}: unexpected argument {args[0]!r}")
        if len(args) < low:
            raise CommandError(f"{spec.usage}: missing argument")
        raise CommandError(f"{spec.usage}: too many arguments")
    command = Command(spec, options, tuple(args))
    _check_values(command)
    return command


def _check_values(command: Command) -> None:
    spec = command.spec
    patterns = [] if spec.words == ("test", "config") else list(command.args)
    if "queue" in command.options:
        patterns.append(command.options["queue"])
    for pattern in patterns:
        if not QUEUE_PATTERN.fullmatch(pattern) or ".." in pattern or pattern.startswith("."):
            raise CommandError(f"{spec.usage}: {pattern!r} is not a queue name (DOMAIN[/VMTA])")
    mode = command.options.get("mode")
    if mode is not None and mode not in ("backoff", "normal"):
        raise CommandError(f"{spec.usage}: --mode must be backoff or normal, not {mode!r}")
    limit = command.options.get("max")
    if limit is not None and (not limit.isdigit() or int(limit) < 1):
        raise CommandError(f"{spec.usage}: --max must be a positive number, not {limit!r}")


def version() -> str:
    return __version__


class Commands:
    """Runs parsed commands against the server's parts (the scheduler owns the queues)."""

    def __init__(
        self,
        holder: ConfigHolder,
        scheduler: Scheduler,
        acct: Any,
        reception: Any,
        traffic: TrafficStats,
        run_in_thread: RunInThread,
    ) -> None:
        self.holder = holder
        self.scheduler = scheduler
        self.acct = acct
        self.reception = reception
        self.traffic = traffic
        self.run_in_thread = run_in_thread

    async def run(self, command: Command) -> CommandResult:
        handler = getattr(self, "_" + "_".join(command.spec.words))
        data, message = await handler(command)
        return CommandResult(command.name, data, message)

    # -- reading -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.traffic.now()
        if self.reception is not None:
            self.traffic.sample_reception(self.reception)
        queues = self.scheduler.queues.values()
        return {
            "version": version(),
            "hostName": self.holder.config.settings.host_name,
            "startedAt": self.traffic.started,
            "uptime": round(now - self.traffic.started, 3),
            "traffic": {
                "in": self.traffic.inbound.summary(now),
                "out": self.traffic.outbound.summary(now),
                "bounced": _windows(self.traffic.bounced, now),
                "deferred": _windows(self.traffic.deferred, now),
            },
            "conn": {
                "smtpIn": {
                    "cur": getattr(self.reception, "sessions_current", 0),
                    "total": getattr(self.reception, "sessions_total", 0),
                },
                "smtpOut": {
                    "cur": self.scheduler.total_active,
                    "total": sum(q.counters.connections for q in queues),
                },
            },
            "queue": {
                "recipients": self.scheduler.queued_recipients(),
                "messages": len(self.scheduler.messages),
                "queues": len(self.scheduler.queues),
                "paused": sum(1 for q in queues if q.paused),
            },
            "acct": self.acct.status() if hasattr(self.acct, "status") else [],
        }

    def queues(self, paused_only: bool = False) -> list[dict[str, Any]]:
        return [
            _queue_row(q)
            for _, q in sorted(self.scheduler.queues.items())
            if q.paused or not paused_only
        ]

    def domains(self) -> list[dict[str, Any]]:
        return _grouped(self.queues(), "domain")

    def vmtas(self) -> list[dict[str, Any]]:
        rows = {row["vmta"]: row for row in _grouped(self.queues(), "vmta")}
        for name in self.holder.config.vmtas:
            rows.setdefault(name, _grouped([], "vmta", name)[0])
        return [rows[name] for name in sorted(rows)]

    def jobs(self) -> list[dict[str, Any]]:
        jobs: dict[str, dict[str, Any]] = {}
        for state in self.scheduler.messages.values():
            job = state.envelope.job_id
            if not job:
                continue
            row = jobs.setdefault(job, {"job": job, "messages": 0, "recipients": 0})
            row["messages"] += 1
            row["recipients"] += len(state.pending)
        return [jobs[name] for name in sorted(jobs)]

    def settings(self) -> dict[str, Any]:
        config = self.holder.config
        settings = redact_values(_jsonable(config.settings))  # never a credential
        return {
            "config": config.path,
            "files": list(config.files),
            "global": settings,
            "vmtas": sorted(config.vmtas),
            "vmtaPools": sorted(config.vmta_pools),
            "domains": sorted(config.domains),
            "acctFiles": [a.path for a in config.acct_files],
        }

    def waiting(self, pattern: str, limit: int) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        total = 0
        for queue in self.scheduler.matching(pattern):
            entries = [("ready", None, item) for item in queue.ready] + [
                ("retry", due, item) for due, _, item in sorted(queue.retry, key=lambda e: e[:2])
            ]
            for state, due, item in entries:
                message = self.scheduler.messages.get(item.msg_id)
                if message is None:
                    continue
                for index in item.rcpt_indexes:
                    total += 1
                    if len(rows) >= limit:
                        continue
                    rows.append(
                        {
                            "queue": queue.name,
                            "msgId": item.msg_id,
                            "rcpt": message.envelope.recipients[index].address,
                            "job": message.envelope.job_id or "",
                            "attempts": item.failed_attempts,
                            "state": state,
                            "nextAttempt": due,
                        }
                    )
        return {"recipients": rows, "total": total, "truncated": total > len(rows)}

    async def _show_status(self, command: Command) -> tuple[Any, str]:
        return self.status(), ""

    async def _show_queues(self, command: Command) -> tuple[Any, str]:
        rows = self.queues("paused" in command.options)
        return rows, f"{len(rows)} queue(s)"

    async def _show_domains(self, command: Command) -> tuple[Any, str]:
        rows = self.domains()
        return rows, f"{len(rows)} domain(s)"

    async def _show_vmtas(self, command: Command) -> tuple[Any, str]:
        rows = self.vmtas()
        return rows, f"{len(rows)} vmta(s)"

    async def _show_jobs(self, command: Command) -> tuple[Any, str]:
        rows = self.jobs()
        return rows, f"{len(rows)} job(s)"

    async def _show_settings(self, command: Command) -> tuple[Any, str]:
        return self.settings(), ""

    async def _show_version(self, command: Command) -> tuple[Any, str]:
        import twisted

        data = {
            "name": "mtaserver",
            "version": version(),
            "python": platform.python_version(),
            "twisted": twisted.__version__,
        }
        return data, f"mtaserver {data['version']}"

    async def _list(self, command: Command) -> tuple[Any, str]:
        limit = int(command.options.get("max", DEFAULT_LIST_MAX))
        data = self.waiting(command.options["queue"], limit)
        return data, f"{data['total']} recipient(s) waiting"

    async def _test_config(self, command: Command) -> tuple[Any, str]:
        config = self.holder.config
        base = config_dir(config)
        known = frozenset(os.path.realpath(p) for p in config.files)
        if command.args:
            try:  # only config files: a key or data file's lines would show in the errors
                path = config_file_path(config, command.args[0])
            except PathRefused as exc:
                raise CommandError(f"test config: {exc}") from None
        else:
            path = config.path

        def check() -> list[str]:
            try:
                load_config(path)
            except ConfigError as exc:
                return [conceal_outside(str(p), base, known) for p in exc.problems]
            return []

        problems = await self.run_in_thread(check)
        if problems:
            raise CommandError(
                f"{path}: {len(problems)} error(s): " + "; ".join(problems), data=problems
            )
        return {"file": path, "errors": []}, f"{path}: the configuration is valid"

    # -- changing ------------------------------------------------------------------

    async def _pause_queue(self, command: Command) -> tuple[Any, str]:
        names = self.scheduler.pause(command.args[0])
        return {"queues": names}, f"paused {command.args[0]} ({len(names)} queue(s) now)"

    async def _resume_queue(self, command: Command) -> tuple[Any, str]:
        names = self.scheduler.resume(command.args[0])
        return {"queues": names}, f"resumed {command.args[0]} ({len(names)} queue(s))"

    async def _schedule(self, command: Command) -> tuple[Any, str]:
        names = self.scheduler.schedule(command.args[0])
        return {"queues": names}, f"scheduled {len(names)} queue(s) for retry now"

    async def _set_queue(self, command: Command) -> tuple[Any, str]:
        mode = command.options["mode"]
        names = self.scheduler.set_mode(command.args[0], mode)
        return {"queues": names, "mode": mode}, f"{len(names)} queue(s) set to {mode} mode"

    async def _delete(self, command: Command) -> tuple[Any, str]:
        pattern, job = command.options["queue"], command.options.get("jobId")
        count = await self.scheduler.delete(pattern, job)
        return {"deleted": count}, f"deleted {count} recipient(s)"

    async def _reload(self, command: Command) -> tuple[Any, str]:
        problems = await self.holder.reload_in_thread(self.run_in_thread)
        if problems:
            raise CommandError(
                f"reload failed, the running config is unchanged: {'; '.join(problems)}",
                data=problems,
            )
        return {"config": self.holder.config.path}, "configuration reloaded"

    async def _rotate_acct(self, command: Command) -> tuple[Any, str]:
        if self.acct is None:
            return {"rotated": 0}, "no acct files"
        await self.acct.rotate()
        count = len(getattr(self.acct, "writers", ()))
        return {"rotated": count}, f"rotated {count} acct file(s)"

    async def _reset_counters(self, command: Command) -> tuple[Any, str]:
        for queue in self.scheduler.queues.values():
            queue.counters.reset()
        self.traffic.reset()
        return {}, "counters reset"


def _windows(counter: Any, now: float) -> dict[str, int]:
    return {
        "lastMin": counter.last(MINUTE, now),
        "lastHr": counter.last(HOUR, now),
        "total": counter.total,
    }


def _queue_row(queue: Queue) -> dict[str, Any]:
    items = list(queue.ready) + [entry[2] for entry in queue.retry]
    return {
        "name": queue.name,
        "domain": queue.domain,
        "vmta": queue.vmta,
        "recipients": queue.recipients,
        "messages": len({item.msg_id for item in items}),
        "paused": queue.paused,
        "mode": queue.mode,
        "connections": queue.active,
        "delivered": queue.counters.delivered,
        "bounced": queue.counters.bounced,
        "deferred": queue.counters.deferred,
        "nextRetry": queue.next_due(),
        "lastError": queue.last_error,
    }


_SUMMED = ("recipients", "messages", "connections", "delivered", "bounced", "deferred")


def _grouped(rows: list[dict[str, Any]], key: str, name: str = "") -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    if not rows:
        return [{key: name, "queues": 0, "paused": 0, **dict.fromkeys(_SUMMED, 0)}]
    for row in rows:
        group = groups.setdefault(
            row[key], {key: row[key], "queues": 0, "paused": 0, **dict.fromkeys(_SUMMED, 0)}
        )
        group["queues"] += 1
        group["paused"] += int(row["paused"])
        for field in _SUMMED:
            group[field] += row[field]
    return [groups[k] for k in sorted(groups)]


def _jsonable(value: Any) -> Any:
    if attrs.has(type(value)):
        if type(value).__str__ is not object.__str__:
            return str(value)  # HostPort and friends print as in the config
        return {f.name: _jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# -- text rendering (mtactl's tables, format=json-text) -------------------------------

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
    ),
    "show domains": (
        "domain",
        "queues",
        "recipients",
        "messages",
        "paused",
        "connections",
        "delivered",
        "bounced",
        "deferred",
    ),
    "show vmtas": (
        "vmta",
        "queues",
        "recipients",
        "messages",
        "paused",
        "connections",
        "delivered",
        "bounced",
        "deferred",
    ),
    "show jobs": ("job", "messages", "recipients"),
    "list": ("queue", "msgId", "rcpt", "job", "attempts", "state"),
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
