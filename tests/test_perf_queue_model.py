"""The scheduler's compact per-recipient state behaves like the sets and tuples it replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer

from mtaserver.events import Envelope, QueueFailure, Recipient
from mtaserver.queue.delivery import QueueLevelFailure, SessionJob, TransactionResult
from mtaserver.queue.model import (
    PackedRecipients,
    PendingRecipients,
    compact_envelope,
    index_span,
    shared_indexes,
)
from tests.test_scheduler import INFO, World, rule_by_prefix


@given(
    st.integers(min_value=0, max_value=60).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.sets(st.integers(min_value=0, max_value=max(n - 1, 0))) if n else st.just(set()),
            st.lists(st.lists(st.integers(min_value=-2, max_value=n + 2), max_size=8), max_size=6),
        )
    )
)
def test_pending_recipients_answer_like_a_set(case: tuple[int, set[int], list[list[int]]]) -> None:
    """Membership, length, truth and ascending iteration match a set through any updates."""
    size, start, updates = case
    pending, reference = PendingRecipients(size, start), set(start)
    for finals in updates:
        pending.difference_update(finals)
        reference.difference_update(finals)
        assert len(pending) == len(reference)
        assert bool(pending) == bool(reference)
        assert list(pending) == sorted(reference)
        assert all((i in pending) == (i in reference) for i in range(-2, size + 3))


def test_all_pending_by_default() -> None:
    """Without indexes every recipient is pending; finals leave the rest."""
    pending = PendingRecipients(1000)
    assert len(pending) == 1000 and 999 in pending and 1000 not in pending
    pending.difference_update(range(0, 1000, 2))
    pending.difference_update([1, 1, 1])  # again: counted once
    assert len(pending) == 499 and list(pending)[:2] == [3, 5]
    assert "3" not in pending


def test_index_spans_are_shared_between_messages() -> None:
    """Two messages' `(0, ..., 999)` are one tuple; its ints are shared too."""
    first, second = index_span(0, 1000), index_span(0, 1000)
    assert first == tuple(range(1000)) and first is second
    assert shared_indexes([5, 6, 7]) is index_span(5, 8)
    assert shared_indexes([0]) is index_span(0, 1)
    assert shared_indexes([1, 3]) == (1, 3)
    assert shared_indexes([]) == ()
    big = index_span(5000, 5003)
    assert big == (5000, 5001, 5002)


def test_compact_envelope_is_equal_and_shares_strings() -> None:
    """The kept envelope equals the received one; its sender and client name are interned."""

    def received() -> Envelope:
        # Built at run time, as reception does: equal strings, distinct objects.
        sender = "".join(["bulk", "@", "source.test"])
        return Envelope(
            msg_id="m1",
            sender=sender,
            recipients=(Recipient("a@b.test"),),
            time_queued=1.0,
            src_mta="".join(["client.test ", "(127.0.0.1)"]),
            job_id="".join(["job", "-7"]),
        )

    one, two = received(), received()
    assert one.sender is not two.sender
    kept_one, kept_two = compact_envelope(one), compact_envelope(two)
    assert kept_one == one and kept_two == two
    assert kept_one.sender is kept_two.sender
    assert kept_one.src_mta is kept_two.src_mta
    assert kept_one.job_id is kept_two.job_id
    assert kept_one.acct_headers is kept_two.acct_headers
    assert kept_one.to_json() == one.to_json()
    assert compact_envelope(kept_one) is kept_one


def test_packed_recipients_read_like_the_tuple() -> None:
    """Length, indexing (negative, slices), iteration, equality and hash match the tuple."""
    recipients = tuple(Recipient(f"{i}rcpt@bulk.test") for i in range(40)) + (
        Recipient("dsn@x.test", orcpt="rfc822;dsn@x.test", notify="FAILURE"),
        Recipient("ütf8@例え.jp"),
    )
    packed = PackedRecipients(recipients)
    assert len(packed) == len(recipients)
    assert packed[0] == recipients[0] and packed[-1] == recipients[-1]
    assert packed[40].orcpt == "rfc822;dsn@x.test" and packed[40].notify == "FAILURE"
    assert packed[3:7] == recipients[3:7]
    assert tuple(packed) == recipients and list(packed) == list(recipients)
    assert packed == recipients and hash(packed) == hash(recipients)
    assert packed != recipients[:-1]
    with pytest.raises(IndexError):
        packed[len(recipients)]


def test_compact_envelope_packs_only_messages_with_many_recipients() -> None:
    """16 recipients or more are packed; the envelope still equals and serialises the same."""
    many = Envelope("m", "s@x.test", tuple(Recipient(f"r{i}@y.test") for i in range(16)), 1.0)
    few = Envelope("m", "s@x.test", tuple(Recipient(f"r{i}@y.test") for i in range(15)), 1.0)
    kept_many, kept_few = compact_envelope(many), compact_envelope(few)
    assert isinstance(kept_many.recipients, PackedRecipients)
    assert isinstance(kept_few.recipients, tuple)
    assert kept_many == many and kept_many.to_json() == many.to_json()
    assert kept_many.only((3, 1)).recipients == (many.recipients[3], many.recipients[1])
    assert compact_envelope(kept_many) is kept_many


