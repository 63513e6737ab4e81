"""End to end: the real server (`twistd -n mtaserver`) relaying to real receivers.

smtplib sends, the server spools and delivers to an aiosmtpd MX on loopback (found
through `smtp-hosts` or a twisted.names DNS server), and the acct file tells what
happened to each recipient. Crash tests kill the process and restart it on the same
spool.
"""

from __future__ import annotations

import email
import email.policy
import smtplib
import threading
from pathlib import Path

import pytest
from dns_server import start_dns_server_in_thread
from mx_receiver import Receiver
from server_configs import acct_file, domain, relay_config, write_rsa_key
from server_process import ServerProcess, free_port, read_acct, wait_until


def config(tmp_path: Path, smtp_port: int, domain_block: str, extra: str = "") -> str:
    return relay_config(
        tmp_path,
        smtp_port,
        acct_file(tmp_path / "acct.csv"),
        domain(f"retry-after 1s\nmax-smtp-out 5\n{domain_block}"),
        extra,
        source="process-x-job yes",
    )


def acct(tmp_path: Path) -> list[dict[str, str]]:
    return read_acct(tmp_path / "acct.csv")


def test_relay_records_r_d_b_t_and_sends_a_dsn(tmp_path: Path, receiver: Receiver) -> None:
    """Per-recipient 250/451/550 give d, t (then retries) and b, and the sender gets a DSN."""
    port = free_port()
    conf = config(tmp_path, port, f"smtp-hosts [127.0.0.1]:{receiver.port}\nbounce-after 1h")
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "sender@src.test",
                ["ok@dst.test", "soft@dst.test", "hard@dst.test"],
                b"Subject: three\r\nX-Job: campaign7\r\n\r\nhello\r\n",
            )
        assert wait_until(lambda: any(r["type"] == "b" for r in acct(tmp_path)))
        assert wait_until(lambda: len([r for r in acct(tmp_path) if r["type"] == "t"]) >= 2)
        # the DSN goes to sender@src.test, which routes to the same receiver
        assert wait_until(lambda: any(m.mail_from in ("", "<>") for m in receiver.messages))
    records = acct(tmp_path)
    by_type = {t: [r for r in records if r["type"] == t] for t in ("r", "d", "b", "t")}
    assert {r["rcpt"] for r in by_type["r"] if r["orig"]} == {
        "ok@dst.test",
        "soft@dst.test",
        "hard@dst.test",
    }
    (delivered,) = [r for r in by_type["d"] if r["rcpt"] == "ok@dst.test"]
    assert delivered["dlvDestinationIp"] == "127.0.0.1"
    assert delivered["jobId"] == "campaign7"
    assert delivered["dsnStatus"].startswith("2.")
    (bounced,) = by_type["b"]
    assert (bounced["rcpt"], bounced["dsnStatus"], bounced["bounceCat"]) == (
        "hard@dst.test",
        "5.1.1 (bad destination mailbox address)",
        "bad-mailbox",
    )
    assert all(r["rcpt"] == "soft@dst.test" for r in by_type["t"])
    original = [m for m in receiver.messages if m.mail_from == "sender@src.test"]
    assert [m.rcpt_tos for m in original][0] == ["ok@dst.test"]
    assert b"X-Job" not in original[0].data
    dsn = next(m for m in receiver.messages if m.mail_from in ("", "<>"))
    assert dsn.rcpt_tos == ["sender@src.test"]
    report = email.message_from_bytes(dsn.data, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    text = status.as_string()
    assert "Final-Recipient: rfc822; hard@dst.test" in text
    assert "Status: 5.1.1" in text


def test_mx_lookup_nxdomain_and_null_mx(tmp_path: Path, receiver: Receiver) -> None:
    """MX from a twisted.names server routes mail; NXDOMAIN and null MX bounce."""
    records = {
        "mx-ok.test": [("MX", 10, "mx1.mx-ok.test")],
        "mx1.mx-ok.test": [("A", "127.0.0.1")],
        "nullmx.test": [("MX", 0, ".")],
    }
    dns_port, stop_dns = start_dns_server_in_thread(records)
    port = free_port()
    conf = config(
        tmp_path,
        port,
        f"default-smtp-port {receiver.port}\nmx-allow-private-addresses yes",
        extra=f"name-server 127.0.0.1:{dns_port}",
    )
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("s@src.test", ["a@mx-ok.test"], b"Subject: x\r\n\r\nx\r\n")
                client.sendmail(
                    "s@mx-ok.test", ["b@nosuch.test", "c@nullmx.test"], b"Subject: y\r\n\r\ny\r\n"
                )
            assert wait_until(lambda: len([r for r in acct(tmp_path) if r["type"] == "b"]) == 2)
            assert wait_until(lambda: any(r["type"] == "d" for r in acct(tmp_path)))
    finally:
        stop_dns()
    bounces = {r["rcpt"]: r for r in acct(tmp_path) if r["type"] == "b"}
    assert bounces["b@nosuch.test"]["bounceCat"] == "bad-domain"
    assert bounces["b@nosuch.test"]["dsnStatus"] == "5.1.2 (bad destination system address)"
    assert bounces["c@nullmx.test"]["dsnStatus"] == "5.1.10 (recipient address has null MX)"
    assert any(m.rcpt_tos == ["a@mx-ok.test"] for m in receiver.messages)


def test_kill9_with_400_waiting_then_all_delivered_after_restart(tmp_path: Path) -> None:
    """400 messages queued for a down receiver survive kill -9 and are all delivered later."""
    down_port = free_port()
    port = free_port()
    conf = config(tmp_path, port, f"smtp-hosts [127.0.0.1]:{down_port}\nretry-after 2s")
    server = ServerProcess(tmp_path, conf, wait_ports=(port,)).start()
    try:
        with smtplib.SMTP("127.0.0.1", port) as client:
            for n in range(400):
                client.sendmail("s@src.test", [f"r{n}@dst.test"], f"Subject: m{n}\r\n\r\n{n}\r\n")
        server.kill9()
        with Receiver() as late:
            # the receiver now listens where the config points
            late_conf = conf.replace(f":{down_port}", f":{late.port}")
            server = ServerProcess(tmp_path, late_conf, wait_ports=(port,)).start()
            assert wait_until(lambda: len(late.messages) >= 400, timeout=120), len(late.messages)
            subjects = {email.message_from_bytes(m.data)["Subject"] for m in late.messages}
            assert subjects == {f"m{n}" for n in range(400)}
            assert wait_until(lambda: len([r for r in acct(tmp_path) if r["type"] == "d"]) >= 400)
    finally:
        server.stop()
    delivered = {r["rcpt"] for r in acct(tmp_path) if r["type"] == "d"}
    assert delivered == {f"r{n}@dst.test" for n in range(400)}


@pytest.mark.timeout(300)
def test_kill9_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Messages acknowledged with 250 before a kill -9 are all delivered after restart."""
    down_port = free_port()
    port = free_port()
    conf = config(tmp_path, port, f"smtp-hosts [127.0.0.1]:{down_port}")
    server = ServerProcess(tmp_path, conf, wait_ports=(port,)).start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = 0
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                while not stop.is_set() and n < 50:  # bounded work, however fast the machine
                    token = f"w{worker}-{n}"
                    client.sendmail(
                        "s@src.test", [f"{token}@dst.test"], f"Subject: {token}\r\n\r\n{token}\r\n"
                    )
                    with lock:
                        acknowledged.append(token)
                    n += 1
        except (smtplib.SMTPException, OSError):
            pass  # the kill cuts sessions off mid-transaction: not acknowledged

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(acknowledged) >= 80, timeout=60)  # still sending: up to 400
    server.kill9()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(acknowledged) > 20
    with Receiver() as late:
        late_conf = conf.replace(f":{down_port}", f":{late.port}")
        server = ServerProcess(tmp_path, late_conf, wait_ports=(port,)).start()
        try:
            expected = set(acknowledged)
            seen: set[str] = set()

            def all_seen() -> bool:
                seen.update(m.rcpt_tos[0].split("@")[0] for m in late.messages)
                return expected <= seen

            assert wait_until(all_seen, timeout=200), len(expected - seen)
        finally:
            server.stop()


#: The name test_hardening_powermta imports.
_rsa_key_pem = write_rsa_key


def test_dkim_signed_on_the_way_out_verifies(tmp_path: Path, receiver: Receiver) -> None:
    """dkim-sign yes signs with the domain-key; dkimpy's verifier accepts the signature."""
    import dkim

    record = _rsa_key_pem(tmp_path / "key.pem")
    port = free_port()
    conf = config(
        tmp_path,
        port,
        f"smtp-hosts [127.0.0.1]:{receiver.port}\ndkim-sign yes",
        extra=f"domain-key s1,brand.test,{tmp_path}/key.pem",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "news@brand.test",
                ["ok@dst.test"],
                b"From: News <news@brand.test>\r\nTo: ok@dst.test\r\n"
                b"Subject: signed\r\n\r\nbody line\r\n",
            )
        assert wait_until(lambda: len(receiver.messages) == 1)
    data = receiver.messages[0].data
    assert data.startswith(b"DKIM-Signature:") or b"\nDKIM-Signature:" in data

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"s1._domainkey.brand.test." else b""

    assert dkim.verify(data, dnsfunc=dnsfunc)
    assert not dkim.verify(data.replace(b"body line", b"body lime"), dnsfunc=dnsfunc)


def test_json_acct_file_gets_r_and_d_records(tmp_path: Path, receiver: Receiver) -> None:
    """An acct file ending in .json gets JSON lines with the DESIGN field names."""
    import json

    port = free_port()
    conf = config(
        tmp_path,
        port,
        f"smtp-hosts [127.0.0.1]:{receiver.port}",
        extra=f"<acct-file {tmp_path}/acct.json>\n records r,d\n</acct-file>",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("s@src.test", ["ok@dst.test"], b"Subject: j\r\n\r\nj\r\n")
        path = tmp_path / "acct.json"
        assert wait_until(lambda: path.exists() and path.read_text().count("\n") >= 2)
    lines = [json.loads(line) for line in (tmp_path / "acct.json").read_text().splitlines()]
    assert [line["type"] for line in lines] == ["r", "d"]
    assert lines[0]["srcType"] == "smtp" and lines[1]["rcpt"] == "ok@dst.test"
    assert lines[1]["queue"] == "dst.test/{default}"
