"""The Transmissions API in process, behind a real socket, with a thread runner on a gate.

`gated_api` runs a `TransmissionsAPI` on the reactor thread (`reactor_thread`) over a
real spool; the work it hands to its thread runner waits for `GatedApi.gate`, so a test
holds a request in flight (or checks that nothing was spooled yet) for as long as it
wants, then opens the gate. `post` is a plain HTTP client of the API, of this one
or of a real server's.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
from reactor_thread import run_in_reactor
from smtp_helpers import holder_from_text
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from mtaserver.events import Envelope
from mtaserver.http.transmissions import TransmissionsAPI
from mtaserver.spool import open_spool


def api_config(key: str) -> str:
    """A config with just the Transmissions API and its key."""
    return f"""
host-name api.example.test
<transmissions-api>
  api-key {key}
</transmissions-api>
"""


def in_pool(work: Callable[[], Any]) -> Deferred[Any]:
    """Run `work` in the reactor's thread pool (the server's own thread runner)."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), work)  # type: ignore[arg-type, attr-defined]


@attrs.define
class GatedApi:
    """A running API: its port, what it accepted, the gate, and one entry per runner call."""

    api: TransmissionsAPI
    port: int
    accepted: list[Envelope]
    gate: threading.Event
    calls: list[int]


@contextlib.contextmanager
def gated_api(tmp_path: Path, key: str) -> Iterator[GatedApi]:
    """The API with `key` on a fresh loopback port, its spool in `tmp_path/spool`."""
    holder = holder_from_text(api_config(key), str(tmp_path))
    accepted: list[Envelope] = []
    gate = threading.Event()
    calls: list[int] = []

    def gated(work: Callable[[], Any]) -> Deferred[Any]:
        calls.append(1)

        def wait_then_work() -> Any:
            gate.wait(30)
            return work()

        return in_pool(wait_then_work)

    def start() -> Any:
        _, journal, store = open_spool(str(tmp_path / "spool"), in_pool)
        api = TransmissionsAPI(holder, store, accepted.append, reactor, run_in_thread=gated)
        listening = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(api.app.resource())
        )
        return listening.addCallback(lambda port: (api, journal, port))

    api, journal, listening = run_in_reactor(start)
    try:
        yield GatedApi(api, listening.getHost().port, accepted, gate, calls)
    finally:
        gate.set()
        run_in_reactor(listening.stopListening)
        run_in_reactor(journal.close)


def post(
    port: int,
    key: str,
    body: Any,
    headers: Mapping[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """POST `body` as JSON (or the bytes `raw`) to /api/v1/transmissions on 127.0.0.1:`port`
    with more `headers`: the status and the decoded answer (None for an empty one).

    A plain HTTP client of the API, for the in-process API here and the real server alike.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            "/api/v1/transmissions",
            body=raw if raw is not None else json.dumps(body).encode(),
            headers={"Authorization": key, "Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()
