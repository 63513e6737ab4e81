"""Reload applies what it says: new keys, acct files and listeners live; the rest named."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
from pathlib import Path

import dkim
import trustme
from mgmt_client import MgmtServer
from mx_receiver import Receiver
from server_configs import DISCARD, acct_file, domain, relay_config, write_rsa_key
from server_process import ServerProcess, free_port, read_acct, wait_until


def config(tmp_path: Path, smtp_port: int, mx_port: int) -> str:
    return relay_config(
        tmp_path,
        smtp_port,
        domain(f"retry-after 1s\nsmtp-hosts [127.0.0.1]:{mx_port}\ndkim-sign yes"),
        "include conf.d/*.conf",
    )


def send(port: int, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(
            "news@brand.test",
            [rcpt],
            f"From: News <news@brand.test>\r\nTo: {rcpt}\r\nSubject: s\r\n\r\nbody\r\n".encode(),
        )


def reload_with_sighup(server: ServerProcess, times: int) -> None:
    """SIGHUP, then wait for the `times`-th "config reloaded" line in the log."""
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    assert wait_until(lambda: server.read_log().count("config reloaded from") >= times)


def test_domain_key_and_acct_file_added_apply_on_sighup(tmp_path: Path, receiver: Receiver) -> None:
    """A domain-key and an <acct-file> added to the config sign and record the next message."""
    (tmp_path / "conf.d").mkdir()
    record = write_rsa_key(tmp_path / "key.pem")
    port = free_port()
    with ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,)) as s:
        send(port, "before@dst.test")
        assert wait_until(lambda: len(receiver.messages) == 1)
        assert b"DKIM-Signature:" not in receiver.messages[0].data
        (tmp_path / "conf.d" / "added.conf").write_text(
            f"domain-key s1,brand.test,{tmp_path}/key.pem\n"
            f"<acct-file {tmp_path}/added.csv>\n    records d\n</acct-file>\n"
        )
        reload_with_sighup(s, 1)
        send(port, "after@dst.test")
        assert wait_until(lambda: len(receiver.messages) == 2)
        added = tmp_path / "added.csv"
        assert wait_until(lambda: "after@dst.test" in {r["rcpt"] for r in read_acct(added)})
    data = receiver.messages[1].data

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"s1._domainkey.brand.test." else b""

    assert dkim.verify(data, dnsfunc=dnsfunc)


def test_reload_names_a_changed_restart_only_directive(tmp_path: Path, receiver: Receiver) -> None:
    """Changing `spool` and reloading: the reply and the log say a restart is needed."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin").start()
    try:
        status, reply = server.command("reload")
        assert (status, reply["message"]) == (200, "configuration reloaded")
        assert reply["data"]["restart_needed"] == []
        text = server.process.config.read_text()
        server.process.config.write_text(
            text.replace(f"spool {tmp_path}/spool", f"spool {tmp_path}/other-spool")
        )
        status, reply = server.command("reload")
        assert status == 200
        assert reply["message"] == "configuration reloaded; restart needed for: spool"
        assert reply["data"]["restart_needed"] == ["spool"]
        assert wait_until(lambda: "restart needed for: spool" in server.process.read_log())
        server.send(["still@dst.test"])  # the running spool is the old one, and works
        assert wait_until(lambda: len(receiver.messages) == 1)
        assert not (tmp_path / "other-spool").exists()
    finally:
        server.stop()


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_smtp_listener_moves_on_reload_and_an_open_session_finishes(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A new smtp-listener port answers after reload; a session on the old one completes."""
    (tmp_path / "conf.d").mkdir()
    old, new = free_port(), free_port()
    with ServerProcess(tmp_path, config(tmp_path, old, receiver.port), wait_ports=(old,)) as s:
        session = smtplib.SMTP("127.0.0.1", old, timeout=30)
        session.ehlo("client.test")
        assert session.mail("news@brand.test")[0] == 250
        assert session.rcpt("open@dst.test")[0] == 250
        s.config.write_text(config(tmp_path, new, receiver.port))
        reload_with_sighup(s, 1)
        assert wait_until(lambda: not refuses(new))
        assert wait_until(lambda: refuses(old))
        code, _ = session.data(b"From: news@brand.test\r\nSubject: open\r\n\r\nbody\r\n")
        assert code == 250
        session.quit()
        send(new, "moved@dst.test")
        assert wait_until(lambda: len(receiver.messages) == 2)
    assert sorted(m.rcpt_tos[0] for m in receiver.messages) == ["moved@dst.test", "open@dst.test"]


def test_webhook_added_to_an_acct_file_posts_after_reload(tmp_path: Path) -> None:
    """http-webhook-url added to an <acct-file> and reloaded: its records are POSTed."""
    from webhook_receiver import Receiver as WebhookReceiver

    hook = WebhookReceiver()
    port = free_port()

    def base(webhook: str) -> str:
        return relay_config(
            tmp_path,
            port,
            DISCARD,
            acct_file(tmp_path / "acct.json", "d", webhook),
            settings="host-name mta.test\nhttp-webhook-allow-addresses 127.0.0.1",
            identity=False,
        )

    try:
        with ServerProcess(tmp_path, base(webhook=""), wait_ports=(port,)) as s:
            send(port, "first@dst.test")
            assert wait_until(lambda: "first@dst.test" in (tmp_path / "acct.json").read_text())
            webhook = f"    http-webhook-url {hook.url}\n    http-webhook-max-interval 1s"
            s.config.write_text(base(webhook=webhook))
            reload_with_sighup(s, 1)
            send(port, "second@dst.test")
            assert hook.wait_for(lambda r: b"second@dst.test" in b"".join(r.lines()), 30)
            assert "restart needed" not in s.read_log()
    finally:
        hook.close()


def starttls_names(port: int, context: ssl.SSLContext) -> list[str]:
    """The DNS names of the certificate the server shows after STARTTLS."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        peer = client.sock.getpeercert()
    return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]


