"""End to end: the real server (`twistd -n mtaserver`) with its webhooks.

smtplib sends mail to the server on loopback; an `http.server` receiver plays the
accounting webhook endpoint (batches of acct records) and the delivery webhook
endpoint (`type http-delivery`). The crash test kills the server with SIGKILL while
batches are staged but not yet accepted and checks that, after a restart, every
record of the acct file reached the endpoint (de-duplicated by batch id).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_configs import ALL_RECORDS, DISCARD, acct_file, relay_config
from server_process import ServerProcess, free_port, wait_until
from webhook_receiver import Receiver


def acct_lines(directory: Path, name: str = "acct.json") -> list[bytes]:
    """Every record line of the acct file and its rotated files, oldest first."""
    stem, suffix = os.path.splitext(name)
    files = sorted(p for p in directory.glob(f"{stem}-*{suffix}"))
    files.append(directory / name)
    lines: list[bytes] = []
    for path in files:
        if path.exists():
            lines.extend(path.read_bytes().splitlines(keepends=True))
    return lines


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def acct_config(tmp: Path, port: int, url: str, extra: str = "", name: str = "acct.json") -> str:
    """Discard everything; the acct file `name` posts every record to `url` each second."""
    return relay_config(
        tmp,
        port,
        acct_file(
            tmp / name,
            ALL_RECORDS,
            f"http-webhook-url {url}\nhttp-webhook-max-interval 1s\n{extra}",
        ),
        DISCARD,
        settings="http-webhook-allow-addresses 127.0.0.1",
    )


def send(port: int, count: int, start: int = 0) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for i in range(start, start + count):
            client.sendmail(
                "sender@src.test", [f"user{i}@dst.test"], f"Subject: {i}\r\n\r\nbody {i}\r\n"
            )


def test_kill9_between_staging_and_sending_loses_no_record(
    tmp_path: Path, receiver: Receiver
) -> None:
    """SIGKILL with batches staged but unsent: after restart every acct record arrives."""
    receiver.fail_first = 10**9  # refuse everything until the restart
    port = free_port()
    conf = acct_config(tmp_path, port, receiver.url)
    server = ServerProcess(tmp_path, conf, wait_ports=(port,))
    staging = tmp_path / ".acct.json.webhook"
    try:
        server.start()
        send(port, 20)
        assert wait_until(lambda: len(acct_lines(tmp_path)) >= 40)  # r and d for each
        assert wait_until(lambda: any(p.suffix == ".batch" for p in staging.iterdir()))
        assert receiver.wait_for(lambda r: len(r.attempts) >= 1)
        server.kill9()
        assert receiver.posts == []
        receiver.fail_first = 0
        receiver.status = 200
        with receiver.lock:
            receiver.attempts.clear()
        server.start()
        send(port, 10, start=20)
        assert wait_until(lambda: len(acct_lines(tmp_path)) >= 60)
        expected = acct_lines(tmp_path)
        unique: dict[str, bytes] = {}

        def all_arrived(r: Receiver) -> bool:
            for post in r.posts:
                unique[post.headers["x-mtaserver-batch-id"]] = post.body
            got = b"".join(
                unique[k] for k in sorted(unique, key=lambda i: int(i.rsplit("-", 1)[1]))
            )
            return got.splitlines(keepends=True) == expected

        assert receiver.wait_for(all_arrived, timeout=30)
        records = [json.loads(line) for line in expected]
        assert {r["rcpt"] for r in records if r["type"] == "d"} == {
            f"user{i}@dst.test" for i in range(30)
        }
    finally:
        server.stop()


def test_gzip_csv_signed_batches_from_the_real_server(tmp_path: Path, receiver: Receiver) -> None:
    """A CSV acct file with gzip and an HMAC key: header row, valid signature, all records."""
    import gzip
    import hashlib
    import hmac

    port = free_port()
    conf = acct_config(
        tmp_path,
        port,
        receiver.url,
        "http-webhook-transfer-encoding gzip\nhttp-webhook-hmac-key k3y",
        name="acct.csv",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        send(port, 5)
        assert receiver.wait_for(
            lambda r: (
                sum(len(list(csv.DictReader(io.StringIO(p.body.decode())))) for p in r.posts) >= 10
            )
        )
    for post in receiver.posts:
        assert post.headers["content-type"] == "text/csv"
        assert post.headers["content-encoding"] == "gzip"
        digest = hmac.new(b"k3y", post.raw, hashlib.sha256).hexdigest()
        assert post.headers["x-mtaserver-signature"] == f"sha256={digest}"
        assert gzip.decompress(post.raw).startswith(b"type,")
    rows = [row for p in receiver.posts for row in csv.DictReader(io.StringIO(p.body.decode()))]
    assert sorted(r["type"] for r in rows) == ["d"] * 5 + ["r"] * 5


DELIVERY_CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {tmp}/spool
smtp-listener 127.0.0.1:{port}
http-webhook-allow-addresses 127.0.0.1
relay-domain inbound.example
<acct-file {tmp}/acct.json>
    records r,d,b,t,tq
</acct-file>
<domain inbound.example>
    type http-delivery
    http-delivery-url {url}
    http-delivery-extra-headers {tmp}/headers.txt
    retry-after 1s
    max-smtp-out 2
</domain>
"""


