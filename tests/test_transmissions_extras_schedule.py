"""start_time in the scheduler, on a task.Clock: held until then, expiry counted from it.

The scheduler over a real spool and a scripted deliverer (`test_scheduler.World`),
with envelopes carrying `start_time` as the Transmissions API spools them.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from test_scheduler import World

from mtaserver.events import Envelope, Outcome, Recipient

HOUR = 3600.0


def scheduled(world: World, *rcpts: str, after: float) -> Envelope:
    """A message committed to the spool with start_time `after` seconds from now."""
    envelope = world.write_message(*rcpts)
    return attrs.evolve(envelope, start_time=world.clock.seconds() + after)


def test_a_future_start_time_holds_the_recipients_until_then(tmp_path: Path) -> None:
    """No session before start_time; the queue shows them as scheduled; then delivered."""
    world = World(tmp_path)
    envelope = scheduled(world, "ok1@a.test", "ok2@a.test", after=600)
    world.scheduler.enqueue(envelope)
    (view,) = world.scheduler.control.queues()
    assert (view.recipients, view.scheduled, view.next_retry) == (2, 2, envelope.start_time)
    rows, total = world.scheduler.control.waiting("*/*", 10)
    assert total == 2 and {r.state for r in rows} == {"scheduled"}
    world.clock.advance(599)
    assert world.deliverer.sessions == []
    world.clock.advance(1)
    assert world.outcomes() == [("d", ("ok1@a.test", "ok2@a.test"), "2.0.0")]
    assert world.scheduler.control.queues()[0].scheduled == 0


def test_a_past_start_time_sends_at_once(tmp_path: Path) -> None:
    """A start_time already reached holds nothing."""
    world = World(tmp_path)
    world.clock.advance(1000)
    world.scheduler.enqueue(scheduled(world, "ok@a.test", after=-10))
    assert world.outcomes() == [("d", ("ok@a.test",), "2.0.0")]


def test_bounce_after_counts_from_the_start_time(tmp_path: Path) -> None:
    """Scheduled two days out with bounce-after 3h: retried for 3h after the start, then b."""
    world = World(tmp_path, "retry-after 1h\nbounce-after 3h")
    world.scheduler.enqueue(scheduled(world, "soft@a.test", after=48 * HOUR))
    world.clock.advance(48 * HOUR)
    world.clock.pump([HOUR] * 3)
    outcomes = [e for e in world.events() if isinstance(e, Outcome)]
    assert [o.record for o in outcomes] == ["t", "t", "t", "b"]
    assert (outcomes[-1].dsn_status, outcomes[-1].bounce_cat) == ("4.4.7", "message-expired")


def test_recovery_keeps_the_schedule(tmp_path: Path) -> None:
    """A message recovered from the spool (restore) still waits for its start_time."""
    world = World(tmp_path)
    envelope = scheduled(world, "ok@a.test", after=HOUR)
    world.scheduler.restore(envelope, [(0, 0, None)])
    world.clock.advance(HOUR - 1)
    assert world.deliverer.sessions == []
    world.clock.advance(1)
    assert world.outcomes() == [("d", ("ok@a.test",), "2.0.0")]


def test_start_time_round_trips_through_the_envelope_json() -> None:
    """The spool's envelope JSON keeps start_time; an older file without it loads as None."""
    envelope = Envelope("m1", "s@x.test", (Recipient("r@y.test"),), 100.0, start_time=4000.5)
    again = Envelope.from_json(envelope.to_json())
    assert again.start_time == 4000.5 and again.expiry_start == 4000.5
    old = envelope.to_json()
    del old["start_time"]
    legacy = Envelope.from_json(old)
    assert legacy.start_time is None and legacy.expiry_start == 100.0
