"""The service tree `makeService` composes, in-process over a `MemoryReactorClock`.

No process, no socket: `mtaserver.tap.makeService(options, reactor=...)` builds the
tree on a memory reactor, the listener services are started (they call `listenTCP`
on it, which only records the port), and the test reads the tree's service names and
the recorded listening ports. The real-process start is `test_tap.py`'s.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IServiceCollection, MultiService
from twisted.internet.testing import MemoryReactorClock

from mtaserver.tap import Options, makeService

# Memory reactor: these ports are never bound, so fixed numbers are fine here.
# One process: the tree holds the SMTP listeners themselves (workers: test_workers_units).
CONFIG = """
host-name compose.test
reception-workers 0
spool {d}/spool
smtp-listener 127.0.0.1:2525
smtp-listener 127.0.0.1:2526
http-mgmt-port 127.0.0.1:8080
http-access 127.0.0.1/32 monitor
<transmissions-api-listener 127.0.0.1:8585>
</transmissions-api-listener>
<transmissions-api>
  api-key {key}
</transmissions-api>
<acct-file {d}/acct.csv>
</acct-file>
"""
API_KEY = "compose_key_0123456789abcdef0123456789"


@pytest.fixture
def keep_sighup() -> Iterator[None]:
    """makeService installs a SIGHUP handler (reload); put the test process's back."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def compose(tmp_path: Path) -> tuple[MultiService, MemoryReactorClock]:
    conf = tmp_path / "mtaserver.conf"
    conf.write_text(CONFIG.format(d=tmp_path, key=API_KEY))
    options = Options()
    options.parseOptions(["--config", str(conf)])
    reactor = MemoryReactorClock()
    root = makeService(options, reactor=reactor)
    assert isinstance(root, MultiService)
    return root, reactor


def services(root: Any) -> list[Any]:
    """Every service of the tree, depth first."""
    found = []
    for child in root:
        found.append(child)
        if IServiceCollection.providedBy(child):
            found.extend(services(child))
    return found


def test_tree_holds_every_listener_by_name(tmp_path: Path, keep_sighup: None) -> None:
    """Each smtp-listener, the API listener and the management port is a named service."""
    root, _ = compose(tmp_path)
    names = {s.name for s in services(root) if s.name}
    assert {
        "smtp-listener 127.0.0.1:2525",
        "smtp-listener 127.0.0.1:2526",
        "transmissions-api-listener 127.0.0.1:8585",
        "http-mgmt",
    } <= names


def test_listeners_listen_on_their_configured_ports(tmp_path: Path, keep_sighup: None) -> None:
    """Starting the listener services listens on exactly the configured addresses."""
    root, reactor = compose(tmp_path)
    listeners = [s for s in services(root) if isinstance(s, StreamServerEndpointService)]
    for service in listeners:
        service.startService()
    try:
        bound = sorted(
            (interface, port) for port, _factory, _backlog, interface in reactor.tcpServers
        )
        assert bound == [
            ("127.0.0.1", 2525),
            ("127.0.0.1", 2526),
            ("127.0.0.1", 8080),
            ("127.0.0.1", 8585),
        ]
    finally:
        for service in listeners:
            service.stopService()


def test_tree_is_built_before_anything_listens(tmp_path: Path, keep_sighup: None) -> None:
    """makeService only composes: nothing listens until the tree starts."""
    root, reactor = compose(tmp_path)
    assert reactor.tcpServers == []
    assert not root.running
