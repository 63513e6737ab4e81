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
write goes Twisted's way.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred


class EagerServer(tcp.Server):
    """A server-side TCP connection whose writes go out at once when they can."""

    def write(self, data: bytes) -> None:
        if (
            data
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataLen
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except OSError:  # would block, or broken: the buffered write finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


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
