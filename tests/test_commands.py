"""The command language: parsing, bad arguments, text rendering, and the traffic counters."""

from __future__ import annotations

import pytest

from mtaserver.commands import SPECS, CommandError, parse, render_text, table
from mtaserver.events import Envelope, Outcome, Recipient
from mtaserver.stats import Histogram, RateCounter, TrafficStats


@pytest.mark.parametrize(
    ("line", "name", "options", "args"),
    [
        ("show status", "show status", {}, ()),
        ("SHOW Queues --paused", "show queues", {"paused": "yes"}, ()),
        ("pause queue sink.test/*", "pause queue", {}, ("sink.test/*",)),
        ("resume queue example.com/{default}", "resume queue", {}, ("example.com/{default}",)),
        ("schedule example.com", "schedule", {}, ("example.com",)),
        ("set queue --mode=backoff a.test/v1", "set queue", {"mode": "backoff"}, ("a.test/v1",)),
        ("delete --queue=a.test/* --jobId=j7", "delete", {"queue": "a.test/*", "jobId": "j7"}, ()),
        ("list --queue=* --max=5", "list", {"queue": "*", "max": "5"}, ()),
        ("test config", "test config", {}, ()),
        ("test config 'conf.d/a b.conf'", "test config", {}, ("conf.d/a b.conf",)),
        ("reload", "reload", {}, ()),
        ("rotate acct", "rotate acct", {}, ()),
        ("reset counters", "reset counters", {}, ()),
    ],
)
def test_parse_accepts_every_command(line: str, name: str, options: dict, args: tuple) -> None:
    """Each command of the language parses into its name, options and arguments."""
    command = parse(line)
    assert (command.name, dict(command.options), command.args) == (name, options, args)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "empty command"),
        ("   ", "empty command"),
        ("frobnicate", "unknown command 'frobnicate'"),
        ("show", "unknown command 'show'"),
        ("show nothing", "unknown command 'show nothing'"),
        ("show status now", "unexpected argument 'now'"),
        ("show queues --paused=maybe", "--paused: expected yes or no"),
        ("show queues --all", "unknown option --all"),
        ("show domains a.test/v", "is not a domain"),
        ("show vmtas --x", "unknown option --x"),
        ("show jobs x", "unexpected argument"),
        ("show settings a b", "too many arguments"),
        ("show version x", "unexpected argument"),
        ("pause queue", "missing argument"),
        ("pause queue a.test b.test", "too many arguments"),
        ("pause queue 'a test'", "is not a queue name"),
        ("pause queue a.test/v1/x", "is not a queue name"),
        ("resume queue", "missing argument"),
        ("resume queue ../etc", "is not a queue name"),
        ("schedule", "missing argument"),
        ("schedule a;b", "is not a queue name"),
        ("set queue a.test", "--mode is required"),
        ("set queue --mode=fast a.test", "--mode: expected normal or backoff"),
        ("set queue --mode= a.test", "--mode needs a value"),
        ("set queue --mode=normal", "missing argument"),
        ("delete", "give --queue or --jobId"),
        ("delete --queue=", "--queue needs a value"),
        ("delete --queue=a.test --jobId", "--jobId needs a value"),
        ("delete --queue=a.test --queue=b.test", "--queue given twice"),
        ("delete --queue=a.test extra", "unexpected argument"),
        ("delete --queue='x y'", "is not a queue name"),
        ("list --queue", "--queue needs a value"),
        ("list --queue=a.test --max=0", "--max: expected a number from 1"),
        ("list --queue=a.test --max=ten", "--max: expected a number from 1"),
        ("reload now", "unexpected argument"),
        ("test config a b", "too many arguments"),
        ("rotate acct a b", "too many arguments"),
        ("rotate", "unknown command 'rotate'"),
        ("reset counters x", "unexpected argument"),
        ("show status 'unbalanced", "cannot parse the command"),
    ],
)
def test_bad_commands_are_refused_with_a_clear_message(line: str, expected: str) -> None:
    """Every command's bad-argument path raises CommandError naming the problem."""
    with pytest.raises(CommandError) as caught:
        parse(line)
    assert expected in caught.value.message


