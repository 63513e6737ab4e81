"""Delivery limits of PowerMTA's `<domain>`: disabled source IPs, backoff connections,
connection rate and queue priority.

Scheduler tests run over test_scheduler's `World` (a real spool and journal on a
`task.Clock`) with a deliverer that records each session's source; the end-to-end
tests run the real server against aiosmtpd receivers on 127.0.0.1. Every source in
these tests is 127.0.0.1: two `smtp-source-host` lines of that IP with different
host names are two sources (a source is keyed "IP HOSTNAME").
"""

from __future__ import annotations

import smtplib
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from dns_server import start_dns_server_in_thread
from mx_receiver import Receiver
from reactor_thread import run_in_reactor
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_scheduler import INFO, ScriptedDeliverer, World
from twisted.internet import defer

from mtaserver.commands import CommandError, parse, render_text
from mtaserver.config.load import load_config
from mtaserver.config.model import DomainSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import SessionJob, Transaction, TransactionResult
from mtaserver.smtp.deliverer import SmtpDeliverer
from mtaserver.smtp.mx import MxResolver, RouteError
from mtaserver.smtp.resolver import make_resolver
from mtaserver.smtp_reply import Reply

TWO_SOURCES = (
    "<virtual-mta v1>\n smtp-source-host 127.0.0.1 a.out.test\n"
    " smtp-source-host 127.0.0.1 b.out.test\n</virtual-mta>\n"
)


class SourceDeliverer(ScriptedDeliverer):
    """Records each session's source host name; source `refused` answers 421 TS03."""

    def __init__(self, refused: str = "a.out.test") -> None:
        super().__init__()
        self.refused = refused
        self.sources: list[str] = []

    async def run(self, job: SessionJob) -> None:
        name = job.source.host_name if job.source is not None else "default"
        self.sources.append(name)
        while (tx := await job.next_transaction()) is not None:
            reply = (
                Reply(421, "4.7.0", "TS03 deferred: IP blocked")
                if name == self.refused
                else Reply(250, "2.0.0", "ok")
            )
            job.report(TransactionResult(tx, (reply,) * len(tx.rcpt_indexes), INFO))


def source_world(
    tmp_path: Path, action: str, domain_conf: str = "", vmta: str = TWO_SOURCES
) -> World:
    return World(
        tmp_path,
        f"smtp-pattern-list p\nretry-after 1m\nmax-msg-per-connection 1\n{domain_conf}",
        extra=f"{vmta}<smtp-pattern-list p>\n reply /TS03/ {action}\n</smtp-pattern-list>",
        deliverer=SourceDeliverer(),
    )


def test_disable_source_ip_moves_the_queue_to_its_other_source(tmp_path: Path) -> None:
    """A TS03 reply disables that source for the queue; it is used again after reenable-after."""
    world = source_world(tmp_path, "disable-source-ip,reenable-after=1h")
    deliverer = world.deliverer
    for n in range(4):
        world.submit(f"ok{n}@a.test", vmta="v1")
    # first a (refused: disabled), then only b; without the action a would take turns
    assert deliverer.sources == ["a.out.test"] + ["b.out.test"] * 3
    control = world.scheduler.sources
    assert control.disabled_of("a.test/v1", world.clock.seconds()) == {
        "127.0.0.1 a.out.test": 3600.0
    }
    world.clock.advance(60)  # the refused message's retry
    assert deliverer.sources[-1] == "b.out.test"
    world.clock.advance(3600)
    assert control.disabled_of("a.test/v1", world.clock.seconds()) == {}
    world.submit("ok9@a.test", vmta="v1")
    world.submit("ok10@a.test", vmta="v1")
    assert "a.out.test" in deliverer.sources[-2:]  # enabled again: back in the rotation
    records = [r for r, _, _ in world.outcomes()]
    assert records.count("t") == 2  # a still refuses: disabled again


