"""SMTP server connections that send a reply at once when nothing else is waiting.

Twisted's TCP transport never writes in `write()`: it buffers, asks the reactor to
watch the socket for writability (an `epoll_ctl`), sends in the next reactor turn and
stops watching (another `epoll_ctl`). For SMTP, where every command gets one short
reply and the socket buffer is almost always empty, that is two system calls and a
reactor turn per reply for nothing: about a tenth of a reception worker's CPU under
P1 (docs/benchmarks.rst). `EagerServer` sends the bytes with one `send()` when the
transport has nothing buffered and is plain TCP, and falls back to Twisted's buffered
write for whatever the kernel did not take, so the order of bytes and Twisted's
producer and disconnect handling stay as they were. With TLS (after STARTTLS) every
write goes Twisted's way. The delivery side (`write_now`) does the same for the SMTP
client's commands and bodies.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred


def send_at_once(connection: tcp.Connection, data: bytes) -> bytes:
    """Send what the socket takes of `data` now, if `connection` is plain TCP with
    nothing buffered; the rest, for Twisted's buffered `write`."""
    if (
        data
        and not connection.TLS
        and connection.connected
        and not connection.disconnecting
        and not connection._writeDisconnected
        and not connection._tempDataLen
        and connection.offset == len(connection.dataBuffer)
    ):
        try:
            sent = connection.socket.send(data)
        except OSError:  # would block, or broken: the buffered write finds out
            sent = 0
        return data[sent:]
    return data


def write_now(transport: Any, data: bytes) -> None:
    """`transport.write(data)`, the eager way when `transport` is a TCP connection (the
    SMTP client's commands and bodies)."""
    rest = send_at_once(transport, data) if isinstance(transport, tcp.Connection) else data
    if rest:
        transport.write(rest)


class EagerServer(tcp.Server):
    """A server-side TCP connection whose writes go out at once when they can."""

    def write(self, data: bytes) -> None:
        rest = send_at_once(self, data)
        if rest:
            super().write(rest)


class EagerEndpoint:
    """Wraps a TCP server endpoint: its port's connections are `EagerServer`s."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.endpoint.listen(factory).addCallback(make_eager)


def make_eager(port: Any) -> Any:
    """Accept `EagerServer` connections on `port` from now on (a plain `tcp.Port`)."""
    if isinstance(port, tcp.Port) and port.transport is tcp.Server:
        port.transport = EagerServer
    return port
