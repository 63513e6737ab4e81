"""SMTP connection lifecycle against the real server process, over raw loopback sockets.

Connection caps and the descriptor reserve (with a low RLIMIT_NOFILE), slowloris
deadlines, the junk-command limit, 421 on SIGTERM and early talkers. Every client
speaks from 127.0.0.1 (the only loopback address tests use): the per-IP cap is shown
with max-smtp-in below total-max-smtp-in, the total cap with the two the other way round.
"""

from __future__ import annotations

import http.client
import select
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess, free_port, read_acct, wait_until

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {d}/spool
smtp-listener 127.0.0.1:{smtp}
{extra}
<source 127.0.0.0/8>
    always-allow-relaying yes
{source}
</source>
<acct-file {d}/acct.csv>
    records r
</acct-file>
<domain *>
    type discard
</domain>
"""


class Raw:
    """A raw SMTP client socket from 127.0.0.1."""

    def __init__(self, port: int, greet: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.greeting = self.reply() if greet else ""

    def line(self) -> str:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data.decode()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.line()
            lines.append(line.rstrip("\r\n"))
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def readable(self, timeout: float = 0.0) -> bool:
        return bool(select.select([self.sock], [], [], timeout)[0])

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def trickle(self, data: bytes, pause: float = 0.5) -> str:
        """Send `data` a byte at a time (then keep sending spaces) until the server replies."""
        stream = iter(data)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.readable(pause):
                return self.reply()
            byte = next(stream, ord("x"))
            try:
                self.sock.sendall(bytes([byte]))
            except OSError:
                return self.reply()
        raise AssertionError("no reply while trickling")

    def close(self) -> None:
        self.sock.close()


class Server:
    def __init__(
        self, directory: Path, source: str = "", extra: str = "", mgmt: bool = False
    ) -> None:
        self.directory = directory
        self.smtp = free_port()
        self.mgmt = free_port() if mgmt else None
        if self.mgmt is not None:
            extra += f"\nhttp-mgmt-port 127.0.0.1:{self.mgmt}\nhttp-access 127.0.0.1/32 monitor\n"
        text = CONFIG.format(d=directory, smtp=self.smtp, extra=extra, source=source)
        ports = (self.smtp,) if self.mgmt is None else (self.smtp, self.mgmt)
        self.process = ServerProcess(directory, text, wait_ports=ports)

    def acct_receptions(self) -> list[dict[str, str]]:
        return read_acct(self.directory / "acct.csv", "r")

    def send_message(self, rcpt: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            client.sendmail("s@src.test", [rcpt], b"Subject: t\r\n\r\nbody\r\n")


class LimitedProcess(ServerProcess):
    """The server started under an RLIMIT_NOFILE of (soft, hard)."""

    def __init__(self, directory: Path, text: str, ports: tuple[int, ...], nofile: Any) -> None:
        super().__init__(directory, text, wait_ports=ports)
        self.nofile = nofile

    def command(self) -> list[str]:
        command = super().command()
        soft, hard = self.nofile
        command[2] = (
            "import resource; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
            "from twisted.scripts.twistd import run; run()"
        )
        return command


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProcess] = []

    def make(source: str = "", extra: str = "", mgmt: bool = False, nofile: Any = None) -> Server:
        srv = Server(tmp_path, source, extra, mgmt)
        if nofile is not None:
            srv.process = LimitedProcess(
                tmp_path, srv.process.config.read_text(), srv.process.wait_ports, nofile
            )
        started.append(srv.process)
        srv.process.start()
        return srv

    yield make
    for process in started:
        process.stop()


def assert_fourth_refused_until_a_quit(srv: Server, refusal: str) -> None:
    """Three connections are greeted, the fourth gets `refusal` and is closed; once one of
    the three QUITs, a new connection is greeted again (the freed slot is usable)."""
    first: list[Raw] = []
    greetings: list[str] = []

    def one_more() -> bool:
        client = Raw(srv.smtp)
        greetings.append(client.greeting)
        if client.greeting.startswith("220 "):
            first.append(client)
            return True
        # the start-up check's probe connection may hold a slot until the server has
        # seen it close (under load, a moment after the port answered)
        client.close()
        return False

    for _ in range(3):
        assert wait_until(one_more), greetings
    fourth = Raw(srv.smtp)
    assert fourth.greeting == refusal
    assert fourth.closed()
    assert first[0].command("QUIT").startswith("221")
    assert first[0].closed()

    def admitted() -> bool:
        client = Raw(srv.smtp)
        ok = client.greeting.startswith("220 ")
        client.close()
        return ok

    assert wait_until(admitted), "a slot freed by QUIT is usable again"
    for client in first:
        client.close()


def test_per_ip_cap(server: Any) -> None:
    """max-smtp-in 3 per IP under total-max-smtp-in 5: the 4th from one IP gets 421 4.7.0."""
    srv = server("    max-smtp-in 3", "total-max-smtp-in 5")
    refusal = "421 4.7.0 Too many connections from your IP address, try again later"
    assert_fourth_refused_until_a_quit(srv, refusal)


def test_total_cap(server: Any) -> None:
    """total-max-smtp-in 3 under max-smtp-in 10: the 4th connection gets the total cap's 421."""
    srv = server("    max-smtp-in 10", "total-max-smtp-in 3")
    assert_fourth_refused_until_a_quit(srv, "421 4.7.0 Too many connections, try again later")


