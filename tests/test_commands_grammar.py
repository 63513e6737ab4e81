"""The command grammar's PowerMTA options, value checks, and the records behind them
(`RecipientFilter`, `TraceRequest`, `Queue.select`), without a server."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet import task

from mtaserver.commands import SPECS, CommandError, parse, render_text
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.control import MAX_TRACE_LINE, RecipientFilter, TraceRequest
from mtaserver.queue.model import Queue, WorkItem


@pytest.mark.parametrize(
    ("line", "name", "options", "args"),
    [
        ("show topqueues --maxitems=5 --errors a.test/*", "show topqueues",
         {"maxitems": "5", "errors": ""}, ("a.test/*",)),
        ("show queues --paused=NO --mode=backoff --connected", "show queues",
         {"paused": "no", "mode": "backoff", "connected": "yes"}, ()),
        ("show topdomains --vmta=v1 --maxitems=3", "show topdomains",
         {"vmta": "v1", "maxitems": "3"}, ()),
        ("show domains --sort=size *.test", "show domains", {"sort": "size"}, ("*.test",)),
        ("show settings gmail.com/vmta1", "show settings", {}, ("gmail.com/vmta1",)),
        ("show vmta-settings {default}", "show vmta-settings", {}, ("{default}",)),
        ("show disabled sources a.test/v", "show disabled sources", {}, ("a.test/v",)),
        ("delete --dsn --rcpt=x@y.test --older-than=4d12h --queue=*", "delete",
         {"dsn": "", "rcpt": "x@y.test", "older-than": "4d12h", "queue": "*"}, ()),
        ("delete --jobId=spring", "delete", {"jobId": "spring"}, ()),
        ("delete --queue=a.test --orig=<>", "delete", {"queue": "a.test", "orig": ""}, ()),
        ("list", "list", {}, ()),
        ("list --envId=e1 --maxitems=7", "list", {"envId": "e1", "maxitems": "7"}, ()),
        ("set priority --rcpt=ceo@example.com 100", "set priority",
         {"rcpt": "ceo@example.com"}, ("100",)),
        ("schedule --retry-recipients */*", "schedule", {"retry-recipients": ""}, ("*/*",)),
        ("disable source --reenable-after=1h 1.2.3.4 yahoo.com/vmta1", "disable source",
         {"reenable-after": "1h"}, ("1.2.3.4", "yahoo.com/vmta1")),
        ("enable source 1.2.3.4 yahoo.com/vmta1", "enable source", {},
         ("1.2.3.4", "yahoo.com/vmta1")),
        ("enable source yahoo.com/vmta1", "enable source", {}, ("yahoo.com/vmta1",)),
        ("trace --timeout=9 --source-ip=::1 a.test", "trace",
         {"timeout": "9", "source-ip": "::1"}, ("a.test",)),
        ("resolve example.com.", "resolve", {}, ("example.com.",)),
        ("check mfrom a@b.test 10.0.0.1", "check mfrom", {}, ("a@b.test", "10.0.0.1")),
        ("check rcpt --from=<> x@y.test ::1", "check rcpt", {"from": ""}, ("x@y.test", "::1")),
        ("clear dnscache *", "clear dnscache", {}, ("*",)),
        ("reset status", "reset status", {}, ()),
    ],
)  # fmt: skip
def test_pmta_forms_parse(line: str, name: str, options: dict, args: tuple) -> None:
    """Each PowerMTA form parses into its command, checked options and arguments."""
    command = parse(line)
    assert (command.name, dict(command.options), command.args) == (name, options, args)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("show queues --maxitems=10000000", "--maxitems: expected a number from 1 to 1000000"),
        ("show topdomains a.test", "unexpected argument"),
        ("list --max=3 --maxitems=3", "--max is --maxitems"),
        ("delete --queue=a --rcpt=nobody", "is not an address"),
        ("delete --queue=a --rcpt=a@b@c", "is not an address"),
        ("delete --queue=a --envId=" + "e" * 101, "an envelope id is 1 to 100"),
        ("set priority --queue=a.test", "missing argument"),
        ("set priority x", "the priority is 0 to 100"),
        ("check rcpt a@b.test", "missing argument"),
        ("trace --log-data a.test", "--log-data is not supported"),
        ("trace --timeout=601 a.test", "--timeout: expected seconds from 1 to 600"),
        ("resolve " + "a" * 254, "is not a domain name"),
        ("clear dnscache a/b", "is not a domain name"),
        ("show queues --\x1bx", "unknown option --'\\x1bx'"),
    ],
)
def test_bad_values_name_the_problem(line: str, expected: str) -> None:
    """A bad value or an unknown option is refused with what was expected."""
    with pytest.raises(CommandError) as caught:
        parse(line)
    assert expected in caught.value.message
    assert caught.value.message.isprintable()


def envelope(sender: str = "s@a.test", job: str | None = "j", env: str | None = None) -> Envelope:
    return Envelope(
        msg_id="m1",
        sender=sender,
        recipients=(Recipient("one@x.test"), Recipient("Two@x.test")),
        time_queued=100.0,
        job_id=job,
        env_id=env,
    )


def test_recipient_filter_criteria() -> None:
    """Every given criterion must hold; addresses compare without case."""
    mail = envelope()
    assert RecipientFilter().split(mail, (0, 1)) == (0, 1)
    assert RecipientFilter(rcpt="two@X.test").split(mail, (0, 1)) == (1,)
    assert RecipientFilter(orig="S@A.TEST", job_id="j").split(mail, (0, 1)) == (0, 1)
    assert RecipientFilter(job_id="other").split(mail, (0, 1)) == ()
    assert RecipientFilter(env_id="e").split(mail, (0, 1)) == ()
    assert RecipientFilter(queued_before=99.0).split(mail, (0, 1)) == ()
    assert RecipientFilter(queued_before=100.0).split(mail, (0, 1)) == (0, 1)


def test_queue_select_keeps_the_rest_in_place() -> None:
    """select takes the picked recipients out; the rest keep their place and retry time."""
    queue = Queue("x.test/{default}", "x.test", "{default}")
    queue.ready.append(WorkItem("m1", (0, 1), 2))
    queue.add_retry(500.0, WorkItem("m2", (0,), 1))
    queue.held.append(WorkItem("m3", (0,)))
    taken = queue.select(lambda item: tuple(i for i in item.rcpt_indexes if i == 1))
    assert [(t.msg_id, t.rcpt_indexes, t.failed_attempts) for t in taken] == [("m1", (1,), 2)]
    assert [(i.msg_id, i.rcpt_indexes) for i in queue.ready] == [("m1", (0,))]
    assert queue.next_due() == 500.0 and queue.held[0].msg_id == "m3"
    taken = queue.select(lambda item: item.rcpt_indexes if item.msg_id == "m2" else ())
    assert [t.msg_id for t in taken] == ["m2"] and queue.retry == []


def test_trace_lines_are_stamped_escaped_and_bounded() -> None:
    """A trace line carries the time; CR, LF and ESC are escaped; long lines are cut."""
    clock = task.Clock()
    clock.advance(86400)
    trace = TraceRequest("a.test", clock=clock)
    trace.start("a.test/{default}")
    trace.line(">>> 250 ok\r\nRCPT TO:<evil>\x1b[2J")
    trace.line("x" * 5000)
    trace.finish()
    trace.finish()  # a second end changes nothing
    assert trace.lines[0] == "1970-01-02 00:00:00 starting a.test/{default}"
    assert trace.lines[1].endswith(">>> 250 ok\\r\\nRCPT TO:<evil>\\x1b[2J")
    assert all(line.isprintable() for line in trace.lines)
    assert len(trace.lines[2]) == len("1970-01-02 00:00:00 ") + MAX_TRACE_LINE
    assert trace.lines[-1].endswith("done a.test/{default}") and trace.finished.called


def test_render_resolve_and_queue_tables() -> None:
    """resolve prints pmta's host table; show queues marks paused and backoff queues."""
    data = {
        "status": "StatusOk",
        "hosts": [{"pref": 5, "name": "mx.a.test", "implicit": False,
                   "ip": ["192.0.2.1"], "status": "StatusOk"}],
        "route": [{"pref": 5, "host": "mx.a.test", "ip": "192.0.2.1", "port": 25}],
        "routeError": "",
    }  # fmt: skip
    text = render_text("resolve", data)
    assert text.splitlines()[:4] == [
        "status = StatusOk",
        "pref host name IP addresses",
        "---- --------- ------------",
        "   5 mx.a.test 192.0.2.1",
    ]
    rows = [{"name": "a.test/v", "recipients": 2, "kb": 1.5, "connections": 0,
             "paused": True, "mode": "backoff", "nextRetry": None,
             "lastError": "4.4.1 " + "x" * 100}]  # fmt: skip
    line = render_text("show queues", rows).splitlines()[2]
    assert line.split()[:5] == ["a.test/v", "2", "1.5", "0", "PB"] and line.endswith("...")
    assert render_text("show queues", rows, errors=True).splitlines()[2].endswith("x" * 100)


