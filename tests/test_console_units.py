"""The web console's pure parts: the per-minute history and the action grammar.

The history is driven by `task.Clock` through the same `history_service` timer the
management port runs; the real server and browser are in `test_console_browser.py`.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from mtaserver.events import Envelope, Outcome, Recipient
from mtaserver.http.console.history import MINUTES, History, history_service, traffic_totals
from mtaserver.http.console.resource import action_command, same_origin
from mtaserver.http.errors import APIError
from mtaserver.stats import TrafficStats


def totals(delivered: int = 0, bounced: int = 0, deferred: int = 0, received: int = 0) -> dict:
    return {"delivered": delivered, "bounced": bounced, "deferred": deferred, "received": received}


def test_history_counts_growth_per_minute() -> None:
    """Each minute's bucket holds what the counters grew by during that minute."""
    history = History()
    history.sample(totals(delivered=5), 10, now=600.0)  # the baseline, not counted
    history.sample(totals(delivered=8, received=2), 12, now=630.0)
    history.sample(totals(delivered=9, received=2, bounced=1), 7, now=665.0)
    series = history.series(now=665.0, minutes=3)
    assert [m["start"] for m in series] == [540, 600, 660]
    assert series[0] == {"start": 540, "delivered": 0, "bounced": 0, "deferred": 0,
                         "received": 0, "queued": None}  # fmt: skip
    assert (series[1]["delivered"], series[1]["received"], series[1]["queued"]) == (3, 2, 12)
    assert (series[2]["delivered"], series[2]["bounced"], series[2]["queued"]) == (1, 1, 7)


def test_a_counter_that_goes_down_is_a_new_baseline() -> None:
    """`reset counters` zeroes the inbound counter: no negative minute, growth goes on."""
    history = History()
    history.sample(totals(received=100), 0, now=0.0)
    history.sample(totals(received=3), 0, now=10.0)
    history.sample(totals(received=5), 0, now=20.0)
    assert history.series(now=20.0, minutes=1)[0]["received"] == 2


def test_history_keeps_a_day_and_sums_it() -> None:
    """Buckets older than a day are dropped; `totals` sums what is kept."""
    history = History()
    history.sample(totals(), 0, now=0.0)
    history.sample(totals(delivered=4), 0, now=30.0)
    assert history.totals(now=30.0)["delivered"] == 4
    later = MINUTES * 60.0 + 30.0
    history.sample(totals(delivered=6), 0, now=later)
    assert history.totals(now=later) == totals(delivered=2)
    assert len(history.series(now=later)) == 60


class FakeControl:
    def __init__(self) -> None:
        self.recipients = 0

    def totals(self) -> Any:
        return type("Totals", (), {"recipients": self.recipients})()


class Parts:
    """What `history_service` reads: the traffic stats, reception and queue totals."""

    def __init__(self, clock: Clock) -> None:
        self.traffic = TrafficStats(clock.seconds)
        self.reception = type(
            "Reception", (), {"recipients_received": 0, "messages_received": 0, "bytes_received": 0}
        )()
        self.control = FakeControl()


def outcome(record: str, rcpts: int, now: float) -> Outcome:
    envelope = Envelope(
        "m1", "s@x.test", tuple(Recipient(f"r{i}@y.test") for i in range(rcpts)), now
    )
    return Outcome(
        record=record, msg_id="m1", queue="y.test/{default}", envelope=envelope,
        rcpt_indexes=tuple(range(rcpts)), time=now, dsn_status="2.0.0", dsn_diag="250 ok",
    )  # fmt: skip