def test_rlimit_raised_to_hard_limit_and_logged(server: Any) -> None:
    """At start the RLIMIT_NOFILE soft limit is raised to the hard limit, and the log says so."""
    srv = server(nofile=(256, 4096))
    assert srv.process.proc is not None
    limits = Path(f"/proc/{srv.process.proc.pid}/limits").read_text()
    (line,) = [x for x in limits.splitlines() if x.startswith("Max open files")]
    assert line.split()[3:5] == ["4096", "4096"]
    assert srv.process.wait_for_log(
        "file descriptor limit (RLIMIT_NOFILE): 4096 (was 256, hard limit 4096)"
    )


def test_descriptor_reserve_keeps_management_port(server: Any) -> None:
    """Under a low RLIMIT_NOFILE, SMTP refuses with 421 before the fds run out; mgmt answers."""
    srv = server("    max-smtp-in 1000", mgmt=True, nofile=(128, 128))
    clients: list[Raw] = []
    refused = ""
    for _ in range(200):
        client = Raw(srv.smtp)
        clients.append(client)
        if not client.greeting.startswith("220 "):
            refused = client.greeting
            break
    assert refused == "421 4.7.0 Server busy, try again later"
    connection = http.client.HTTPConnection("127.0.0.1", srv.mgmt, timeout=30)
    connection.request("GET", "/status")
    assert connection.getresponse().status == 200
    connection.close()
    for client in clients:
        client.close()
    assert "Too many open files" not in srv.process.read_log()
    srv.send_message("after@x.test")
    assert wait_until(lambda: len(srv.acct_receptions()) == 1), "SMTP works again once freed"


def test_command_deadline_against_slowloris(server: Any) -> None:
    """A command trickled a byte at a time is cut off by smtp-command-deadline with 421 4.4.2."""
    srv = server("    smtp-command-deadline 2s")
    client = Raw(srv.smtp)
    reply = client.trickle(b"EHLO " + b"x" * 400)
    assert reply == "421 4.4.2 Command deadline exceeded, closing connection"
    assert client.closed()


def test_data_deadline_against_slowloris(server: Any) -> None:
    """A DATA trickled a byte at a time gets 421 4.4.2 at smtp-data-deadline and is not queued."""
    srv = server("    smtp-data-deadline 3s")
    srv.send_message("control@x.test")
    client = Raw(srv.smtp)
    assert client.command("EHLO c.test").startswith("250")
    assert client.command("MAIL FROM:<s@src.test>").startswith("250")
    assert client.command("RCPT TO:<slow@x.test>").startswith("250")
    assert client.command("DATA").startswith("354")
    reply = client.trickle(b"Subject: slow\r\n\r\n" + b"x" * 1000)
    assert reply == "421 4.4.2 DATA deadline exceeded, closing connection"
    assert client.closed()
    srv.process.stop()
    assert [r["rcpt"] for r in srv.acct_receptions()] == ["control@x.test"]


def test_junk_commands_cut_off(server: Any) -> None:
    """The issue's 200 pipelined NOOPs: 100 get 250, the 101st 421 4.7.0, then close."""
    srv = server()
    client = Raw(srv.smtp)
    client.sock.sendall(b"NOOP\r\n" * 200)
    replies = [client.reply() for _ in range(101)]
    assert replies[:100] == ["250 2.0.0 Ok"] * 100
    assert replies[100] == "421 4.7.0 Too many junk commands, closing connection"
    assert client.closed()


def test_sigterm_says_421_and_drops_unfinished_data(server: Any) -> None:
    """SIGTERM: an idle session and one mid-DATA both get 421 4.3.2; the partial message is lost."""
    srv = server()
    srv.send_message("control@x.test")
    idle = Raw(srv.smtp)
    assert idle.command("EHLO idle.test").startswith("250")
    busy = Raw(srv.smtp)
    assert busy.command("EHLO busy.test").startswith("250")
    assert busy.command("MAIL FROM:<s@src.test>").startswith("250")
    assert busy.command("RCPT TO:<unfinished@x.test>").startswith("250")
    assert busy.command("DATA").startswith("354")
    busy.sock.sendall(b"Subject: half\r\n\r\nthe first half\r\n")
    assert wait_until(lambda: len(srv.acct_receptions()) == 1)
    assert srv.process.proc is not None
    srv.process.proc.terminate()
    assert idle.reply() == "421 4.3.2 Service shutting down"
    assert busy.reply() == "421 4.3.2 Service shutting down"
    assert idle.closed() and busy.closed()
    srv.process.proc.wait(timeout=30)
    assert [r["rcpt"] for r in srv.acct_receptions()] == ["control@x.test"]


def test_early_talker_refused(server: Any) -> None:
    """With smtp-greeting-delay on the source, talking before the 220 gets 554 5.5.1 and close."""
    srv = server("    smtp-greeting-delay 3s")
    eager = Raw(srv.smtp, greet=False)
    eager.sock.sendall(b"EHLO eager.test\r\n")
    assert eager.reply() == "554 5.5.1 Protocol error: client sent data before the greeting"
    assert eager.closed()
    patient = Raw(srv.smtp)
    assert patient.greeting == "220 mta.test ESMTP mtaserver"
    assert patient.command("EHLO patient.test").startswith("250")
    patient.close()