def test_renewed_starttls_certificate_is_served_after_reload(
    tmp_path: Path, receiver: Receiver, ca: trustme.CA
) -> None:
    """A certificate file replaced in place is used from the next STARTTLS after reload."""
    (tmp_path / "conf.d").mkdir()
    pem = tmp_path / "server.pem"
    ca.issue_cert("first.test", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    (tmp_path / "conf.d" / "tls.conf").write_text(f"smtp-server-tls-certificate {pem}\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    port = free_port()
    with ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,)) as s:
        assert starttls_names(port, context) == ["first.test"]
        renewed = ca.issue_cert("second.test", "127.0.0.1").private_key_and_cert_chain_pem
        renewed.write_to_path(str(pem))
        reload_with_sighup(s, 1)
        assert wait_until(lambda: starttls_names(port, context) == ["second.test"])
        assert "restart needed" not in s.read_log()
        pem.write_text("not a certificate\n")  # a broken renewal keeps the served one
        reload_with_sighup(s, 2)
        assert wait_until(lambda: "needs a private key" in s.read_log())
        assert starttls_names(port, context) == ["second.test"]


def test_name_server_change_applies_on_reload(tmp_path: Path, receiver: Receiver) -> None:
    """After reload the next MX lookup asks the new name-server, not the old one."""
    from dns_server import start_dns_server_in_thread

    records = {"dst.test": [("MX", 10, "mx.dst.test")], "mx.dst.test": [("A", "127.0.0.1")]}
    old_queries: list[tuple[str, str]] = []
    new_queries: list[tuple[str, str]] = []
    old_dns = start_dns_server_in_thread(records, old_queries)
    new_dns = start_dns_server_in_thread(records, new_queries)
    port = free_port()
    base = f"""
host-name mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
name-server 127.0.0.1:{{dns}}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<domain *>
    retry-after 1s
    default-smtp-port {receiver.port}
    mx-allow-private-addresses yes
</domain>
"""
    try:
        with ServerProcess(tmp_path, base.format(dns=old_dns.port), wait_ports=(port,)) as s:
            send(port, "first@dst.test")
            assert wait_until(lambda: len(receiver.messages) == 1)
            assert ("dst.test", "MX") in old_queries and new_queries == []
            s.config.write_text(base.format(dns=new_dns.port))
            reload_with_sighup(s, 1)
            records["other.dst.test"] = [("MX", 10, "mx.dst.test")]
            send(port, "second@other.dst.test")  # a new queue: a new lookup
            assert wait_until(lambda: len(receiver.messages) == 2)
            assert ("other.dst.test", "MX") in new_queries
            assert ("other.dst.test", "MX") not in old_queries
            assert "restart needed" not in s.read_log()
    finally:
        old_dns.stop()
        new_dns.stop()


