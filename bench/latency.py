"""P6: the time from MAIL (and from the end of DATA) to the `250`, measured under load.

A few plain-socket SMTP sessions (threads) send 5 KB messages back to back while
smtp-source loads the server. For each message the body goes out first; the clock
starts just before the final ".\r\n" is written and stops when the reply line
arrives, so the figure is the server's commit latency (for mtaserver: spool file,
directory and journal fsync'd) plus one loopback round trip. The issue's figure is
the whole transaction, MAIL FROM sent to the `250` after DATA read (`transactions`).

The probe's sockets set TCP_NODELAY. Without it, Nagle's algorithm holds the small
".\r\n" until the body's last segment is acknowledged, and the server's delayed ACK
takes 40 ms to come. That put a floor of about 45 ms under every sample, for both
MTAs alike. mtaserver's own commit, timed inside its reception worker in the same
load, took 6.7 ms at p50 and 23 ms at p99.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def _body(size: int) -> bytes:
    line = b"X" * 78 + b"\r\n"
    head = b"From: probe@source.test\r\nTo: rcpt@sink.test\r\nSubject: latency probe\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


class _Session:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.expect(b"220")
        self.command(b"EHLO probe.localdomain", b"250")

    def reply(self) -> bytes:
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed")
            if line[3:4] != b"-":
                return line

    def expect(self, code: bytes) -> None:
        line = self.reply()
        if not line.startswith(code):
            raise RuntimeError(f"expected {code!r}, got {line!r}")

    def command(self, line: bytes, code: bytes) -> None:
        self.sock.sendall(line + b"\r\n")
        self.expect(code)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


class Probe:
    """`connections` sessions measuring end-of-DATA latency until `stop()`."""

    def __init__(self, port: int, connections: int = 2, size: int = 5000) -> None:
        self.port = port
        self.connections = connections
        self.body = _body(size)
        self.samples: list[float] = []
        #: MAIL FROM sent .. `250` after DATA read: the whole transaction's latency.
        self.transactions: list[float] = []
        self.errors = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, daemon=True) for _ in range(connections)
        ]

    def start(self) -> Probe:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[float]:
        """Stop the sessions; the end-of-DATA samples, sorted (`transactions` sorted too)."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.transactions.sort()
        return sorted(self.samples)

    def _run(self) -> None:
        session: _Session | None = None
        while not self._stopping.is_set():
            try:
                if session is None:
                    session = _Session(self.port)
                began = time.perf_counter()
                session.command(b"MAIL FROM:<probe@source.test>", b"250")
                session.command(b"RCPT TO:<rcpt@sink.test>", b"250")
                session.command(b"DATA", b"354")
                session.sock.sendall(self.body)
                started = time.perf_counter()
                session.sock.sendall(b".\r\n")
                line = session.reply()
                ended = time.perf_counter()
                if not line.startswith(b"250"):
                    raise RuntimeError(f"DATA refused: {line!r}")
                with self._lock:
                    self.samples.append(ended - started)
                    self.transactions.append(ended - began)
            except (OSError, RuntimeError, ConnectionError):
                with self._lock:
                    self.errors += 1
                if session is not None:
                    session.sock.close()
                session = None
                time.sleep(0.1)
        if session is not None:
            session.close()


def percentile(sorted_samples: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples (p in 0..100)."""
    if not sorted_samples:
        return float("nan")
    rank = max(1, min(len(sorted_samples), round(p / 100 * len(sorted_samples) + 0.5)))
    return sorted_samples[rank - 1]