def test_all_sources_disabled_the_queue_waits_for_reenable(tmp_path: Path) -> None:
    """With its only source disabled a queue opens no connection until reenable-source-ip-after."""
    one = "<virtual-mta v1>\n smtp-source-host 127.0.0.1 a.out.test\n</virtual-mta>\n"
    world = source_world(
        tmp_path, "disable-source-ip", domain_conf="reenable-source-ip-after 30m", vmta=one
    )
    world.submit("ok@a.test", vmta="v1")
    assert world.deliverer.sources == ["a.out.test"]
    world.deliverer.refused = "nobody"
    world.clock.advance(60)  # retry due, but the source is disabled
    world.clock.advance(600)
    assert world.deliverer.sources == ["a.out.test"]
    assert world.scheduler.queues["a.test/v1"].size == 1
    world.clock.advance(30 * 60)  # re-enabled: the queue wakes by itself
    assert world.deliverer.sources == ["a.out.test", "a.out.test"]
    assert [r for r, _, _ in world.outcomes()] == ["t", "d"]


def test_disable_source_ip_without_reenable_lasts_until_enabled(tmp_path: Path) -> None:
    """Without reenable-after or reenable-source-ip-after (never) the source stays disabled."""
    world = source_world(tmp_path, "disable-source-ip")
    world.submit("ok@a.test", vmta="v1")
    world.clock.advance(86400)
    assert world.scheduler.sources.disabled_of("a.test/v1", world.clock.seconds()) == {
        "127.0.0.1 a.out.test": None
    }
    assert world.scheduler.enable_sources("a.test/*") == 1
    assert world.scheduler.sources.disabled_of("a.test/v1", world.clock.seconds()) == {}


def test_disable_source_ip_of_the_default_source(tmp_path: Path) -> None:
    """A vmta without smtp-source-host has one source, 'default', which can be disabled."""
    world = source_world(tmp_path, "disable-source-ip,reenable-after=10m", vmta="")
    world.deliverer.refused = "default"
    world.submit("ok@a.test")
    world.deliverer.refused = "nobody"
    world.clock.advance(60)
    assert world.deliverer.sources == ["default"]
    world.clock.advance(600)
    assert world.deliverer.sources == ["default", "default"]
    assert [r for r, _, _ in world.outcomes()] == ["t", "d"]


def test_backoff_max_smtp_out_is_the_limit_in_backoff(tmp_path: Path) -> None:
    """In backoff a queue runs backoff-max-smtp-out sessions (3 here), not max-smtp-out."""
    world = World(tmp_path, "max-smtp-out 5\nbackoff-max-smtp-out 3")
    world.deliverer.gate = defer.Deferred()
    world.scheduler.pause("*")
    for n in range(10):
        world.submit(f"ok{n}@a.test")
    world.scheduler.set_mode("a.test/*", "backoff")
    world.scheduler.resume("*")
    assert world.deliverer.running == 3
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    assert world.deliverer.max_running == 3
    assert len(world.outcomes()) == 10


def test_backoff_without_backoff_max_smtp_out_uses_one_connection(tmp_path: Path) -> None:
    """Unset, backoff keeps one connection (and normal mode max-smtp-out)."""
    world = World(tmp_path, "max-smtp-out 5")
    world.deliverer.gate = defer.Deferred()
    world.scheduler.set_mode("*", "backoff")
    world.scheduler.pause("*")
    for n in range(4):
        world.submit(f"ok{n}@a.test")
    world.scheduler.set_mode("a.test/*", "backoff")
    world.scheduler.resume("*")
    assert world.deliverer.running == 1


def test_max_connect_rate_spaces_new_connections(tmp_path: Path) -> None:
    """max-connect-rate 2/m: a new connection every 30 seconds at most."""
    world = World(tmp_path, "max-connect-rate 2/m\nmax-msg-per-connection 1")
    for n in range(4):
        world.submit(f"ok{n}@a.test")
    assert len(world.deliverer.sessions) == 1
    world.clock.advance(29)
    assert len(world.deliverer.sessions) == 1
    world.clock.advance(1.001)
    assert len(world.deliverer.sessions) == 2
    world.clock.advance(30)
    assert len(world.deliverer.sessions) == 3
    world.clock.advance(30)
    assert len(world.deliverer.sessions) == 4
    assert len(world.outcomes()) == 4


def test_queue_priority_takes_freed_slots_first(tmp_path: Path) -> None:
    """At total-max-smtp-out, a freed slot goes to the higher queue-priority queue first."""
    world = World(
        tmp_path,
        "max-msg-per-connection 1",
        extra="total-max-smtp-out 1\n<domain high.test>\n queue-priority 90\n</domain>\n"
        "<domain low.test>\n queue-priority 10\n</domain>",
    )
    world.deliverer.gate = defer.Deferred()
    low = [world.submit("ok1@low.test"), world.submit("ok2@low.test")]
    high = world.submit("ok@high.test")
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    order = [session[0][0] for session in world.deliverer.sessions]
    assert order == [low[0], high, low[1]]