def test_the_timer_samples_the_traffic_stats() -> None:
    """The service's timer feeds delivered, bounced and received counts and queue size."""
    clock = Clock()
    clock.advance(120)
    parts = Parts(clock)
    history = History()
    timer = history_service(history, parts, clock)
    timer.startService()
    try:
        parts.reception.recipients_received = 4
        parts.control.recipients = 9
        parts.traffic.record([outcome("d", 2, clock.seconds()), outcome("b", 1, clock.seconds())])
        clock.advance(5)
        minute = history.series(clock.seconds(), minutes=1)[0]
        assert (minute["delivered"], minute["bounced"], minute["received"]) == (2, 1, 4)
        assert minute["queued"] == 9
        assert traffic_totals(parts.traffic, parts.reception)["received"] == 4
    finally:
        timer.stopService()


@pytest.mark.parametrize(
    ("fields", "command"),
    [
        ({"action": "pause", "queue": "a.test/{default}"}, "pause queue 'a.test/{default}'"),
        ({"action": "schedule", "queue": "a.test"}, "schedule a.test"),
        ({"action": "delete", "queue": "a.test", "confirm": True}, "delete --queue=a.test"),
        ({"action": "reload"}, "reload"),
        ({"action": "rotate-acct"}, "rotate acct"),
    ],
)
def test_actions_become_operator_commands(fields: dict, command: str) -> None:
    """Each console action is one operator command, its values shell-quoted."""
    assert action_command(fields) == command


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "shutdown"},
        {"action": "pause"},
        {"action": "pause", "queue": 7},
        {"action": "delete", "queue": "a.test"},
        {"action": "delete", "queue": "a.test", "confirm": "yes"},
    ],
)
def test_bad_actions_are_refused(fields: dict) -> None:
    """Unknown actions, missing values and unconfirmed deletes are a 400."""
    with pytest.raises(APIError) as raised:
        action_command(fields)
    assert raised.value.code == 400


class Headers:
    def __init__(self, headers: dict[bytes, bytes], secure: bool = False) -> None:
        self.headers = headers
        self.secure = secure

    def getHeader(self, name: bytes) -> bytes | None:  # noqa: N802 - IRequest's name
        return self.headers.get(name)

    def isSecure(self) -> bool:  # noqa: N802 - IRequest's name
        return self.secure


@pytest.mark.parametrize(
    ("headers", "secure", "allowed"),
    [
        ({b"host": b"127.0.0.1:8080"}, False, True),
        ({b"host": b"127.0.0.1:8080", b"origin": b"http://127.0.0.1:8080"}, False, True),
        ({b"host": b"127.0.0.1:8080", b"origin": b"https://127.0.0.1:8080"}, False, False),
        ({b"host": b"127.0.0.1:8080", b"origin": b"http://evil.example"}, False, False),
        ({b"host": b"h:1", b"origin": b"https://h:1"}, True, True),
        ({b"host": b"h:1", b"sec-fetch-site": b"same-site"}, False, False),
        ({b"host": b"h:1", b"sec-fetch-site": b"same-origin"}, False, True),
    ],
)
def test_same_origin_check(headers: dict, secure: bool, allowed: bool) -> None:
    """An action is refused when Origin or Sec-Fetch-Site names another origin."""
    assert same_origin(Headers(headers, secure)) is allowed  # type: ignore[arg-type]


def test_the_grafana_dashboard_names_only_exported_metrics() -> None:
    """Every metric in etc/grafana-dashboard.json is one `/metrics` exports (metrics.py)."""
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "etc" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"mtaserver_[a-z_]+", expr)}
    source = (root / "mtaserver" / "http" / "metrics.py").read_text()
    families = set(re.findall(r'"(mtaserver_[a-z_]+)"', source))
    families |= {f"mtaserver_{kind}_recipients" for kind in ("delivered", "bounced", "deferred")}
    counters = set(re.findall(r'CounterMetricFamily\(\s*f?"(mtaserver_[a-z_{}]+)"', source))
    exported = set(families)
    for name in families:
        exported |= {name + "_bucket", name + "_sum", name + "_count"}
        if name in counters or name.endswith("_recipients") or "received" in name:
            exported.add(name + "_total")
    assert used and used <= exported, sorted(used - exported)
    assert {"mtaserver_queue_recipients", "mtaserver_delivered_recipients_total"} <= used
