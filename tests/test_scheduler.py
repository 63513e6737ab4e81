"""The scheduler over a real spool, a task.Clock and a scripted deliverer.

The deliverer is a neighbour, not the thing under test: it answers each recipient
by a rule (`ok...` 250, `soft...` 451, `hard...` 550) so the scheduler's decisions
(records, retries, expiry, limits, pattern actions, commands) can be checked exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task

from mtaserver.config.load import load_config
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome, QueueFailure, Recipient
from mtaserver.queue.control import RecipientFilter
from mtaserver.queue.delivery import (
    ConnectionInfo,
    QueueLevelFailure,
    SessionJob,
    TransactionResult,
)
from mtaserver.queue.scheduler import Scheduler
from mtaserver.smtp_reply import Reply
from mtaserver.spool import Journal, MessageStore, read_events
from mtaserver.spool.journal import JournalPosition, list_segments
from mtaserver.spool.testing import run_now

INFO = ConnectionInfo("127.0.0.1", "127.0.0.2", "mx.test", True, "TLSv1.3", "AES", frozenset())


def rule_by_prefix(address: str) -> Reply:
    if address.startswith("ok"):
        return Reply(250, "2.0.0", "ok")
    if address.startswith("soft"):
        return Reply(451, "4.2.0", "try later")
    return Reply(550, "5.1.1", "no such user")


class ScriptedDeliverer:
    """Answers each recipient by `rule`; can fail the queue or hold sessions open."""

    def __init__(self, rule: Callable[[str], Reply] = rule_by_prefix) -> None:
        self.rule = rule
        self.sessions: list[list[tuple[str, tuple[int, ...]]]] = []
        self.failure: QueueLevelFailure | None = None
        self.gate: defer.Deferred[None] | None = None
        self.running = 0
        self.max_running = 0

    async def run(self, job: SessionJob) -> None:
        if self.failure is not None:
            raise self.failure
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        log: list[tuple[str, tuple[int, ...]]] = []
        self.sessions.append(log)
        try:
            if self.gate is not None:
                await self.gate
            while (tx := await job.next_transaction()) is not None:
                log.append((tx.envelope.msg_id, tx.rcpt_indexes))
                replies = tuple(self.rule(r.address) for r in tx.recipients)
                job.report(TransactionResult(tx, replies, INFO))
        finally:
            self.running -= 1


class World:
    """The scheduler over a real spool and journal, on a `task.Clock`.

    `deliverer` defaults to a `ScriptedDeliverer`; bounces are recorded in `bounced`.
    """

    def __init__(
        self, tmp_path: Path, domain_conf: str = "", extra: str = "", deliverer: Any = None
    ) -> None:
        conf = tmp_path / "m.conf"
        conf.write_text(f"<domain *>\n{domain_conf}\n</domain>\n{extra}\n")
        self.holder = ConfigHolder(load_config(str(conf)))
        self.clock = task.Clock()
        self.spool = str(tmp_path / "spool")
        self.journal = Journal(self.spool + "/journal", run_now)
        self.store = MessageStore(self.spool, self.journal, run_now, clock=self.clock.seconds)
        self.store.resume({})
        self.deliverer = deliverer if deliverer is not None else ScriptedDeliverer()
        self.bounced: list[tuple[str, list[Outcome]]] = []
        self.scheduler = Scheduler(
            self.holder,
            self.store,
            self.journal,
            {"smtp": self.deliverer},
            self.clock,
            notify_bounce=self.notify,
        )

    async def notify(self, envelope: Envelope, outcomes: list[Outcome], body: bytes | None) -> None:
        self.bounced.append((envelope.msg_id, outcomes))

    def write_message(
        self, *rcpts: str, job: str | None = None, vmta: str | None = None
    ) -> Envelope:
        """A message from sender@src.test to `rcpts`, committed to the spool (not queued)."""
        writer = self.store.begin()
        writer.write(b"Subject: t\r\n\r\nbody\r\n")
        envelope = Envelope(
            writer.msg_id,
            "sender@src.test",
            tuple(Recipient(r) for r in rcpts),
            self.clock.seconds(),
            job_id=job,
            vmta=vmta,
        )
        done = writer.commit(envelope)
        assert done.called
        return envelope

    def submit(self, *rcpts: str, job: str | None = None, vmta: str | None = None) -> str:
        envelope = self.write_message(*rcpts, job=job, vmta=vmta)
        self.scheduler.enqueue(envelope)
        return envelope.msg_id

    def events(self) -> list[object]:
        start = JournalPosition(list_segments(self.spool + "/journal")[0], 0)
        return [e for _, e in read_events(self.spool + "/journal", start)]

    def outcomes(self) -> list[tuple[str, tuple[str, ...], str]]:
        return [
            (e.record, tuple(r.address for r in e.envelope.recipients), e.dsn_status)
            for e in self.events()
            if isinstance(e, Outcome)
        ]


def test_delivered_recipients_get_d_records_and_the_file_is_removed(tmp_path: Path) -> None:
    """All-2xx delivery journals one d outcome per transaction and removes the message."""
    world = World(tmp_path)
    msg_id = world.submit("ok1@a.test", "ok2@a.test", "ok3@b.test")
    assert sorted(world.outcomes()) == [
        ("d", ("ok1@a.test", "ok2@a.test"), "2.0.0"),
        ("d", ("ok3@b.test",), "2.0.0"),
    ]
    assert msg_id not in world.scheduler.messages
    assert not Path(world.store.path(msg_id)).exists()
    assert world.scheduler.queues["a.test/{default}"].counters.delivered == 2


def test_permanent_failures_bounce_and_ask_for_a_dsn(tmp_path: Path) -> None:
    """5xx gives a b record with a bounce category and one DSN request per message."""
    world = World(tmp_path)
    msg_id = world.submit("ok@a.test", "hard@a.test")
    assert sorted(world.outcomes()) == [
        ("b", ("hard@a.test",), "5.1.1"),
        ("d", ("ok@a.test",), "2.0.0"),
    ]
    bounce = [e for e in world.events() if isinstance(e, Outcome) and e.record == "b"][0]
    assert bounce.bounce_cat == "bad-mailbox" and bounce.dsn_action == "failed"
    assert [m for m, _ in world.bounced] == [msg_id]


def test_transient_failures_retry_on_the_retry_after_schedule(tmp_path: Path) -> None:
    """451 gives t records and retries after 10m, then 20m, then every 1h (last repeats)."""
    world = World(tmp_path, "retry-after 10m,20m,1h\nbounce-after 1d")
    world.submit("soft@a.test")
    assert len(world.deliverer.sessions) == 1
    for delay, attempts in [(599, 1), (1, 2), (1199, 2), (1, 3), (3599, 3), (1, 4), (3600, 5)]:
        world.clock.advance(delay)
        assert len(world.deliverer.sessions) == attempts, delay
    records = [r for r, _, _ in world.outcomes()]
    assert records == ["t"] * 5


def test_expiry_bounces_with_message_expired(tmp_path: Path) -> None:
    """A recipient still failing at bounce-after gets b, 4.4.7, message-expired."""
    world = World(tmp_path, "retry-after 1h\nbounce-after 3h")
    world.submit("soft@a.test")
    world.clock.pump([3600] * 4)
    outcomes = [e for e in world.events() if isinstance(e, Outcome)]
    assert [o.record for o in outcomes] == ["t", "t", "t", "b"]
    final = outcomes[-1]
    assert (final.dsn_status, final.bounce_cat) == ("4.4.7", "message-expired")
    assert world.scheduler.messages == {}


def test_queue_level_failure_writes_tq_and_retries_the_queue(tmp_path: Path) -> None:
    """A connection failure is a tq record; the recipients wait for retry-after."""
    world = World(tmp_path, "retry-after 5m")
    world.deliverer.failure = QueueLevelFailure(
        "4.4.1", "connection refused", destination_ip="127.0.0.9"
    )
    world.submit("ok@a.test")
    failures = [e for e in world.events() if isinstance(e, QueueFailure)]
    assert [(f.queue, f.dsn_status) for f in failures] == [("a.test/{default}", "4.4.1")]
    world.deliverer.failure = None
    world.clock.advance(299)
    assert world.outcomes() == []
    world.clock.advance(1)
    assert world.outcomes() == [("d", ("ok@a.test",), "2.0.0")]


def test_permanent_queue_failure_bounces_everything_waiting(tmp_path: Path) -> None:
    """NXDOMAIN-like failures bounce every recipient of the queue as bad-domain."""
    world = World(tmp_path)
    world.deliverer.failure = QueueLevelFailure(
        "5.1.2", "domain not found", permanent=True, bounce_cat="bad-domain"
    )
    world.submit("ok@gone.test", "ok2@gone.test")
    assert world.outcomes() == [("b", ("ok@gone.test", "ok2@gone.test"), "5.1.2")]


def test_max_smtp_out_bounds_parallel_sessions(tmp_path: Path) -> None:
    """With max-smtp-out 2, ten messages never run more than two sessions at once."""
    world = World(tmp_path, "max-smtp-out 2")
    world.deliverer.gate = defer.Deferred()
    for n in range(10):
        world.submit(f"ok{n}@a.test")
    assert world.deliverer.running == 2
    world.deliverer.gate.callback(None)
    assert world.deliverer.max_running == 2
    assert len(world.outcomes()) == 10


def test_rcpt_per_transaction_and_msg_per_connection(tmp_path: Path) -> None:
    """Recipients split by max-rcpt-per-transaction; sessions end at max-msg-per-connection."""
    world = World(tmp_path, "max-rcpt-per-transaction 2\nmax-msg-per-connection 2\nmax-smtp-out 1")
    world.deliverer.gate = defer.Deferred()
    world.submit("ok1@a.test", "ok2@a.test", "ok3@a.test")
    world.deliverer.gate.callback(None)
    world.deliverer.gate = None
    assert [len(s) for s in world.deliverer.sessions] == [2]
    assert [len(idx) for _, idx in world.deliverer.sessions[0]] == [2, 1]


def test_max_msg_rate_spaces_messages(tmp_path: Path) -> None:
    """max-msg-rate 1/m lets one message through a minute."""
    world = World(tmp_path, "max-msg-rate 1/m")
    for n in range(3):
        world.submit(f"ok{n}@a.test")
    assert len(world.outcomes()) == 1
    world.clock.advance(60)
    assert len(world.outcomes()) == 2
    world.clock.advance(60)
    assert len(world.outcomes()) == 3


def test_pause_resume_and_wildcards(tmp_path: Path) -> None:
    """A paused queue sends nothing until resumed; `domain/*` matches every vmta."""
    world = World(tmp_path, extra="<virtual-mta v1>\n</virtual-mta>")
    world.submit("ok@a.test", vmta="v1")
    world.scheduler.pause("b.test/*")
    assert world.scheduler.pause("a.test/*") == ["a.test/v1"]
    world.clock.advance(1)
    world.submit("ok2@a.test", vmta="v1")
    assert len(world.outcomes()) == 1
    assert world.scheduler.resume("a.test/v1") == ["a.test/v1"]
    assert len(world.outcomes()) == 2


def test_delete_by_job_bounces_only_that_job(tmp_path: Path) -> None:
    """delete --queue --jobId bounces that job's recipients (administrative), keeps others."""
    world = World(tmp_path)
    world.scheduler.pause("*")
    world.submit("ok1@a.test", job="j1")
    world.submit("ok2@a.test", job="j2")
    count = defer.ensureDeferred(world.scheduler.delete(RecipientFilter("a.test/*", job_id="j1")))
    assert count.result == 1
    assert world.outcomes() == [("b", ("ok1@a.test",), "5.0.0")]
    world.scheduler.resume("*")
    assert world.outcomes()[-1] == ("d", ("ok2@a.test",), "2.0.0")


