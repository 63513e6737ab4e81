"""Names of rotated acct files, and which of them `delete-after` has made old.

A rotated file is `<name>-<YYYYMMDDHHMMSS><suffix>` in the acct file's directory
(`acct.csv` -> `acct-20250102030405.csv`), the time being the rotation's, in UTC. The
age used by `delete-after` is read back from that name rather than from the file's
mtime, so it is exact, testable with a fake clock, and unaffected by copies or touches.
Pure: the caller lists the directory and passes the clock's time.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Callable, Iterable

_STAMP = "%Y%m%d%H%M%S"


def split_name(acct_path: str) -> tuple[str, str]:
    """`dir/acct.csv` -> (`acct`, `.csv`)."""
    return os.path.splitext(os.path.basename(acct_path))


def rotated_name(acct_path: str, now: float, exists: Callable[[str], bool]) -> str:
    """A free name (no directory) for `acct_path` rotated at `now`; `-1`, `-2`... if taken."""
    stem, suffix = split_name(acct_path)
    base = f"{stem}-{time.strftime(_STAMP, time.gmtime(now))}"
    name = base + suffix
    n = 0
    while exists(name):
        n += 1
        name = f"{base}-{n}{suffix}"
    return name


def rotated_at(acct_path: str, name: str) -> float | None:
    """When `name` was rotated from `acct_path`, or None if it is no such file."""
    stem, suffix = split_name(acct_path)
    m = re.fullmatch(re.escape(stem) + r"-(\d{14})(?:-\d+)?" + re.escape(suffix), name)
    if m is None:
        return None
    try:
        return float(calendar.timegm(time.strptime(m.group(1), _STAMP)))
    except ValueError:
        return None


def expired_files(
    acct_path: str, names: Iterable[str], now: float, delete_after: float
) -> list[str]:
    """The rotated files among `names` that are older than `delete_after` seconds."""
    out = []
    for name in names:
        when = rotated_at(acct_path, name)
        if when is not None and now - when > delete_after:
            out.append(name)
    return sorted(out)
