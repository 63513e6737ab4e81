"""Idempotency-Key while the first request is still running: the API in process, real HTTP.

The TransmissionsAPI runs on the reactor thread over a real spool, behind a real
socket; its idempotency store gets a thread runner whose work waits for a gate, so
the first request stays in flight for as long as the test wants. (The restart and
kill -9 behaviour is in test_hardening_transmissions.py, against the real server.)
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from reactor_thread import run_in_reactor
from server_process import wait_until
from smtp_helpers import holder_from_text
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.web.server import Site

from mtaserver.events import Envelope
from mtaserver.http.transmissions import TransmissionsAPI
from mtaserver.spool import open_spool

KEY = "inflight_key_0123456789_0123456789_0123"
CONFIG = f"""
host-name api.example.test
<transmissions-api>
  api-key {KEY}
</transmissions-api>
"""
BODY = {
    "recipients": ["ok@dest.example"],
    "content": {"from": "s@api.example.test", "subject": "once", "text": "hi"},
}


def in_pool(work: Callable[[], Any]) -> Deferred[Any]:
    return deferToThreadPool(reactor, reactor.getThreadPool(), work)  # type: ignore[arg-type, attr-defined]


def post(port: int, key: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            "/api/v1/transmissions",
            body=json.dumps(BODY).encode(),
            headers={
                "Authorization": KEY,
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_same_key_while_the_first_request_runs_is_409(tmp_path: Path) -> None:
    """A second request with the key of one still in flight is 409; later ones replay the 200."""
    holder = holder_from_text(CONFIG, str(tmp_path))
    accepted: list[Envelope] = []
    gate = threading.Event()

    def gated(work: Callable[[], Any]) -> Deferred[Any]:
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
    port = listening.getHost().port
    try:
        with ThreadPoolExecutor(1) as executor:
            first = executor.submit(post, port, "order-7")
            assert wait_until(lambda: bool(api.idempotency.in_flight))
            status, answer = post(port, "order-7")
            assert status == 409, answer
            assert "still being processed" in answer["errors"][0]["description"]
            gate.set()
            status, answer = first.result(timeout=60)
        assert status == 200, answer
        assert post(port, "order-7") == (200, answer)
        assert len(accepted) == 1
    finally:
        gate.set()
        run_in_reactor(listening.stopListening)
        run_in_reactor(journal.close)
