"""`recipient-priority=N` in a `<pattern-list>` result: a queue's recipients in order.

PowerMTA: "recipient-priority is only used for determining which recipients in a queue
are attempted first for delivery" (0-100, default 50), with or without `virtual-mta=`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mgmt_client import MgmtServer
from mx_receiver import Receiver
from server_process import wait_until
from test_hardening_catalog import errors, load

from mtaserver.events import Envelope, Recipient

PATTERNS = """
<pattern-list prio>
    rcpt-to /^vip/ recipient-priority=90
    mail-from /newsletter/ recipient-priority=10
    rcpt-to /^fast/ virtual-mta=fast, recipient-priority=70
</pattern-list>
<virtual-mta fast>
</virtual-mta>
<source 127.0.0.1>
    pattern-list prio
</source>
<domain prio.test>
    max-smtp-out 1
</domain>
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_recipients_with_higher_priority_are_delivered_first(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Queued while paused: vip (90) goes before plain (50), plain before newsletter (10)."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin")
    (tmp_path / "conf.d" / "prio.conf").write_text(PATTERNS)
    server.start()
    try:
        assert server.command("pause queue prio.test")[0] == 200
        server.send(["low@prio.test"], sender="newsletter@src.test")
        server.send(["plain@prio.test"])
        server.send(["vip@prio.test"])

        def queued() -> int:
            status, body = server.command("list --queue=prio.test")
            return int(body["data"]["total"]) if status == 200 else -1

        assert wait_until(lambda: queued() == 3)
        assert server.command("resume queue prio.test")[0] == 200
        assert wait_until(lambda: len(receiver.messages) == 3)
    finally:
        server.stop()
    order = [m.rcpt_tos[0] for m in receiver.messages]
    assert order == ["vip@prio.test", "plain@prio.test", "low@prio.test"]


def test_recipient_priority_results_parse(tmp_path: Path) -> None:
    """Priority-only lines, both results together; the vmta comes from a line naming one."""
    config = load(tmp_path, PATTERNS)
    patterns = config.routing_patterns["prio"]
    assert patterns.recipient_priorities("s@x.test", ["vip@a.test", "b@a.test"]) == (90, 50)
    assert patterns.recipient_priorities("newsletter@x.test", ["vip@a.test"]) == (10,)
    assert patterns.recipient_priorities("s@x.test", ["b@a.test"]) == ()
    assert patterns.virtual_mta_for("s@x.test", ["vip@a.test", "fast@a.test"]) == "fast"
    assert patterns.virtual_mta_for("s@x.test", ["vip@a.test"]) is None
    bad = "<pattern-list p>\n rcpt-to /x/ recipient-priority=101\n</pattern-list>\n"
    assert "recipient-priority is 0 to 100" in errors(tmp_path, bad)[0]


def test_recipient_priorities_survive_the_journal() -> None:
    """The priorities are journaled with the envelope (and left out when all are 50)."""
    envelope = Envelope("m1", "s@x.test", (Recipient("a@b"), Recipient("c@d")), 1.0)
    assert "recipient_priorities" not in envelope.to_json()
    import attrs

    with_priorities = attrs.evolve(envelope, recipient_priorities=(90, 10))
    assert Envelope.from_json(with_priorities.to_json()) == with_priorities
    assert with_priorities.only((1,)).recipient_priorities == (10,)
    assert with_priorities.priority_of((0, 1)) == 90
