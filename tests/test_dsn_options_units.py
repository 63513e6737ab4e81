"""DSN options at the unit level: config values, report shapes, and delay notices on a Clock.

The scheduler runs over a real spool and journal with a `task.Clock`, the real
`DsnSender` and `DelayNotices`; a scripted deliverer answers by the local part
(`ok` 250, `soft` 451, anything else 550). Every DSN is read back from the spool and
parsed with the `email` package or the project's own bounce parser.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest
from test_scheduler import ScriptedDeliverer
from twisted.internet import defer, task

from mtaserver.config.load import ConfigError, load_config
from mtaserver.config.model import DomainSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome, Recipient
from mtaserver.inbound.dsn import parse_bounce
from mtaserver.message.dsn import FailedRecipient, build_dsn, default_ret
from mtaserver.queue.bounces import DsnSender, reports_for
from mtaserver.queue.delay_notices import DelayNotices, notice_due
from mtaserver.queue.delivery import ConnectionInfo, QueueLevelFailure
from mtaserver.queue.scheduler import Scheduler
from mtaserver.spool import Journal, MessageStore
from mtaserver.spool.testing import run_now

INFO = ConnectionInfo("127.0.0.1", "127.0.0.2", "mx.dst.test", True, "", "", frozenset())
INFO_DSN = ConnectionInfo(
    "127.0.0.1", "127.0.0.2", "mx.dst.test", True, "", "", frozenset({"DSN", "PIPELINING"})
)


def _load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "t.conf"
    path.write_text(text)
    return load_config(str(path))


# -- config values ---------------------------------------------------------------------


def test_directives_parse_into_settings(tmp_path: Path) -> None:
    """Each DSN directive lands in its scope's settings with PowerMTA's value forms."""
    config = _load(
        tmp_path,
        'custom-dsn-from-header "Postmaster <foobar@there.com>"\n'
        "<source 10/8>\n suppress-local-dsn yes\n dsn-return-default full\n</source>\n"
        "<domain hotmail.com>\n dsn-format plain-text\n notify-of-delay-every 1h\n</domain>\n"
        "<domain never.test>\n notify-of-delay-every never\n</domain>\n",
    )
    assert config.settings.custom_dsn_from_header == "Postmaster <foobar@there.com>"
    source = config.source_settings("10.1.2.3")
    assert (source.suppress_local_dsn, source.dsn_return_default) == (True, "full")
    assert config.source_settings("192.0.2.1").dsn_return_default == "system"
    hotmail = config.domain_settings("hotmail.com")
    assert (hotmail.dsn_format, hotmail.notify_of_delay_every) == ("plain-text", 3600.0)
    assert config.domain_settings("never.test").notify_of_delay_every is None
    assert config.domain_settings("other.test").notify_of_delay_every == 4 * 3600.0
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('custom-dsn-from-header "Postmaster"\n', "expected one address"),
        ('custom-dsn-from-header "a@b.com, c@d.com"\n', "expected one address"),
        ('custom-dsn-from-header "Post\tmaster <a@b.com>"\n', "printable ASCII"),
        ('custom-dsn-from-header "Pöst <a@b.com>"\n', "printable ASCII"),
        ("<domain *>\n dsn-format html\n</domain>\n", "standard, plain-text"),
        ("<domain *>\n notify-of-delay-every soon\n</domain>\n", "or never"),
        ("<source 0/0>\n dsn-return-default body\n</source>\n", "headers, full, system"),
        ("<domain *>\n suppress-local-dsn yes\n</domain>\n", "suppress-local-dsn"),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    """A bad DSN directive value (or scope) is a FILE:LINE error naming what is expected."""
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert message in str(caught.value)
    assert "t.conf:" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"Hi $who\n", "unknown placeholder $who"),
        (b"Costs 5$ now\n", "a $ that starts no placeholder"),
        (b"\xff\xfe not text", "is not UTF-8 text"),
        (b"bell \x07 here", "holds control characters"),
        (b"x" * (64 * 1024 + 1), "larger than 64 KB"),
    ],
)
def test_bad_dsn_text_file_is_a_config_error(tmp_path: Path, content: bytes, message: str) -> None:
    """dsn-text-file is read at load: unreadable, unknown fields or controls are errors."""
    template = tmp_path / "dsn.txt"
    template.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"<domain *>\n dsn-text-file {template}\n</domain>\n")
    assert message in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        _load(tmp_path, f"<domain *>\n dsn-text-file {tmp_path}/missing.txt\n</domain>\n")


def test_dsn_text_template_fills_in_fields(tmp_path: Path) -> None:
    """The template replaces the notification part; peer text stays one line; $$ is $."""
    template = tmp_path / "dsn.txt"
    template.write_text(
        'Hello ${sender},\nabout "$subject" ($envid):\n$summary\n\n$recipients\n'
        "-- $reporting_mta, $postmaster, $$5\n"
    )
    config = _load(tmp_path, f"<domain *>\n dsn-text-file {template}\n</domain>\n")
    text_file = config.domain_settings("src.test").dsn_text_file
    envelope = _env(Recipient("r@dst.test"), env_id="E7")
    failure = FailedRecipient(envelope.recipients[0], "failed", "5.1.1", "550 5.1.1\r\nX: y", "mx")
    data = build_dsn(
        envelope,
        [failure],
        b"Subject: Spring\r\n sale\r\n\r\nbody\r\n",
        "mta.test",
        "pm@mta.test",
        1.7e9,
        "mta.test",
        text_template=text_file.text,
    )
    report = email.message_from_bytes(data, policy=email.policy.default)
    notification = next(p for p in report.walk() if p["Content-Description"] == "Notification")
    assert notification.get_content().replace("\r\n", "\n") == (
        'Hello s@src.test,\nabout "Spring  sale" (E7):\n'
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients. It's attached below.\n\n"
        "<r@dst.test>: failed (host mx said): 550 5.1.1 X: y\n"
        "-- mta.test, pm@mta.test, $5\n"
    )
    bounce = parse_bounce(data)  # the status part is as always
    assert bounce is not None and [r.rcpt for r in bounce.recipients] == ["r@dst.test"]


@pytest.mark.parametrize(
    ("ret", "default", "expected"),
    [
        (None, "system", None),
        (None, "headers", "HDRS"),
        (None, "full", "FULL"),
        ("HDRS", "full", "HDRS"),
        ("FULL", "headers", "FULL"),
    ],
)
def test_default_ret(ret: str | None, default: str, expected: str | None) -> None:
    """RET given at MAIL wins; else the source's dsn-return-default (system: none)."""
    assert default_ret(ret, default) == expected


