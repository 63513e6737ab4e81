"""Running operator commands against the server's parts; their JSON data.

`Commands.run` executes a parsed `Command` (`grammar.py`) and returns a
`CommandResult` with JSON-able `data` and a one-line `message`. The reading methods
(`status`, `queues`, `domains`, ...) are also what the monitoring API answers, so a
`show` command and its `GET` endpoint never disagree. Queues are read and changed
only through the scheduler's `QueueControl` view.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from typing import Any

import attrs

from mtaserver import __version__
from mtaserver.commands.grammar import DEFAULT_LIST_MAX, Command, CommandError, CommandResult
from mtaserver.commands.suppression import SuppressionCommands
from mtaserver.config.files import PathRefused, conceal_outside, config_dir, config_file_path
from mtaserver.config.grammar import ConfigError
from mtaserver.config.redact import redact_values
from mtaserver.config.reload import ConfigHolder
from mtaserver.queue.control import QueueControl, QueueView
from mtaserver.runtime import RunInThread
from mtaserver.stats import HOUR, MINUTE, TrafficStats
from mtaserver.suppression.service import SuppressionService


def version() -> str:
    return __version__


class Commands:
    """Runs parsed commands against the server's parts through their views.

    The queues are read and changed through `QueueControl` (the scheduler owns them);
    the JSON shapes produced here are what `/command`, the monitoring API and
    `mtactl` show.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        control: QueueControl,
        acct: Any,
        reception: Any,
        traffic: TrafficStats,
        run_in_thread: RunInThread,
        suppression: SuppressionService | None = None,
        maillog: Any = None,
    ) -> None:
        self.suppression = SuppressionCommands(suppression)
        self.maillog = maillog  # `rotate log` (mtaserver.maillog.MailLog)
        self.holder = holder
        self.control = control
        self.acct = acct
        self.reception = reception
        self.traffic = traffic
        self.run_in_thread = run_in_thread

    async def run(self, command: Command) -> CommandResult:
        if command.spec.words[0] == "suppression":
            data, message = await self.suppression.run(command)
            return CommandResult(command.name, data, message)
        handler = getattr(self, "_" + "_".join(command.spec.words))
        data, message = await handler(command)
        return CommandResult(command.name, data, message)

    # -- reading -------------------------------------------------------------------

    def sample_traffic(self) -> None:
        """Bring the traffic counters up to date with reception's (read at scrape time)."""
        if self.reception is not None:
            self.traffic.sample_reception(self.reception)

    def status(self) -> dict[str, Any]:
        now = self.traffic.now()
        self.sample_traffic()
        totals = self.control.totals()
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
                    "cur": totals.connections,
                    "total": totals.connections_total,
                },
            },
            "queue": {
                "recipients": totals.recipients,
                "messages": totals.messages,
                "queues": totals.queues,
                "paused": totals.paused,
            },
            "acct": self.acct.status() if hasattr(self.acct, "status") else [],
        }

    def queues(self, paused_only: bool = False) -> list[dict[str, Any]]:
        return [_queue_row(q) for q in self.control.queues() if q.paused or not paused_only]

    def domains(self) -> list[dict[str, Any]]:
        return _grouped(self.queues(), "domain")

    def vmtas(self) -> list[dict[str, Any]]:
        rows = {row["vmta"]: row for row in _grouped(self.queues(), "vmta")}
        for name in self.holder.config.vmtas:
            rows.setdefault(name, _grouped([], "vmta", name)[0])
        return [rows[name] for name in sorted(rows)]

    def jobs(self) -> list[dict[str, Any]]:
        return [
            {
                "job": job.job,
                "messages": job.messages,
                "recipients": job.recipients,
                "paused": job.paused,
            }
            for job in self.control.jobs()
        ]

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
        waiting, total = self.control.waiting(pattern, limit)
        rows = [
            {
                "queue": w.queue,
                "msgId": w.msg_id,
                "rcpt": w.rcpt,
                "job": w.job,
                "attempts": w.attempts,
                "state": w.state,
                "nextAttempt": w.next_attempt,
            }
            for w in waiting
        ]
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

        warnings: list[str] = []

        def check() -> list[str]:
            try:  # the same checks as startup and reload: one validation path
                loaded = self.holder.load_checked(path)
            except ConfigError as exc:
                return [conceal_outside(str(p), base, known) for p in exc.problems]
            # directives accepted without effect: the same warnings startup logs
            warnings.extend(conceal_outside(str(w), base, known) for w in loaded.warnings)
            return []

        problems = await self.run_in_thread(check)
        if problems:
            raise CommandError(
                f"{path}: {len(problems)} error(s): " + "; ".join(problems), data=problems
            )
        message = f"{path}: the configuration is valid"
        if warnings:
            message += f"; {len(warnings)} warning(s): " + "; ".join(warnings)
        return {"file": path, "errors": [], "warnings": warnings}, message

    # -- changing ------------------------------------------------------------------

    async def _pause_queue(self, command: Command) -> tuple[Any, str]:
        names = self.control.pause(command.args[0])
        return {"queues": names}, f"paused {command.args[0]} ({len(names)} queue(s) now)"

    async def _resume_queue(self, command: Command) -> tuple[Any, str]:
        names = self.control.resume(command.args[0])
        return {"queues": names}, f"resumed {command.args[0]} ({len(names)} queue(s))"

    async def _pause_job(self, command: Command) -> tuple[Any, str]:
        job = command.args[0]
        waiting = self.control.pause_job(job)
        data = {"job": job, "paused": True, "recipients": waiting}
        return data, f"paused job {job} ({waiting} recipient(s) held)"

    async def _resume_job(self, command: Command) -> tuple[Any, str]:
        job = command.args[0]
        waiting = self.control.resume_job(job)
        data = {"job": job, "paused": False, "recipients": waiting}
        return data, f"resumed job {job} ({waiting} recipient(s) queued)"

    async def _schedule(self, command: Command) -> tuple[Any, str]:
        names = self.control.schedule(command.args[0])
        return {"queues": names}, f"scheduled {len(names)} queue(s) for retry now"

    async def _set_queue(self, command: Command) -> tuple[Any, str]:
        mode = command.options["mode"]
        names = self.control.set_mode(command.args[0], mode)
        return {"queues": names, "mode": mode}, f"{len(names)} queue(s) set to {mode} mode"

    async def _set_priority(self, command: Command) -> tuple[Any, str]:
        priority = int(command.args[0])
        names = self.control.set_priority(command.options["queue"], priority)
        data = {"queues": names, "priority": priority}
        return data, f"{len(names)} queue(s) set to priority {priority}"

    async def _show_disabled_sources(self, command: Command) -> tuple[Any, str]:
        rows = self.control.disabled_sources(command.args[0] if command.args else "*")
        return [_jsonable(row) for row in rows], ""

    async def _enable_source(self, command: Command) -> tuple[Any, str]:
        count = self.control.enable_sources(command.args[0])
        return {"enabled": count}, f"enabled {count} source(s)"

    async def _delete(self, command: Command) -> tuple[Any, str]:
        pattern, job = command.options["queue"], command.options.get("jobId")
        count = await self.control.delete(pattern, job)
        return {"deleted": count}, f"deleted {count} recipient(s)"

    async def _reload(self, command: Command) -> tuple[Any, str]:
        problems = await self.holder.reload_in_thread(self.run_in_thread)
        if problems:
            raise CommandError(
                f"reload failed, the running config is unchanged: {'; '.join(problems)}",
                data=problems,
            )
        pending = self.holder.last_restart_only
        if pending:
            message = f"configuration reloaded; restart needed for: {', '.join(pending)}"
        else:
            message = "configuration reloaded"
        return {"config": self.holder.config.path, "restart_needed": pending}, message

    async def _rotate_acct(self, command: Command) -> tuple[Any, str]:
        if self.acct is None:
            return {"rotated": 0}, "no acct files"
        await self.acct.rotate()
        count = len(getattr(self.acct, "writers", ()))
        return {"rotated": count}, f"rotated {count} acct file(s)"

    async def _rotate_log(self, command: Command) -> tuple[Any, str]:
        path = self.holder.config.settings.log_file
        if self.maillog is None or path is None:
            raise CommandError("no log-file is configured: the log is the service log")
        if not await self.maillog.rotate():
            return {"rotated": False, "file": path}, "Logging file not rotated (log-rotate 0)"
        return {"rotated": True, "file": path}, "Logging file rotated."

    async def _reset_counters(self, command: Command) -> tuple[Any, str]:
        self.control.reset_counters()
        self.traffic.reset()
        return {}, "counters reset"


def _windows(counter: Any, now: float) -> dict[str, int]:
    return {
        "lastMin": counter.last(MINUTE, now),
        "lastHr": counter.last(HOUR, now),
        "total": counter.total,
    }


def _queue_row(queue: QueueView) -> dict[str, Any]:
    return {
        "name": queue.name,
        "domain": queue.domain,
        "vmta": queue.vmta,
        "recipients": queue.recipients,
        "messages": queue.messages,
        "paused": queue.paused,
        "mode": queue.mode,
        "connections": queue.connections,
        "delivered": queue.delivered,
        "bounced": queue.bounced,
        "deferred": queue.deferred,
        "nextRetry": queue.next_retry,
        "lastError": queue.last_error,
        "scheduled": queue.scheduled,
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