def test_new_mail_for_a_down_queue_joins_its_next_attempt(tmp_path: Path) -> None:
    """After a refused connection, new messages wait for the queue's retry, no new connect."""
    world = World(tmp_path, "retry-after 5m")
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused")
    world.submit("ok-first@a.test")
    world.clock.advance(10)
    for n in range(5):
        world.submit(f"ok-later{n}@a.test")
    failures = [e for e in world.events() if isinstance(e, QueueFailure)]
    assert len(failures) == 1  # one refused connection, not six
    world.deliverer.failure = None
    world.clock.advance(289)
    assert world.outcomes() == []
    world.clock.advance(1)
    delivered = sorted(rcpt for _, rcpts, _ in world.outcomes() for rcpt in rcpts)
    assert delivered == sorted(["ok-first@a.test"] + [f"ok-later{n}@a.test" for n in range(5)])
    world.submit("ok-after@a.test")  # the queue is up again: straight out
    assert ("d", ("ok-after@a.test",), "2.0.0") in world.outcomes()


def test_schedule_ends_the_wait(tmp_path: Path) -> None:
    """`schedule` makes a down queue try again at once, new mail included."""
    world = World(tmp_path, "retry-after 1h")
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused")
    world.submit("ok-first@a.test")
    world.deliverer.failure = None
    world.scheduler.schedule("a.test/*")
    world.submit("ok-second@a.test")
    delivered = sorted(rcpt for _, rcpts, _ in world.outcomes() for rcpt in rcpts)
    assert delivered == ["ok-first@a.test", "ok-second@a.test"]


def restore_messages(world: World, count: int) -> None:
    """`count` single-recipient messages to ok@a.test, as recovery hands them over."""
    for n in range(count):
        envelope = world.write_message(f"ok{n}@a.test")
        world.scheduler.restore(envelope, [(0, 0, None)])


class HeldDeliverer:
    """Sessions wait to "connect" and, after each message, to go on, until released."""

    def __init__(self) -> None:
        self.started = 0
        self.waiting: list[defer.Deferred[None]] = []

    async def wait(self) -> None:
        held: defer.Deferred[None] = defer.Deferred()
        self.waiting.append(held)
        await held

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for held in waiting:
            held.callback(None)

    async def run(self, job: SessionJob) -> None:
        self.started += 1
        await self.wait()  # connecting
        while (tx := await job.next_transaction()) is not None:
            replies = tuple(rule_by_prefix(r.address) for r in tx.recipients)
            job.report(TransactionResult(tx, replies, INFO))
            await self.wait()


def test_a_restored_queue_opens_one_session_until_one_connects(tmp_path: Path) -> None:
    """After a restart a queue runs one session; once it connects, up to max-smtp-out."""
    deliverer = HeldDeliverer()
    world = World(tmp_path, "max-smtp-out 4", deliverer=deliverer)
    restore_messages(world, 10)
    assert deliverer.started == 1
    deliverer.release()  # the first session connects and takes its first message
    world.clock.advance(0)
    assert deliverer.started == 4
    for _ in range(20):
        deliverer.release()
        world.clock.advance(0)
    assert len(world.outcomes()) == 10


def test_a_restored_dead_destination_costs_one_connection(tmp_path: Path) -> None:
    """Restored mail for a refusing destination: one refused connection, then retry."""
    world = World(tmp_path, "max-smtp-out 20\nretry-after 1h")
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused")
    restore_messages(world, 50)
    failures = [e for e in world.events() if isinstance(e, QueueFailure)]
    assert len(failures) == 1
    assert world.scheduler.queues["a.test/{default}"].connect_retry_at == 3600.0


def test_fresh_mail_opens_sessions_up_to_max_smtp_out_at_once(tmp_path: Path) -> None:
    """New mail (not restored) to a queue with no failure starts max-smtp-out sessions."""
    world = World(tmp_path, "max-smtp-out 3")
    world.deliverer.gate = defer.Deferred()
    for n in range(10):
        world.submit(f"ok{n}@a.test")
    assert world.deliverer.running == 3
    world.deliverer.gate.callback(None)
    assert len(world.outcomes()) == 10


def test_queue_states_list_modes_without_counting(tmp_path: Path) -> None:
    """`QueueControl.states` names each queue with its mode and pause, like `queues`."""
    world = World(tmp_path, "retry-after 1h")
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused")
    world.submit("ok@a.test")
    world.submit("ok@b.test")
    world.scheduler.pause("b.test/*")
    control = world.scheduler.control
    states = control.states()
    views = control.queues()
    assert [s.name for s in states] == [v.name for v in views]
    assert [(s.mode, s.paused, s.last_error) for s in states] == [
        (v.mode, v.paused, v.last_error) for v in views
    ]
    assert states[1].paused and "connection refused" in states[0].last_error
