"""A real HTTP(S) receiver on 127.0.0.1 for webhook tests: records every POST.

`Receiver` runs `http.server.ThreadingHTTPServer` in a daemon thread. Its behaviour is
set from the test: `fail_first` answers that many POSTs with `fail_status`,
`delay` sleeps before answering (to provoke timeouts), `status` is the answer
otherwise. With `tls=(cert_pem_path, key_pem_path)` it serves HTTPS, and with
`client_ca` it requires a client certificate issued by that CA.
"""

from __future__ import annotations

import gzip
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs


@attrs.define
class Post:
    path: str
    headers: dict[str, str]
    raw: bytes  # the body as received

    @property
    def body(self) -> bytes:
        """The body with any Content-Encoding: gzip undone."""
        if self.headers.get("content-encoding") == "gzip":
            return gzip.decompress(self.raw)
        return self.raw


class Receiver:
    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_status: int = 500,
        delay: float = 0.0,
        delay_first: int = 0,
        tls: tuple[str, str] | None = None,
        client_ca: str | None = None,
    ) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.delay = delay
        self.delay_first = delay_first  # only the first N posts are delayed (0 = all)
        self.status = 200
        self.posts: list[Post] = []  # accepted with a 2xx
        self.attempts: list[Post] = []  # every POST, answered or not
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                with receiver.lock:
                    receiver.attempts.append(post)
                    n = len(receiver.attempts)
                    if receiver.delay and (not receiver.delay_first or n <= receiver.delay_first):
                        delay = receiver.delay
                    else:
                        delay = 0.0
                    failing = n <= receiver.fail_first
                    status = receiver.fail_status if failing else receiver.status
                if delay:
                    time.sleep(delay)
                if 200 <= status < 300:
                    with receiver.lock:
                        receiver.posts.append(post)
                reply = b"ok" if status < 300 else b"try later"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            if client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return True
            time.sleep(0.02)
        with self.lock:
            return bool(predicate(self))

    def lines(self) -> list[bytes]:
        """Every record line accepted, in order, CSV header rows dropped."""
        out = []
        for post in self.posts:
            body_lines = post.body.splitlines(keepends=True)
            if post.headers.get("content-type", "").startswith("text/csv"):
                body_lines = body_lines[1:]
            out.extend(body_lines)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
