"""The SMTP server end to end: real sockets on loopback, the real spool, smtplib and raw clients.

The server runs on the reactor thread of `reactor_thread`; clients run in the test
thread. Every test waits in teardown until its sessions are closed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from reactor_thread import run_in_reactor, run_in_thread
from smtp_helpers import holder_from_text
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint

from mtaserver.auth.passwords import hash_password
from mtaserver.config.model import Listener
from mtaserver.config.values import HostPort
from mtaserver.events import Envelope
from mtaserver.smtp.server import SmtpServerFactory, make_smtp_service
from mtaserver.spool import open_spool

CONFIG = """
host-name mx.example.test
relay-domain relay.example
{tls}
<smtp-user alice>
  password {alice}
</smtp-user>
<smtp-user bob>
  password {{SSHA256}}{bob}
</smtp-user>
<source 127.0.0.1/32>
  smtp-command-timeout 20s
{source}
</source>
"""


class Server:
    """A listening SmtpServerFactory over a real spool in `directory`."""

    def __init__(self, directory: Path, config: str) -> None:
        self.directory = directory
        self.holder = holder_from_text(config, str(directory))
        self.accepted: list[Envelope] = []
        spool_dir = str(directory / "spool")

        def start() -> Any:
            _, self.journal, self.store = open_spool(spool_dir, run_in_thread)
            self.factory = SmtpServerFactory(
                self.holder,
                self.store,
                self.accepted.append,
                reactor,
                Listener(HostPort("127.0.0.1", 0)),
                run_in_thread=run_in_thread,
            )
            return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self.factory)

        self.port = run_in_reactor(start)
        self.address = ("127.0.0.1", self.port.getHost().port)

    def body(self, msg_id: str) -> bytes:
        return run_in_reactor(self.store.read_body, msg_id)  # type: ignore[no-any-return]

    def stop(self) -> None:
        run_in_reactor(self.port.stopListening)
        deadline = time.monotonic() + 5
        while self.factory.stats.sessions_current and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.factory.stats.sessions_current == 0
        run_in_reactor(self.journal.close)


@pytest.fixture
def make_server(tmp_path: Path, ca: trustme.CA) -> Iterator[Any]:
    servers: list[Server] = []

    def make(source: str = "", tls: bool = True) -> Server:
        tls_line = ""
        if tls:
            pem = tmp_path / "server.pem"
            ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
                str(pem)
            )
            tls_line = f"smtp-server-tls-certificate {pem}"
        salt = b"pepper"
        bob = base64.b64encode(hashlib.sha256(b"builder" + salt).digest() + salt).decode()
        config = CONFIG.format(
            tls=tls_line, source=source, alice=hash_password("wonderland"), bob=bob
        )
        directory = tmp_path / f"server{len(servers)}"
        directory.mkdir()
        server = Server(directory, config)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


class Raw:
    """A raw socket SMTP client that reads replies line by line."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock: Any = socket.create_connection(address, timeout=5)
        self.greeting = self.reply()

    def line(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                return data
            data += chunk
        return data

    def reply(self) -> str:
        """One whole reply (all lines of a multi-line one), as text."""
        lines = []
        while True:
            line = self.line().decode()
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        return self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def test_smtplib_plain_session(make_server: Any) -> None:
    """smtplib sends a message; 250 names the queue id; the spool has the body."""
    server = make_server()
    with smtplib.SMTP(*server.address) as smtp:
        code, _ = smtp.ehlo("client.test")
        assert code == 250
        assert smtp.has_extn("pipelining") and smtp.has_extn("starttls")
        assert smtp.has_extn("enhancedstatuscodes") and smtp.has_extn("dsn")
        assert not smtp.has_extn("auth")
        refused = smtp.sendmail(
            "alice@sender.test", ["bob@relay.example"], b"Subject: e2e\r\n\r\nhello\r\n"
        )
        assert refused == {}
    (envelope,) = server.accepted
    body = server.body(envelope.msg_id)
    message_id = b"Message-ID: <" + envelope.msg_id.encode() + b"@mx.example.test>"
    assert b"\r\nSubject: e2e\r\n" + message_id + b"\r\nDate: " in body
    assert body.endswith(b"\r\n\r\nhello\r\n")
    assert body.startswith(b"Received: from client.test ([127.0.0.1])")


def test_250_names_queue_id(make_server: Any) -> None:
    """The reply after DATA is `250 2.0.0 Ok: queued as <msg_id>` for the stored message."""
    server = make_server()
    raw = Raw(server.address)
    raw.command("EHLO c")
    raw.command("MAIL FROM:<a@b.test>")
    raw.command("RCPT TO:<x@relay.example>")
    assert raw.command("DATA").startswith("354")
    raw.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    reply = raw.reply()
    (envelope,) = server.accepted
    assert reply == f"250 2.0.0 Ok: queued as {envelope.msg_id}"
    assert server.body(envelope.msg_id).endswith(b"\r\n\r\nbody\r\n")
    raw.command("QUIT")
    raw.close()


def test_relay_denied_over_the_wire(make_server: Any) -> None:
    """Relay denied is 550 5.7.1, including routing tricks towards a relay-domain."""
    server = make_server()
    with smtplib.SMTP(*server.address) as smtp:
        smtp.ehlo("c")
        smtp.mail("a@b.test")
        assert smtp.rcpt("x@elsewhere.test")[0] == 550
        assert smtp.rcpt("x%elsewhere.test@relay.example")[0] == 550
        assert smtp.docmd("RCPT", "TO:<@relay.example:x@elsewhere.test>")[0] == 550
        assert smtp.docmd("RCPT", "TO:<elsewhere.test!x@relay.example>")[0] == 550
        code, text = smtp.rcpt("x@relay.example")
        assert code == 250 and text.startswith(b"2.1.5")


def test_starttls_then_auth_plain(make_server: Any, ca: trustme.CA) -> None:
    """After STARTTLS (TLS 1.2+), AUTH is offered; a hashed password logs in and may relay."""
    server = make_server()
    with smtplib.SMTP(*server.address) as smtp:
        smtp.ehlo("c")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=client_context(ca))
        assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        smtp.ehlo("c")
        assert not smtp.has_extn("starttls")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        smtp.login("alice", "wonderland")
        assert (
            smtp.sendmail("alice@sender.test", ["x@anywhere.test"], b"Subject: a\r\n\r\nb\r\n")
            == {}
        )
    (envelope,) = server.accepted
    assert envelope.smtp_user == "alice"
    assert b"with ESMTPSA id" in server.body(envelope.msg_id)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_good_and_bad_over_tls(make_server: Any, ca: trustme.CA, mechanism: str) -> None:
    """AUTH PLAIN and LOGIN: a wrong password is 535 5.7.8, the right one (SSHA256) 235."""
    server = make_server()
    with smtplib.SMTP(*server.address) as smtp:
        smtp.starttls(context=client_context(ca))
        smtp.ehlo("c")
        smtp.user, smtp.password = "bob", "wrong"
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.auth(mechanism, method, initial_response_ok=True)
        assert failed.value.smtp_code == 535
        assert failed.value.smtp_error.startswith(b"5.7.8")
        smtp.user, smtp.password = "bob", "builder"
        code, text = smtp.auth(mechanism, method, initial_response_ok=False)
        assert (code, text) == (235, b"2.7.0 Authentication successful")


