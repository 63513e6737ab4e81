"""The Transmissions API end to end: the real server, the SparkPost client over HTTPS, a real MX.

The server runs as `twistd -n mtaserver`; the unmodified `sparkpost` client trusts
the test CA through `REQUESTS_CA_BUNDLE`; mail goes out over SMTP to an aiosmtpd
receiver on loopback, and the acct file must show `r` records from the API.
"""

from __future__ import annotations

import csv
import email
import email.policy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, wait_until
from sparkpost import SparkPost
from sparkpost.exceptions import SparkPostAPIException

API_KEY = "test_key_0123456789_0123456789_abcdef"

CONFIG = """
host-name api.example.test
spool {dir}/spool
<transmissions-api-listener 127.0.0.1:{api_port}>
  tls-certificate {pem}
</transmissions-api-listener>
<transmissions-api>
  api-key other_key_0123456789_0123456789_abcdef
  api-key {key}
  log-requests yes
</transmissions-api>
<source {{transmissions-api}}>
  process-x-job yes
</source>
<domain *>
  smtp-hosts [127.0.0.1]:{mx_port}
  use-starttls no
  retry-after 1s
</domain>
<acct-file {dir}/acct.csv>
  records r,d,b,t
</acct-file>
"""


@pytest.fixture
def server(
    tmp_path: Path, ca: trustme.CA, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerProcess, int]]:
    pem = tmp_path / "api.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    api_port = free_port()
    config = CONFIG.format(
        dir=tmp_path, api_port=api_port, pem=pem, key=API_KEY, mx_port=receiver.port
    )
    process = ServerProcess(tmp_path, config, wait_ports=(api_port,))
    with process:
        yield process, api_port


def acct_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_sparkpost_client_sends_through_the_server_to_the_mx(
    server: tuple[ServerProcess, int], receiver: Receiver, tmp_path: Path
) -> None:
    """The SparkPost client over HTTPS gets 200; the MX gets the mail; acct has api r records."""
    process, port = server
    sp = SparkPost(API_KEY, base_uri=f"127.0.0.1:{port}")
    result = sp.transmissions.send(
        recipients=["ok-one@dest.example", {"address": {"email": "ok-two@dest.example"}}],
        html="<p>Hello {{name}}</p>",
        text="Hello {{name}}",
        from_email="Sender <sender@api.example.test>",
        subject="Greetings",
        campaign="spring-sale",
        substitution_data={"name": "friend"},
    )
    assert result["total_accepted_recipients"] == 2
    assert result["total_rejected_recipients"] == 0
    assert result["id"]
    assert wait_until(lambda: len(receiver.messages) == 2), process.read_log()
    delivered = sorted(receiver.messages, key=lambda m: m.rcpt_tos[0])
    assert [m.rcpt_tos for m in delivered] == [["ok-one@dest.example"], ["ok-two@dest.example"]]
    assert delivered[0].mail_from == "sender@api.example.test"
    parsed = email.message_from_bytes(delivered[0].data, policy=email.policy.default)
    assert parsed["Subject"] == "Greetings"
    assert parsed["To"] == "ok-one@dest.example"
    assert parsed["Message-ID"].endswith("@api.example.test>")
    html = parsed.get_body(("html",))
    assert html is not None and "Hello friend" in html.get_content()

    acct = tmp_path / "acct.csv"
    assert wait_until(lambda: len([r for r in acct_rows(acct) if r["type"] == "d"]) == 2)
    received = [r for r in acct_rows(acct) if r["type"] == "r"]
    assert sorted(r["rcpt"] for r in received) == ["ok-one@dest.example", "ok-two@dest.example"]
    assert {r["srcType"] for r in received} == {"api"}
    assert {r["srcMta"] for r in received} == {"127.0.0.1"}
    assert {r["jobId"] for r in received} == {"spring-sale"}
    assert "request POST /api/v1/transmissions from 127.0.0.1: 200" in process.read_log()


def test_sparkpost_client_sees_a_wrong_key_as_403(server: tuple[ServerProcess, int]) -> None:
    """A key that is not configured gets 403 with an errors body the client can read."""
    _, port = server
    sp = SparkPost("x" * 40, base_uri=f"127.0.0.1:{port}")
    with pytest.raises(SparkPostAPIException) as info:
        sp.transmissions.send(
            recipients=["ok@dest.example"], text="hi", from_email="s@api.example.test"
        )
    assert info.value.status == 403
    assert "Forbidden" in info.value.errors[0]


def test_email_rfc822_with_x_job_and_return_path_over_https(
    server: tuple[ServerProcess, int], receiver: Receiver, tmp_path: Path
) -> None:
    """PowerMTA-style rfc822 content: X-Job becomes the jobId and leaves the message."""
    process, port = server
    sp = SparkPost(API_KEY, base_uri=f"127.0.0.1:{port}")
    rfc822 = "From: a@api.example.test\nTo: b@dest.example\nX-Job: job-77\nSubject: raw\n\nbody\n"
    result = sp.transmissions.send(
        recipients=["ok@dest.example"], email_rfc822=rfc822, return_path="bounce@api.example.test"
    )
    assert result["total_accepted_recipients"] == 1
    assert wait_until(lambda: len(receiver.messages) == 1), process.read_log()
    data = receiver.messages[0].data
    assert receiver.messages[0].mail_from == "bounce@api.example.test"
    assert b"X-Job" not in data and b"Subject: raw\r\n" in data and b"body\r\n" in data
    acct = tmp_path / "acct.csv"
    assert wait_until(lambda: any(r["type"] == "r" for r in acct_rows(acct)))
    assert [r["jobId"] for r in acct_rows(acct) if r["type"] == "r"] == ["job-77"]


def test_plain_http_listener_off_loopback_refuses_to_start(tmp_path: Path) -> None:
    """A <transmissions-api-listener> off loopback without tls-certificate exits 1 with a reason."""
    conf = tmp_path / "insecure.conf"
    conf.write_text(
        f"spool {tmp_path}/spool\n"
        "<transmissions-api-listener 0.0.0.0:8585>\n</transmissions-api-listener>\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "mtaserver",
            "--config",
            str(conf),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert "needs tls-certificate (plain HTTP is loopback only)" in result.stderr
    assert "not started" in result.stderr
