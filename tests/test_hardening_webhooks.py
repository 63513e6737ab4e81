"""Hardening of the webhooks: bounded responses, refused target addresses.

Real receivers on loopback: `HugeBodyReceiver` answers every POST with `200 OK` and a
1 GB body it keeps writing until the client hangs up, counting what it managed to send.
"""

from __future__ import annotations

import smtplib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from server_process import ServerProcess, free_port, wait_until
from test_webhook_e2e import acct_records

HUGE = 1 << 30
CHUNK = b"x" * 65536


class HugeBodyReceiver:
    """Answers 200 with a 1 GB body; records each POST's body and the bytes it sent."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.sent: list[int] = []  # body bytes written per answer before the client left
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.bodies.append(body)
                sent = 0
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(HUGE))
                    self.end_headers()
                    while sent < HUGE:
                        self.wfile.write(CHUNK)
                        sent += len(CHUNK)
                except OSError:
                    pass
                with receiver.lock:
                    receiver.sent.append(sent)
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


#: What the server may have read of a 1 GB answer: 64 KiB plus what the loopback
#: socket buffers of both ends hold (a few MB with autotuning); far below 1 GB.
SENT_BOUND = 64 * 2**20


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_huge_webhook_answer_is_cut_and_the_batch_counts_as_delivered(tmp_path: Path) -> None:
    """A 200 with an endless body: the batch is accepted, reading stops, the next batch goes."""
    receiver = HugeBodyReceiver()
    port = free_port()
    conf = f"""
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
http-webhook-allow-addresses 127.0.0.1
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file {tmp_path}/acct.json>
    records d
    http-webhook-url {receiver.url}
    http-webhook-max-interval 1s
</acct-file>
<domain *>
    type discard
</domain>
"""
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)) as server:
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["first@dst.test"], b"Subject: 1\r\n\r\nx\r\n")
            assert wait_until(lambda: len(receiver.sent) >= 1, timeout=60)
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["second@dst.test"], b"Subject: 2\r\n\r\nx\r\n")
            assert wait_until(lambda: any(b"second@" in b for b in receiver.bodies), timeout=60)
            assert wait_until(lambda: len(receiver.sent) >= 2, timeout=60)
            assert server.proc is not None
            assert rss_kib(server.proc.pid) < 400 * 1024
        # The first batch was not retried: a 2xx counts, however long its body.
        assert sum(b"first@" in b for b in receiver.bodies) == 1
        assert max(receiver.sent) < SENT_BOUND
    finally:
        receiver.close()


def test_huge_http_delivery_answer_is_cut_and_counts_as_delivered(tmp_path: Path) -> None:
    """`type http-delivery`: a 200 with an endless body is a `d`, read no further than the cap."""
    receiver = HugeBodyReceiver()
    port = free_port()
    conf = f"""
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
http-webhook-allow-addresses 127.0.0.1
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file {tmp_path}/acct.json>
    records r,d,t
</acct-file>
<domain *>
    type http-delivery
    http-delivery-url {receiver.url}
</domain>
"""
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["one@dst.test"], b"Subject: 1\r\n\r\nx\r\n")
                client.sendmail("a@src.test", ["two@dst.test"], b"Subject: 2\r\n\r\nx\r\n")

            def delivered() -> set[str]:
                return {r["rcpt"] for r in acct_records(tmp_path) if r["type"] == "d"}

            assert wait_until(lambda: delivered() == {"one@dst.test", "two@dst.test"}, 60)
            assert wait_until(lambda: len(receiver.sent) >= 2, timeout=60)
        assert not [r for r in acct_records(tmp_path) if r["type"] == "t"]
        assert max(receiver.sent) < SENT_BOUND
    finally:
        receiver.close()