def test_auth_refused_without_tls(make_server: Any) -> None:
    """Plaintext AUTH is 538 5.7.11 by default."""
    server = make_server()
    raw = Raw(server.address)
    raw.command("EHLO c")
    token = base64.b64encode(b"\0alice\0wonderland").decode()
    assert raw.command(f"AUTH PLAIN {token}").startswith("538 5.7.11")
    raw.close()


def test_data_pipelined_after_starttls_is_discarded(make_server: Any, ca: trustme.CA) -> None:
    """Commands sent in clear after STARTTLS are dropped; the TLS session starts afresh."""
    server = make_server()
    raw = Raw(server.address)
    raw.command("EHLO c")
    raw.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<x@relay.example>\r\n")
    assert raw.line() == b"220 2.0.0 Ready to start TLS\r\n"
    raw.sock = client_context(ca).wrap_socket(raw.sock, server_hostname="localhost")
    assert raw.command("RCPT TO:<x@relay.example>").startswith("503 5.5.1")  # no MAIL: gone
    assert raw.command("MAIL FROM:<a@b.test>").startswith("503 5.5.1")  # EHLO forgotten too
    assert "STARTTLS" not in raw.command("EHLO c")
    assert raw.command("MAIL FROM:<a@b.test>").startswith("250")
    raw.command("QUIT")
    raw.close()
    assert server.accepted == []


