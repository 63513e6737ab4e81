"""twistd's entry point: `Options` and `makeService`, the one place that composes services.

Only this module reads command-line options, builds endpoints and thread pools and
touches the global reactor; everything else receives what it needs. A config that
does not load stops the process before anything listens, with every `FILE:LINE:
message` on stderr and a non-zero exit status.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from mtaserver.config import ConfigError
from mtaserver.config.reload import ConfigHolder

log = Logger()


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = "Run mtaserver, a mail transfer agent, on a PowerMTA-style config file."
    optParameters = [
        ["config", "c", "etc/mtaserver.conf", "The configuration file."],
    ]


def load_or_exit(path: str) -> ConfigHolder:
    """Load the config; on error print every problem and exit with status 1."""
    try:
        return ConfigHolder.from_file(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"mtaserver: {len(exc.problems)} error(s) in {path}; not started", file=sys.stderr)
        raise SystemExit(1) from None


def install_sighup(holder: ConfigHolder, reactor: Any) -> None:
    """SIGHUP reloads the config on the reactor thread (the usual Unix daemon habit)."""
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(holder.reload))


def makeService(options: Options, reactor: Any = None) -> IService:  # noqa: N802 - twistd's name
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    holder = load_or_exit(options["config"])
    root = MultiService()
    install_sighup(holder, reactor)
    log.info("mtaserver configured from {path}", path=holder.config.path)
    return root
