"""kill -9 while committing: every acknowledged message survives, whole."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from mtaserver.spool.recovery import open_spool
from mtaserver.spool.testing import result_of, run_now

CHILD = textwrap.dedent(
    """
    import sys
    from twisted.internet import reactor, threads
    from twisted.python.threadpool import ThreadPool
    from mtaserver.events import Outcome
    from mtaserver.spool.recovery import open_spool
    from mtaserver.spool.testing import make_envelope

    def body_of(msg_id):
        return (msg_id + "\\r\\n").encode() * (int(msg_id[-3:], 16) % 50 + 1)

    pool = ThreadPool(4, 8)
    pool.start()
    run = lambda f: threads.deferToThreadPool(reactor, pool, f)
    _, journal, store = open_spool(sys.argv[1], run, segment_bytes=20000)

    def acked(_, msg_id, envelope):
        print("ack", msg_id, flush=True)
        if int(msg_id[-1], 16) % 2:
            event = Outcome("d", msg_id, (0,), 1.0, envelope.only((0,)))
            journal.append([event]).addCallback(lambda _: print("d", msg_id, flush=True))

    def one():
        writer = store.begin()
        writer.write(body_of(writer.msg_id))
        envelope = make_envelope(writer.msg_id, 2)
        d = writer.commit(envelope)
        d.addCallback(acked, writer.msg_id, envelope)
        d.addBoth(lambda _: one())

    for _ in range(16):
        reactor.callWhenRunning(one)
    reactor.run()
    """
)


def body_of(msg_id: str) -> bytes:
    return (msg_id + "\r\n").encode() * (int(msg_id[-3:], 16) % 50 + 1)


def run_and_kill(spool: str, acks_wanted: int) -> tuple[set[str], set[str]]:
    """Run the child until it acknowledged `acks_wanted` messages, kill -9 it."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, spool],
        stdout=subprocess.PIPE,
        cwd=spool,
    )
    assert child.stdout is not None
    acked: set[str] = set()
    delivered: set[str] = set()
    try:
        while len(acked) < acks_wanted:
            line = child.stdout.readline()
            assert line, "child died early"
            kind, msg_id = line.decode().split()
            (acked if kind == "ack" else delivered).add(msg_id)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.communicate()[0]
    # Only whole lines count: the piece after the last newline may have been cut by the
    # kill anywhere, even inside the message id.
    for line in rest.decode().split("\n")[:-1]:
        kind, msg_id = line.split()
        (acked if kind == "ack" else delivered).add(msg_id)
    return acked, delivered


def test_acknowledged_messages_survive_sigkill(tmp_path):
    """Messages whose commit fired are all recovered, with bodies and outcomes, twice over."""
    spool = str(tmp_path)
    all_acked: set[str] = set()
    all_delivered: set[str] = set()
    for _ in range(2):
        acked, delivered = run_and_kill(spool, 300)
        all_acked |= acked
        all_delivered |= delivered
        recovered, journal, store = open_spool(spool, run_now)
        assert all_acked <= recovered.messages.keys()
        assert not recovered.corrupt and not recovered.lost
        for msg_id in all_acked:
            pending = [p.index for p in recovered.messages[msg_id].pending]
            if msg_id in all_delivered:
                assert pending == [1]
            elif int(msg_id[-1], 16) % 2 == 0:
                assert pending == [0, 1]
            else:  # the `d` may have been durable without its line printed yet
                assert pending in ([0, 1], [1])
            assert result_of(store.read_body(msg_id)) == body_of(msg_id)
        journal.close()
