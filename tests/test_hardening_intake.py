"""Message intake in its own package: one accept path, heavy work off the reactor thread.

`mtaserver.message` is shared by SMTP reception and the Transmissions API; these tests
check the seams this restructuring introduced: the HTTP layer imports nothing from
`mtaserver.smtp`, DSN building runs in the injected thread runner, and so on.
"""

from __future__ import annotations

import ast
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gated_api import gated_api, post
from server_process import wait_until
from twisted.internet import defer, task

from mtaserver.config.load import load_config
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome, Recipient
from mtaserver.http.safety import UnsafeInput, check_rfc822
from mtaserver.message.limits import ContentLimits, check_message
from mtaserver.queue.bounces import DsnSender
from mtaserver.spool import Journal, MessageStore
from mtaserver.spool.testing import ManualThreads, run_now

HTTP_PACKAGE = Path(__file__).resolve().parent.parent / "mtaserver" / "http"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_http_modules_import_nothing_from_smtp() -> None:
    """No module under mtaserver/http imports mtaserver.smtp (intake lives in mtaserver.message)."""
    files = sorted(HTTP_PACKAGE.rglob("*.py"))
    assert files
    offenders = {
        str(path.relative_to(HTTP_PACKAGE)): sorted(
            name for name in _imported_modules(path) if name.split(".")[:2] == ["mtaserver", "smtp"]
        )
        for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_dsn_is_built_in_the_thread_runner(tmp_path: Path) -> None:
    """DsnSender builds the report through run_in_thread: nothing is spooled until it ran."""
    conf = tmp_path / "m.conf"
    conf.write_text("host-name mta.test\n")
    holder = ConfigHolder(load_config(str(conf)))
    clock = task.Clock()
    spool = str(tmp_path / "spool")
    store = MessageStore(spool, Journal(spool + "/journal", run_now), run_now, clock=clock.seconds)
    store.resume({})
    queued: list[Envelope] = []
    threads = ManualThreads()
    sender = DsnSender(holder, store, queued.append, clock, threads)
    envelope = Envelope("m1", "sender@a.test", (Recipient("r@b.test"),), 0.0, ret="FULL")
    outcome = Outcome(
        record="b",
        msg_id="m1",
        rcpt_indexes=(0,),
        time=0.0,
        envelope=envelope,
        dsn_status="5.1.1",
        dsn_diag="smtp;550 5.1.1 no such user",
        dsn_mta="mx.b.test (127.0.0.2)",
    )
    done = defer.ensureDeferred(sender(envelope, [outcome], b"Subject: hi\r\n\r\nbody\r\n"))
    assert queued == [] and len(threads.queued) == 1  # waiting for the thread
    threads.run_all()
    assert done.called
    assert [e.recipients[0].address for e in queued] == ["sender@a.test"]
    assert queued[0].is_dsn


# -- the Transmissions API renders MIME in the thread pool ------------------------------

KEY = "intake_key_0123456789_0123456789_01234"


def test_mime_with_attachments_is_rendered_in_the_thread_runner(tmp_path: Path) -> None:
    """A message with an attachment is built in run_in_thread: nothing is spooled until it ran."""
    body = {
        "recipients": ["ok@dest.example"],
        "content": {
            "from": "s@api.example.test",
            "subject": "report",
            "text": "see attached",
            "attachments": [
                {
                    "name": "a.pdf",
                    "type": "application/pdf",
                    "data": base64.b64encode(b"%PDF").decode(),
                }
            ],
        },
    }
    with gated_api(tmp_path, KEY) as running, ThreadPoolExecutor(1) as executor:
        answer = executor.submit(post, running.port, KEY, body)
        assert wait_until(lambda: bool(running.calls))
        assert running.accepted == []  # the build waits in the thread runner
        running.gate.set()
        status, result = answer.result(timeout=60)
        assert status == 200, result
        assert len(running.accepted) == 1


# -- one content-limit implementation ---------------------------------------------------


def _nested(depth: int) -> bytes:
    lines = [b"From: s@a.test", b"Content-Type: multipart/mixed; boundary=b0", b""]
    for level in range(1, depth):
        lines += [
            f"--b{level - 1}".encode(),
            f"Content-Type: multipart/mixed; boundary=b{level}".encode(),
            b"",
        ]
    lines += [f"--b{depth - 1}".encode(), b"", b"leaf"]
    lines += [f"--b{level}--".encode() for level in range(depth - 1, -1, -1)]
    return b"\r\n".join(lines) + b"\r\n"


@pytest.mark.parametrize(
    "message",
    [
        b"From: s@a.test\r\n" + b"Received: x\r\n" * 3 + b"\r\nbody\r\n",
        b"From: s@a.test\r\n" + b"Received: x\r\n" * 4 + b"\r\nbody\r\n",
        b"From: s@a.test\r\n" + b"X: y\r\n" * 9 + b"\r\nbody\r\n",
        b"From: s@a.test\r\n" + b"X: y\r\n" * 10 + b"\r\nbody\r\n",
        b"From: s@a.test\r\nSubject: " + b"x" * 300 + b"\r\n\r\nbody\r\n",
        _nested(2),
        _nested(3),
        b"From: s@a.test\r\nContent-Type: message/rfc822\r\n\r\n" + _nested(2),
    ],
)
def test_api_and_smtp_refuse_the_same_messages(message: bytes) -> None:
    """check_rfc822 (the API) refuses exactly what check_message (SMTP DATA) refuses."""
    limits = ContentLimits(
        max_message_hops=3, max_header_count=10, max_header_size=200, max_mime_depth=2
    )
    smtp_problem = check_message(message, limits)
    try:
        check_rfc822(message, limits)
    except UnsafeInput as exc:
        assert smtp_problem is not None, exc
    else:
        assert smtp_problem is None
