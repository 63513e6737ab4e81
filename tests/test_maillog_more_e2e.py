"""The mail log's other switches against the real server: log-tls both ways,
log-disabled-ips, and the Transmissions API's log-requests, log-data and log-tls."""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import trustme
from mx_receiver import Receiver
from server_configs import domain, relay_config
from server_process import ServerProcess, free_port, wait_until
from test_maillog_e2e import assert_well_formed, read, session

API_KEY = "maillog_key_0123456789_0123456789_abc"
WRONG_KEY = "wrong_key_0123456789_0123456789_abcdef"


def test_tls_handshakes_are_logged_both_ways(tmp_path: Path, ca: trustme.CA) -> None:
    """log-tls shows the version and cipher of a client's STARTTLS and of our own."""
    pem = tmp_path / "server.pem"
    ca.issue_cert("mta.test", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    log_file = tmp_path / "mail.log"
    with Receiver(tls_cert=ca.issue_cert("mx.test")) as receiver:
        conf = relay_config(
            tmp_path,
            port,
            domain(
                f"smtp-hosts [127.0.0.1]:{receiver.port}\nuse-starttls yes\nlog-tls yes",
                "dst.test",
            ),
            settings=f"log-file {log_file}\nsmtp-server-tls-certificate {pem}",
            source="log-tls yes",
        )
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            context = ssl.create_default_context()
            ca.configure_trust(context)
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.starttls(context=context)
                client.sendmail("s@src.test", ["ok@dst.test"], b"Subject: t\r\n\r\nt\r\n")
            assert wait_until(lambda: len(receiver.messages) == 1)
            assert wait_until(lambda: "[out 1] tls" in read(log_file))
    text = read(log_file)
    assert_well_formed(log_file)
    assert re.search(r"\[(w\d+ )?in \d+\] tls TLSv1\.[23] [A-Z0-9_-]+$", text, re.M), text
    assert re.search(r"\[out 1\] tls TLSv1\.[23] [A-Z0-9_-]+$", text, re.M), text
    assert ">>>" not in text  # log-commands is off: handshakes only


def test_disabled_source_is_logged(tmp_path: Path) -> None:
    """log-disabled-ips: a disable-source-ip reply pattern writes which source left the queue."""
    port = free_port()
    log_file = tmp_path / "mail.log"
    with Receiver() as receiver:
        conf = relay_config(
            tmp_path,
            port,
            "<virtual-mta v1>\n  smtp-source-host 127.0.0.1 out.src.test\n</virtual-mta>\n",
            "<smtp-pattern-list p>\n  reply /no such user/ disable-source-ip,reenable-after=1h\n"
            "</smtp-pattern-list>\n",
            domain(
                f"smtp-hosts [127.0.0.1]:{receiver.port}\nsmtp-pattern-list p\n"
                "log-disabled-ips yes\nretry-after 1h",
                "dst.test",
            ),
            settings=f"log-file {log_file}",
            source="default-virtual-mta v1",
        )
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("s@src.test", ["hard@dst.test"], b"Subject: t\r\n\r\nt\r\n")
            assert wait_until(lambda: "disabled" in read(log_file))
    assert_well_formed(log_file)
    assert re.search(
        r"\[queue\] source 127\.0\.0\.1 out\.src\.test disabled for dst\.test/v1 \(for 3600s\)$",
        read(log_file),
        re.M,
    )


def test_api_requests_data_and_tls_go_to_the_mail_log(tmp_path: Path, ca: trustme.CA) -> None:
    """<transmissions-api> log-requests, log-data and log-tls write to the log file, escaped."""
    pem = tmp_path / "api.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    api_port = free_port()
    log_file = tmp_path / "mail.log"
    conf = (
        f"host-name api.test\nspool {tmp_path}/spool\nlog-file {log_file}\n"
        f"<transmissions-api-listener 127.0.0.1:{api_port}>\n  tls-certificate {pem}\n"
        "</transmissions-api-listener>\n"
        f"<transmissions-api>\n  api-key {API_KEY}\n  log-requests yes\n  log-data yes\n"
        "  log-tls yes\n</transmissions-api>\n<domain *>\n  type discard\n</domain>\n"
    )
    body = {
        "recipients": [{"address": "ok@dst.test", "metadata": {"note": "a\r\n2026 forged\x1b[0m"}}],
        "content": {"from": "s@api.test", "subject": "hi", "text": "hello"},
    }

    def post(data: bytes, key: str = API_KEY) -> int:
        request = urllib.request.Request(
            f"https://127.0.0.1:{api_port}/api/v1/transmissions",
            data=data,
            headers={"Authorization": key, "Content-Type": "application/json"},
            method="POST",
        )
        context = ssl.create_default_context(cafile=None)
        ca.configure_trust(context)
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    with ServerProcess(tmp_path, conf, wait_ports=(api_port,)):
        assert post(json.dumps(body).encode()) == 200
        assert post(b'{"recipients": [\r\n\x1b') == 400
        assert post(b"{}", key=WRONG_KEY) == 403  # refused by the guard, before the body
        assert wait_until(lambda: read(log_file).count("] request POST") == 3)
    text = read(log_file)
    assert_well_formed(log_file)
    first = session(text, ": 200 ")
    assert re.search(r"^tls TLSv1\.[23] [A-Z0-9_-]+$", first, re.M)
    assert '"note": "a\\\\r\\\\n2026 forged\\\\u001b[0m"' in first  # JSON's own escapes, kept
    answered = r"^request POST /api/v1/transmissions from 127\.0\.0\.1: 200 \S+$"
    assert re.search(answered, first, re.M)
    second = session(text, ": 400 ")
    assert 'data >>> {"recipients": [\\r\\n\\x1b' in second
    assert re.search(r"^request POST /api/v1/transmissions from 127\.0\.0\.1: 400 ", second, re.M)
    assert re.search(r"\] request POST /api/v1/transmissions from 127\.0\.0\.1: 403 \S", text)
    assert API_KEY not in text and WRONG_KEY not in text
