"""Accounting webhook throughput: records/s shipped by `WebhookBatcher` to a local receiver.

Pre-fills an acct file (JSON lines, or CSV with --csv) with realistic `d` records, starts
a receiver in a separate process (`http.server`, HTTP/1.1 keep-alive, counts the
records it accepts) and a batcher on the reactor with real threads and a treq client,
and times from start until the receiver has acknowledged every record. Staging
(copy + fsync) and sending are both inside the measurement.

    .venv/bin/python bench/webhook_bench.py [--records 200000] [--gzip] [--csv]
                                            [--max-size 5M] [--hmac]

Goal: >= 50,000 records/s.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThreadPool

from mtaserver.accounting.records import FIELDS, csv_header, csv_line, json_line
from mtaserver.config.targets import TargetPolicy
from mtaserver.webhooks.batcher import WebhookBatcher
from mtaserver.webhooks.http import PooledClient

RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        n = int(self.headers["Content-Length"])
        body = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text[-1].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def record(i: int) -> dict[str, str]:
    return {f: "" for f in FIELDS} | {
        "type": "d",
        "timeLogged": "2025-01-02 03:04:05+0000",
        "timeQueued": "2025-01-02 03:04:01+0000",
        "orig": "newsletter@sender.example",
        "rcpt": f"user{i}@recipient{i % 977}.example",
        "dsnAction": "relayed",
        "dsnStatus": "2.0.0 (success)",
        "dsnDiag": "smtp;250 2.0.0 OK queued as ABC123",
        "dsnMta": "mx1.recipient.example (192.0.2.10)",
        "srcType": "smtp",
        "srcMta": "app1 (10.0.0.5)",
        "dlvType": "smtp",
        "dlvSourceIp": "10.0.0.1",
        "dlvDestinationIp": "192.0.2.10",
        "dlvSize": "24311",
        "vmta": "vmta1",
        "jobId": "campaign-42",
        "queue": f"recipient{i % 977}.example/vmta1",
        "totalSecondsQueued": "4",
    }


def prefill(path: str, count: int, as_csv: bool) -> int:
    with open(path, "w", encoding="utf-8") as f:
        if as_csv:
            f.write(csv_header(FIELDS))
        for i in range(count):
            r = record(i)
            f.write(csv_line(r, FIELDS) if as_csv else json_line(r, FIELDS))
    return os.path.getsize(path)


async def run(args: argparse.Namespace, port: int, acct: str) -> float:
    pool = reactor.getThreadPool()  # type: ignore[attr-defined]
    pool.adjustPoolsize(4, 16)
    loopback = TargetPolicy((ipaddress.ip_network("127.0.0.0/8"),))  # the local receiver
    client = PooledClient(reactor, targets=lambda: loopback)
    batcher = WebhookBatcher(
        client, reactor, acct_path=acct, url=f"http://127.0.0.1:{port}/hook",
        run_in_thread=lambda f: deferToThreadPool(reactor, pool, f),
        max_bytes=parse_size(args.max_size), max_delay=0.2, poll_interval=0.05,
        gzip_body=args.gzip, hmac_key="bench-key" if args.hmac else None,
    )  # fmt: skip
    start = time.perf_counter()
    await batcher.start()
    while batcher.sent_lines < args.records:
        await task.deferLater(reactor, 0.01, lambda: None)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    await batcher.stop()
    await client.close()
    print(f"batches sent: {batcher.sent_batches}, failures: {batcher.failures}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--csv", action="store_true")
    parser.add_argument("--hmac", action="store_true")
    parser.add_argument("--max-size", default="5M")
    args = parser.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE)
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    with tempfile.TemporaryDirectory() as directory:
        acct = os.path.join(directory, "acct.csv" if args.csv else "acct.json")
        size = prefill(acct, args.records, args.csv)
        result: dict[str, Any] = {}

        def go() -> None:
            d = defer.Deferred.fromCoroutine(run(args, port, acct))
            d.addCallback(lambda elapsed: result.update(elapsed=elapsed))
            d.addErrback(lambda f: result.update(error=f))
            d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

        reactor.callWhenRunning(go)  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
    receiver.terminate()
    receiver.wait()
    if "error" in result:
        result["error"].printTraceback()
        raise SystemExit(1)
    elapsed = result["elapsed"]
    command = " ".join(["bench/webhook_bench.py", *sys.argv[1:]])
    print(f"command: .venv/bin/python {command}")
    print(f"acct file: {args.records} records, {size / 1e6:.1f} MB "
          f"({'csv' if args.csv else 'json'}{', gzip' if args.gzip else ''}"
          f"{', hmac' if args.hmac else ''}), batch limit {args.max_size}")  # fmt: skip
    print(f"shipped in {elapsed:.2f} s: {args.records / elapsed:,.0f} records/s "
          f"({size / elapsed / 1e6:.1f} MB/s); goal >= 50,000 records/s")  # fmt: skip


if __name__ == "__main__":
    main()
