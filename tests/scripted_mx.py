"""A raw-socket SMTP receiver that misbehaves on purpose, for outbound hardening tests.

aiosmtpd (tests/mx_receiver.py) speaks correct SMTP; the bugs this one provokes need
a server that does not: it answers DATA with 250, sends two replies after the dot, or
talks while the client is idle. Each connection gets a mode from `modes(n)` (n counts
connections from 0), so a test can misbehave on the first connection only and check
that the next message goes out properly over a fresh one.

    mx = ScriptedMx(lambda n: "data-250" if n == 0 else "normal")
    ... smtp-hosts [127.0.0.1]:{mx.port} ...
    mx.commands(1)      # command lines of connection 1, as received (bytes, no CRLF)
    mx.bodies           # (connection, body) for each message whose body arrived
    mx.closed           # connections the client closed (EOF or reset)
    mx.stop()

Modes: `normal`; `data-250` (DATA answered `250` instead of `354`); `double-250` (two
`250` after the dot, in one write); `idle-unsolicited` (after the dot's `250`, a
moment later, an unsolicited `250` while the client has nothing outstanding). The
reply to RCPT is `rcpt_reply` (e.g. a crafted one with a bare CR). It offers
PIPELINING, DSN and 8BITMIME. `dot_delay` holds the reply to the dot that long.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable


class ScriptedMx:
    def __init__(
        self,
        modes: Callable[[int], str] = lambda n: "normal",
        rcpt_reply: bytes = b"250 2.1.5 ok",
        dot_delay: float = 0.0,
    ) -> None:
        self.modes = modes
        self.rcpt_reply = rcpt_reply
        self.dot_delay = dot_delay
        self.lines: list[tuple[int, bytes]] = []
        self.bodies: list[tuple[int, bytes]] = []
        self.closed: set[int] = set()
        self.unsolicited_sent: set[int] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._count = 0
        self._stopping = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def commands(self, connection: int) -> list[bytes]:
        return [line for n, line in self.lines if n == connection]

    @property
    def connections(self) -> int:
        return self._count

    def stop(self) -> None:
        self._stopping = True
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> ScriptedMx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            number = self._count
            self._count += 1
            self._sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, n: int) -> None:
        mode = self.modes(n)
        stream = conn.makefile("rb")
        try:
            conn.sendall(b"220 scripted.test ESMTP\r\n")
            while True:
                raw = stream.readline()
                if not raw:
                    break
                line = raw.rstrip(b"\r\n")
                self.lines.append((n, line))
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    conn.sendall(
                        b"250-scripted.test\r\n250-PIPELINING\r\n250-DSN\r\n250 8BITMIME\r\n"
                    )
                elif verb == b"RCPT":
                    conn.sendall(self.rcpt_reply + b"\r\n")
                elif verb == b"DATA":
                    if mode == "data-250":
                        conn.sendall(b"250 2.0.0 ok\r\n")
                        continue
                    conn.sendall(b"354 go ahead\r\n")
                    body = b""
                    while (chunk := stream.readline()) not in (b".\r\n", b""):
                        body += chunk
                    self.bodies.append((n, body))
                    if self.dot_delay:
                        time.sleep(self.dot_delay)
                    if mode == "double-250":
                        conn.sendall(b"250 2.0.0 queued\r\n250 2.0.0 queued again\r\n")
                    else:
                        conn.sendall(b"250 2.0.0 queued\r\n")
                    if mode == "idle-unsolicited":
                        time.sleep(0.3)
                        conn.sendall(b"250 2.0.0 nobody asked\r\n")
                        self.unsolicited_sent.add(n)
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    break
                else:
                    conn.sendall(b"250 2.0.0 ok\r\n")
        except OSError:
            pass
        finally:
            self.closed.add(n)
            with contextlib.suppress(OSError):
                conn.close()