def http_status(port: int, path: str) -> int | None:
    """The status of GET `path` on 127.0.0.1:`port`, or None if nothing answers."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def test_management_port_moves_and_api_listener_appears_on_reload(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A new http-mgmt-port and a new <transmissions-api-listener> answer after reload."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin").start()
    old_mgmt, new_mgmt, api = server.mgmt, free_port(), free_port()
    try:
        text = server.process.config.read_text()
        server.process.config.write_text(
            text.replace(
                f"http-mgmt-port 127.0.0.1:{old_mgmt}", f"http-mgmt-port 127.0.0.1:{new_mgmt}"
            )
            + f"<transmissions-api-listener 127.0.0.1:{api}>\n</transmissions-api-listener>\n"
        )
        status, reply = server.command("reload")
        assert (status, reply["data"]["restart_needed"]) == (200, [])
        assert wait_until(lambda: http_status(new_mgmt, "/status") is not None)
        assert wait_until(lambda: refuses(old_mgmt))
        assert wait_until(lambda: http_status(api, "/api/v1/transmissions") is not None)
        server.mgmt = new_mgmt
        assert server.command("show status")[0] == 200
    finally:
        server.stop()


def https_names(port: int, context: ssl.SSLContext) -> list[str]:
    """The DNS names of the certificate an HTTPS port shows."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with context.wrap_socket(raw) as tls:
        peer = tls.getpeercert()
    return [value for kind, value in peer["subjectAltName"] if kind == "DNS"]


def test_renewed_management_certificate_is_served_after_reload(
    tmp_path: Path, receiver: Receiver, ca: trustme.CA
) -> None:
    """http-mgmt-tls-certificate replaced in place: the next handshake after reload uses it."""
    pem = tmp_path / "mgmt.pem"
    ca.issue_cert("first.test", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin")
    (tmp_path / "conf.d" / "tls.conf").write_text(f"http-mgmt-tls-certificate {pem}\n")
    server.start()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    try:
        assert https_names(server.mgmt, context) == ["first.test"]
        renewed = ca.issue_cert("second.test", "127.0.0.1").private_key_and_cert_chain_pem
        renewed.write_to_path(str(pem))
        assert server.process.proc is not None
        os.kill(server.process.proc.pid, signal.SIGHUP)
        assert wait_until(lambda: https_names(server.mgmt, context) == ["second.test"])
    finally:
        server.stop()


def test_reload_with_an_unusable_domain_key_is_refused(tmp_path: Path, receiver: Receiver) -> None:
    """A domain-key whose file does not load fails the reload, like a syntax error."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin").start()
    try:
        (tmp_path / "bad.pem").write_text("not a key\n")
        (tmp_path / "conf.d" / "dkim.conf").write_text(
            f"domain-key s1,brand.test,{tmp_path}/bad.pem\n"
        )
        status, reply = server.command("reload")
        assert status == 400
        assert any("domain-key" in line and "bad.pem" in line for line in reply["data"])
        assert "config reload failed" in server.process.read_log()
        (tmp_path / "conf.d" / "dkim.conf").unlink()
        assert server.command("reload")[0] == 200
    finally:
        server.stop()


def test_reload_with_a_missing_webhook_ca_file_is_refused(
    tmp_path: Path, receiver: Receiver
) -> None:
    """An http-webhook-ca-file that does not exist fails the reload and names the file."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin").start()
    try:
        (tmp_path / "conf.d" / "hook.conf").write_text(
            f"http-webhook-allow-addresses 127.0.0.1\n"
            f"<acct-file {tmp_path}/hook.csv>\n"
            f"    http-webhook-url https://127.0.0.1:9/hook\n"
            f"    http-webhook-ca-file {tmp_path}/missing-ca.pem\n"
            f"</acct-file>\n"
        )
        status, reply = server.command("reload")
        assert status == 400
        assert any("missing-ca.pem" in line for line in reply["data"])
        assert not (tmp_path / "hook.csv").exists()  # the acct file was not started either
    finally:
        server.stop()