def test_every_spec_has_a_level_and_a_test_line() -> None:
    """Reading commands need monitor, changing ones admin; every usage parses."""
    levels = {spec.words: spec.level for spec in SPECS}
    reading = ("show", "list", "test", "export", "check")  # `suppression show`, `... export`

    def verb(words: tuple[str, ...]) -> str:
        return words[1] if words[0] == "suppression" else words[0]

    assert all(levels[w] == "monitor" for w in levels if verb(w) in reading)
    assert all(levels[w] == "admin" for w in levels if verb(w) not in reading)


def test_table_pads_columns_and_renders_booleans() -> None:
    """Tables line columns up under their header; booleans print yes/no, None as -."""
    text = table([{"name": "a.test/v", "paused": True, "n": None}], ("name", "paused", "n"))
    assert text.splitlines() == ["name      paused  n", "a.test/v  yes     -"]


def test_render_text_of_queues_and_messages() -> None:
    """show queues renders a table; a changing command renders its message."""
    rows = [{"name": "a.test/{default}", "recipients": 3, "paused": False}]
    assert "a.test/{default}" in render_text("show queues", rows, "1 queue(s)")
    assert render_text("pause queue", {"queues": []}, "paused a.test") == "paused a.test"


def test_rate_counter_windows() -> None:
    """Counts leave the last-minute window after 60 s and the last-hour window after 3600 s."""
    counter = RateCounter()
    counter.add(5, now=1000.0)
    counter.add(2, now=1030.0)
    assert counter.last(60, now=1030.5) == 7
    assert counter.last(60, now=1075.0) == 2
    assert counter.last(3600, now=1075.0) == 7
    assert counter.last(3600, now=4700.0) == 0
    assert counter.total == 7
    counter.add(0, now=4700.0)
    counter.add(-3, now=4700.0)
    assert counter.total == 7


def test_histogram_is_cumulative() -> None:
    """Histogram buckets come out cumulative with +Inf equal to the count."""
    histogram = Histogram(bounds=(1.0, 10.0))
    for value in (0.5, 1.0, 5.0, 50.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("1.0", 2), ("10.0", 3), ("+Inf", 4)]
    assert histogram.sum == 56.5


def test_traffic_stats_count_outcomes_and_reception() -> None:
    """Outcomes feed outbound and per-queue totals; reception totals feed inbound deltas."""
    now = [100.0]
    traffic = TrafficStats(lambda: now[0])
    envelope = Envelope("m1", "s@x", (Recipient("a@b.test"), Recipient("c@b.test")), 90.0)
    traffic.record(
        [
            Outcome("d", "m1", (0, 1), 100.0, envelope, dlv_size=300, queue="b.test/v"),
            Outcome("t", "m1", (1,), 100.0, envelope, queue="b.test/v"),
            Outcome("b", "m1", (0,), 100.0, envelope, queue="b.test/v"),
        ]
    )
    out = traffic.outbound.summary(100.0)
    assert out["lastMin"] == {"recipients": 2, "messages": 1, "bytes": 300}
    totals = traffic.queue_totals["b.test/v"]
    assert (totals.delivered, totals.deferred, totals.bounced) == (2, 1, 1)
    assert traffic.latency.count == 2 and traffic.latency.sum == 20.0

    class Reception:
        recipients_received, messages_received, bytes_received = 4, 2, 1000

    traffic.sample_reception(Reception())
    Reception.recipients_received, Reception.messages_received = 5, 3
    traffic.sample_reception(Reception())
    assert traffic.inbound.summary(100.0)["total"] == {
        "recipients": 5,
        "messages": 3,
        "bytes": 1000,
    }
    traffic.reset()
    assert traffic.inbound.summary(100.0)["total"]["messages"] == 0
    assert traffic.queue_totals["b.test/v"].delivered == 2  # Prometheus totals survive