def test_equal_priorities_keep_the_freeing_queue_first(tmp_path: Path) -> None:
    """With equal priorities the queue whose session ended goes on (as before)."""
    world = World(tmp_path, "max-msg-per-connection 1", extra="total-max-smtp-out 1")
    world.deliverer.gate = defer.Deferred()
    low = [world.submit("ok1@low.test"), world.submit("ok2@low.test")]
    high = world.submit("ok@high.test")
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    order = [session[0][0] for session in world.deliverer.sessions]
    assert order == [low[0], low[1], high]


# -- the real server ---------------------------------------------------------------------


def send(port: int, *rcpts: str) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail("sender@src.test", list(rcpts), b"Subject: t\r\n\r\nhello\r\n")


def test_e2e_disable_source_ip(tmp_path: Path) -> None:
    """A 451 matching disable-source-ip moves the queue's mail to its other source (EHLO name)."""
    port = free_port()
    with Receiver() as mx:
        conf = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            TWO_SOURCES,
            "<smtp-pattern-list p>\n reply /mailbox busy/ disable-source-ip,reenable-after=1h\n"
            "</smtp-pattern-list>\n",
            domain(
                f"smtp-hosts [127.0.0.1]:{mx.port}\nsmtp-pattern-list p\nretry-after 1h\n"
                "max-msg-per-connection 1"
            ),
            source="default-virtual-mta v1",
        )
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            send(port, "soft@dst.test")  # 451 4.2.0 mailbox busy, from a.out.test
            assert wait_until(
                lambda: any(r["type"] == "t" for r in read_acct(tmp_path / "acct.csv"))
            )
            for n in range(4):
                send(port, f"ok{n}@dst.test")
            assert wait_until(lambda: len(mx.messages) == 4)
    assert {m.helo for m in mx.messages} == {"b.out.test"}
    (deferred,) = [r for r in read_acct(tmp_path / "acct.csv") if r["type"] == "t"]
    assert deferred["rcpt"] == "soft@dst.test"


