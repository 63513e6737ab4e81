"""The spool's errors, split by what reception must answer.

Reception maps `SpoolFullError` to `452 4.3.1` (try later, we are full) and every
other `SpoolError` to `451 4.3.0` (try later, local error): the client keeps the
message either way, so nothing acknowledged is ever lost to an I/O error.
"""

from __future__ import annotations

import errno

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class SpoolError(Exception):
    """The spool could not make a message or an event durable."""


class SpoolFullError(SpoolError):
    """No space (ENOSPC, EDQUOT, or below `min_free_space`): answer 452 4.3.1."""


class SpoolIOError(SpoolError):
    """Any other I/O failure of the spool: answer 451 4.3.0."""


class JournalOutcomeUnknown(SpoolIOError):
    """The journal's writer went away before saying whether it journaled our records.

    A reception worker whose master died mid-append: the `Received` may be in the
    journal or not, so the message file is left where it is (recovery matches it to
    its record, or adopts it) rather than removed under a record that may exist.
    """


class CorruptMessageError(SpoolIOError):
    """A message file failed its checks (torn, flipped bytes, wrong id)."""


def spool_error(exc: OSError, doing: str) -> SpoolError:
    """The SpoolError for an OSError raised while `doing` something."""
    cls = SpoolFullError if exc.errno in _FULL_ERRNOS else SpoolIOError
    err = cls(f"{doing}: {exc.strerror or exc}")
    err.__cause__ = exc
    return err
