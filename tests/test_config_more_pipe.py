"""`<acct-file |cmd>`: a program killed again and again under a stream of records.

The real server (twistd, which reaps its children) feeds a real child process; the
child is killed with SIGKILL while batches wait in the pipe. Every record must reach
some incarnation of the program that handled it (at least once, by the rule of
`mtaserver.accounting.pipe`), however many batches were in the pipe when one died.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import sys
from pathlib import Path

from server_process import ServerProcess, free_port, wait_until

CHILD = """
import os, sys, time
out, pids = sys.argv[1], sys.argv[2]
with open(pids, "a") as stream:
    stream.write(f"{os.getpid()}\\n")
with open(out, "a") as stream:
    for line in sys.stdin:
        stream.write(line)
        stream.flush()
        time.sleep(0.002)  # a slow consumer: batches wait in the pipe
"""


def test_killed_pipe_program_loses_no_record(tmp_path: Path) -> None:
    """Killing the program repeatedly under a stream of records loses none of them."""
    script, out, pids = tmp_path / "child.py", tmp_path / "piped.csv", tmp_path / "pids"
    script.write_text(CHILD)
    port = free_port()
    config = f"""
host-name mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
<source 127.0.0.1>
    always-allow-relaying yes
    max-rcpt-per-message unlimited
</source>
<acct-file |{sys.executable} {script} {out} {pids}>
    records r
</acct-file>
<domain *>
    type discard
</domain>
"""

    def running() -> int:
        return len(pids.read_text().split()) if pids.exists() else 0

    def seen() -> set[str]:
        return set(re.findall(r"\br\d+@dst\.test", out.read_text())) if out.exists() else set()

    total = kills = 0
    with ServerProcess(tmp_path, config, wait_ports=(port,)):
        for _ in range(4):
            assert wait_until(lambda n=kills + 1: running() == n, timeout=60), "not restarted"
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                for _ in range(8):  # several commits: several batches in the pipe at once
                    rcpts = [f"r{total + i}@dst.test" for i in range(50)]
                    client.sendmail("s@src.test", rcpts, b"Subject: x\r\n\r\nbody\r\n")
                    total += len(rcpts)
            before = len(seen())
            assert wait_until(lambda n=before: len(seen()) > n)
            os.kill(int(pids.read_text().split()[-1]), signal.SIGKILL)
            kills += 1
        wanted = {f"r{n}@dst.test" for n in range(total)}
        assert wait_until(lambda: seen() >= wanted, timeout=120), sorted(wanted - seen())[:5]
    assert running() == kills + 1
