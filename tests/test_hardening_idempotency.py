"""Idempotency-Key while the first request is still running: the API in process, real HTTP.

The TransmissionsAPI runs on the reactor thread over a real spool, behind a real
socket; its idempotency store gets a thread runner whose work waits for a gate, so
the first request stays in flight for as long as the test wants. (The restart and
kill -9 behaviour is in test_hardening_transmissions.py, against the real server.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gated_api import gated_api, post
from server_process import wait_until

KEY = "inflight_key_0123456789_0123456789_0123"
BODY = {
    "recipients": ["ok@dest.example"],
    "content": {"from": "s@api.example.test", "subject": "once", "text": "hi"},
}


def post_with_key(port: int, key: str) -> tuple[int, Any]:
    return post(port, KEY, BODY, {"Idempotency-Key": key})


def test_same_key_while_the_first_request_runs_is_409(tmp_path: Path) -> None:
    """A second request with the key of one still in flight is 409; later ones replay the 200."""
    with gated_api(tmp_path, KEY) as running, ThreadPoolExecutor(1) as executor:
        first = executor.submit(post_with_key, running.port, "order-7")
        assert wait_until(lambda: bool(running.api.idempotency.in_flight))
        status, answer = post_with_key(running.port, "order-7")
        assert status == 409, answer
        assert "still being processed" in answer["errors"][0]["description"]
        running.gate.set()
        status, answer = first.result(timeout=60)
        assert status == 200, answer
        assert post_with_key(running.port, "order-7") == (200, answer)
        assert len(running.accepted) == 1
