"""`pause job JOBID` / `resume job JOBID`: a job's recipients wait, the rest of the queue flows.

The scheduler runs over a real spool with a `task.Clock` and the scripted deliverer of
test_scheduler.py (`ok...` 250, `soft...` 451); the commands are checked through their
parser and `Commands` over the same scheduler. The real-server and browser tests are in
test_hardening_job_pause_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scheduler import World
from twisted.internet import defer

from mtaserver.commands import CommandError, Commands, parse, render_text
from mtaserver.events import Outcome
from mtaserver.http.console.resource import action_command
from mtaserver.http.errors import APIError
from mtaserver.queue.control import RecipientFilter
from mtaserver.spool.testing import run_now
from mtaserver.stats import TrafficStats

DAY = 86400.0


def delivered(world: World) -> list[str]:
    """The recipients with a `d` record, in journal order."""
    return [
        r.address
        for e in world.events()
        if isinstance(e, Outcome) and e.record == "d"
        for r in e.envelope.recipients
    ]


def records_for(world: World, rcpt: str) -> list[str]:
    return [
        e.record
        for e in world.events()
        if isinstance(e, Outcome) and rcpt in (r.address for r in e.envelope.recipients)
    ]


def test_paused_job_waits_while_the_other_job_of_the_queue_is_delivered(tmp_path: Path) -> None:
    """A paused job's recipient is held (state paused, no attempt); another job flows."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    assert control.pause_job("spring") == 0
    world.submit("ok-held@a.test", job="spring")
    world.submit("ok-flows@a.test", job="summer")
    assert delivered(world) == ["ok-flows@a.test"]
    assert records_for(world, "ok-held@a.test") == []
    rows, total = control.waiting("a.test/*", 10)
    assert total == 1
    assert [(r.rcpt, r.job, r.state, r.attempts) for r in rows] == [
        ("ok-held@a.test", "spring", "paused", 0)
    ]
    (view,) = control.queues("a.test")
    assert (view.recipients, view.messages, view.paused) == (1, 1, False)
    jobs = {j.job: j for j in control.jobs()}
    assert (jobs["spring"].paused, jobs["spring"].recipients) == (True, 1)
    assert "summer" not in jobs  # delivered: nothing of it is queued


def test_a_queue_with_only_paused_job_mail_opens_no_session(tmp_path: Path) -> None:
    """No connection is opened for a queue whose only mail belongs to a paused job."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    world.scheduler.control.pause_job("spring")
    world.submit("ok1@a.test", "ok2@a.test", job="spring")
    world.clock.advance(3600)
    assert world.deliverer.sessions == []
    assert world.scheduler.queues["a.test/{default}"].active == 0


def test_resume_job_delivers_the_held_recipients_at_once(tmp_path: Path) -> None:
    """resume job makes the held recipients ready at once: delivered with no clock advance."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    control.pause_job("spring")
    msg_id = world.submit("ok1@a.test", "ok2@b.test", job="spring")
    assert delivered(world) == []
    assert control.resume_job("spring") == 0  # delivered synchronously by the resume
    assert sorted(delivered(world)) == ["ok1@a.test", "ok2@b.test"]
    assert msg_id not in world.scheduler.messages
    assert [j.job for j in control.jobs()] == []


def test_paused_job_expires_like_a_paused_queue(tmp_path: Path) -> None:
    """Held past bounce-after, a job's recipient is not expired while paused (as a paused
    queue's is not); a failure at its first attempt after resume expires it."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    control.pause_job("spring")
    control.pause("q.test")
    world.submit("soft-job@a.test", job="spring")
    world.submit("soft-queue@q.test")
    world.clock.advance(2 * DAY)
    assert records_for(world, "soft-job@a.test") == records_for(world, "soft-queue@q.test") == []
    assert control.waiting("*", 10)[1] == 2
    control.resume_job("spring")
    control.resume("q.test")
    expired = [
        (e.dsn_status, e.bounce_cat)
        for e in world.events()
        if isinstance(e, Outcome) and e.record == "b"
    ]
    assert expired == [("4.4.7", "message-expired"), ("4.4.7", "message-expired")]
    assert control.waiting("*", 10)[1] == 0


def test_a_retry_due_while_paused_counts_no_attempt_and_runs_on_resume(tmp_path: Path) -> None:
    """A recipient waiting for its retry is held when due; resume tries it at once."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    world.submit("soft1@a.test", job="spring")
    assert records_for(world, "soft1@a.test") == ["t"]
    sessions = len(world.deliverer.sessions)
    control.pause_job("spring")
    (row,) = control.waiting("*", 10)[0]
    assert (row.state, row.attempts) == ("retry", 1)  # still waiting for its retry time
    world.clock.advance(3 * 600)
    assert len(world.deliverer.sessions) == sessions  # not tried while paused
    (row,) = control.waiting("*", 10)[0]
    assert (row.state, row.attempts) == ("paused", 1)
    control.resume_job("spring")
    assert len(world.deliverer.sessions) == sessions + 1
    assert records_for(world, "soft1@a.test") == ["t", "t"]
    (row,) = control.waiting("*", 10)[0]
    assert (row.state, row.attempts) == ("retry", 2)


