"""The pure parts of monitoring: traffic peaks, recent queue events, the XML writer.

No server: `TrafficStats` with time passed in, `xmlout` round trips with Hypothesis
(any text a peer can send comes back intact or visibly escaped, never ill-formed).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.events import Envelope, Outcome, QueueFailure, Recipient, RemoteReport
from mtaserver.http import shapes, xmlout
from mtaserver.http.monitor import dom_text
from mtaserver.queue.control import QueueView
from mtaserver.stats import ERRORS_KEPT, QUEUES_TRACKED, RCPT_EVENTS_KEPT, RateCounter, TrafficStats


def test_rate_counter_peaks_follow_the_busiest_window() -> None:
    """Top/Min and Top/Hour keep the busiest sliding minute and hour after they pass."""
    counter = RateCounter()
    counter.add(10, now=100.0)
    counter.add(5, now=130.0)
    assert (counter.top_per_min, counter.top_per_hr) == (15, 15)
    counter.add(1, now=1000.0)  # the first minute has passed
    assert counter.last(60, now=1000.0) == 1 and counter.top_per_min == 15
    assert counter.last(3600, now=1000.0) == 16 and counter.top_per_hr == 16
    counter.reset()
    assert (counter.total, counter.top_per_min, counter.top_per_hr) == (0, 0, 0)


def _envelope(*rcpts: str, job: str = "j1") -> Envelope:
    return Envelope("m1", "s@x.test", tuple(Recipient(r) for r in rcpts), 1.0, job_id=job)


def test_recent_events_are_kept_per_queue_and_bounded() -> None:
    """Each queue keeps its last recipient events and errors; old ones and old queues go."""
    traffic = TrafficStats(lambda: 10.0)
    envelope = _envelope("a@q.test")
    for i in range(RCPT_EVENTS_KEPT + 5):
        record = "d" if i % 2 else "t"
        traffic.record(
            [Outcome(record, "m1", (0,), float(i), envelope, dsn_diag=f"diag {i}", queue="q/v")]
        )
    events = traffic.recent["q/v"]
    assert len(events.rcpt) == RCPT_EVENTS_KEPT and len(events.errors) == ERRORS_KEPT
    assert events.rcpt[-1].diag == f"diag {RCPT_EVENTS_KEPT + 4}"
    assert {e.type for e in events.rcpt} == {"delivered", "deferred"}
    traffic.record([QueueFailure("q/v", 99.0, dsn_diag="connection refused")])
    assert events.errors[-1].text == "connection refused"
    for i in range(QUEUES_TRACKED):
        traffic.record([QueueFailure(f"other{i}/v", 1.0, dsn_diag="x")])
    assert "q/v" not in traffic.recent and len(traffic.recent) == QUEUES_TRACKED


def test_processed_reports_and_connection_peaks() -> None:
    """Report messages count once each; connection peaks follow the owners' maxima."""
    traffic = TrafficStats(lambda: 10.0)
    traffic.record(
        [
            RemoteReport("rb", 10.0, "r1", "a@x"),
            RemoteReport("rb", 10.0, "r1", "b@x"),
            RemoteReport("f", 10.0, "r2", "c@x"),
        ]
    )
    assert traffic.bounce_processed.total == 1 and traffic.feedback_loop_processed.total == 1
    traffic.sample_connections(2, 7)
    assert traffic.connections_out.value == 7
    traffic.reset()
    traffic.sample_connections(1, 7)  # the owner's old maximum does not come back
    assert traffic.connections_out.value == 1
    traffic.sample_connections(0, 9)
    assert traffic.connections_out.value == 9


@given(st.text(st.characters(exclude_categories=())))
def test_any_text_makes_well_formed_xml(value: str) -> None:
    """Any value, controls and lone surrogates included, gives XML that parses back."""
    body = xmlout.document({"queue": [{"name": value, "rcp": 1}]})
    root = ET.fromstring(body)
    text = root.findtext("data/queue/name") or ""
    assert text == xmlout.text_of(value)
    assert b"\r" not in body and body.count(b"\n") == 1  # only after the declaration
    if all(c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF for c in value):
        assert text == value  # printable text comes back exactly


def test_xml_values_and_names() -> None:
    """Booleans are 1/0, kb keeps one decimal, lists repeat, odd keys become `<item name=>`."""
    root = ET.fromstring(
        xmlout.document({"ok": True, "kb": 0.0, "x": None, "vmta": [{"name": "a"}, {"name": "b"}]})
    )
    assert root.findtext("data/ok") == "1" and root.findtext("data/kb") == "0.0"
    assert root.findtext("data/x") == "" and root.find("succ") is not None
    assert [e.findtext("name") for e in root.findall("data/vmta")] == ["a", "b"]
    odd = ET.fromstring(xmlout.document({"{default}": 1, "a\nb": 2}))
    assert [(e.get("name"), e.text) for e in odd.findall("data/item")] == [
        ("{default}", "1"),
        ("a\\x0ab", "2"),
    ]  # a key that is no element name is an escaped attribute
    rows = ET.fromstring(xmlout.document([{"name": "q1"}, {"name": "q2"}], "2 queue(s)"))
    assert [e.findtext("name") for e in rows.findall("data/item")] == ["q1", "q2"]
    assert rows.findtext("message") == "2 queue(s)"
    error = ET.fromstring(xmlout.error_document("Bad <thing>", "a & b"))
    assert error.findtext("error/message") == "Bad <thing>" and error.find("fail") is not None


def test_dom_text_escapes_quotes_and_controls() -> None:
    """DOM-style lines: one per leaf, quotes and backslashes escaped, no raw CR/LF."""
    text = dom_text({"queue": {"name": 'a"b\\c', "event": [{"text": "x\r\ny"}]}})
    assert text.splitlines() == [
        'queue.name="a\\"b\\\\c"',
        'queue.event[0].text="x\\\\x0d\\\\x0ay"',
    ]


def _queue(name: str, recipients: int, size: int) -> QueueView:
    domain, _, vmta = name.partition("/")
    return QueueView(
        name, domain, vmta, None, recipients, 1, size, 1.0, False, "normal", 0, 0, 0, 0, 0,
        None, "",
    )  # fmt: skip


def test_status_queue_types_and_kb() -> None:
    """status.queue counts each queue under its delivery type (http-delivery as pipe)."""
    queues = [_queue("a.test/v", 2, 2048), _queue("b.test/v", 3, 1536), _queue("c.test/v", 0, 0)]
    types = {"a.test": "smtp", "b.test": "http-delivery", "c.test": "smtp"}
    connections = shapes.Connections(1, 2, 100, 200)
    status = shapes.status(
        TrafficStats(lambda: 0.0), queues, lambda q: types[q.domain], connections, 5, 0.0
    )
    assert status["queue"]["smtp"] == {"rcp": 2, "dom": 1, "kb": 2.0}
    assert status["queue"]["pipe"] == {"rcp": 3, "dom": 1, "kb": 1.5}
    assert status["queue"]["discard"] == {"rcp": 0, "dom": 0, "kb": 0.0}
    assert status["spool"]["totalRcp"] == 5 and status["spool"]["files"]["inUse"] == 3
    assert status["conn"]["smtpOut"] == {"cur": 2, "max": 200, "top": 0}
    assert status["resolver"]["namesCached"] == 5
    assert shapes.timestamp(0.0) == "1970-01-01 00:00:00" and shapes.timestamp(None) == ""
