"""Operators can ship JSON logs: the twistd --logger observer mtaserver provides."""

from __future__ import annotations

from pathlib import Path


def test_json_log_observer_writes_json_lines(tmp_path: Path) -> None:
    """`--logger mtaserver.logs.json_observer` gives one JSON event per line."""
    import json
    import subprocess
    import sys

    code = (
        "import sys; from twisted.logger import Logger, globalLogBeginner;"
        "from mtaserver.logs import json_observer;"
        "globalLogBeginner.beginLoggingTo([json_observer()]);"
        "Logger(namespace='t').info('queued {n}', n=3)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert any(e.get("n") == 3 and e.get("log_namespace") == "t" for e in events)
