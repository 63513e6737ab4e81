"""`MailLogService`: the master's mail log, following the config, rotating on time and size.

Built by `tap.compose` before anything that writes to the log; its `maillog` is handed
to the SMTP listeners, the deliverer, the scheduler and the Transmissions API. The
file is opened at start (a `log-file` that cannot be opened stops the server with a
clear message rather than losing the log silently). A reload applies `log-file` (a new
path is opened by the next batch; removing it sends lines to the service log),
`log-rotate`, `log-max-size` and `log-file-world-readable` live. This process is the
rotation owner: midnight rotation while `log-auto-rotation` is on, `log-max-size`
checks every `SIZE_CHECK` seconds, and `rotate log`. The last lines are written
synchronously after the reactor stops, when the thread pool may be gone.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.maillog.log import MailLog
from mtaserver.maillog.logfile import LogFile, next_midnight
from mtaserver.runtime import DelayedCall, RunInThread

log = Logger()

SIZE_CHECK = 10.0  # seconds between log-max-size checks (other processes' growth)


class MailLogService(Service):
    """Owns the master process's `LogFile` and keeps it in step with the config."""

    name = "maillog"

    def __init__(
        self,
        holder: ConfigHolder,
        reactor: Any,
        run_in_thread: RunInThread,
        *,
        owner: bool = True,
        process: str = "",
    ) -> None:
        """`owner` False (and a `process` name such as ``w1``) for a reception worker:
        it appends to the same file, follows rotations, and never rotates itself."""
        self.holder = holder
        self.reactor = reactor
        self.run_in_thread = run_in_thread
        self.owner = owner
        self.maillog = MailLog(reactor, process=process)
        self._midnight: DelayedCall | None = None
        self._size_check = task.LoopingCall(self._check_size)
        self._size_check.clock = reactor
        self._apply(holder.config, starting=True)
        holder.on_reload(lambda old, new: self._apply(new))
        if owner:
            holder.check_at_start(check_log_file)

    def _apply(self, config: Config, starting: bool = False) -> None:
        settings = config.settings
        path = settings.log_file
        current = self.maillog.file
        if path is None:
            if current is not None:
                current.flush().addCallback(lambda _: self.run_in_thread(current.close_now))
            self.maillog.file = None
            return
        if current is None or current.path != path:
            new = LogFile(path, self.run_in_thread, self.reactor, owner=self.owner)
            if starting:
                try:  # at start: an unusable path stops the server, saying why
                    new.open_now()
                except OSError as exc:
                    raise ValueError(f"log-file {path}: {exc.strerror or exc}") from None
            elif current is not None:  # on reload the first batch opens it, off the reactor
                current.flush().addCallback(lambda _: self.run_in_thread(current.close_now))
            self.maillog.file = new
        file = self.maillog.file
        assert file is not None
        file.keep = settings.log_rotate
        file.max_size = settings.log_max_size
        file.world_readable = settings.log_file_world_readable

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        if self.owner:
            self._arm_midnight()
            self._size_check.start(SIZE_CHECK, now=False).addErrback(
                lambda f: log.failure("mail log size check stopped", f)
            )
        self.reactor.addSystemEventTrigger("after", "shutdown", self._close)

    def stopService(self) -> defer.Deferred[None]:  # noqa: N802 - Twisted's name
        super().stopService()
        if self._midnight is not None and self._midnight.active():
            self._midnight.cancel()
        if self._size_check.running:
            self._size_check.stop()
        if self.maillog.file is None:
            return defer.succeed(None)
        return self.maillog.file.flush()

    def _close(self) -> None:
        if self.maillog.file is not None:
            self.maillog.file.close_now()

    def _arm_midnight(self) -> None:
        delay = next_midnight(self.reactor.seconds()) - self.reactor.seconds()
        self._midnight = self.reactor.callLater(delay, self._at_midnight)

    def _at_midnight(self) -> None:
        try:
            if self.holder.config.settings.log_auto_rotation:
                self.maillog.rotate()
        finally:
            self._arm_midnight()

    def _check_size(self) -> None:
        if self.maillog.file is not None:
            self.maillog.file.check_size()


def check_log_file(config: Config) -> list[ConfigProblem]:
    """`log-file` can be opened as a start would open it (a start check: `test config`).

    Without side effects: the path, if it exists, must be a writable file; else its
    nearest existing ancestor must be a writable directory (a start makes the rest).
    """
    path = config.settings.log_file
    if path is None:
        return []
    problem = None
    if os.path.exists(path):
        if not os.path.isfile(path):
            problem = "not a file"
        elif not os.access(path, os.W_OK):
            problem = "not writable"
    else:
        ancestor = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            problem = f"{ancestor} is not a directory"
        elif not os.access(ancestor, os.W_OK | os.X_OK):
            problem = f"cannot create it under {ancestor}"
    if problem is None:
        return []
    return [ConfigProblem(config.path, 0, f"log-file {path}: {problem}")]