# -- report shapes ---------------------------------------------------------------------


def _env(*rcpts: Recipient, **kw: Any) -> Envelope:
    return Envelope("m1", "s@src.test", tuple(rcpts), 1_700_000_000.0, **kw)


def test_plain_text_format_is_the_status_fields_only() -> None:
    """dsn-format plain-text: one text/plain part with the status fields, no original."""
    envelope = _env(Recipient("r@dst.test", orcpt="rfc822;R@dst.test"), env_id="E-1", ret="FULL")
    failure = FailedRecipient(envelope.recipients[0], "failed", "5.1.1", "550 5.1.1 no user", "mx")
    data = build_dsn(
        envelope,
        [failure],
        b"Subject: secret\r\n\r\nbody\r\n",
        "mta.test",
        "pm@mta.test",
        1_700_000_100.0,
        "mta.test",
        plain_text=True,
        from_header="Postmaster <foobar@there.com>",
    )
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report.get_content_type() == "text/plain"
    assert not report.is_multipart()
    assert report["From"] == "Postmaster <foobar@there.com>"
    assert b"secret" not in data
    per_message, per_rcpt = [
        email.message_from_string(block.strip() + "\n")
        for block in report.get_content().replace("\r\n", "\n").split("\n\n")
        if block.strip()
    ]
    assert per_message["Reporting-MTA"] == "dns; mta.test"
    assert per_message["Original-Envelope-Id"] == "E-1"
    assert per_rcpt["Final-Recipient"] == "rfc822; r@dst.test"
    assert per_rcpt["Original-Recipient"] == "rfc822; R@dst.test"
    assert (per_rcpt["Action"], per_rcpt["Status"]) == ("failed", "5.1.1")
    assert per_rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no user"


