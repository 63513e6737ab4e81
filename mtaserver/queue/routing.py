"""Which queue a recipient goes to: `domain/vmta`, PowerMTA's queue names.

A message names a virtual MTA (X-Virtual-MTA, `default-virtual-mta`, or the API) or a
`<virtual-mta-pool>`; a pool spreads its messages over its members in turn. Without
one, the queue's vmta is `{default}`, as PowerMTA shows it.
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Iterator

from mtaserver.config.model import Config

DEFAULT_VMTA = "{default}"


def queue_name(domain: str, vmta: str) -> str:
    return f"{domain.lower()}/{vmta}"


def split_queue_name(name: str) -> tuple[str, str]:
    """`gmail.com/vmta1` -> (gmail.com, vmta1); a bare domain means every vmta (`*`)."""
    domain, _, vmta = name.partition("/")
    return domain.lower(), vmta or "*"


def queue_matches(pattern: str, name: str) -> bool:
    """`sink.test/*`, `*/vmta1`, `*` and exact names, as in `pause queue`."""
    if pattern in ("*", "*/*"):
        return True
    pattern_domain, pattern_vmta = split_queue_name(pattern)
    domain, vmta = split_queue_name(name)
    return fnmatch.fnmatchcase(domain, pattern_domain) and fnmatch.fnmatchcase(vmta, pattern_vmta)


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class VmtaChooser:
    """Resolves a message's vmta or pool name to one vmta, pools in round robin."""

    def __init__(self) -> None:
        self._cycles: dict[tuple[str, tuple[str, ...]], Iterator[str]] = {}

    def choose(self, config: Config, name: str | None) -> tuple[str, str | None]:
        """Return (vmta, pool) for a name given with a message."""
        if not name:
            return DEFAULT_VMTA, None
        pool = config.vmta_pools.get(name)
        if pool is None or not pool.virtual_mta:
            return name, None
        key = (name, pool.virtual_mta)
        if key not in self._cycles:
            self._cycles[key] = itertools.cycle(pool.virtual_mta)
        return next(self._cycles[key]), name