def acct_records(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "acct.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_inbound_mail_arrives_at_the_delivery_webhook_intact(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Mail for a relay-domain of type http-delivery is POSTed as JSON, body intact."""
    (tmp_path / "headers.txt").write_text("Authorization: Bearer t0ken\n")
    port = free_port()
    conf = DELIVERY_CONFIG.format(tmp=tmp_path, port=port, url=receiver.url)
    message = (
        "From: Alice <alice@src.test>\r\nTo: bob@inbound.example\r\nSubject: hello\r\n"
        " folded\r\n\r\nLine one\r\n.dot line\r\nLine three \u00e9\r\n"
    ).encode()
    binary = b"Subject: bin\r\n\r\n\xff\xfe raw 8-bit\r\n"
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.ehlo()
            client.sendmail("alice@src.test", ["bob@inbound.example", "carol@inbound.example"],
                            message, mail_options=["BODY=8BITMIME"])  # fmt: skip
            client.sendmail("alice@src.test", ["dave@inbound.example"], binary,
                            mail_options=["BODY=8BITMIME"])  # fmt: skip
        assert receiver.wait_for(lambda r: len(r.posts) == 3)
        assert wait_until(lambda: len([r for r in acct_records(tmp_path) if r["type"] == "d"]) == 3)
    payloads = [json.loads(p.body) for p in receiver.posts]
    assert all(p.headers["content-type"] == "application/json" for p in receiver.posts)
    assert all(p.headers["authorization"] == "Bearer t0ken" for p in receiver.posts)
    by_rcpt = {p["rcpt_to"]: p for p in payloads}
    assert set(by_rcpt) == {"bob@inbound.example", "carol@inbound.example", "dave@inbound.example"}
    bob = by_rcpt["bob@inbound.example"]
    assert bob["msg_from"] == "alice@src.test"
    assert "email_rfc822_is_base64" not in bob["content"]
    sent = bob["content"]["email_rfc822"].encode()
    head, body = message.split(b"\r\n\r\n", 1)
    assert head + b"\r\n" in sent  # the server adds Received, Message-ID and Date around it
    assert sent.split(b"\r\n\r\n", 1)[1] == body
    assert {"Subject": "hello folded"} in bob["content"]["headers"]
    dave = by_rcpt["dave@inbound.example"]
    assert dave["content"]["email_rfc822_is_base64"] is True
    raw = base64.b64decode(dave["content"]["email_rfc822"])
    assert raw.split(b"\r\n\r\n", 1)[1] == binary.split(b"\r\n\r\n", 1)[1]
    delivered = [r for r in acct_records(tmp_path) if r["type"] == "d"]
    assert {r["dlvType"] for r in delivered} == {"http"}


def test_delivery_webhook_500_gives_t_then_retry_and_d(tmp_path: Path) -> None:
    """A 500 is a transient failure (t record); the retry after retry-after is a d, dlvType http."""
    receiver = Receiver(fail_first=1, fail_status=500)
    try:
        (tmp_path / "headers.txt").write_text("")
        port = free_port()
        conf = DELIVERY_CONFIG.format(tmp=tmp_path, port=port, url=receiver.url)
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["x@inbound.example"], b"Subject: s\r\n\r\nhi\r\n")
            assert wait_until(lambda: any(r["type"] == "d" for r in acct_records(tmp_path)))
        records = [r for r in acct_records(tmp_path) if r["rcpt"] == "x@inbound.example"]
        assert [r["type"] for r in records] == ["r", "t", "d"]
        assert records[1]["dsnStatus"].startswith("4.")
        assert "HTTP 500" in records[1]["dsnDiag"]
        assert records[2]["dlvType"] == "http"
        assert len(receiver.attempts) == 2
    finally:
        receiver.close()


def test_webhook_backlog_is_a_metric(tmp_path: Path) -> None:
    """An endpoint that is down shows as a growing backlog on /metrics, never a silent drop."""
    import smtplib
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from server_process import ServerProcess, free_port

    smtp, mgmt, down = free_port(), free_port(), free_port()
    conf = relay_config(
        tmp_path,
        smtp,
        DISCARD,
        acct_file(
            tmp_path / "acct.json",
            "r,d",
            f"http-webhook-url http://127.0.0.1:{down}/hook\nhttp-webhook-max-interval 1s",
        ),
        settings=f"http-mgmt-port 127.0.0.1:{mgmt}\nhttp-access 127.0.0.1 monitor\n"
        "http-webhook-allow-addresses 127.0.0.1",
        identity=False,
    )

    def backlog() -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{mgmt}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            if family.name == "mtaserver_webhook_backlog_batches":
                return sum(sample.value for sample in family.samples)
        return -1.0

    with ServerProcess(tmp_path, conf, wait_ports=(smtp, mgmt)):
        assert backlog() == 0
        with smtplib.SMTP("127.0.0.1", smtp) as client:
            client.sendmail("s@src.test", ["a@dst.test"], b"Subject: b\r\n\r\nb\r\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and backlog() < 1:
            time.sleep(0.2)
        assert backlog() >= 1