def test_delayed_report_says_when_it_gives_up() -> None:
    """A delayed recipient's block has Will-Retry-Until; the bounce parser reads it back."""
    envelope = _env(Recipient("r@dst.test", notify="DELAY"))
    delayed = FailedRecipient(
        envelope.recipients[0], "delayed", "4.2.0", "451 4.2.0 busy", "mx", will_retry_until=2e9
    )
    data = build_dsn(envelope, [delayed], b"Subject: x\r\n\r\n", "mta.test", "", 1.7e9, "mta.test")
    report = parse_bounce(data)
    assert report is not None
    (rcpt,) = report.recipients
    assert (rcpt.rcpt, rcpt.action, rcpt.dsnStatus) == ("r@dst.test", "delayed", "4.2.0")
    assert "Will-Retry-Until: Wed, 18 May 2033 03:33:20 +0000" in data.decode()


def _outcome(record: str, rcpts: tuple[Recipient, ...], info: ConnectionInfo, **kw: Any) -> Outcome:
    envelope = _env(*rcpts)
    return Outcome(
        record,
        "m1",
        tuple(range(len(rcpts))),
        0.0,
        envelope,
        dsn_status=kw.get("status", "2.0.0"),
        dsn_diag="smtp;250 ok",
        dsn_mta=f"{info.destination_host} ({info.destination_ip})",
        dlv_type=kw.get("dlv_type", "smtp"),
        dlv_esmtp_available=",".join(sorted(info.extensions)),
    )


def test_reports_for_success_and_failure() -> None:
    """d: relayed over SMTP without DSN, delivered locally, none when the hop has DSN."""
    asks = Recipient("a@dst.test", notify="SUCCESS,FAILURE")
    plain = Recipient("b@dst.test")
    never = Recipient("c@dst.test", notify="NEVER")
    relayed = reports_for([_outcome("d", (asks, plain, never), INFO)])
    assert [(r.recipient.address, r.action, r.remote_mta) for r in relayed] == [
        ("a@dst.test", "relayed", "mx.dst.test")
    ]
    assert reports_for([_outcome("d", (asks,), INFO_DSN)]) == []
    local = reports_for([_outcome("d", (asks,), INFO, dlv_type="file")])
    assert [(r.action, r.remote_mta) for r in local] == [("delivered", "")]
    failed = reports_for([_outcome("b", (plain, never), INFO, status="5.1.1")])
    assert [(r.recipient.address, r.action) for r in failed] == [
        ("b@dst.test", "failed"),
        ("c@dst.test", "failed"),  # listed here; wanted_failures drops NOTIFY=NEVER
    ]


# -- delay notices: the rule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "now", "every", "due"),
    [
        (None, 99.0, 100.0, False),  # not a full interval yet
        (None, 100.0, 100.0, True),
        (None, 350.0, 100.0, True),
        (150.0, 199.0, 100.0, False),  # same window as the last notice
        (150.0, 200.0, 100.0, True),
        (250.0, 350.0, 100.0, True),
        (None, 1e9, None, False),  # never
        (None, 1e9, 0.0, False),
    ],
)
def test_notice_due(last: float | None, now: float, every: float | None, due: bool) -> None:
    """One notice per window [k*every, (k+1)*every) of queue time, from k = 1."""
    assert notice_due(0.0, last, now, every) is due


# -- delay notices through the scheduler, on a Clock -------------------------------------