def test_pause_during_a_session_holds_what_it_has_not_taken(tmp_path: Path) -> None:
    """A job paused while a session is open is held: the session delivers only the rest."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    world.deliverer.gate = defer.Deferred()
    world.submit("ok1@a.test", job="spring")
    world.submit("ok2@a.test", job="summer")
    assert world.deliverer.running >= 1
    world.scheduler.control.pause_job("spring")
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    assert delivered(world) == ["ok2@a.test"]
    assert [(r.rcpt, r.state) for r in world.scheduler.control.waiting("*", 10)[0]] == [
        ("ok1@a.test", "paused")
    ]


def test_delete_by_job_bounces_a_paused_jobs_recipients(tmp_path: Path) -> None:
    """delete --jobId reaches recipients held by a job pause; the queue is empty after."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    control.pause_job("spring")
    world.submit("ok1@a.test", "ok2@a.test", job="spring")
    deleted = defer.ensureDeferred(control.delete(RecipientFilter("a.test", job_id="spring")))
    assert deleted.called and deleted.result == 2
    assert control.waiting("*", 10)[1] == 0
    assert records_for(world, "ok1@a.test") == ["b"]
    # the pause stays for later mail of the job
    assert [(j.job, j.messages, j.paused) for j in control.jobs()] == [("spring", 0, True)]


def test_pause_job_applies_to_later_mail_and_resume_ends_it(tmp_path: Path) -> None:
    """A job paused with nothing queued holds its later mail; resumed, later mail flows."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    control = world.scheduler.control
    control.pause_job("spring")
    world.submit("ok1@a.test", job="spring")
    assert delivered(world) == []
    control.resume_job("spring")
    world.submit("ok2@a.test", job="spring")
    assert delivered(world) == ["ok1@a.test", "ok2@a.test"]


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("pause job spring", ("spring",)),
        ("PAUSE JOB Spring-2026", ("Spring-2026",)),
        ("resume job 'spring sale'", ("spring sale",)),
        ("pause job a/b", ("a/b",)),
    ],
)
def test_job_commands_parse_as_admin(line: str, args: tuple[str, ...]) -> None:
    """pause job / resume job take one job id (case kept) and need the admin level."""
    command = parse(line)
    assert command.args == args and command.level == "admin"
    assert command.name in ("pause job", "resume job")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pause job", "missing argument"),
        ("resume job a b", "too many arguments"),
        ("pause job ''", "a job id is 1 to 256 printable characters"),
        ("pause job " + "j" * 257, "a job id is 1 to 256 printable characters"),
        ("pause job 'a\tb'", "a job id is 1 to 256 printable characters"),
        ("pause job x --all", "unknown option --all"),
    ],
)
def test_job_commands_refuse_bad_arguments(line: str, expected: str) -> None:
    """A missing, empty, too long or unprintable job id is refused before anything runs."""
    with pytest.raises(CommandError) as error:
        parse(line)
    assert expected in error.value.message


def test_commands_pause_and_resume_a_job_and_show_jobs_flags_it(tmp_path: Path) -> None:
    """The commands reach the scheduler; show jobs has a paused column in JSON and text."""
    world = World(tmp_path, "retry-after 10m\nbounce-after 1d")
    traffic = TrafficStats(world.clock.seconds)
    commands = Commands(world.holder, world.scheduler.control, None, None, traffic, run_now)

    def run(line: str) -> tuple[object, str]:
        done = defer.ensureDeferred(commands.run(parse(line)))
        assert done.called
        return done.result.data, done.result.message

    data, message = run("pause job spring")
    assert data == {"job": "spring", "paused": True, "recipients": 0}
    world.submit("ok1@a.test", "ok2@a.test", job="spring")
    data, _ = run("show jobs")
    kb = data[0]["kb"]  # type: ignore[index]
    assert data == [{"job": "spring", "messages": 1, "recipients": 2, "paused": True, "kb": kb}]
    text = render_text("show jobs", data, "Total of 1 job(s).")
    assert text.splitlines()[0].split() == ["job-id", "#rcpt", "kbytes", "paused"]
    assert text.splitlines()[2].split() == ["spring", "2", f"{kb:.1f}", "yes"]
    data, message = run("resume job spring")
    assert data == {"job": "spring", "paused": False, "recipients": 0}
    assert message == "resumed job spring (0 recipient(s) queued)"
    assert delivered(world) == ["ok1@a.test", "ok2@a.test"]
    assert run("show jobs")[0] == []


@pytest.mark.parametrize(
    ("fields", "command", "args"),
    [
        ({"action": "pause-job", "job": "promo-7"}, "pause job promo-7", ("promo-7",)),
        ({"action": "resume-job", "job": "a b;c"}, "resume job 'a b;c'", ("a b;c",)),
    ],
)
def test_console_job_actions_run_the_job_commands(
    fields: dict[str, str], command: str, args: tuple[str, ...]
) -> None:
    """The console's pause-job/resume-job actions quote the job id into the command."""
    assert action_command(fields) == command
    assert parse(command).args == args


def test_console_job_action_needs_a_job() -> None:
    """A pause-job action without a job id is a 400, before any command runs."""
    with pytest.raises(APIError) as error:
        action_command({"action": "pause-job"})
    assert error.value.code == 400 and "needs job" in str(error.value.description)


def test_defer_queue_leaves_a_paused_jobs_recipients_held(tmp_path: Path) -> None:
    """A defer-queue pattern action defers the tried mail; a paused job's stays held with
    no attempt counted (it was not tried)."""
    world = World(
        tmp_path,
        "smtp-pattern-list p\nretry-after 10m\nbounce-after 1d",
        extra="<smtp-pattern-list p>\n  reply /try later/ defer-queue\n</smtp-pattern-list>",
    )
    control = world.scheduler.control
    control.pause_job("spring")
    world.submit("ok-held@a.test", job="spring")
    world.submit("soft@a.test")
    rows = {r.rcpt: (r.state, r.attempts) for r in control.waiting("*", 10)[0]}
    assert rows["ok-held@a.test"] == ("paused", 0)
    assert rows["soft@a.test"][0] == "retry"