def test_schedule_retries_now(tmp_path: Path) -> None:
    """`schedule` makes waiting recipients ready at once."""
    world = World(tmp_path, "retry-after 1h")
    world.submit("soft@a.test")
    world.deliverer.rule = lambda a: Reply(250, "2.0.0", "ok")
    assert world.scheduler.schedule("a.test") == ["a.test/{default}"]
    assert [r for r, _, _ in world.outcomes()] == ["t", "d"]


def test_pattern_list_backoff_and_bounce_rcpt(tmp_path: Path) -> None:
    """A matching reply puts the queue in backoff (1 connection, backoff retry) or bounces."""
    world = World(
        tmp_path,
        "smtp-pattern-list p\nbackoff-retry-after 2h\nretry-after 10m\nmax-smtp-out 5\n"
        "backoff-to-normal-after 3h",
        extra="<smtp-pattern-list p>\n  reply /too many/ mode=backoff\n"
        "  reply /blocked/ bounce-rcpt\n</smtp-pattern-list>",
    )
    world.deliverer.rule = lambda a: (
        Reply(421, "4.7.0", "too many connections")
        if a.startswith("soft")
        else Reply(450, "4.7.1", "blocked for policy")
    )
    world.submit("soft@a.test")
    world.submit("pol@b.test")
    queue = world.scheduler.queues["a.test/{default}"]
    assert queue.mode == "backoff"
    assert ("b", ("pol@b.test",), "4.7.1") in world.outcomes()
    world.clock.advance(600)
    assert len(world.deliverer.sessions) == 2  # no retry at 10m: backoff-retry-after is 2h
    world.clock.advance(7200 - 600)
    assert len(world.deliverer.sessions) == 3
    world.deliverer.rule = lambda a: Reply(250, "2.0.0", "ok")
    world.clock.advance(3 * 3600)
    world.scheduler.schedule("a.test")
    assert queue.mode == "normal"


