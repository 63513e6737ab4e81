"""A reactor as a file descriptor sees it: who asked to be told when it may write.

For tests that drive `doWrite` themselves (the SMTP connections' eager writes, the
worker's pipe to the master): nothing runs by itself.
"""

from __future__ import annotations

from typing import Any


class WatchedReactor:
    """Records `addWriter`/`removeWriter`; readers are accepted and ignored."""

    def __init__(self) -> None:
        self.writers: set[Any] = set()

    def addWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:  # noqa: N802 - Twisted's name
        self.writers.discard(writer)

    def addReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        pass

    def removeReader(self, reader: Any) -> None:  # noqa: N802 - Twisted's name
        pass