SMUGGLING = [
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
]


@pytest.mark.parametrize("sequence", SMUGGLING, ids=repr)
def test_smuggling(make_server: Any, sequence: bytes) -> None:
    """A smuggled end of data does not end the message, nor start a second one."""
    server = make_server(tls=False)
    raw = Raw(server.address)
    raw.command("EHLO c")
    raw.command("MAIL FROM:<a@b.test>")
    raw.command("RCPT TO:<x@relay.example>")
    assert raw.command("DATA").startswith("354")
    raw.send(
        b"Subject: first\r\n\r\nbefore"
        + sequence
        + b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@relay.example>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n"
    )
    final = raw.reply()
    assert raw.reply() == "221 2.0.0 Bye"
    assert raw.closed()
    raw.close()
    if b"\x00" in sequence:
        assert final.startswith("550 5.6.0")
        assert server.accepted == []
        return
    assert final.startswith("250 2.0.0 Ok: queued as")
    (envelope,) = server.accepted
    assert [r.address for r in envelope.recipients] == ["x@relay.example"]
    body = server.body(envelope.msg_id)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", body) is None
    assert b"MAIL FROM:<evil@x.test>\r\n" in body and body.endswith(b"evil\r\n")


def test_long_command_line_over_the_wire(make_server: Any) -> None:
    """A command line over 512 octets is 500 5.5.2; the session continues."""
    server = make_server(tls=False)
    raw = Raw(server.address)
    assert raw.command("NOOP " + "x" * 600) == "500 5.5.2 Line too long"
    assert raw.command("NOOP") == "250 2.0.0 Ok"
    raw.close()


def test_ten_bad_commands_close(make_server: Any) -> None:
    """Ten bad commands get 421 and the connection is closed."""
    server = make_server(tls=False)
    raw = Raw(server.address)
    raw.send(b"FOO\r\n" * 12)
    replies = [raw.reply() for _ in range(11)]
    assert replies[-1] == "421 4.7.0 Too many errors, closing connection"
    assert raw.closed()
    raw.close()


def test_make_smtp_service_listens(tmp_path: Path) -> None:
    """make_smtp_service returns a service that listens on the listener's address."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    holder = holder_from_text("host-name mx.example.test\n", str(tmp_path))

    def start() -> Any:
        _, journal, store = open_spool(str(tmp_path / "spool"), run_in_thread)
        service = make_smtp_service(
            holder, store, lambda e: None, Listener(HostPort("127.0.0.1", port)), reactor
        )
        service.startService()
        return service, journal

    service, journal = run_in_reactor(start)
    try:
        raw = Raw(("127.0.0.1", port))
        assert raw.greeting == "220 mx.example.test ESMTP mtaserver"
        raw.command("QUIT")
        raw.close()
    finally:
        run_in_reactor(service.stopService)
        run_in_reactor(journal.close)
    assert service.name == f"smtp-listener 127.0.0.1:{port}"