def test_set_mode_command(tmp_path: Path) -> None:
    """set queue --mode=backoff switches a queue's mode; a bad mode is refused."""
    world = World(tmp_path)
    world.scheduler.pause("*")
    world.submit("ok@a.test")
    assert world.scheduler.set_mode("a.test/*", "backoff") == ["a.test/{default}"]
    assert world.scheduler.queues["a.test/{default}"].mode == "backoff"
    with pytest.raises(ValueError):
        world.scheduler.set_mode("a.test", "turbo")


def test_total_max_smtp_out_caps_sessions_across_queues(tmp_path: Path) -> None:
    """total-max-smtp-out bounds sessions over all queues; freed slots go to waiting queues."""
    world = World(tmp_path, "max-smtp-out 5", extra="total-max-smtp-out 3")
    world.deliverer.gate = defer.Deferred()
    for domain in ("a.test", "b.test", "c.test", "d.test"):
        for n in range(2):
            world.submit(f"ok{n}@{domain}")
    assert world.deliverer.running == 3
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    assert world.deliverer.max_running == 3
    assert len(world.outcomes()) == 8


def test_pool_spreads_messages_over_its_vmtas(tmp_path: Path) -> None:
    """A message for a <virtual-mta-pool> is queued on its members in turn."""
    world = World(
        tmp_path,
        extra="<virtual-mta v1>\n</virtual-mta>\n<virtual-mta v2>\n</virtual-mta>\n"
        "<virtual-mta-pool p>\n virtual-mta v1\n virtual-mta v2\n</virtual-mta-pool>",
    )
    world.scheduler.pause("*")
    for n in range(4):
        world.submit(f"ok{n}@a.test", vmta="p")
    queues = {name: q.size for name, q in world.scheduler.queues.items()}
    assert queues == {"a.test/v1": 2, "a.test/v2": 2}
    assert world.scheduler.queues["a.test/v1"].pool == "p"


