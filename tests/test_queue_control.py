"""`QueueControl`, the scheduler's view for commands and monitoring, and the slot counts.

The scheduler runs over a real spool and a `task.Clock` (the `World` of
test_scheduler.py); what is checked is what the view reports and that its commands
reach the scheduler.
"""

from __future__ import annotations

from pathlib import Path

from test_scheduler import World
from twisted.internet import defer, task

from mtaserver.queue.control import RecipientFilter
from mtaserver.queue.delivery import QueueLevelFailure
from mtaserver.queue.model import Queue, WorkItem
from mtaserver.queue.slots import ConnectionSlots


def test_queue_view_counts_mode_retry_and_last_error(tmp_path: Path) -> None:
    """A queue's view shows recipients, messages, bytes, oldest, next retry and counters."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    world.submit("soft1@a.test", "soft2@a.test", job="j1")
    world.clock.advance(5)
    world.submit("ok@a.test", "hard@b.test")
    world.clock.advance(world.scheduler.idle_hold)  # the idle sessions close
    views = {view.name: view for view in world.scheduler.control.queues()}
    assert sorted(views) == ["a.test/{default}", "b.test/{default}"]
    a = views["a.test/{default}"]
    assert (a.recipients, a.messages, a.delivered, a.deferred) == (2, 1, 1, 2)
    assert (a.paused, a.mode, a.connections, a.connections_total) == (False, "normal", 0, 2)
    assert a.next_retry == 600.0
    assert a.oldest == 0.0
    assert a.bytes == world.scheduler.messages[next(iter(world.scheduler.messages))].envelope.size
    b = views["b.test/{default}"]
    assert (b.recipients, b.bounced, b.next_retry, b.oldest) == (0, 1, None, None)


def test_queue_view_last_error_from_a_queue_failure(tmp_path: Path) -> None:
    """A queue-level failure shows as the queue's last error."""
    world = World(tmp_path)
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused")
    world.submit("ok@a.test")
    (view,) = world.scheduler.control.queues("a.test")
    assert view.last_error == "4.4.1 connection refused"
    assert view.recipients == 1


def test_waiting_lists_ready_then_retry_with_a_limit(tmp_path: Path) -> None:
    """`waiting` lists recipients with state and next attempt, counting past the limit."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    msg_id = world.submit("soft1@a.test", "soft2@a.test", job="j1")
    rows, total = world.scheduler.control.waiting("a.test/*", 1)
    assert total == 2
    assert len(rows) == 1
    row = rows[0]
    assert (row.queue, row.msg_id, row.rcpt, row.job) == (
        "a.test/{default}",
        msg_id,
        "soft1@a.test",
        "j1",
    )
    assert (row.state, row.attempts, row.next_attempt) == ("retry", 1, 600.0)
    world.scheduler.control.pause("a.test")
    world.scheduler.control.schedule("a.test")
    rows, total = world.scheduler.control.waiting("*", 10)
    assert [(r.rcpt, r.state, r.next_attempt) for r in rows] == [
        ("soft1@a.test", "ready", None),
        ("soft2@a.test", "ready", None),
    ]


def test_jobs_and_totals(tmp_path: Path) -> None:
    """Jobs group queued messages by job id; totals count the whole queue and sessions."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    world.submit("soft1@a.test", "soft2@b.test", job="j1")
    world.submit("soft3@a.test", job="j1")
    world.submit("soft4@a.test")  # the idle sessions of the first take the later ones
    jobs = world.scheduler.control.jobs()
    assert [(j.job, j.messages, j.recipients) for j in jobs] == [("j1", 2, 3)]
    world.scheduler.control.pause("b.test")
    totals = world.scheduler.control.totals()
    assert (totals.recipients, totals.messages, totals.queues, totals.paused) == (4, 3, 2, 1)
    assert (totals.connections, totals.connections_total) == (1, 2)
    world.clock.advance(world.scheduler.idle_hold)
    assert world.scheduler.control.totals().connections == 0


def test_commands_reach_the_scheduler(tmp_path: Path) -> None:
    """pause, set_mode, delete and reset_counters act on the scheduler's queues."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    world.submit("soft1@a.test", job="j1")
    world.submit("soft2@a.test", job="j2")
    control = world.scheduler.control
    assert control.pause("a.test/*") == ["a.test/{default}"]
    assert control.set_mode("a.test", "backoff") == ["a.test/{default}"]
    (view,) = control.queues()
    assert (view.paused, view.mode) == (True, "backoff")
    deleted = defer.ensureDeferred(control.delete(RecipientFilter("a.test", job_id="j1")))
    assert deleted.called and deleted.result == 1
    control.reset_counters()
    (view,) = control.queues()
    assert (view.recipients, view.bounced, view.deferred, view.connections_total) == (1, 0, 0, 0)
    assert [r.rcpt for r in control.waiting("*", 10)[0]] == ["soft2@a.test"]


def test_slots_count_a_session_life() -> None:
    """open, took_work and close bring the counts back; an idle hold is woken by work."""
    slots = ConnectionSlots()
    queue = Queue("a.test/v", "a.test", "v")
    queue.ready.append(WorkItem("m", (0,)))
    slots.open(queue)
    assert (queue.active, queue.connecting, slots.total) == (1, 1, 1)
    assert not slots.unclaimed(queue)
    slots.took_work(queue)
    queue.ready.clear()
    clock = task.Clock()
    waiting = defer.ensureDeferred(slots.hold_idle(queue, clock, 2.0))
    assert len(queue.idle) == 1
    queue.ready.append(WorkItem("m", (0,)))
    slots.wake_idle(queue)
    assert waiting.result is True
    assert (queue.connecting, queue.idle) == (0, [])
    slots.close(queue, took_work=True)
    assert (queue.active, queue.connecting, slots.total) == (0, 0, 0)
    assert queue.counters.connections == 1


def test_slots_idle_hold_times_out() -> None:
    """An idle hold ends without work after its seconds, and wanted_elsewhere sees the cap."""
    slots = ConnectionSlots()
    queue, other = Queue("a/v", "a", "v"), Queue("b/v", "b", "v")
    slots.open(queue)
    slots.took_work(queue)
    clock = task.Clock()
    waiting = defer.ensureDeferred(slots.hold_idle(queue, clock, 2.0))
    clock.advance(2.0)
    assert waiting.result is False
    other.ready.append(WorkItem("m", (0,)))
    assert slots.wanted_elsewhere([queue, other], queue, total_max=1)
    assert not slots.wanted_elsewhere([queue, other], queue, total_max=2)
    slots.close(queue, took_work=True)
    assert slots.total == 0
