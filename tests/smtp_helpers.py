"""Helpers for the SMTP server tests: a config from text, a fake spool, a session.

`FakeStore` has the `MessageStore` methods reception uses and keeps messages in a
dict; it can be told to fail with SpoolFullError or SpoolIOError. `Session` drives
one `SmtpServerProtocol` over a `StringTransport` with a `task.Clock`.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import StringTransport

from mtaserver.auth.checkers import CheckerChoice
from mtaserver.auth.users import LocalUserChecker
from mtaserver.config.load import load_config
from mtaserver.config.model import Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.events import Envelope
from mtaserver.smtp.server import SmtpServerFactory, SmtpServerProtocol
from mtaserver.spool.errors import SpoolError


def holder_from_text(text: str, directory: str | None = None) -> ConfigHolder:
    """A ConfigHolder loaded from config text written to a temporary file."""
    directory = directory or tempfile.mkdtemp(prefix="mtaserver-test-")
    path = os.path.join(directory, "mtaserver.conf")
    with open(path, "w") as f:
        f.write(text)
    return ConfigHolder(load_config(path))


def run_now(work: Any) -> Deferred[Any]:
    try:
        return succeed(work())
    except Exception as exc:
        return fail(exc)


class FakeWriter:
    def __init__(self, store: FakeStore, msg_id: str) -> None:
        self.msg_id = msg_id
        self.store = store
        self.chunks: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    def commit(self, envelope: Envelope) -> Deferred[None]:
        if self.store.fail_commit is not None:
            return fail(self.store.fail_commit("commit failed"))
        if self.store.hold_commits:
            d: Deferred[None] = Deferred()
            self.store.held.append((d, self, envelope))
            return d
        self.store.messages[self.msg_id] = (envelope, b"".join(self.chunks))
        return succeed(None)

    def acknowledge(self, envelope: Envelope) -> Deferred[None]:
        return self.commit(envelope)

    def abort(self) -> None:
        self.aborted = True
        self.store.aborted.append(self.msg_id)


class FakeStore:
    """An in-memory message store with the spool's API and switchable failures."""

    def __init__(self) -> None:
        self.messages: dict[str, tuple[Envelope, bytes]] = {}
        self.aborted: list[str] = []
        self.fail_space: type[SpoolError] | None = None
        self.space_needed: list[int] = []
        self.fail_commit: type[SpoolError] | None = None
        self.hold_commits = False
        self.held: list[tuple[Deferred[None], FakeWriter, Envelope]] = []
        self._ids = itertools.count(1)

    def begin(self) -> FakeWriter:
        return FakeWriter(self, f"msg{next(self._ids):04d}")

    def check_space(self, needed: int = 0) -> None:
        self.space_needed.append(needed)
        if self.fail_space is not None:
            raise self.fail_space("spool trouble")

    def release(self) -> None:
        """Fire the held commits."""
        held, self.held = self.held, []
        for d, writer, envelope in held:
            self.messages[writer.msg_id] = (envelope, b"".join(writer.chunks))
            d.callback(None)

    def only(self) -> tuple[Envelope, bytes]:
        assert len(self.messages) == 1, self.messages
        return next(iter(self.messages.values()))


LISTENER = Listener(HostPort("127.0.0.1", 0))


def server_factory(
    holder: ConfigHolder,
    store: FakeStore,
    clock: task.Clock,
    accept: Callable[[Envelope], object] = lambda envelope: None,
    **options: Any,
) -> SmtpServerFactory:
    """The reception factory protocol tests drive: `LISTENER`, local-user AUTH checks.

    `accept` sees each accepted envelope; `options` go to `SmtpServerFactory` as they
    are (`maillog=`, `connections=`, ...).
    """
    return SmtpServerFactory(
        holder,
        store,
        accept,
        clock,
        LISTENER,
        checkers=CheckerChoice(LocalUserChecker(holder, run_now)),
        **options,
    )


class Session:
    """One protocol instance over a StringTransport, with a Clock."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: FakeStore | None = None,
        peer: str = "127.0.0.1",
        factory: SmtpServerFactory | None = None,
        clock: task.Clock | None = None,
    ) -> None:
        self.clock = clock or task.Clock()
        self.store = store or FakeStore()
        self.accepted: list[Envelope] = []
        self.factory = factory or server_factory(
            holder, self.store, self.clock, self.accepted.append
        )
        self.protocol: SmtpServerProtocol = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes | str) -> list[str]:
        """Send bytes; return the reply lines written since the last call."""
        self.transport.clear()
        if isinstance(data, str):
            data = data.encode()
        self.protocol.dataReceived(data)
        return self.lines()

    def lines(self) -> list[str]:
        out = self.transport.value().decode("utf-8", "replace").split("\r\n")
        self.transport.clear()
        return out[:-1] if out and out[-1] == "" else out

    def command(self, line: str) -> str:
        """Send one command; return the last reply line."""
        replies = self.send(line + "\r\n")
        assert replies, f"no reply to {line!r}"
        return replies[-1]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting
