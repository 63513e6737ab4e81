"""The running configuration and its atomic replacement.

Every part of the server reads `holder.config` when it needs a setting, so a reload is
one reference swap: nothing ever sees half a config. A reload that fails leaves the
running model in place and logs every `FILE:LINE: message`.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from mtaserver.config.grammar import ConfigError
from mtaserver.config.load import load_config
from mtaserver.config.model import Config
from mtaserver.runtime import RunInThread

ReloadListener = Callable[[Config, Config], None]


class ConfigHolder:
    """Owns the current `Config`; `reload()` swaps it, listeners hear of each swap."""

    log = Logger()

    def __init__(self, config: Config) -> None:
        self.config = config
        self._listeners: list[ReloadListener] = []

    @classmethod
    def from_file(cls, path: str) -> ConfigHolder:
        return cls(load_config(path))

    def on_reload(self, listener: ReloadListener) -> None:
        """Call `listener(old, new)` after every successful reload."""
        self._listeners.append(listener)

    def reload(self) -> list[str]:
        """Load the config file again; return its errors (empty on success)."""
        try:
            new = load_config(self.config.path)
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
            new = await run_in_thread(lambda: load_config(path))
        except ConfigError as exc:
            return self._refused(exc)
        self._swap(new)
        return []

    def _refused(self, exc: ConfigError) -> list[str]:
        problems = [str(p) for p in exc.problems]
        for problem in problems:
            self.log.error("config reload failed: {problem}", problem=problem)
        return problems

    def _swap(self, new: Config) -> None:
        old, self.config = self.config, new
        self.log.info("config reloaded from {path}", path=new.path)
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                self.log.failure("reload listener failed")