class World:
    """Scheduler, spool, journal, DsnSender and DelayNotices on a task.Clock.

    DSNs the sender spools are caught by `enqueue` (not delivered) and read back.
    """

    def __init__(self, tmp_path: Path, domain_conf: str, extra: str = "") -> None:
        conf = tmp_path / "m.conf"
        conf.write_text(f"host-name mta.test\n<domain *>\n{domain_conf}\n</domain>\n{extra}\n")
        self.holder = ConfigHolder(load_config(str(conf)))
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        spool = str(tmp_path / "spool")
        self.journal = Journal(spool + "/journal", run_now)
        self.store = MessageStore(spool, self.journal, run_now, clock=self.clock.seconds)
        self.store.resume({})
        self.dsns: list[Envelope] = []
        self.deliverer = ScriptedDeliverer()
        sender = DsnSender(self.holder, self.store, self.dsns.append, self.clock, run_now)
        self.notices = DelayNotices(sender.send, sender.may_send, self.clock)
        self.scheduler = Scheduler(
            self.holder,
            self.store,
            self.journal,
            {"smtp": self.deliverer},
            self.clock,
            notify_bounce=sender,
            delay_notices=self.notices,
        )

    def send(self, *rcpts: Recipient, sender: str = "s@src.test", **kw: Any) -> Envelope:
        writer = self.store.begin()
        writer.write(b"Subject: t\r\n\r\nbody\r\n")
        envelope = Envelope(writer.msg_id, sender, rcpts, self.clock.seconds(), **kw)
        assert writer.commit(envelope).called
        self.scheduler.enqueue(envelope)
        return envelope

    def run(self, seconds: float, step: float = 1.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def reports(self) -> list[EmailMessage]:
        out = []
        for envelope in self.dsns:
            data = self.store.read_body(envelope.msg_id)
            out.append(
                email.message_from_bytes(_result(data), policy=email.policy.default)  # type: ignore[arg-type]
            )
        return out


def _result(d: defer.Deferred[bytes]) -> bytes:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box and isinstance(box[0], bytes), box
    return box[0]


def _blocks(report: Message) -> list[Message]:
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    payload = status.get_payload()
    assert isinstance(payload, list)
    return payload


def _rcpts(report: Message) -> list[tuple[str, str, str]]:
    return [
        (str(b["Final-Recipient"]), str(b["Action"]), str(b["Status"])) for b in _blocks(report)[1:]
    ]


def test_delay_dsn_each_interval_for_notify_delay_only(tmp_path: Path) -> None:
    """A 451'd NOTIFY=DELAY recipient gets a delayed DSN per 10s window; others none."""
    world = World(tmp_path, "retry-after 3s\nnotify-of-delay-every 10s\nbounce-after 1h")
    world.send(
        Recipient("soft1@dst.test", notify="DELAY"),
        Recipient("soft2@dst.test"),
        Recipient("soft3@dst.test", notify="NEVER"),
        Recipient("soft4@dst.test", notify="FAILURE,SUCCESS"),
        Recipient("soft5@dst.test", notify="FAILURE,DELAY", orcpt="rfc822;five@dst.test"),
        env_id="ENV-9",
    )
    world.run(9)
    assert world.dsns == []  # not a full interval yet
    world.run(26)  # 35s queued: windows 1, 2 and 3 each had failed attempts
    reports = world.reports()
    assert len(reports) == 3
    for report in reports:
        assert report["To"] == "s@src.test"
        assert report["Subject"] == "Delayed Mail (still being retried)"
        assert _rcpts(report) == [
            ("rfc822; soft1@dst.test", "delayed", "4.2.0"),
            ("rfc822; soft5@dst.test", "delayed", "4.2.0"),
        ]
        per_message, first, second = _blocks(report)
        assert per_message["Original-Envelope-Id"] == "ENV-9"
        assert "451 4.2.0 try later" in str(first["Diagnostic-Code"])
        assert first["Will-Retry-Until"] is not None
        assert second["Original-Recipient"] == "rfc822; five@dst.test"
    assert all(dsn.sender == "" and dsn.is_dsn for dsn in world.dsns)


def test_no_delay_dsn_for_null_sender_dsns_or_suppressed(tmp_path: Path) -> None:
    """Null sender, our own DSNs, suppress-local-dsn and deliver-local-dsn no: none."""
    world = World(
        tmp_path,
        "retry-after 3s\nnotify-of-delay-every 5s",
        extra="<domain quiet.test>\ndeliver-local-dsn no\n</domain>\n",
    )
    delay = Recipient("soft@dst.test", notify="DELAY")
    world.send(delay, sender="")
    world.send(delay, sender="s@src.test", is_dsn=True)
    world.send(delay, sender="s@src.test", suppress_local_dsn=True)
    world.send(delay, sender="s@quiet.test")
    world.send(delay, sender="s@src.test")  # the control: this one is reported
    world.run(12)
    assert [dsn.recipients[0].address for dsn in world.dsns] == ["s@src.test"] * 2
    assert len(world.notices.last) == 1  # only the reported message is remembered


def test_delay_dsn_after_queue_level_failures(tmp_path: Path) -> None:
    """Connection-level failures (tq) count too: the DSN carries that failure's status."""
    world = World(tmp_path, "retry-after 2s\nnotify-of-delay-every 5s")
    world.deliverer.failure = QueueLevelFailure("4.4.1", "connection refused", dsn_mta="mx.dst")
    world.send(Recipient("ok@dst.test", notify="DELAY"))
    world.run(7)
    (report,) = world.reports()
    assert _rcpts(report) == [("rfc822; ok@dst.test", "delayed", "4.4.1")]
    block = _blocks(report)[1]
    assert str(block["Diagnostic-Code"]) == "smtp; connection refused"
    world.deliverer.failure = None
    world.run(4)
    assert len(world.dsns) == 1  # delivered at the next retry: no more notices
    assert world.notices.last == {}  # forgotten once final


def test_dsn_format_and_from_header_follow_the_sender_domain(tmp_path: Path) -> None:
    """dsn-format of the sender's domain; custom-dsn-from-header is the From: field."""
    world = World(
        tmp_path,
        "retry-after 3s",
        extra='custom-dsn-from-header "Bounces <bounces@mta.test>"\n'
        "<domain plain.test>\ndsn-format plain-text\n</domain>\n",
    )
    world.send(Recipient("hard@dst.test"), sender="s@plain.test")
    world.send(Recipient("hard@plain.test"), sender="s@src.test")
    world.run(1)
    plain, standard = world.reports()
    assert plain.get_content_type() == "text/plain"
    assert "Final-Recipient: rfc822; hard@dst.test" in plain.get_content()
    assert standard.get_content_type() == "multipart/report"
    assert plain["From"] == standard["From"] == "Bounces <bounces@mta.test>"


def test_success_dsn_only_for_notify_success(tmp_path: Path) -> None:
    """NOTIFY=SUCCESS gets a relayed report; NOTIFY=NEVER silences a failure."""
    world = World(tmp_path, "retry-after 3s")
    world.send(
        Recipient("ok1@dst.test", notify="SUCCESS"),
        Recipient("ok2@dst.test"),
        Recipient("hard1@dst.test", notify="NEVER"),
        Recipient("hard2@dst.test"),
    )
    world.run(1)
    (report,) = world.reports()
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert sorted(_rcpts(report)) == [
        ("rfc822; hard2@dst.test", "failed", "5.1.1"),
        ("rfc822; ok1@dst.test", "relayed", "2.0.0"),
    ]


def test_restart_does_not_repeat_a_reported_window(tmp_path: Path) -> None:
    """restored(): the last attempt before a restart stands for the last notice."""
    sent: list[list[FailedRecipient]] = []

    async def send(envelope: Envelope, reports: Any, body: bytes | None) -> bool:
        sent.append(list(reports))
        return True

    clock = task.Clock()
    clock.advance(995)
    notices = DelayNotices(send, lambda e: True, clock)
    envelope = Envelope("m", "s@x.test", (Recipient("a@y.test", notify="DELAY"),), 0.0)
    notices.restored(envelope, [(0, 3, 990.0)])  # window 9 (of 100s) tried at 990
    settings = DomainSettings(notify_of_delay_every=100.0)
    outcome = Outcome("t", "m", (0,), 1000.0, envelope, dsn_status="4.2.0", dsn_diag="smtp;451")
    _run(notices.transient(settings, outcome, b""))
    assert sent == []
    clock.advance(100)
    _run(notices.transient(settings, outcome, b""))
    assert [r.action for r in sent[0]] == ["delayed"]


def _run(coro: Any) -> None:
    d = defer.ensureDeferred(coro)
    box: list[Any] = []
    d.addBoth(box.append)
    assert box and box[0] is None, box