def test_docs_list_every_command_and_option() -> None:
    """docs/api.rst names every command, each of its options and each refused option."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.rst").read_text()
    missing = [
        f"{' '.join(spec.words)} --{option}"
        for spec in SPECS
        for option in [*spec.options, *spec.refused]
        if f"--{option}" not in text
    ]
    missing += [" ".join(spec.words) for spec in SPECS if " ".join(spec.words) not in text]
    assert missing == []


def test_queue_tables_show_recipient_events_and_escape_control_characters() -> None:
    """show queues appends PowerMTA's Recipient Events; a hostile reply text is escaped."""
    rows = [{"name": "a.test/v", "recipients": 0, "kb": 0.0, "connections": 0,
             "paused": False, "mode": "normal", "nextRetry": None,
             "lastError": "4.0.0 \x1b[2Jevil",
             "rcptEvents": [
                 {"type": "delivered", "time": 60.0, "rcpt": "a@a.test", "job": "j",
                  "source_ip": "10.0.0.1", "destination_ip": "192.0.2.1",
                  "diag": "smtp;250 ok"},
                 {"type": "deferred", "time": 120.0, "rcpt": "b@a.test", "job": "",
                  "source_ip": "10.0.0.1", "destination_ip": "192.0.2.1",
                  "diag": "smtp;451 \x1b]0;owned\x07"},
             ]}]  # fmt: skip
    text = render_text("show queues", rows, "1 of 1 queues shown.")
    assert all(line.isprintable() for line in text.splitlines())
    lines = text.splitlines()
    start = lines.index("Recipient Events (deliveries:1, bounces:0, deferrals:1)")
    assert lines[start + 2].startswith("deferred | 1970-01-01 00:02:00 | 10.0.0.1 | b@a.test")
    assert lines[start + 3].startswith("delivered | 1970-01-01 00:01:00")
    assert "\\x1b[2Jevil" in text