def test_smtp_source_hosts_rotate(tmp_path: Path) -> None:
    """A vmta's smtp-source-host lines are used in turn, each with its EHLO name."""
    from mtaserver.smtp.deliverer import SmtpDeliverer

    world = World(
        tmp_path,
        extra="host-name global.test\n<virtual-mta v1>\n smtp-source-host 127.0.0.2 a.out.test\n"
        " smtp-source-host 127.0.0.3 b.out.test\n</virtual-mta>",
    )
    deliverer = SmtpDeliverer(world.holder, resolver=None, reactor=None)  # type: ignore[arg-type]
    picks = [deliverer.source_for("v1") for _ in range(3)]
    assert picks == [
        ("127.0.0.2", "a.out.test"),
        ("127.0.0.3", "b.out.test"),
        ("127.0.0.2", "a.out.test"),
    ]
    assert deliverer.source_for("{default}") == (None, "global.test")


def test_restore_keeps_the_retry_schedule(tmp_path: Path) -> None:
    """A recovered recipient with failed attempts waits out its retry interval."""
    world = World(tmp_path, "retry-after 10m")
    world.clock.advance(1000)
    writer = world.store.begin()
    writer.write(b"Subject: x\r\n\r\nx\r\n")
    envelope = Envelope(writer.msg_id, "s@src.test", (Recipient("ok@a.test"),), 900.0)
    writer.commit(envelope)
    world.scheduler.restore(envelope, [(0, 1, 950.0)])  # failed once at t=950
    assert world.outcomes() == []
    world.clock.advance(549)  # due at 950 + 600 = 1550
    assert world.outcomes() == []
    world.clock.advance(1)
    assert world.outcomes() == [("d", ("ok@a.test",), "2.0.0")]


def test_stop_cancels_sessions_after_the_grace_period(tmp_path: Path) -> None:
    """stop() waits `grace` seconds for a hung session, then cancels it; work stays queued."""
    world = World(tmp_path)
    world.deliverer.gate = defer.Deferred()
    msg_id = world.submit("ok@a.test")
    stopped = defer.ensureDeferred(world.scheduler.stop(grace=5))
    world.clock.advance(4)
    assert not stopped.called
    world.clock.advance(1)
    assert stopped.called
    assert world.outcomes() == []
    assert msg_id in world.scheduler.messages


def test_idle_sessions_are_reused_then_closed(tmp_path: Path) -> None:
    """A session waits idle_hold seconds for more mail; later mail opens a new one."""
    world = World(tmp_path)
    world.submit("ok1@a.test")
    world.clock.advance(1)
    world.submit("ok2@a.test")
    assert [len(s) for s in world.deliverer.sessions] == [2]
    assert world.deliverer.running == 1
    world.clock.advance(world.scheduler.idle_hold)
    assert world.deliverer.running == 0
    world.submit("ok3@a.test")
    assert [len(s) for s in world.deliverer.sessions] == [2, 1]


def test_pause_ends_idle_sessions(tmp_path: Path) -> None:
    """Pausing a queue closes its idle sessions at once."""
    world = World(tmp_path)
    world.submit("ok1@a.test")
    assert world.deliverer.running == 1
    world.scheduler.pause("a.test")
    assert world.deliverer.running == 0


def test_dsn_is_spooled_before_the_bounce_is_journaled(tmp_path: Path) -> None:
    """When the DSN is asked for, the b record is not yet durable (crash-safe order)."""
    world = World(tmp_path)
    journaled_at_dsn: list[int] = []

    async def notify(envelope: Envelope, outcomes: list[Outcome], body: bytes | None) -> None:
        journaled_at_dsn.append(len([o for o in world.outcomes() if o[0] == "b"]))

    world.scheduler.notify_bounce = notify
    world.submit("hard@a.test")
    assert journaled_at_dsn == [0]
    assert [r for r, _, _ in world.outcomes()] == ["b"]