class CountingMx:
    """A slow SMTP receiver on 127.0.0.1 that counts its simultaneous connections.

    Each reply waits a little, so sessions overlap; RCPT `soft...` gets 451 mailbox busy.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.max_open = 0
        self.delivered = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with outer.lock:
                    outer.open += 1
                    outer.max_open = max(outer.max_open, outer.open)
                released = False
                try:
                    released = outer.serve(self.rfile, self.wfile)
                finally:
                    if not released:
                        with outer.lock:
                            outer.open -= 1

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def serve(self, rfile: Any, wfile: Any) -> bool:
        """One session; True when QUIT already took it off the open count."""

        def reply(line: str) -> None:
            time.sleep(0.3)
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        reply("220 slow.test ESMTP")
        while line := rfile.readline():
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                reply("250 slow.test")
            elif verb == b"RCPT":
                soft = b"<soft" in line.lower()
                reply("451 4.2.0 mailbox busy" if soft else "250 2.1.5 OK")
            elif verb == b"DATA":
                reply("354 go on")
                while rfile.readline() not in (b".\r\n", b""):
                    pass
                with self.lock:
                    self.delivered += 1
                reply("250 2.0.0 OK")
            elif verb == b"QUIT":
                # Off the count before 221: the client may connect again the moment it
                # reads 221, before this thread gets to run again.
                with self.lock:
                    self.open -= 1
                reply("221 bye")
                return True
            else:
                reply("250 OK")
        return False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_e2e_backoff_max_smtp_out(tmp_path: Path) -> None:
    """A queue put in backoff by a pattern opens up to backoff-max-smtp-out (2) connections."""
    port = free_port()
    mx = CountingMx()
    try:
        conf = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            "<smtp-pattern-list p>\n reply /mailbox busy/ mode=backoff\n</smtp-pattern-list>\n",
            domain(
                f"smtp-hosts [127.0.0.1]:{mx.port}\nsmtp-pattern-list p\nretry-after 1h\n"
                "max-smtp-out 10\nbackoff-max-smtp-out 2\nmax-msg-per-connection 1\n"
                "use-starttls no"
            ),
        )
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            send(port, "soft@dst.test")  # the queue enters backoff
            acct = tmp_path / "acct.csv"
            assert wait_until(lambda: any(r["type"] == "t" for r in read_acct(acct)))
            assert wait_until(lambda: mx.open == 0)  # the deferred session has ended
            with mx.lock:
                mx.max_open = 0
            with smtplib.SMTP("127.0.0.1", port) as client:  # eight messages at once
                for n in range(8):
                    client.sendmail(
                        "sender@src.test", [f"ok{n}@dst.test"], b"Subject: t\r\n\r\nx\r\n"
                    )
            assert wait_until(lambda: mx.delivered == 8, timeout=90)
    finally:
        mx.stop()
    assert mx.max_open == 2  # in normal mode up to 10; in backoff without the directive 1


# -- bounce-upon-no-mx -------------------------------------------------------------------

NO_MX_ZONE: dict[str, Any] = {
    "nomx.test": [("A", "192.0.2.7")],
    "withmx.test": [("MX", 10, "mx.withmx.test")],
    "mx.withmx.test": [("A", "192.0.2.8")],
}


@pytest.fixture(scope="module")
def no_mx_dns() -> Iterator[int]:
    port, stop = start_dns_server_in_thread(NO_MX_ZONE)
    yield port
    stop()


def route(port: int, name: str, settings: DomainSettings) -> Any:
    resolver = run_in_reactor(make_resolver, (HostPort("127.0.0.1", port),), None, (1, 2))
    return run_in_reactor(MxResolver(resolver).route, name, settings)


def test_bounce_upon_no_mx_true_bounces_a_domain_without_mx(no_mx_dns: int) -> None:
    """bounce-upon-no-mx true: no MX is a permanent 5.4.4, not the A record fallback."""
    settings = DomainSettings(bounce_upon_no_mx=True, mx_allow_private_addresses=True)
    with pytest.raises(RouteError) as caught:
        route(no_mx_dns, "nomx.test", settings)
    assert (caught.value.permanent, caught.value.status, caught.value.bounce_cat) == (
        True,
        "5.4.4",
        "bad-domain",
    )
    assert "bounce-upon-no-mx" in caught.value.diag
    (level,) = route(no_mx_dns, "withmx.test", settings)  # a domain with MX routes as ever
    assert [t.ip for t in level] == ["192.0.2.8"]
    default = DomainSettings(mx_allow_private_addresses=True)
    (level,) = route(no_mx_dns, "nomx.test", default)  # false: the A record is the MX
    assert [t.ip for t in level] == ["192.0.2.7"]


def test_bounce_upon_no_mx_values_load(tmp_path: Path) -> None:
    """bounce-upon-no-mx true and 30m are settings, loaded without a warning."""
    conf = tmp_path / "m.conf"
    conf.write_text("<domain a.test>\n bounce-upon-no-mx true\n</domain>\n")
    config = load_config(str(conf))
    assert config.domain_settings("a.test", "{default}", None).bounce_upon_no_mx is True
    conf.write_text("<domain a.test>\n bounce-upon-no-mx 30m\n</domain>\n")
    config = load_config(str(conf))
    assert config.domain_settings("a.test", "{default}", None).bounce_upon_no_mx == 1800.0
    assert config.warnings == ()


# -- commands: set priority, show disabled sources, enable source -----------------------


def test_set_priority_command_reorders_freed_slots(tmp_path: Path) -> None:
    """set priority --queue=high.test 90 gives that queue freed slots first (until restart)."""
    world = World(tmp_path, "max-msg-per-connection 1", extra="total-max-smtp-out 1")
    command = parse("set priority --queue=high.test 90")
    assert command.level == "admin"
    assert world.scheduler.control.set_priority(command.options["queue"], 90) == []
    world.deliverer.gate = defer.Deferred()
    low = [world.submit("ok1@low.test"), world.submit("ok2@low.test")]
    high = world.submit("ok@high.test")
    assert world.scheduler.control.set_priority("high.test", int(command.args[0])) == [
        "high.test/{default}"
    ]
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    order = [session[0][0] for session in world.deliverer.sessions]
    assert order == [low[0], high, low[1]]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("set priority --queue=a.test 101", "the priority is 0 to 100"),
        ("set priority --queue=a.test high", "the priority is 0 to 100"),
        ("set priority --bogus=1 50", "unknown option --bogus"),
        ("enable source", "missing argument"),
    ],
)
def test_bad_priority_and_source_commands(line: str, expected: str) -> None:
    """Out-of-range priorities and missing arguments are refused before anything runs."""
    with pytest.raises(CommandError) as caught:
        parse(line)
    assert expected in caught.value.message


def test_show_disabled_sources_and_enable_source(tmp_path: Path) -> None:
    """show disabled sources lists queue, source and time left; enable source clears them."""
    world = source_world(tmp_path, "disable-source-ip,reenable-after=1h")
    world.submit("ok@a.test", vmta="v1")
    world.clock.advance(600)
    assert parse("show disabled sources a.test/*").level == "monitor"
    control = world.scheduler.control
    (row,) = control.disabled_sources("a.test/*")
    assert (row.queue, row.source, row.reenable_in) == ("a.test/v1", "127.0.0.1 a.out.test", 3000.0)
    text = render_text("show disabled sources", [attrs.asdict(row)])
    assert "127.0.0.1 a.out.test" in text and "3000s" in text
    assert control.disabled_sources("b.test") == []
    assert parse("enable source a.test/v1").level == "admin"
    assert control.enable_sources("a.test/v1") == 1
    assert control.disabled_sources() == []


# -- source-ip-max-smtp-out, source-ip-max-connect-rate ---------------------------------

TWO_VMTAS = (
    "<virtual-mta v1>\n smtp-source-host 127.0.0.1 a.out.test\n</virtual-mta>\n"
    "<virtual-mta v2>\n smtp-source-host 127.0.0.1 b.out.test\n</virtual-mta>\n"
)


def test_source_ip_max_smtp_out_counts_the_domains_queues_together(tmp_path: Path) -> None:
    """source-ip-max-smtp-out 127.0.0.1 3: three sessions from that IP over a.test/v1 and /v2."""
    world = World(
        tmp_path, "max-smtp-out 5\nsource-ip-max-smtp-out 127.0.0.1/32 3", extra=TWO_VMTAS
    )
    world.deliverer.gate = defer.Deferred()
    for n in range(4):
        world.submit(f"ok{n}@a.test", vmta="v1")
        world.submit(f"ok{n}@a.test", vmta="v2")
    world.submit("ok@b.test", vmta="v1")  # another domain: its own count
    assert world.deliverer.running == 4
    active = {name: q.active for name, q in world.scheduler.queues.items()}
    assert active["a.test/v1"] + active["a.test/v2"] == 3
    gate, world.deliverer.gate = world.deliverer.gate, None
    gate.callback(None)
    assert len(world.outcomes()) == 9
    world.clock.advance(world.scheduler.idle_hold)  # idle sessions close
    assert world.scheduler.sources.active == {}


def test_source_ip_max_smtp_out_of_another_network_does_not_apply(tmp_path: Path) -> None:
    """A CIDR that does not hold the source IP leaves max-smtp-out the only limit."""
    world = World(tmp_path, "max-smtp-out 5\nsource-ip-max-smtp-out 10.0.0.0/8 1", extra=TWO_VMTAS)
    world.deliverer.gate = defer.Deferred()
    for n in range(6):
        world.submit(f"ok{n}@a.test", vmta="v1")
    assert world.deliverer.running == 5


def test_source_ip_max_connect_rate_spaces_connections_per_ip(tmp_path: Path) -> None:
    """source-ip-max-connect-rate 127.0.0.1 1/m: one new connection a minute from that IP."""
    world = World(
        tmp_path,
        "max-msg-per-connection 1\nsource-ip-max-connect-rate 127.0.0.1 1/m",
        extra=TWO_VMTAS,
    )
    world.submit("ok1@a.test", vmta="v1")
    world.submit("ok2@a.test", vmta="v2")  # same IP, other queue: waits its turn
    assert len(world.deliverer.sessions) == 1
    world.clock.advance(59)
    assert len(world.deliverer.sessions) == 1
    world.clock.advance(1.001)
    assert len(world.deliverer.sessions) == 2
    assert len(world.outcomes()) == 2


NO_MX_LOOPBACK = {"nomx.test": [("A", "127.0.0.1")]}


def no_mx_session(tmp_path: Path, mx_port: int, ages: list[float]) -> list[TransactionResult]:
    """One SmtpDeliverer session for nomx.test (A 127.0.0.1, no MX) with messages of `ages`."""
    port, stop = start_dns_server_in_thread(NO_MX_LOOPBACK)
    conf = tmp_path / "m.conf"
    conf.write_text("host-name mta.test\n")
    holder = ConfigHolder(load_config(str(conf)))
    settings = DomainSettings(
        bounce_upon_no_mx=1800.0,
        mx_allow_private_addresses=True,
        default_smtp_port=mx_port,
        use_starttls=False,
    )

    async def session() -> list[TransactionResult]:
        from twisted.internet import reactor

        resolver = make_resolver((HostPort("127.0.0.1", port),), None, (1, 2))
        deliverer = SmtpDeliverer(holder, MxResolver(resolver), reactor)
        now = reactor.seconds()  # type: ignore[attr-defined]
        pending = [
            Transaction(
                Envelope(f"m{n}", "s@src.test", (Recipient(f"ok{n}@nomx.test"),), now - age),
                (0,),
                b"Subject: t\r\n\r\nhello\r\n",
            )
            for n, age in enumerate(ages)
        ]
        reports: list[TransactionResult] = []

        async def next_transaction() -> Transaction | None:
            return pending.pop(0) if pending else None

        job = SessionJob(
            "nomx.test/{default}", "nomx.test", "{default}", None, settings,
            next_transaction, reports.append,
        )  # fmt: skip
        await deliverer.run(job)
        return reports

    try:
        return run_in_reactor(session, timeout=30)  # type: ignore[no-any-return]
    finally:
        stop()


def test_bounce_upon_no_mx_interval_bounces_only_old_mail(tmp_path: Path) -> None:
    """bounce-upon-no-mx 30m: mail queued 1h bounces 5.4.4; younger mail goes to the A record."""
    with Receiver() as mx:
        reports = no_mx_session(tmp_path, mx.port, [3600.0, 60.0, 7200.0])
    codes = {r.transaction.envelope.msg_id: r.replies[0] for r in reports}
    assert codes["m0"].status == "5.4.4" and "bounce-upon-no-mx" in codes["m0"].text
    assert codes["m2"].status == "5.4.4"
    assert codes["m1"].code == 250
    assert [m.rcpt_tos for m in mx.messages] == [["ok1@nomx.test"]]


def test_bounce_upon_no_mx_interval_all_old_opens_no_connection(tmp_path: Path) -> None:
    """When every message is old enough, they bounce and no connection is opened."""
    with Receiver() as mx:
        reports = no_mx_session(tmp_path, mx.port, [3600.0, 1800.0])
        assert mx.connections == []
    assert [r.replies[0].status for r in reports] == ["5.4.4", "5.4.4"]


def test_source_ip_max_msg_rate_spaces_messages_per_ip(tmp_path: Path) -> None:
    """source-ip-max-msg-rate 127.0.0.1 1/m: one message a minute from that IP, over queues."""
    world = World(tmp_path, "source-ip-max-msg-rate 127.0.0.0/8 1/m", extra=TWO_VMTAS)
    world.submit("ok1@a.test", vmta="v1")
    world.submit("ok2@a.test", vmta="v1")
    world.submit("ok3@a.test", vmta="v2")
    assert len(world.outcomes()) == 1
    world.clock.advance(30)
    assert len(world.outcomes()) == 1
    world.clock.advance(30.001)
    assert len(world.outcomes()) == 2
    world.clock.advance(60.001)
    assert len(world.outcomes()) == 3
    world.submit("ok@b.test", vmta="v1")  # another domain has its own count
    assert len(world.outcomes()) == 4


def test_backoff_max_connect_rate_applies_in_backoff(tmp_path: Path) -> None:
    """In backoff a queue opens connections at backoff-max-connect-rate (1/m), not 60/m."""
    world = World(
        tmp_path,
        "max-connect-rate 60/m\nbackoff-max-connect-rate 1/m\nmax-msg-per-connection 1\n"
        "backoff-max-smtp-out 5",
    )
    world.scheduler.pause("*")
    for n in range(3):
        world.submit(f"ok{n}@a.test")
    world.scheduler.set_mode("a.test/*", "backoff")
    world.scheduler.resume("*")
    assert len(world.deliverer.sessions) == 1
    world.clock.advance(30)
    assert len(world.deliverer.sessions) == 1  # 60/m would have opened more by now
    world.clock.advance(30.001)
    assert len(world.deliverer.sessions) == 2
