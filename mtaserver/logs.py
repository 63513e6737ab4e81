"""Log observers for operators: JSON lines for log shippers.

`twistd --logger mtaserver.logs.json_observer -n mtaserver` writes one JSON object per
event to stdout (twisted.logger's own JSON format, so structured fields survive).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_observer() -> ILogObserver:
    """A twistd `--logger` factory: every event as a JSON line on stdout."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
