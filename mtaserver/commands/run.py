"""Running operator commands against the server's parts; their JSON data.

`Commands.run` executes a parsed `Command` (`grammar.py`) and returns a
`CommandResult` with JSON-able `data` and a one-line `message`. The reading methods
(`status`, `queues`, `domains`, ...) are also what the monitoring API answers, so a
`show` command and its `GET` endpoint never disagree. Queues are read and changed
only through the scheduler's `QueueControl` view.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from mtaserver import __version__
from mtaserver.commands.diagnose import Diagnostics
from mtaserver.commands.grammar import (
    DEFAULT_LIST_MAX,
    DEFAULT_SHOW_MAX,
    Command,
    CommandError,
    CommandResult,
)
from mtaserver.commands.settings import queue_settings, version_details, vmta_settings
from mtaserver.commands.suppression import SuppressionCommands
from mtaserver.config.files import PathRefused, conceal_outside, config_dir, config_file_path
from mtaserver.config.grammar import ConfigError
from mtaserver.config.redact import redact_values
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import parse_interval
from mtaserver.queue.control import QueueControl, QueueView, RecipientFilter
from mtaserver.runtime import RunInThread
from mtaserver.smtp.mx import MxResolver
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
        mx_resolver: MxResolver | None = None,
        clock: Any = None,
    ) -> None:
        self.suppression = SuppressionCommands(suppression)
        self.maillog = maillog  # `rotate log` (mtaserver.maillog.MailLog)
        self.holder = holder
        self.control = control
        self.acct = acct
        self.reception = reception
        self.traffic = traffic
        self.run_in_thread = run_in_thread
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.diagnostics = Diagnostics(holder, control, clock, mx_resolver, suppression)

    async def run(self, command: Command) -> CommandResult:
        if command.spec.words[0] == "suppression":
            data, message = await self.suppression.run(command)
            return CommandResult(command.name, data, message)
        name = "_".join(command.spec.words).replace("-", "_")
        handler = getattr(self.diagnostics, name, None) or getattr(self, "_" + name)
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

    def queues(
        self,
        paused_only: bool = False,
        pattern: str = "*",
        paused: str | None = None,
        connected: str | None = None,
        mode: str | None = None,
        errors: bool = False,
    ) -> list[dict[str, Any]]:
        """The queues' rows, by name, of those matching every criterion given."""
        if paused_only:
            paused = "yes"
        rows = []
        for view in self.control.queues(pattern):
            if paused is not None and view.paused != (paused == "yes"):
                continue
            if connected is not None and (view.connections > 0) != (connected == "yes"):
                continue
            if mode is not None and view.mode != mode:
                continue
            if errors and not view.last_error:
                continue
            rows.append(_queue_row(view))
        return rows

    def domains(
        self,
        vmta: str | None = None,
        name: str = "*",
        connected: str | None = None,
        errors: bool = False,
    ) -> list[dict[str, Any]]:
        """The queues rolled up by domain (of one vmta's queues with `vmta`)."""
        pattern = f"{name}/{vmta or '*'}"
        queues = self.queues(pattern=pattern)
        rows = _grouped(queues, "domain") if queues else []
        if connected is not None:
            rows = [r for r in rows if (r["connections"] > 0) == (connected == "yes")]
        if errors:
            rows = [r for r in rows if r["lastError"]]
        return rows

    def vmtas(self) -> list[dict[str, Any]]:
        rows = {row["vmta"]: row for row in _grouped(self.queues(), "vmta")}
        for name in self.holder.config.vmtas:
            rows.setdefault(name, _grouped([], "vmta", name)[0])
        total = sum(row["recipients"] for row in rows.values())
        for row in rows.values():
            row["domains"] = row["queues"]
            row["pct"] = round(100 * row["recipients"] / total) if total else 0
        return [rows[name] for name in sorted(rows)]

    def jobs(self) -> list[dict[str, Any]]:
        return [
            {
                "job": job.job,
                "messages": job.messages,
                "recipients": job.recipients,
                "paused": job.paused,
                "kb": round(job.bytes / 1024, 1),
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

    def waiting(self, pattern: str | RecipientFilter, limit: int) -> dict[str, Any]:
        waiting, total = self.control.waiting(pattern, limit)
        rows = [
            {
                "queue": w.queue,
                "msgId": w.msg_id,
                "rcpt": w.rcpt,
                "orig": w.orig,
                "job": w.job,
                "envId": w.env_id,
                "attempts": w.attempts,
                "state": w.state,
                "nextAttempt": w.next_attempt,
                "timeQueued": w.time_queued,
                "priority": w.priority,
            }
            for w in waiting
        ]
        return {"recipients": rows, "total": total, "truncated": total > len(rows)}

    async def _show_status(self, command: Command) -> tuple[Any, str]:
        return self.status(), ""

    async def _show_queues(self, command: Command, sort: str = "name") -> tuple[Any, str]:
        options = command.options
        rows = self.queues(
            pattern=command.args[0] if command.args else "*",
            paused=options.get("paused"),
            connected=options.get("connected"),
            mode=options.get("mode"),
            errors="errors" in options,
        )
        shown = _top(rows, options.get("sort", sort), options.get("maxitems"))
        recent = getattr(self.traffic, "recent", {})
        for row in shown:  # PowerMTA's recipient events and recorded errors, per queue
            events = recent.get(row["name"])
            if "no-rcpt-events" not in options:
                row["rcptEvents"] = [_jsonable(e) for e in events.rcpt] if events else []
            if "errors" in options:
                row["errors"] = [_jsonable(e) for e in events.errors] if events else []
        return shown, f"{len(shown)} of {len(rows)} queues shown."

    async def _show_topqueues(self, command: Command) -> tuple[Any, str]:
        return await self._show_queues(command, sort="rcpt")

    async def _show_domains(self, command: Command, sort: str = "name") -> tuple[Any, str]:
        options = command.options
        rows = self.domains(
            vmta=options.get("vmta"),
            name=command.args[0] if command.args else "*",
            connected=options.get("connected"),
            errors="errors" in options,
        )
        shown = _top(rows, options.get("sort", sort), options.get("maxitems"))
        return shown, f"{len(shown)} of {len(rows)} domains shown."

    async def _show_topdomains(self, command: Command) -> tuple[Any, str]:
        return await self._show_domains(command, sort="rcpt")

    async def _show_vmtas(self, command: Command) -> tuple[Any, str]:
        rows = self.vmtas()
        shown = _top(rows, "rcpt", command.options.get("maxitems"), default=len(rows))
        return shown, f"{len(shown)} of {len(rows)} virtual MTAs."

    async def _show_jobs(self, command: Command) -> tuple[Any, str]:
        rows = self.jobs()
        limit = command.options.get("maxitems")
        shown = rows[: int(limit)] if limit else rows
        return shown, f"Total of {len(rows)} job(s)."

    async def _show_settings(self, command: Command) -> tuple[Any, str]:
        if command.args:
            return queue_settings(self.holder.config, command.args[0]), ""
        return self.settings(), ""

    async def _show_vmta_settings(self, command: Command) -> tuple[Any, str]:
        return vmta_settings(self.holder.config, command.args[0]), ""

    async def _show_version(self, command: Command) -> tuple[Any, str]:
        data = version_details()
        data.update(name="mtaserver", version=version())  # the keys of earlier versions
        product = data["product"]
        message = (
            f"mtaserver v{product['version']} ({product['bits']}-bit; Python "
            f"{data['python']}, Twisted {data['twisted']}; "
            f"{data['os']['name']} {data['os']['version']} {data['cpu']['type']})."
        )
        return data, message

    async def _show_license(self, command: Command) -> tuple[Any, str]:
        data, message = await self._show_version(command)
        data["license"] = "no license key: mtaserver is not licensed per instance"
        return data, message

    def _selection(self, command: Command) -> RecipientFilter:
        options = command.options
        older = options.get("older-than")
        return RecipientFilter(
            queue=options.get("queue", "*"),
            orig=options.get("orig"),
            rcpt=options.get("rcpt"),
            job_id=options.get("jobId"),
            env_id=options.get("envId"),
            queued_before=None if older is None else self.clock.seconds() - parse_interval(older),
        )

    async def _list(self, command: Command) -> tuple[Any, str]:
        options = command.options
        limit = int(options.get("maxitems") or options.get("max") or DEFAULT_LIST_MAX)
        data = self.waiting(self._selection(command), limit)
        data["columns"] = {"priority": "priority" in options, "schedule": "schedule" in options}
        return data, f"{len(data['recipients'])} of {data['total']} recipient(s) shown."

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
        # --retry-recipients: recipients that got a 4xx wait in the same retry schedule
        # as the queue's, so `schedule` always makes them ready too
        names = self.control.schedule(command.args[0])
        return {"queues": names}, f"{len(names)} matching queue(s) scheduled."

    async def _set_queue(self, command: Command) -> tuple[Any, str]:
        mode = command.options["mode"]
        names = self.control.set_mode(command.args[0], mode)
        return {"queues": names, "mode": mode}, f"{len(names)} queue(s) set to {mode} mode"

    async def _set_priority(self, command: Command) -> tuple[Any, str]:
        """`set priority`: the priority of the messages the options pick; with --queue
        alone, the matching queues' own priority (their share of connection slots) too."""
        priority = int(command.args[0])
        selection = self._selection(command)
        names: list[str] = []
        if set(command.options) == {"queue"}:
            names = self.control.set_priority(command.options["queue"], priority)
        count = self.control.set_message_priority(selection, priority)
        data = {"queues": names, "messages": count, "priority": priority}
        return data, f"{count} message(s) set to priority {priority}"

    async def _show_disabled_sources(self, command: Command) -> tuple[Any, str]:
        rows = self.control.disabled_sources(command.args[0] if command.args else "*")
        return [_jsonable(row) for row in rows], f"{len(rows)} disabled source(s)."

    async def _disable_source(self, command: Command) -> tuple[Any, str]:
        ip, pattern = command.args
        after_text = command.options.get("reenable-after")
        after = parse_interval(after_text) if after_text else None
        if not self.control.queues(pattern):
            raise CommandError(f"disable source: no queue matches {pattern!r}")
        disabled = self.control.disable_source(pattern, ip, after)
        if not disabled:
            raise CommandError(
                f"disable source: {ip} is not a source (smtp-source-host) of the queues of "
                f"{pattern!r}"
            )
        until = f" for {after_text}" if after_text else ""
        return {"disabled": disabled}, f"disabled {len(disabled)} source(s){until}"

    async def _enable_source(self, command: Command) -> tuple[Any, str]:
        ip, pattern = command.args if len(command.args) == 2 else (None, command.args[0])
        count = self.control.enable_sources(pattern, ip)
        return {"enabled": count}, f"enabled {count} source(s)"

    async def _delete(self, command: Command) -> tuple[Any, str]:
        count = await self.control.delete(self._selection(command), dsn="dsn" in command.options)
        dsn = " (DSNs sent)" if "dsn" in command.options else ""
        return {"deleted": count}, f"{count} recipient(s) deleted{dsn}."

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
        if not command.args:
            await self.acct.rotate()
            count = len(getattr(self.acct, "writers", ()))
            return {"rotated": count}, f"rotated {count} acct file(s)"
        name = command.args[0]
        chosen = [
            writer
            for writer in getattr(self.acct, "writers", ())
            if (path := str(writer.status().get("acct_file", "")))
            and (path == os.path.abspath(name) or os.path.basename(path) == name)
        ]
        if not chosen:
            raise CommandError(f"rotate acct: no acct file {name!r}")
        for writer in chosen:
            await writer.rotate()
        return {"rotated": len(chosen)}, f"rotated {len(chosen)} acct file(s)"

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
        return {}, "Traffic counters reset."

    async def _reset_status(self, command: Command) -> tuple[Any, str]:
        return await self._reset_counters(command)


def _windows(counter: Any, now: float) -> dict[str, int]:
    return {
        "lastMin": counter.last(MINUTE, now),
        "lastHr": counter.last(HOUR, now),
        "total": counter.total,
    }


def _top(
    rows: list[dict[str, Any]], sort: str, limit: str | None, default: int = DEFAULT_SHOW_MAX
) -> list[dict[str, Any]]:
    """`--sort` (name: as given; rcpt and size: largest first) and `--maxitems`."""
    if sort == "rcpt":
        rows = sorted(rows, key=lambda r: -r["recipients"])
    elif sort == "size":
        rows = sorted(rows, key=lambda r: -r["kb"])
    return rows[: int(limit) if limit else default]


def _queue_row(queue: QueueView) -> dict[str, Any]:
    return {
        "name": queue.name,
        "kb": round(queue.bytes / 1024, 1),
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


_SUMMED = ("recipients", "messages", "connections", "delivered", "bounced", "deferred", "kb")


def _group(key: str, name: str) -> dict[str, Any]:
    return {key: name, "queues": 0, "paused": 0, **dict.fromkeys(_SUMMED, 0), "lastError": ""}


def _grouped(rows: list[dict[str, Any]], key: str, name: str = "") -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    if not rows:
        return [_group(key, name)]
    for row in rows:
        group = groups.setdefault(row[key], _group(key, row[key]))
        group["queues"] += 1
        group["paused"] += int(row["paused"])
        for field in _SUMMED:
            group[field] += row[field]
        group["kb"] = round(group["kb"], 1)
        group["lastError"] = group["lastError"] or row["lastError"]
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
