"""An MX that defers every session with one 451 reply, for tests of how errors show.

    with RefusingMX("451 4.3.0 <b>busy</b>") as mx:   # 127.0.0.1:mx.port
        ...

It greets with 220, then answers every command (EHLO, HELO, ...) with `reply`, and
QUIT with 221. A client sees a session-level temporary failure, so the queue's last
error becomes `reply`'s text (the web console tests put HTML in it). It runs in its
own thread on 127.0.0.1 and counts the sessions it refused.
"""

from __future__ import annotations

import socketserver
import threading
from typing import Any

from server_process import free_port


class RefusingMX:
    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.port = free_port()
        self.sessions = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self) -> None:
                outer.sessions += 1
                self.wfile.write(b"220 refusing.test ESMTP\r\n")
                for line in self.rfile:
                    if line.strip().upper() == b"QUIT":
                        self.wfile.write(b"221 2.0.0 bye\r\n")
                        return
                    self.wfile.write(outer.reply.encode() + b"\r\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RefusingMX:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
