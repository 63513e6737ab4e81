"""Hardening of the webhooks: bounded responses, refused target addresses.

Real receivers on loopback: `HugeBodyReceiver` answers every POST with `200 OK` and a
1 GB body it keeps writing until the client hangs up, counting what it managed to send.
"""

from __future__ import annotations

import ipaddress
import signal
import smtplib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from reactor_thread import run_in_reactor
from server_configs import DISCARD, acct_file, domain, relay_config
from server_process import ServerProcess, free_port, wait_until
from test_webhook_e2e import acct_records

from mtaserver.config import ConfigError, load_config
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.targets import TargetPolicy, inet_aton, numeric_host, refused_reason
from mtaserver.config.values import HostPort
from mtaserver.webhooks.guard import RefusedTarget, is_local_address

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


ALLOW_LOOPBACK = "http-webhook-allow-addresses 127.0.0.1"


def webhook_config(tmp_path: Path, port: int, url: str, settings: str = "") -> str:
    """Everything discarded; acct.json's `d` records are posted to `url` every second."""
    return relay_config(
        tmp_path,
        port,
        acct_file(
            tmp_path / "acct.json",
            "d",
            f"http-webhook-url {url}\nhttp-webhook-max-interval 1s",
        ),
        DISCARD,
        settings=settings,
        identity=False,
    )


def http_delivery_config(tmp_path: Path, port: int, url: str, settings: str = "") -> str:
    """Every recipient delivered by POST to `url` (`type http-delivery`); r, d, t recorded."""
    return relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.json", "r,d,t"),
        domain(f"type http-delivery\nhttp-delivery-url {url}"),
        settings=settings,
        identity=False,
    )


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
    conf = webhook_config(tmp_path, port, receiver.url, ALLOW_LOOPBACK)
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
    conf = http_delivery_config(tmp_path, port, receiver.url, ALLOW_LOOPBACK)
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


# -- item 8: webhook target addresses ----------------------------------------------------


FORMS = [
    # (URL host as written, the address it names, refused without an allow-list)
    ("2130706433", "127.0.0.1", True),  # decimal
    ("0x7f000001", "127.0.0.1", True),  # hex
    ("0x7f.1", "127.0.0.1", True),  # hex, short dotted
    ("0177.0.0.1", "127.0.0.1", True),  # octal
    ("017700000001", "127.0.0.1", True),  # octal, one part
    ("127.1", "127.0.0.1", True),  # short dotted
    ("10.1", "10.0.0.1", True),
    ("0", "0.0.0.0", True),
    ("0.0.0.0", "0.0.0.0", True),
    ("169.254.169.254", "169.254.169.254", True),  # cloud metadata
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254", True),
    ("2852039166", "169.254.169.254", True),
    ("169.254.1.1", "169.254.1.1", True),  # link-local
    ("10.0.0.1", "10.0.0.1", True),
    ("172.16.5.4", "172.16.5.4", True),
    ("192.168.0.1", "192.168.0.1", True),
    ("100.64.0.1", "100.64.0.1", True),
    ("224.0.0.1", "224.0.0.1", True),
    ("255.255.255.255", "255.255.255.255", True),
    ("[::1]", "::1", True),
    ("[::]", "::", True),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1", True),  # IPv4-mapped
    ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254", True),
    ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe", True),  # NAT64 of the metadata address
    ("[2002:7f00:1::]", "2002:7f00:1::", True),  # 6to4 of loopback
    ("[fe80::1]", "fe80::1", True),
    ("[fe80::1%25eth0]", "fe80::1", True),
    ("[fd00:ec2::254]", "fd00:ec2::254", True),
    ("[fc00::5]", "fc00::5", True),
    ("8.8.8.8", "8.8.8.8", False),
    ("134744072", "8.8.8.8", False),
    ("[2001:4860:4860::8888]", "2001:4860:4860::8888", False),
]


@pytest.mark.parametrize(("host", "address", "refused"), FORMS)
def test_address_classifier_table(host: str, address: str, refused: bool) -> None:
    """Every numeric form is read as a resolver reads it and private ones are refused."""
    parsed = numeric_host(host)
    assert parsed == ipaddress.ip_address(address)
    assert (refused_reason(parsed) is not None) is refused
    assert (TargetPolicy().refusal(parsed, 80) is not None) is refused


