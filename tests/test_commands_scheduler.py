"""What the commands ask of the scheduler and the delivery side, on a `task.Clock`:
`delete` selections keep the rest in place, `set priority` orders a queue, `schedule`
leaves `start_time` mail alone, and `trace` gets the transcript of the next session
(also written in full to the mail log)."""

from __future__ import annotations

from pathlib import Path

import attrs
from test_scheduler import World
from twisted.internet import defer, task

from mtaserver.config.model import DomainSettings
from mtaserver.maillog import MailLog
from mtaserver.queue.control import RecipientFilter, TraceRequest
from mtaserver.smtp.deliverer import traced
from mtaserver.smtp_reply import Reply


def test_delete_one_recipient_keeps_the_others_retry_time(tmp_path: Path) -> None:
    """delete --rcpt takes one recipient of a retrying item; the other keeps its due time."""
    world = World(tmp_path, "retry-after 1h")
    world.submit("soft1@a.test", "soft2@a.test")
    (queue,) = world.scheduler.queues.values()
    due = queue.next_due()
    assert due is not None
    selection = RecipientFilter("a.test", rcpt="SOFT2@a.test")
    deleted = defer.ensureDeferred(world.scheduler.control.delete(selection))
    assert deleted.result == 1
    assert world.outcomes()[-1] == ("b", ("soft2@a.test",), "5.0.0")
    assert queue.next_due() == due and not queue.ready
    assert [r.rcpt for r in world.scheduler.control.waiting("*", 10)[0]] == ["soft1@a.test"]
    assert world.bounced == []  # no DSN without --dsn
    selection = RecipientFilter("a.test", rcpt="soft1@a.test")
    deleted = defer.ensureDeferred(world.scheduler.control.delete(selection, dsn=True))
    assert deleted.result == 1 and len(world.bounced) == 1  # --dsn: the sender is told


def test_set_priority_delivers_that_message_first(tmp_path: Path) -> None:
    """A paused queue's message given priority 90 goes out first when the queue resumes."""
    world = World(tmp_path)
    world.scheduler.pause("a.test")
    first, second, third = (world.submit(f"ok{n}@a.test") for n in (1, 2, 3))
    selection = RecipientFilter(rcpt="ok3@a.test")
    count = world.scheduler.control.set_message_priority(selection, 90)
    assert count == 1 and world.scheduler.priorities == {third: 90}
    world.scheduler.resume("a.test")
    sent = [msg_id for session in world.deliverer.sessions for msg_id, _ in session]
    assert sent[0] == third and set(sent) == {first, second, third}
    assert world.scheduler.priorities == {}  # forgotten with the delivered message


def test_schedule_keeps_start_time_mail_waiting(tmp_path: Path) -> None:
    """schedule retries failed mail now; a message held for its start_time keeps waiting."""
    world = World(tmp_path, "retry-after 1h")
    world.submit("soft@a.test")
    later = attrs.evolve(world.write_message("ok@a.test"), start_time=world.clock.seconds() + 600)
    world.scheduler.enqueue(later)
    world.deliverer.rule = lambda address: Reply(250, "2.0.0", "ok")
    assert world.scheduler.schedule("a.test") == ["a.test/{default}"]
    delivered = [o for o in world.outcomes() if o[0] == "d"]
    assert delivered == [("d", ("soft@a.test",), "2.0.0")]
    (queue,) = world.scheduler.queues.values()
    assert queue.next_due() == later.start_time
    world.clock.advance(600)
    assert [o for o in world.outcomes() if o[0] == "d"][-1] == ("d", ("ok@a.test",), "2.0.0")


def test_trace_takes_the_next_session_of_a_matching_queue(tmp_path: Path) -> None:
    """A trace request is given to the next session of its queue and finished with it."""
    world = World(tmp_path)
    world.scheduler.pause("*")
    world.submit("ok@b.test")
    world.submit("ok@a.test")
    request = TraceRequest("a.test", clock=world.clock)
    world.scheduler.control.trace(request)
    world.scheduler.resume("*")
    assert not request.finished.called  # the session holds its connection for more mail
    world.clock.advance(world.scheduler.idle_hold)
    assert request.finished.called and request.queue == "a.test/{default}"
    texts = [line.split(" ", 2)[2] for line in request.lines]
    assert texts[0] == "starting a.test/{default}" and texts[-1] == "done a.test/{default}"
    assert any(t.startswith("delivered ") and "ok@a.test" in t for t in texts)
    assert not any("ok@b.test" in t for t in texts)
    assert world.scheduler.traces == []


def test_a_traced_session_is_logged_in_full_to_the_mail_log_too() -> None:
    """trace turns the domain's log switches on for its session: the mail log and the
    transcript get every line (AUTH masked), message data excepted."""
    logged: list[tuple[str, str]] = []

    class Sink(MailLog):
        def emit(self, tag: str, text: str) -> None:
            logged.append((tag, text))

    transcript: list[str] = []
    trace = traced(Sink(task.Clock()), "a.test/v", DomainSettings(), transcript.append)
    trace.connecting("mx.a.test", "192.0.2.1", 25, None)
    trace.sent(["EHLO me.test", "AUTH PLAIN c2VjcmV0"])
    trace.replied(250, ("ok",))
    trace.body(b"Subject: secret\r\n\r\nbody\r\n")
    assert [text for _, text in logged] == transcript
    assert {tag for tag, _ in logged} == {"trace"}
    assert "<<< EHLO me.test" in transcript and ">>> 250 ok" in transcript
    assert not any("c2VjcmV0" in line or "Subject" in line for line in transcript)
    assert any(line.startswith("connecting to mx.a.test [192.0.2.1]:25") for line in transcript)


def test_new_mail_goes_before_a_lower_set_priority(tmp_path: Path) -> None:
    """After set priority 10, mail queued later (unset: 50) is delivered before it."""
    world = World(tmp_path)
    world.scheduler.pause("a.test")
    low = world.submit("ok1@a.test")
    assert world.scheduler.control.set_message_priority(RecipientFilter(rcpt="ok1@a.test"), 10)
    later = world.submit("ok2@a.test")
    world.scheduler.resume("a.test")
    sent = [msg_id for session in world.deliverer.sessions for msg_id, _ in session]
    assert sent == [later, low]
