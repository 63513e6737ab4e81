"""The real server, started as a user starts it: `twistd -n mtaserver --config FILE`.

End-to-end tests write a config, start the process, talk to its ports over loopback,
and may `kill9()` and `start()` it again on the same spool.

`free_port()` finds an unused loopback port for a config handed to a subprocess (a
server inside the test process binds port 0 and reads its port back instead). It picks
below the kernel's ephemeral range, so no client socket of any test can be given the
port between the pick and the server's bind; and `ServerProcess.start` retries a
start whose listener found its port taken after all (EADDRINUSE), on the same ports.
"""

from __future__ import annotations

import csv
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as stream:
            return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_EPHEMERAL_LOW = _ephemeral_low()
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range (see the module
    docstring); never the same one twice in this process."""
    low = max(1024, min(_EPHEMERAL_LOW, 32768) - 12000)
    high = max(low + 1000, min(_EPHEMERAL_LOW, 32768))
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # a crowded range: fall back to the kernel's pick
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on 127.0.0.1:`port` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening(port):
            return True
        time.sleep(0.05)
    return False


class ServerProcess:
    """One mtaserver process on `config_text`, its log in `directory/twistd.log`."""

    def __init__(self, directory: Path, config_text: str, wait_ports: tuple[int, ...] = ()):
        self.directory = directory
        self.config = directory / "mtaserver.conf"
        self.config.write_text(config_text)
        self.log = directory / "twistd.log"
        self.wait_ports = wait_ports
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log),
            "mtaserver",
            "--config",
            str(self.config),
        ]

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the process and wait for `wait_ports`; a port found taken (EADDRINUSE: a
        process of another test holds it for a moment) is tried again, up to 3 times."""
        for attempt in range(3):
            env = dict(os.environ, PYTHONUNBUFFERED="1")
            log_start = self.log.stat().st_size if self.log.exists() else 0
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            waiting = self._wait_listening(timeout, log_start)
            if waiting is None:
                return self
            self.stop()
            if waiting != "in use" or attempt == 2:
                raise RuntimeError(f"server did not listen ({waiting}):\n{self.read_log()}")
            time.sleep(1.0)
        raise AssertionError("unreachable")

    def _wait_listening(self, timeout: float, log_start: int) -> str | None:
        """None once every wait port answers; else why not ("in use", "exited", ...)."""
        deadline = time.monotonic() + timeout
        pending = list(self.wait_ports)
        while pending and time.monotonic() < deadline:
            if listening(pending[0]):
                pending.pop(0)
                continue
            if "Address already in use" in self.read_log()[log_start:]:
                return "in use"
            if self.proc is not None and self.proc.poll() is not None:
                output = self.proc.stdout.read() if self.proc.stdout else b""
                return f"exited with {self.proc.returncode}: {output.decode(errors='replace')}"
            time.sleep(0.05)
        return None if not pending else f"nothing on {pending[0]} within {timeout}s"

    def read_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.read_log():
                return True
            time.sleep(0.05)
        return False

    def kill9(self) -> None:
        """SIGKILL, as a crash: nothing gets to clean up.

        Returns once the server's reception workers (killed by the kernel when it dies)
        are gone too: until then their copy of a listening socket still accepts, and a
        client of the restarted server could connect to a dying process.
        """
        if self.proc is not None:
            workers = children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None
            if not wait_until(lambda: not any(alive(pid) for pid in workers)):
                raise RuntimeError(f"reception workers {workers} outlived their master")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (a server's reception workers), from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _parent(int(name)) == pid and alive(int(name)):
            found.append(int(name))
    return sorted(found)


def _stat(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _parent(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[1]) if fields else 0


def alive(pid: int) -> bool:
    """Whether any thread of process `pid` still runs (so its descriptors may be open).

    The thread-group leader turns zombie as soon as it exits, but a SIGKILL'd process
    keeps its descriptors (a listening socket that still accepts) until its last
    thread is gone; one in the middle of an fsync can take a while. So every task
    under /proc/PID/task counts, not the leader's state alone.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stream:
                state = stream.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return True
    return False


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def read_acct(path: Path, record_types: str | None = None) -> list[dict[str, str]]:
    """The rows of a CSV acct file (none yet if it does not exist), of `record_types` only
    if given (e.g. "d" or "rb")."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    if record_types is None:
        return rows
    return [row for row in rows if row["type"] in record_types]