@pytest.mark.parametrize(
    "text", ["2130706433", "0x7f.1", "127.1", "0177.0.0.1", "1.2.65535", "256.1", "08.1",
             "0x", "1..2", "127.0.0.1.", "4294967296", "0xffffffff", "1.2.3.4.5"],
)  # fmt: skip
def test_inet_aton_agrees_with_the_c_library(text: str) -> None:
    """Our pure `inet_aton` accepts and reads exactly what the C library's does."""
    try:
        expected: ipaddress.IPv4Address | None = ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        expected = None
    assert inet_aton(text) == expected


def test_names_are_not_numeric_hosts() -> None:
    """Host names are left to the send-time check (they resolve later)."""
    assert numeric_host("hooks.example.com") is None
    assert numeric_host("0x7f.example") is None


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.conf"
    path.write_text(text)
    return str(path)


def test_refused_webhook_urls_are_file_line_errors(tmp_path: Path) -> None:
    """Metadata, private, decimal/hex, mapped-v6 URLs fail config load with FILE:LINE."""
    path = write(
        tmp_path,
        f"""spool {tmp_path}/spool
<acct-file {tmp_path}/a.csv>
    http-webhook-url http://169.254.169.254/latest/meta-data
</acct-file>
<acct-file {tmp_path}/b.csv>
    http-webhook-url https://2130706433:8443/hook
</acct-file>
<acct-file {tmp_path}/c.csv>
    http-webhook-url http://user:pw@[::ffff:127.0.0.1]:80/hook
</acct-file>
<domain a.example>
    type http-delivery
    http-delivery-url http://0x7f.1/deliver
</domain>
<domain b.example>
    http-delivery-url http://10.0.0.1/deliver
</domain>
<domain c.example>
    http-delivery-url http://8.8.8.8/deliver
</domain>
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = [str(p) for p in info.value.problems]
    assert [line.split(": ", 1)[0] for line in lines] == [f"{path}:{n}" for n in (3, 6, 9, 13, 16)]
    assert "http-webhook-url: 169.254.169.254 is 169.254.169.254: cloud metadata" in lines[0]
    assert "127.0.0.1" in lines[1] and "loopback" in lines[1]
    assert "http-delivery-url" in lines[3] and "loopback" in lines[3]
    assert "private" in lines[4]


def test_allow_list_admits_a_target_but_never_the_own_management_port(tmp_path: Path) -> None:
    """`http-webhook-allow-addresses` admits loopback; the own mgmt/API ports stay refused."""
    ok = write(
        tmp_path,
        f"""spool {tmp_path}/spool
http-webhook-allow-addresses 127.0.0.0/8, 10.0.0.0/8
http-mgmt-port 127.0.0.1:8081
<acct-file {tmp_path}/a.csv>
    http-webhook-url http://127.0.0.1:9000/hook
</acct-file>
<domain *>
    http-delivery-url http://10.1.2.3/deliver
</domain>
""",
    )
    config = load_config(ok)
    assert config.acct_files[0].http_webhook_url == "http://127.0.0.1:9000/hook"
    (tmp_path / "c.pem").write_text("a certificate file (only its presence is checked)")
    for url, listener in [
        ("http://127.0.0.1:8081/", "http-mgmt-port 127.0.0.1:8081"),
        ("http://2130706433:8081/", "http-mgmt-port 127.0.0.1:8081"),
        (
            "http://127.0.0.1:8025/",
            # off loopback a listener needs TLS (else that is the config's error too)
            f"<transmissions-api-listener 0.0.0.0:8025>\n    tls-certificate {tmp_path}/c.pem\n"
            "</transmissions-api-listener>",
        ),
    ]:
        bad = write(
            tmp_path,
            f"""spool {tmp_path}/spool
http-webhook-allow-addresses 127.0.0.1
{listener}
<acct-file {tmp_path}/a.csv>
    http-webhook-url {url}
</acct-file>
""",
        )
        with pytest.raises(ConfigError) as info:
            load_config(bad)
        (problem,) = info.value.problems
        assert "own management/API listener" in str(problem), str(problem)


def test_reload_refuses_a_config_with_a_refused_webhook(tmp_path: Path) -> None:
    """A reload to a metadata-address webhook is refused and the running config stays."""
    path = write(tmp_path, f"spool {tmp_path}/spool\n")
    holder = ConfigHolder.from_file(path)
    running = holder.config
    Path(path).write_text(
        f"spool {tmp_path}/spool\n<acct-file {tmp_path}/a.csv>\n"
        "    http-webhook-url http://[::ffff:169.254.169.254]/\n</acct-file>\n"
    )
    errors = holder.reload()
    assert errors and f"{path}:3: http-webhook-url" in errors[0]
    assert holder.config is running


def test_server_refuses_to_start_on_a_metadata_webhook(tmp_path: Path) -> None:
    """The real server exits non-zero at start-up, naming FILE:LINE."""
    conf = tmp_path / "mtaserver.conf"
    conf.write_text(
        f"spool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{free_port()}\n"
        f"<acct-file {tmp_path}/a.csv>\n    http-webhook-url http://169.254.169.254/\n"
        "</acct-file>\n"
    )
    server = ServerProcess(tmp_path, conf.read_text())
    server.start()
    assert server.proc is not None
    assert server.proc.wait(timeout=60) != 0
    output = server.proc.stdout.read().decode() if server.proc.stdout else ""
    assert f"{server.config}:4: http-webhook-url" in output + server.read_log()


class ConnectionCounter:
    """A TCP listener that counts connections (and answers any POST with 200)."""

    def __init__(self) -> None:
        self.connections = 0
        self.posts = 0
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                counter.connections += 1
                super().setup()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                counter.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_name_resolving_to_loopback_is_refused_at_send_time(tmp_path: Path) -> None:
    """DNS rebinding: `localhost` passes load but never connects; allow-listed by reload it goes."""
    receiver = ConnectionCounter()
    port = free_port()
    conf = webhook_config(tmp_path, port, f"http://localhost:{receiver.port}/hook")
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)) as server:
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["x@dst.test"], b"Subject: 1\r\n\r\nx\r\n")
            assert server.wait_for_log("refused target localhost: resolves to 127.0.0.1", 60)
            assert server.wait_for_log("retry 2 in", 60)  # retried, still refused
            assert receiver.connections == 0
            server.config.write_text(
                conf.replace("\n<source", "\nhttp-webhook-allow-addresses 127.0.0.1\n<source", 1)
            )
            assert server.proc is not None
            server.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda: receiver.posts >= 1, timeout=60), server.read_log()
    finally:
        receiver.close()


def post_via(targets: TargetPolicy, url: str) -> Any:
    """POST b"x" to `url` through a real `PooledClient` guarded by `targets`."""
    from twisted.internet import reactor
    from twisted.web.http_headers import Headers

    from mtaserver.webhooks.http import PooledClient, post

    async def go() -> Any:
        client = PooledClient(reactor, targets=lambda: targets)
        try:
            return await post(client, reactor, url, b"x", Headers(), 10.0)
        except Exception as e:
            return e
        finally:
            await client.close()

    return run_in_reactor(go)


def test_send_time_check_refuses_the_own_listener_and_admits_the_allowed() -> None:
    """Through a name: loopback refused, allowed when listed, own wildcard listener never."""
    receiver = ConnectionCounter()
    url = f"http://localhost:{receiver.port}/hook"
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    try:
        refused = post_via(TargetPolicy(), url)
        assert isinstance(refused, RefusedTarget)
        assert "127.0.0.1 (loopback address" in str(refused)
        own = TargetPolicy(loopback, (HostPort("0.0.0.0", receiver.port),))
        refused = post_via(own, url)
        assert isinstance(refused, RefusedTarget)
        assert "own management/API listener 0.0.0.0:" in str(refused)
        assert receiver.connections == 0
        answer = post_via(TargetPolicy(loopback), url)
        assert answer.code == 200
        assert receiver.posts == 1
    finally:
        receiver.close()


def test_is_local_address_knows_this_hosts_addresses() -> None:
    """Loopback is local, a public address is not (routing-table probe, nothing sent)."""
    assert is_local_address(ipaddress.ip_address("127.0.0.1"))
    assert not is_local_address(ipaddress.ip_address("192.0.2.1"))


def test_http_delivery_to_a_name_resolving_to_loopback_is_a_transient_failure(
    tmp_path: Path,
) -> None:
    """`http-delivery-url http://localhost:...` never connects: a `t` saying why, no POST."""
    receiver = ConnectionCounter()
    port = free_port()
    conf = http_delivery_config(tmp_path, port, f"http://localhost:{receiver.port}/deliver")
    try:
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port) as client:
                client.sendmail("a@src.test", ["x@dst.test"], b"Subject: 1\r\n\r\nx\r\n")
            assert wait_until(lambda: any(r["type"] == "t" for r in acct_records(tmp_path)), 60)
        (deferral,) = [r for r in acct_records(tmp_path) if r["type"] == "t"][:1]
        assert "refused target localhost" in deferral["dsnDiag"]
        assert receiver.connections == 0
    finally:
        receiver.close()
