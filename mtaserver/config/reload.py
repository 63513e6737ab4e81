"""The running configuration and its atomic replacement.

Every part of the server reads `holder.config` when it needs a setting, so a reload is
one reference swap: nothing ever sees half a config. A reload that fails leaves the
running model in place and logs every `FILE:LINE: message`.

Services that build something from the config (a listener, a signer, an acct file
writer) subscribe with `on_reload`. A few directives cannot change under a running
server (`registry.RESTART_ONLY`): a reload that changes one still applies the rest,
and names what waits for a restart in its log line and in `last_restart_only`, which
the `reload` command puts in its reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mtaserver.config import registry as reg
from mtaserver.config.grammar import ConfigError, ConfigProblem
from mtaserver.config.load import load_config
from mtaserver.config.model import Config
from mtaserver.runtime import RunInThread

ReloadListener = Callable[[Config, Config], None]
#: Checks a loaded config against what only a service can judge (a key file that
#: does not parse); runs in the loading thread; returns problems, empty when fine.
ReloadCheck = Callable[[Config], list[ConfigProblem]]


def directive_value(config: Config, directive: str) -> Any:
    """Everything `directive` says in `config`, comparable with `==` across configs.

    Only the scopes restart-only directives live in are walked: global settings,
    listeners, and `<acct-file>` (keyed by path).
    """
    spec = reg.DIRECTIVES[directive]
    field = reg.field_name(directive)
    if reg.GLOBAL in spec.scopes:
        return getattr(config.settings, field)
    if spec.scopes & {reg.SMTP_LISTENER, reg.API_LISTENER}:
        listeners = config.settings.smtp_listener + config.api_listeners
        return tuple((listener.address, getattr(listener, field)) for listener in listeners)
    if reg.ACCT_FILE in spec.scopes:
        return {acct.path: getattr(acct, field) for acct in config.acct_files}
    raise KeyError(f"{directive}: no comparison for scopes {sorted(spec.scopes)}")


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The restart-only directives whose value differs between configs."""
    return [
        name
        for name in sorted(reg.RESTART_ONLY)
        if directive_value(old, name) != directive_value(new, name)
    ]


class ConfigHolder:
    """Owns the current `Config`; `reload()` swaps it, listeners hear of each swap."""

    log = Logger()

    def __init__(self, config: Config) -> None:
        self.config = config
        self._listeners: list[ReloadListener] = []
        self._checks: list[ReloadCheck] = []
        self._start_checks: list[ReloadCheck] = []
        #: What the last successful reload changed but could not apply.
        self.last_restart_only: list[str] = []

    @classmethod
    def from_file(cls, path: str) -> ConfigHolder:
        return cls(load_config(path))

    def on_reload(self, listener: ReloadListener) -> None:
        """Call `listener(old, new)` after every successful reload."""
        self._listeners.append(listener)

    def check_before_reload(self, check: ReloadCheck) -> None:
        """Refuse a reload for which `check(new)` finds problems (called off the reactor)."""
        self._checks.append(check)

    def check_at_start(self, check: ReloadCheck) -> None:
        """A check that refuses a start (and `test config`), not a reload.

        For what a reload deliberately survives: a certificate file that does not load
        is logged at reload and the old one kept, but a server cannot start without it.
        """
        if check not in self._start_checks:  # two owners may register the same check
            self._start_checks.append(check)

    def start_problems(self, config: Config) -> list[ConfigProblem]:
        """What every registered check (reload and start) finds in `config`.

        Startup runs this once the services have registered their checks, so a start
        refuses exactly what `test config` (`load_checked`) refuses.
        """
        return [problem for check in self._checks + self._start_checks for problem in check(config)]

    def load_checked(self, path: str) -> Config:
        """Load `path` and run every service check: what startup accepts.

        `test config` calls this, so a config it passes always starts (and reloads: the
        start checks are the reload checks and a few more).
        """
        new = self._load(path)
        problems = [problem for check in self._start_checks for problem in check(new)]
        if problems:
            raise ConfigError(problems)
        return new

    def _load(self, path: str) -> Config:
        """Load and check `path`; raises ConfigError with every problem."""
        new = load_config(path)
        problems = [problem for check in self._checks for problem in check(new)]
        if problems:
            raise ConfigError(problems)
        return new

    def reload(self) -> list[str]:
        """Load the config file again; return its errors (empty on success)."""
        try:
            new = self._load(self.config.path)
        except ConfigError as exc:
            return self._refused(exc)
        self._swap(new)
        return []

    async def reload_in_thread(self, run_in_thread: RunInThread) -> list[str]:
        """`reload()` with the file reading and parsing off the reactor thread.

        Only the swap happens on the reactor, so a running server never stalls on a
        slow disk or a large include tree while it reloads.
        """
        path = self.config.path
        try:
            new = await run_in_thread(lambda: self._load(path))
        except ConfigError as exc:
            return self._refused(exc)
        self._swap(new)
        return []

    def _refused(self, exc: ConfigError) -> list[str]:
        problems = [str(p) for p in exc.problems]
        for problem in problems:
            self.log.error("config reload failed: {problem}", problem=problem)
        return problems

    def log_warnings(self, config: Config) -> None:
        """One warning a directive accepted without effect (no effect / not yet)."""
        for warning in config.warnings:
            self.log.warn("config: {warning}", warning=str(warning))

    def _swap(self, new: Config) -> None:
        old, self.config = self.config, new
        self.log_warnings(new)
        self.last_restart_only = restart_only_changes(old, new)
        if self.last_restart_only:
            self.log.warn(
                "config reloaded from {path}; restart needed for: {directives}",
                path=new.path,
                directives=", ".join(self.last_restart_only),
            )
        else:
            self.log.info("config reloaded from {path}", path=new.path)
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                self.log.failure("reload listener failed")
