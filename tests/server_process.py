"""The real server, started as a user starts it: `twistd -n mtaserver --config FILE`.

End-to-end tests write a config, start the process, talk to its ports over loopback,
and may `kill9()` and `start()` it again on the same spool. `free_port()` finds an
unused loopback port for a config (bind, read, close: a small race we accept).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
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
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for port in self.wait_ports:
            if not wait_for_port(port, timeout):
                self.stop()
                raise RuntimeError(f"server did not listen on {port}:\n{self.read_log()}")
        return self

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
        """SIGKILL, as a crash: nothing gets to clean up."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None

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
