"""`EagerServer`: an SMTP reply leaves at once when nothing is buffered, and the
buffered path keeps the order when the socket cannot take everything."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from watched_reactor import WatchedReactor

from mtaserver.smtp.eager import EagerServer, make_eager, write_now


def connection() -> tuple[EagerServer, socket.socket, WatchedReactor]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = WatchedReactor()
    server = EagerServer(ours, Protocol(), ("127.0.0.1", 2525), None, 1, reactor)  # type: ignore[arg-type]
    return server, peer, reactor


def test_a_reply_is_sent_without_waiting_for_the_reactor() -> None:
    server, peer, reactor = connection()
    server.write(b"250 2.0.0 OK\r\n")
    assert peer.recv(100) == b"250 2.0.0 OK\r\n"
    assert reactor.writers == set()  # nothing left for a later turn


def test_what_the_socket_cannot_take_is_buffered_in_order() -> None:
    server, peer, reactor = connection()
    big = bytes(range(256)) * 40_000  # far more than a socket buffer
    server.write(big)
    server.write(b"after")  # must follow the rest of `big`, not jump ahead
    assert reactor.writers == {server}
    received = b""
    while len(received) < len(big) + 5:
        server.doWrite()
        received += peer.recv(1 << 20)
    assert received == big + b"after"


def test_only_plain_tcp_ports_are_made_eager() -> None:
    class Port(tcp.Port):
        pass

    port = Port(0, None)  # type: ignore[arg-type]
    assert make_eager(port).transport is EagerServer
    other = object()
    assert make_eager(other) is other


def test_write_now_sends_on_a_tcp_connection_and_buffers_elsewhere() -> None:
    """The SMTP client's writes: at once on TCP, Twisted's way on anything else (TLS)."""
    server, peer, reactor = connection()
    write_now(server, b"MAIL FROM:<a@b.test>\r\n")
    assert peer.recv(100) == b"MAIL FROM:<a@b.test>\r\n" and reactor.writers == set()
    other = StringTransport()
    write_now(other, b"QUIT\r\n")
    assert other.value() == b"QUIT\r\n"
