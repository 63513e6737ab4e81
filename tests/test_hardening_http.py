"""Hardening of both HTTP ports: deadlines, rate limit, size and credentials before the body.

Protocol-level tests drive `GuardedChannel` over `StringTransport` with `task.Clock`;
the real-server tests speak raw HTTP over sockets to the management port and to a
Transmissions API listener.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mgmt_client import API_KEY, MgmtServer
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, wait_until
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from mtaserver.config.load import load_config
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import Rate
from mtaserver.http.guard import (
    GuardedSite,
    RequestGuard,
    management_guard,
    take_token,
    transmissions_guard,
)

API_KEY_TX = "test_key_0123456789_0123456789_abcdef"


class Recorder(Resource):
    """Answers every request with `ok`, and remembers the bodies it saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.bodies.append(request.content.read())
        return b"ok"


def holder_for(tmp_path: Path, text: str) -> ConfigHolder:
    path = tmp_path / "main.conf"
    path.write_text(
        f"spool {tmp_path}/spool\nhttp-mgmt-port 127.0.0.1:1\nhttp-access 127.0.0.1/32 monitor\n"
        f"http-api-key {API_KEY}\n" + text
    )
    return ConfigHolder(load_config(str(path)))


class Connection:
    """One client connection to a `GuardedSite`, over a StringTransport."""

    def __init__(self, site: GuardedSite, ip: str = "127.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=_address(ip))
        self.channel = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    @property
    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    def status(self) -> int:
        return int(self.answer.split(b" ", 2)[1]) if self.answer else 0


def _address(ip: str) -> object:
    from twisted.internet.address import IPv4Address

    return IPv4Address("TCP", ip, 12345)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def mgmt_site(tmp_path: Path, clock: Clock, text: str = "") -> tuple[GuardedSite, Recorder]:
    recorder = Recorder()
    holder = holder_for(tmp_path, text)
    return GuardedSite(recorder, management_guard(holder, clock)), recorder


# -- deadlines (task.Clock) --------------------------------------------------------------


def test_header_deadline_answers_408(tmp_path: Path, clock: Clock) -> None:
    """Headers trickling past http-request-header-timeout get a 408 and a close."""
    site, recorder = mgmt_site(tmp_path, clock, "http-request-header-timeout 30s\n")
    client = Connection(site)
    client.send(b"GET /status HTTP/1.1\r\nHost: x\r\n")
    for _ in range(29):
        clock.advance(1)
        client.send(b"X-Drip: 1\r\n")  # bytes keep coming: the idle timer would never fire
    assert not client.closed and client.answer == b""
    clock.advance(1)
    assert client.status() == 408 and client.closed
    assert b'"errors"' in client.answer and recorder.bodies == []


def test_silent_connection_is_closed_without_answer(tmp_path: Path, clock: Clock) -> None:
    """A connection that sends nothing is closed at the header deadline, with no 408."""
    site, _ = mgmt_site(tmp_path, clock, "http-request-header-timeout 5s\n")
    client = Connection(site)
    clock.advance(4.9)
    assert not client.closed
    clock.advance(0.2)
    assert client.closed and client.answer == b""


def test_body_deadline_answers_408(tmp_path: Path, clock: Clock) -> None:
    """A body not complete within http-request-body-timeout gets a 408; the handler never runs."""
    site, recorder = mgmt_site(tmp_path, clock, "http-request-body-timeout 120s\n")
    client = Connection(site)
    client.send(
        b"POST /command HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ncommand="
    )
    for _ in range(11):  # trickle: Twisted's idle timeout never fires
        clock.advance(10)
        client.send(b"x")
    clock.advance(9)
    assert not client.closed, client.answer
    clock.advance(1)
    assert client.status() == 408 and client.closed and recorder.bodies == []


def test_keepalive_deadline_runs_from_previous_response(tmp_path: Path, clock: Clock) -> None:
    """A request in time is answered; the next deadline starts when that answer is done."""
    site, recorder = mgmt_site(tmp_path, clock, "http-request-header-timeout 10s\n")
    client = Connection(site)
    clock.advance(9)
    client.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.status() == 200 and recorder.bodies == [b""]
    clock.advance(9)
    assert not client.closed
    clock.advance(1)
    assert client.closed


# -- rate ----------------------------------------------------------------------------------


def test_token_bucket_table() -> None:
    """5/m allows a burst of 5, then one every 12 s."""
    rate = Rate(5, 60.0)
    bucket = None
    for _ in range(5):
        bucket, wait = take_token(bucket, 0.0, rate)
        assert wait == 0
    bucket, wait = take_token(bucket, 0.0, rate)
    assert wait == pytest.approx(12.0)
    bucket, wait = take_token(bucket, 12.0, rate)
    assert wait == 0


def test_rate_limit_429_then_recovery(tmp_path: Path, clock: Clock) -> None:
    """Over http-max-request-rate a client gets 429 + Retry-After, and is served again later."""
    site, _ = mgmt_site(
        tmp_path, clock, "http-max-request-rate 5/m\nhttp-rate-limit-exempt 10.0.0.0/8\n"
    )
    for _ in range(5):
        client = Connection(site)
        client.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.status() == 200
    limited = Connection(site)
    limited.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert limited.status() == 429 and b"Retry-After: 12\r\n" in limited.answer
    body = json.loads(limited.answer.split(b"\r\n\r\n", 1)[1])
    assert body["errors"][0]["message"] == "Too many requests"
    other = Connection(site, "10.1.2.3")  # exempt network
    other.send(b"GET /openapi HTTP/1.1\r\nHost: x\r\n\r\n")
    assert other.status() != 429
    clock.advance(12)
    again = Connection(site)
    again.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.status() == 200


def test_loopback_is_exempt_by_default(tmp_path: Path, clock: Clock) -> None:
    """With the default exempt list, loopback benchmarks are never throttled."""
    site, _ = mgmt_site(tmp_path, clock, "http-max-request-rate 2/m\n")
    for _ in range(10):
        client = Connection(site)
        client.send(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.status() == 200


# -- before the body -----------------------------------------------------------------------


def test_refusals_come_before_the_body(tmp_path: Path, clock: Clock) -> None:
    """No access, a wrong key or an oversize Content-Length are answered without the body."""
    site, recorder = mgmt_site(tmp_path, clock, "http-mgmt-max-request-size 1k\n")
    cases = [
        ("127.0.0.5", b"", b"1000", 403),  # no http-access rule: none
        ("127.0.0.1", b"", b"1000", 403),  # monitor may not commit config
        ("127.0.0.1", b"X-API-Key: wrong\r\n", b"10", 401),
        ("127.0.0.1", f"X-API-Key: {API_KEY}\r\n".encode(), b"2000000000", 413),
    ]
    for ip, extra, length, code in cases:
        client = Connection(site, ip)
        client.send(
            b"POST /configFile HTTP/1.1\r\nHost: x\r\n"
            + extra
            + b"Content-Length: "
            + length
            + b"\r\n\r\n"
        )
        assert (client.status(), client.closed) == (code, True), (ip, extra, length)
        client.send(b"x" * 5000)  # whatever follows is discarded
    assert recorder.bodies == []


def test_chunked_body_capped_while_streaming(tmp_path: Path, clock: Clock) -> None:
    """A chunked body past http-mgmt-max-request-size stops with 413 as it streams."""
    site, recorder = mgmt_site(tmp_path, clock, "http-mgmt-max-request-size 1k\n")
    client = Connection(site)
    client.send(
        f"POST /command HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    client.send(b"200\r\n" + b"a" * 512 + b"\r\n")
    assert client.answer == b""
    client.send(b"200\r\n" + b"a" * 512 + b"\r\n")
    client.send(b"200\r\n" + b"a" * 512 + b"\r\n")
    assert client.status() == 413 and client.closed and recorder.bodies == []


def test_transmissions_key_and_length_before_the_body(tmp_path: Path, clock: Clock) -> None:
    """The API refuses a missing key (403), a missing length (411), an oversize one (413)."""
    holder = holder_for(
        tmp_path,
        f"<transmissions-api>\n  api-key {API_KEY_TX}\n  max-request-size 1k\n"
        "</transmissions-api>\n",
    )
    recorder = Recorder()
    site = GuardedSite(recorder, transmissions_guard(holder, clock))
    head = b"POST /api/v1/transmissions HTTP/1.1\r\nHost: x\r\n"
    key = f"Authorization: {API_KEY_TX}\r\n".encode()
    for extra, code in [
        (b"Content-Length: 2000000000\r\n", 403),
        (key, 411),
        (key + b"Content-Length: 2000000000\r\n", 413),
    ]:
        client = Connection(site)
        client.send(head + extra + b"\r\n")
        assert client.status() == code, extra
        assert b'{"errors": [{"message"' in client.answer
    client = Connection(site)
    client.send(head + key + b"Content-Length: 2\r\n\r\n{}")
    assert client.status() == 200 and recorder.bodies == [b"{}"]


class ArgsRecorder(Recorder):
    """Also remembers what Twisted made of the request's arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.args: list[dict[bytes, list[bytes]]] = []

    def render(self, request: Request) -> bytes:
        self.args.append(dict(request.args))
        return super().render(request)


@pytest.mark.parametrize("json_api", [False, True])
def test_a_json_api_site_parses_no_forms_and_logs_no_access_lines(
    tmp_path: Path, clock: Clock, json_api: bool
) -> None:
    """The Transmissions API's site (`json_api`): a form body stays a body, and Twisted's
    access-log line is not written per request; the management site keeps both."""
    holder = holder_for(
        tmp_path, f"<transmissions-api>\n  api-key {API_KEY_TX}\n</transmissions-api>\n"
    )
    recorder = ArgsRecorder()
    site = GuardedSite(recorder, transmissions_guard(holder, clock), json_api=json_api)
    access_log = io.StringIO()
    site.logFile = access_log  # where twistd's service log would be
    client = Connection(site)
    body = b"a=1&b=2"
    client.send(
        b"POST /api/v1/transmissions?q=3 HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: {API_KEY_TX}\r\n".encode()
        + b"Content-Type: application/x-www-form-urlencoded\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert client.status() == 200 and recorder.bodies == [body]
    expected = {b"q": [b"3"]} if json_api else {b"q": [b"3"], b"a": [b"1"], b"b": [b"2"]}
    assert recorder.args == [expected]
    request_line = '"POST /api/v1/transmissions?q=3'
    access_lines = [line for line in access_log.getvalue().splitlines() if request_line in line]
    assert len(access_lines) == (0 if json_api else 1)


def test_guard_reads_settings_at_each_request(tmp_path: Path, clock: Clock) -> None:
    """A reload changes the limits for the next request."""
    site, _ = mgmt_site(tmp_path, clock)
    guard: RequestGuard = site.guard
    path = tmp_path / "main.conf"
    path.write_text(path.read_text() + "http-mgmt-max-request-size 10\n")
    guard.holder.config = load_config(str(path))
    client = Connection(site)
    client.send(
        f"POST /command HTTP/1.1\r\nX-API-Key: {API_KEY}\r\nContent-Length: 11\r\n\r\n".encode()
    )
    assert client.status() == 413


# -- the real server ---------------------------------------------------------------------


def raw_request(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data`, then read until the server closes; what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


MGMT_EXTRA = """
http-request-header-timeout 2s
http-request-body-timeout 3s
http-mgmt-max-request-size 64k
"""
RATE_EXTRA = "http-max-request-rate 5/m\nhttp-rate-limit-exempt 10.0.0.0/8\n"


@pytest.fixture(scope="module")
def mgmt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    with Receiver() as receiver:
        server = MgmtServer(tmp_path_factory.mktemp("http"), receiver.port)
        with open(server.process.config, "a") as stream:
            stream.write(MGMT_EXTRA)
        server.start()
        try:
            yield server
        finally:
            server.stop()


def test_slowloris_connections_are_closed(mgmt: MgmtServer) -> None:
    """Many trickling connections each get a 408 and are closed at the header deadline."""
    sockets = []
    for _ in range(30):
        sock = socket.create_connection(("127.0.0.1", mgmt.mgmt), timeout=60)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        sockets.append(sock)
    answers = []
    try:
        deadline = time.monotonic() + 60
        for sock in sockets:  # keep trickling until the server hangs up
            data = b""
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Drip: 1\r\n")
                sock.settimeout(0.5)
                try:
                    chunk = sock.recv(4096)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                data += chunk
            answers.append(data)
    finally:
        for sock in sockets:
            sock.close()
    assert len(answers) == 30
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers[:3]


def test_oversize_and_unauthenticated_bodies_refused_at_once(mgmt: MgmtServer) -> None:
    """A 2 GB Content-Length is answered 403/413 without the body being sent."""
    head = b"POST /configFile HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n"
    assert raw_request(mgmt.mgmt, head + b"\r\n").startswith(b"HTTP/1.1 403 ")
    with_key = head + f"X-API-Key: {API_KEY}\r\n\r\n".encode()
    answer = raw_request(mgmt.mgmt, with_key)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"errors"' in answer


def test_chunked_body_capped_on_the_real_port(mgmt: MgmtServer) -> None:
    """A chunked POST past http-mgmt-max-request-size gets a 413 while it streams."""
    with socket.create_connection(("127.0.0.1", mgmt.mgmt), timeout=30) as sock:
        sock.sendall(
            f"POST /command HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        answer = b""
        chunk = b"4000\r\n" + b"a" * 0x4000 + b"\r\n"
        for _ in range(64):  # 1 MiB at most, far past the 64k limit
            try:
                sock.sendall(chunk)
            except OSError:
                break
        sock.settimeout(30)
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]


def test_rate_limit_on_the_real_port(tmp_path: Path) -> None:
    """With loopback not exempt, a burst over 5/m gets 429 with Retry-After."""
    with Receiver() as receiver:
        server = MgmtServer(tmp_path, receiver.port)
        with open(server.process.config, "a") as stream:
            stream.write(MGMT_EXTRA + RATE_EXTRA)
        server.start()
        try:
            codes = [server.call("GET", "/status", key=API_KEY)[0] for _ in range(7)]
            assert codes[:5] == [200] * 5 and codes[5:] == [429, 429]
            answer = raw_request(server.mgmt, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: " in answer
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["errors"][0]["message"] == "Too many requests"
        finally:
            server.stop()


API_CONFIG = """
host-name api.example.test
spool {dir}/spool
<transmissions-api-listener 127.0.0.1:{port}>
</transmissions-api-listener>
<transmissions-api>
  api-key {key}
  max-request-size 64k
</transmissions-api>
http-request-header-timeout 2s
"""


def test_transmissions_port_refuses_before_the_body(tmp_path: Path) -> None:
    """The API answers 403 (no key), 413 (too long), 411 (no length), 408 (trickle) at once."""
    port = free_port()
    process = ServerProcess(
        tmp_path, API_CONFIG.format(dir=tmp_path, port=port, key=API_KEY_TX), wait_ports=(port,)
    )
    process.start()
    try:
        head = b"POST /api/v1/transmissions HTTP/1.1\r\nHost: x\r\n"
        key = f"Authorization: {API_KEY_TX}\r\n".encode()
        big = b"Content-Length: 2000000000\r\n"
        assert raw_request(port, head + big + b"\r\n").startswith(b"HTTP/1.1 403 ")
        assert raw_request(port, head + key + big + b"\r\n").startswith(b"HTTP/1.1 413 ")
        assert raw_request(port, head + key + b"\r\n").startswith(b"HTTP/1.1 411 ")
        assert raw_request(port, head).startswith(b"HTTP/1.1 408 ")
        assert wait_until(lambda: "refused before the body" in process.read_log())
    finally:
        process.stop()


def test_refusal_over_tls(tmp_path: Path) -> None:
    """Over HTTPS a keyless 2 GB POST is answered 403 at once and the connection closed."""
    import ssl

    import trustme

    ca = trustme.CA()
    pem = tmp_path / "api.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    config = API_CONFIG.format(dir=tmp_path, port=port, key=API_KEY_TX).replace(
        f"127.0.0.1:{port}>\n", f"127.0.0.1:{port}>\n  tls-certificate {pem}\n"
    )
    process = ServerProcess(tmp_path, config, wait_ports=(port,))
    process.start()
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(
                b"POST /api/v1/transmissions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: 2000000000\r\n\r\n"
            )
            answer = b""
            with contextlib.suppress(ssl.SSLError, ConnectionResetError):
                while data := sock.recv(65536):
                    answer += data
        assert answer.startswith(b"HTTP/1.1 403 ") and b'"errors"' in answer
    finally:
        process.stop()
