"""A message file missing or corrupt at delivery time bounces at once, with a DSN.

The scheduler over a real spool (MessageStore, Journal), a task.Clock, the real
DsnSender and a deliverer that would accept everything: retrying cannot bring a
body back, so such a message must not wait until bounce-after.
"""

from __future__ import annotations

import email
import email.policy
import os
from pathlib import Path

from test_scheduler import World as SchedulerWorld
from twisted.internet import defer

from mtaserver.events import Envelope, Outcome, Recipient, Removed
from mtaserver.queue.bounces import DsnSender
from mtaserver.queue.delivery import ConnectionInfo, SessionJob, TransactionResult
from mtaserver.smtp_reply import Reply
from mtaserver.spool.testing import run_now

INFO = ConnectionInfo("127.0.0.1", "127.0.0.2", "mx.test", True, "", "", frozenset())


class AcceptAll:
    """A deliverer that answers 250 to everyone; records what it was given."""

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def run(self, job: SessionJob) -> None:
        while (tx := await job.next_transaction()) is not None:
            self.delivered.append(tx.envelope.msg_id)
            job.report(
                TransactionResult(tx, tuple(Reply(250, "2.0.0", "ok") for _ in tx.recipients), INFO)
            )


class World(SchedulerWorld):
    """test_scheduler's world with a deliverer that accepts all and the real DsnSender."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(
            tmp_path, "retry-after 10m\nbounce-after 4d", "host-name mta.test", AcceptAll()
        )
        self.dsns: list[Envelope] = []
        self.scheduler.notify_bounce = DsnSender(
            self.holder, self.store, self.dsns.append, self.clock, run_now
        )

    def outcomes_of(self, msg_id: str) -> list[Outcome]:
        return [e for e in self.events() if isinstance(e, Outcome) and e.msg_id == msg_id]

    def dsn_text(self) -> str:
        (dsn,) = self.dsns
        body = self.store.read_body(dsn.msg_id)
        assert body.called
        data: bytes = body.result
        message = email.message_from_bytes(data, policy=email.policy.default)
        return message.as_string()


def _check_bounced(world: World, envelope: Envelope, what: str) -> None:
    (outcome,) = world.outcomes_of(envelope.msg_id)
    assert outcome.record == "b"
    assert outcome.rcpt_indexes == (0, 1)
    assert outcome.dsn_status == "5.3.0"
    assert outcome.bounce_cat == "other"
    assert what in outcome.dsn_diag
    assert any(isinstance(e, Removed) and e.msg_id == envelope.msg_id for e in world.events())
    assert envelope.msg_id not in world.scheduler.messages
    assert world.deliverer.delivered == []
    # Nothing is left to retry: no timer for this message.
    assert world.scheduler.control.totals().recipients == 0
    text = world.dsn_text()
    assert world.dsns[0].recipients[0].address == "sender@src.test"
    assert "Status: 5.3.0" in text
    assert "a@dst.test" in text and "b@dst.test" in text


def test_missing_file_at_delivery_bounces_at_once_with_a_dsn(tmp_path: Path) -> None:
    """A vanished message file: b (5.3.0, other) for all recipients and a DSN, no retry."""
    world = World(tmp_path)
    envelope = world.write_message("a@dst.test", "b@dst.test")
    os.unlink(world.store.path(envelope.msg_id))
    world.scheduler.enqueue(envelope)
    _check_bounced(world, envelope, "missing")


def test_corrupt_file_at_delivery_is_set_aside_and_bounced(tmp_path: Path) -> None:
    """A corrupt message file moves to corrupt/ at once; b for its recipients, a DSN."""
    world = World(tmp_path)
    envelope = world.write_message("a@dst.test", "b@dst.test")
    path = world.store.path(envelope.msg_id)
    data = bytearray(Path(path).read_bytes())
    data[data.index(b"body\r\n")] ^= 0x20  # flip a body byte: its checksum no longer matches
    Path(path).write_bytes(bytes(data))
    world.scheduler.enqueue(envelope)
    _check_bounced(world, envelope, "corrupt")
    assert not os.path.exists(path)
    assert (tmp_path / "spool" / "corrupt" / envelope.msg_id).read_bytes() == bytes(data)


def test_lost_at_recovery_gets_a_dsn(tmp_path: Path) -> None:
    """Recovery's lost messages (file gone before the restart) get a b and a DSN too."""
    world = World(tmp_path)
    envelope = Envelope(
        "0" * 26, "sender@src.test", (Recipient("a@dst.test"), Recipient("b@dst.test")), 0.0
    )
    finished = defer.ensureDeferred(world.scheduler.bounce_lost(envelope, [0, 1]))
    assert finished.called
    (outcome,) = world.outcomes_of(envelope.msg_id)
    assert (outcome.record, outcome.dsn_status, outcome.bounce_cat) == ("b", "5.3.0", "other")
    text = world.dsn_text()
    assert "Status: 5.3.0" in text and "a@dst.test" in text
