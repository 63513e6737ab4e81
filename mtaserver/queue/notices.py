"""Operator notices about queues: `backoff-notify`, `disabled-source-ip-notify`, and
`backoff-upon-all-sources-disabled`.

PowerMTA mails the addresses of `backoff-notify` when a queue of the domain enters or
leaves backoff mode, and those of `disabled-source-ip-notify` when a source IP of a
queue is disabled (an `smtp-pattern-list` `disable-source-ip`, or a command) and when it
is enabled again. `backoff-upon-all-sources-disabled yes` puts a queue into backoff
mode once every source of its virtual MTA is disabled.

This watcher reads the scheduler's `QueueControl` view every `interval` seconds and
acts on what changed since its last look, rather than being called from each place a
mode or a source changes (patterns, commands, timers): one reader, no new coupling
inside the scheduler. A change that is undone within one interval may go unnoticed.
A notice is a short plain-text message from the postmaster (null reverse path: it
never bounces), spooled and queued like a DSN; it is logged as well.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet import task
from twisted.logger import Logger

from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.control import QueueControl, QueueState
from mtaserver.queue.sources import source_key

log = Logger()

#: Seconds between looks at the queues.
INTERVAL = 1.0


def notice_text(
    host_name: str, postmaster: str, recipients: Iterable[str], subject: str, text: str, now: float
) -> bytes:
    """The notice as a message: ASCII headers (values from config and queue names only)."""

    def clean(value: str) -> str:
        return "".join(c if " " <= c < "\x7f" else "?" for c in value)

    lines = [
        f"From: Mail Delivery System <{clean(postmaster)}>",
        f"To: {', '.join(clean(r) for r in recipients)}",
        f"Subject: {clean(subject)}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: {email.utils.make_msgid(domain=clean(host_name))}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Auto-Submitted: auto-generated",
        "",
        clean(text),
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


class QueueNotices(Service):
    """Watches queue modes and disabled sources; mails and acts as the config says."""

    def __init__(
        self,
        holder: ConfigHolder,
        control: QueueControl,
        store: Any,
        enqueue: Callable[[Envelope], None],
        clock: Any,
        interval: float = INTERVAL,
    ) -> None:
        self.holder = holder
        self.control = control
        self.store = store
        self.enqueue = enqueue
        self.clock = clock
        self.interval = interval
        self.sent = 0
        self._modes: dict[str, str] = {}
        self._disabled: set[tuple[str, str]] = set()
        self._loop = task.LoopingCall(self.look)
        self._loop.clock = clock

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("queue notices stopped", f)
        )

    def stopService(self) -> Any:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def look(self) -> None:
        """One look at the queues (a LoopingCall body: never raises)."""
        try:
            self._look()
        except Exception:
            log.failure("queue notices: a look failed")

    def _look(self) -> None:
        queues = {q.name: q for q in self.control.states()}
        disabled = {(d.queue, d.source) for d in self.control.disabled_sources()}
        self._backoff_when_all_disabled(queues, disabled)
        queues = {q.name: q for q in self.control.states()}
        for name, queue in queues.items():
            before = self._modes.get(name, "normal")
            if queue.mode != before:
                self._mode_changed(queue, before)
        self._modes = {name: q.mode for name, q in queues.items()}
        for name, source in sorted(disabled - self._disabled):
            self._source_changed(queues.get(name), name, source, "disabled")
        for name, source in sorted(self._disabled - disabled):
            self._source_changed(queues.get(name), name, source, "enabled again")
        self._disabled = disabled

    def _settings(self, queue: QueueState) -> Any:
        return self.holder.config.domain_settings(queue.domain, queue.vmta, queue.pool)

    def _backoff_when_all_disabled(
        self, queues: dict[str, QueueState], disabled: set[tuple[str, str]]
    ) -> None:
        """`backoff-upon-all-sources-disabled`: a normal queue with no source left backs off."""
        config = self.holder.config
        for name, queue in queues.items():
            if (
                queue.mode == "backoff"
                or not self._settings(queue).backoff_upon_all_sources_disabled
            ):
                continue
            hosts = config.source_hosts(queue.vmta)
            keys = {source_key(h) for h in hosts} or {source_key(None)}
            if all((name, key) in disabled for key in keys):
                log.info("queue {queue}: every source disabled, backoff mode", queue=name)
                self.control.set_mode(name, "backoff")

    def _mode_changed(self, queue: QueueState, before: str) -> None:
        verb = "entered backoff mode" if queue.mode == "backoff" else "left backoff mode"
        recipients = self._settings(queue).backoff_notify
        text = f"Queue {queue.name} {verb}."
        if queue.last_error:
            text += f"\r\n\r\nLast error: {queue.last_error}"
        self._notify(recipients, f"{queue.name} {verb}", text, "backoff-notify")

    def _source_changed(self, queue: QueueState | None, name: str, source: str, what: str) -> None:
        if queue is None:
            return
        recipients = self._settings(queue).disabled_source_ip_notify
        text = f"Source {source} of queue {name} was {what}."
        self._notify(
            recipients, f"source {source} {what} for {name}", text, "disabled-source-ip-notify"
        )

    def _notify(self, recipients: tuple[str, ...], subject: str, text: str, why: str) -> None:
        if not recipients:
            return
        log.info(
            "{why}: {subject} (mailed to {to})", why=why, subject=subject, to=", ".join(recipients)
        )
        config = self.holder.config
        now = self.clock.seconds()
        postmaster = config.settings.postmaster or f"postmaster@{config.settings.host_name}"
        body = notice_text(config.settings.host_name, postmaster, recipients, subject, text, now)
        writer = self.store.begin()
        writer.write(body)
        envelope = Envelope(
            msg_id=writer.msg_id,
            sender="",
            recipients=tuple(Recipient(r, notify="NEVER") for r in recipients),
            time_queued=now,
            src_type="smtp",
            size=len(body),
            is_dsn=True,  # never reported on again
        )

        def committed(_: object) -> None:
            self.sent += 1
            self.enqueue(envelope)

        d = writer.commit(envelope)
        d.addCallbacks(committed, lambda f: log.failure("{why} notice not spooled", f, why=why))
