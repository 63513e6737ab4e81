"""Message intake in its own package: one accept path, heavy work off the reactor thread.

`mtaserver.message` is shared by SMTP reception and the Transmissions API; these tests
check the seams this restructuring introduced: the HTTP layer imports nothing from
`mtaserver.smtp`, DSN building runs in the injected thread runner, and so on.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.internet import defer, task

from mtaserver.config.load import load_config
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome, Recipient
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
