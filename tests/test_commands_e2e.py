"""Every operator command against the real server: queues, lists, deletions, priorities,
sources, settings, DNS, policy checks and traces, through `POST /command`.

One server (module scope) with a loopback receiver, a loopback DNS server
(`name-server`), a vmta with a source host, a named source on a second listener and a
pattern list; each test uses its own destination domains so they do not see each
other's queues. Hostile and bad arguments get a 400 naming the problem, and nothing
changes.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import start_dns_server_in_thread
from mgmt_client import MgmtServer, reply_data, wait_until
from mx_receiver import Receiver
from server_process import free_port, read_acct, wait_for_port

ZONE = {
    "res.test": [("MX", 10, "mx1.res.test"), ("MX", 20, "mx2.res.test")],
    "mx1.res.test": [("A", "192.0.2.1")],
    "mx2.res.test": [("A", "192.0.2.2"), ("AAAA", "2001:db8::2")],
    "nomx.test": [("A", "192.0.2.9")],
}


class World:
    def __init__(self, server: MgmtServer, receiver: Receiver, smtp2: int, closed: int) -> None:
        self.server = server
        self.receiver = receiver
        self.smtp2 = smtp2
        self.closed = closed

    def ok(self, line: str) -> Any:
        status, reply = self.server.command(line)
        assert status == 200, reply
        assert reply["status"] == "success"
        return reply["data"]

    def slow(self, line: str, timeout: float = 200) -> Any:
        """A command that may take long (`trace`): a client that waits `timeout` seconds."""
        fields = {"command": line, "format": "json"}
        return reply_data(self.server.mgmt, "POST", "/command", fields, timeout=timeout)

    def message(self, line: str) -> str:
        status, reply = self.server.command(line)
        assert status == 200, reply
        return str(reply["message"])

    def error(self, line: str) -> str:
        status, reply = self.server.command(line)
        assert status == 400, reply
        assert reply["status"] == "error"
        return str(reply["message"])

    def send(
        self, rcpts: list[str], sender: str = "s@src.test", headers: str = "", port: int = 0
    ) -> None:
        with smtplib.SMTP("127.0.0.1", port or self.server.smtp, timeout=30) as client:
            client.sendmail(sender, rcpts, f"Subject: t\r\n{headers}\r\nbody\r\n".encode())

    def acct(self) -> list[dict[str, str]]:
        path = self.server.directory / "acct.csv"
        return read_acct(path) if path.exists() else []

    def arrived(self, rcpt: str) -> bool:
        return any(rcpt in m.rcpt_tos for m in self.receiver.messages)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("commands")
    dns_port, stop_dns = start_dns_server_in_thread(ZONE)
    closed = free_port()
    smtp2 = free_port()
    with Receiver() as receiver:
        server = MgmtServer(directory, receiver.port, access="127.0.0.1/32 monitor")
        (directory / "conf.d" / "commands.conf").write_text(
            f"""
name-server 127.0.0.1:{dns_port}
smtp-listener 127.0.0.1:{smtp2} source=vsrc
<virtual-mta v1>
    smtp-source-host 127.0.0.1 v1.mta.test
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta v1
</virtual-mta-pool>
<pattern-list pl>
    mail-from /@special\\.test$/ virtual-mta=v1
</pattern-list>
<source vsrc>
    always-allow-relaying yes
    default-virtual-mta v1
    process-x-job yes
</source>
<source special>
    pattern-list pl
</source>
<domain prio.test>
    max-smtp-out 1
</domain>
<domain err.test>
    smtp-hosts [127.0.0.1]:{closed}
    retry-after 1h
</domain>
"""
        )
        (directory / "conf.d" / "trace.conf").write_text(
            f"<domain trace.test>\n smtp-hosts [127.0.0.1]:{closed}\n retry-after 1h\n</domain>\n"
        )
        server.start()
        assert wait_for_port(smtp2)
        try:
            yield World(server, receiver, smtp2, closed)
        finally:
            server.stop()
            stop_dns()


# -- show queues / topqueues / domains / topdomains / vmtas / jobs ---------------------


def test_show_topqueues_sorts_by_recipients_and_filters(world: World) -> None:
    """topqueues: most recipients first; --maxitems, --paused, --mode and a pattern select."""
    world.ok("pause queue *.top.test")
    world.send(["a@one.top.test"])
    world.send(["a@three.top.test", "b@three.top.test", "c@three.top.test"])
    world.send(["a@two.top.test", "b@two.top.test"])
    assert wait_until(lambda: len(world.ok("show queues *.top.test")) == 3)
    rows = world.ok("show topqueues *.top.test")
    assert [(r["name"], r["recipients"]) for r in rows] == [
        ("three.top.test/{default}", 3),
        ("two.top.test/{default}", 2),
        ("one.top.test/{default}", 1),
    ]
    assert [r["name"] for r in world.ok("show topqueues --maxitems=1 *.top.test")] == [
        "three.top.test/{default}"
    ]
    assert world.ok("show queues --paused=no *.top.test") == []
    assert len(world.ok("show queues --paused *.top.test")) == 3
    world.ok("set queue --mode=backoff two.top.test")
    assert [r["name"] for r in world.ok("show queues --mode=backoff *.top.test")] == [
        "two.top.test/{default}"
    ]
    names = [r["name"] for r in world.ok("show queues --sort=rcpt --connected=no *.top.test")]
    assert names[0] == "three.top.test/{default}"
    assert world.message("show topqueues --maxitems=2 *.top.test") == "2 of 3 queues shown."


def test_show_topdomains_and_domains_options(world: World) -> None:
    """topdomains rolls queues up by domain, most recipients first; --vmta selects a vmta."""
    world.ok("pause queue *.dom.test")
    world.send(["a@small.dom.test"])
    world.send(["a@big.dom.test", "b@big.dom.test"])
    world.send(["c@big.dom.test"], port=world.smtp2)  # vsrc: vmta v1
    assert wait_until(lambda: len(world.ok("show queues *.dom.test")) == 3)
    rows = world.ok("show topdomains --maxitems=1000")
    mine = [(r["domain"], r["recipients"]) for r in rows if r["domain"].endswith(".dom.test")]
    assert mine == [("big.dom.test", 3), ("small.dom.test", 1)]
    assert [r["recipients"] for r in world.ok("show domains --vmta=v1 big.dom.test")] == [1]
    assert world.ok("show domains --vmta=nosuch") == []
    assert [r["domain"] for r in world.ok("show domains *.dom.test")] == [
        "big.dom.test",
        "small.dom.test",
    ]


def test_errors_option_shows_queues_with_a_recorded_error(world: World) -> None:
    """--errors: only queues (and domains) whose last attempt recorded an error, in full."""
    world.send(["a@err.test"])
    assert wait_until(lambda: world.ok("show queues --errors err.test"))
    (row,) = world.ok("show queues --errors err.test")
    assert "4.4.1" in row["lastError"] and str(world.closed) in row["lastError"]
    assert wait_until(lambda: world.ok("show queues --errors err.test")[0]["errors"])
    (row,) = world.ok("show queues --errors err.test")
    assert any(str(world.closed) in error["text"] for error in row["errors"])
    domains = {d["domain"]: d for d in world.ok("show topdomains --errors --maxitems=1000")}
    assert domains["err.test"]["lastError"] == row["lastError"]
    assert all(d["lastError"] for d in domains.values())
    status, reply = world.server.call(
        "POST", "/command", {"command": "show queues --errors err.test", "format": "json-text"},
        key="s3cret-key",
    )  # fmt: skip
    assert status == 200 and row["lastError"] in reply["data"]


def test_show_vmtas_and_jobs_with_maxitems(world: World) -> None:
    """show vmtas lists configured vmtas with their share; show jobs sizes each job."""
    world.ok("pause queue *.jobs.test")
    world.send(["a@x.jobs.test", "b@x.jobs.test"], headers="X-Job: job-a\r\n")
    world.send(["c@x.jobs.test"], headers="X-Job: job-b\r\n")
    assert wait_until(lambda: len(world.ok("show jobs")) >= 2)
    jobs = {j["job"]: j for j in world.ok("show jobs")}
    assert jobs["job-a"]["recipients"] == 2 and jobs["job-a"]["kb"] > 0
    assert len(world.ok("show jobs --maxitems=1")) == 1
    vmtas = {v["vmta"]: v for v in world.ok("show vmtas")}
    assert "v1" in vmtas and "{default}" in vmtas
    assert sum(v["pct"] for v in vmtas.values()) in range(98, 103)
    assert len(world.ok("show vmtas --maxitems=1")) == 1


# -- list -----------------------------------------------------------------------------


def test_list_selects_by_rcpt_orig_job_and_age(world: World) -> None:
    """list: --rcpt, --orig, --jobId, --older-than and --maxitems select waiting recipients."""
    world.ok("pause queue list.test")
    world.send(["a@list.test", "b@list.test"], sender="one@s.test", headers="X-Job: lj1\r\n")
    world.send(["c@list.test"], sender="two@s.test")
    assert wait_until(lambda: world.ok("list --queue=list.test")["total"] == 3)
    assert [r["rcpt"] for r in world.ok("list --queue=list.test --rcpt=B@LIST.test")[
        "recipients"]] == ["b@list.test"]  # fmt: skip
    rows = world.ok("list --queue=list.test --orig=two@s.test")["recipients"]
    assert [(r["rcpt"], r["orig"]) for r in rows] == [("c@list.test", "two@s.test")]
    assert world.ok("list --jobId=lj1")["total"] == 2
    assert world.ok("list --queue=list.test --older-than=1h")["total"] == 0
    time.sleep(1.1)
    assert world.ok("list --queue=list.test --older-than=1s")["total"] == 3
    data = world.ok("list --queue=list.test --maxitems=1")
    assert (len(data["recipients"]), data["total"], data["truncated"]) == (1, 3, True)
    status, reply = world.server.call(
        "POST", "/command",
        {"command": "list --queue=list.test --priority --schedule", "format": "json-text"},
        key="s3cret-key",
    )  # fmt: skip
    header = reply["data"].splitlines()[0].split()
    assert header[:3] == ["queue", "rcpt", "orig"] and "priority" in header and "state" in header


# -- delete ---------------------------------------------------------------------------


def test_delete_by_rcpt_writes_b_records_and_no_dsn_unless_asked(world: World) -> None:
    """delete --rcpt bounces only that recipient (b, 'deleted by administrator', no DSN);
    --dsn also sends the sender a DSN; the others keep waiting."""
    world.ok("pause queue del.test")
    world.send(["keep@del.test", "gone@del.test"], sender="quiet@nodsn.test")
    world.send(["told@del.test"], sender="loud@dsn.test")
    assert wait_until(lambda: world.ok("list --queue=del.test")["total"] == 3)
    assert world.ok("delete --queue=del.test --rcpt=gone@del.test") == {"deleted": 1}
    assert world.ok("delete --queue=del.test --orig=loud@dsn.test --dsn") == {"deleted": 1}
    assert [r["rcpt"] for r in world.ok("list --queue=del.test")["recipients"]] == [
        "keep@del.test"
    ]
    assert wait_until(lambda: world.arrived("loud@dsn.test"))

    def bounced_now() -> dict[str, dict[str, str]]:
        return {r["rcpt"]: r for r in world.acct() if r["type"] == "b"}

    assert wait_until(lambda: {"gone@del.test", "told@del.test"} <= set(bounced_now()))
    bounced = bounced_now()
    for rcpt in ("gone@del.test", "told@del.test"):
        assert "deleted by administrator" in bounced[rcpt]["dsnDiag"]
        assert bounced[rcpt]["dsnStatus"].startswith("5.0.0")
        assert bounced[rcpt]["bounceCat"] == "other"
    assert not world.arrived("quiet@nodsn.test")


def test_delete_by_job_and_age(world: World) -> None:
    """delete --jobId needs no --queue; --older-than spares younger mail."""
    world.ok("pause queue deljob.test")
    world.send(["a@deljob.test"], headers="X-Job: dj1\r\n")
    world.send(["b@deljob.test"], headers="X-Job: dj2\r\n")
    assert wait_until(lambda: world.ok("list --queue=deljob.test")["total"] == 2)
    assert world.ok("delete --jobId=dj1") == {"deleted": 1}
    assert world.ok("delete --queue=deljob.test --older-than=1h") == {"deleted": 0}
    assert world.ok("list --queue=deljob.test")["total"] == 1


# -- set priority ---------------------------------------------------------------------


def test_set_priority_orders_a_queue(world: World) -> None:
    """A message given priority 100 is delivered before those queued ahead of it."""
    world.ok("pause queue prio.test")
    for name in ("p1", "p2", "p3"):
        world.send([f"{name}@prio.test"])
    assert wait_until(lambda: world.ok("list --queue=prio.test")["total"] == 3)
    assert world.ok("set priority --rcpt=p3@prio.test 100")["messages"] == 1
    assert world.ok("set priority --queue=prio.test --orig=nobody@x.test 1")["messages"] == 0
    rows = {r["rcpt"]: r["priority"] for r in world.ok("list --queue=prio.test")["recipients"]}
    assert rows == {"p1@prio.test": None, "p2@prio.test": None, "p3@prio.test": 100}
    world.ok("resume queue prio.test")
    assert wait_until(lambda: all(world.arrived(f"{n}@prio.test") for n in ("p1", "p2", "p3")))
    order = [m.rcpt_tos[0] for m in world.receiver.messages if m.rcpt_tos[0].endswith("@prio.test")]
    assert order[0] == "p3@prio.test"


def test_set_priority_of_a_queue_alone(world: World) -> None:
    """set priority --queue=Q N with no other selection also sets the queue's priority."""
    world.send(["b@err.test"])  # the queue exists whichever tests ran before in this process
    assert wait_until(lambda: world.ok("show queues --errors err.test"))
    data = world.ok("set priority --queue=err.test 80")
    assert data["queues"] == ["err.test/{default}"] and data["priority"] == 80


# -- sources --------------------------------------------------------------------------


def test_disable_and_enable_a_source(world: World) -> None:
    """disable source IP Q lists it under show disabled sources until enable source IP Q."""
    world.ok("pause queue src.test")
    world.send(["a@src.test"], port=world.smtp2)
    assert wait_until(lambda: world.ok("show queues src.test/v1"))
    data = world.ok("disable source --reenable-after=1h 127.0.0.1 src.test/v1")
    assert data == {"disabled": ["src.test/v1: 127.0.0.1 v1.mta.test"]}
    (row,) = world.ok("show disabled sources src.test/v1")
    assert row["source"] == "127.0.0.1 v1.mta.test" and 3000 < row["reenable_in"] <= 3600
    assert "is not a source" in world.error("disable source 10.9.9.9 src.test/v1")
    assert "no queue matches" in world.error("disable source 127.0.0.1 nosuch.test")
    assert world.ok("enable source 10.9.9.9 src.test/v1") == {"enabled": 0}
    assert world.ok("enable source 127.0.0.1 src.test/v1") == {"enabled": 1}
    assert world.ok("show disabled sources src.test/v1") == []
    # trace --source-ip names one of the queue's sources
    world.ok("resume queue src.test")
    assert wait_until(lambda: world.arrived("a@src.test"))
    assert "is not a source" in world.error("trace --source-ip=10.9.9.9 src.test/v1")
    assert "no delivery session" in world.error("trace --timeout=1 --source-ip=127.0.0.1 src.test")


# -- schedule, reset ------------------------------------------------------------------


def test_schedule_with_retry_recipients(world: World) -> None:
    """schedule --retry-recipients is accepted and schedules the matching queues."""
    world.send(["a@err.test"])
    assert wait_until(lambda: world.ok("show queues --errors err.test"))
    assert world.ok("schedule --retry-recipients err.test") == {"queues": ["err.test/{default}"]}


def test_reset_status_is_reset_counters(world: World) -> None:
    """reset status zeroes the counters, as reset counters does."""
    world.ok("pause queue reset.top.test")  # so that it stays listed
    world.send(["a@reset.top.test"])
    # a reception worker's 250 comes before the master journals, counts and queues it
    assert wait_until(lambda: world.ok("list --queue=reset.top.test")["total"] == 1)
    assert wait_until(
        lambda: world.ok("show status")["traffic"]["in"]["total"]["recipients"] > 0
    )
    assert world.message("reset status") == "Traffic counters reset."
    traffic = world.ok("show status")["traffic"]
    assert traffic["in"]["total"]["recipients"] == 0
    assert traffic["out"]["total"]["recipients"] == 0


# -- settings and version -------------------------------------------------------------


def test_show_settings_of_a_queue_and_a_vmta(world: World) -> None:
    """show settings D/V gives the queue's resolved settings; vmta-settings its sources."""
    data = world.ok("show settings prio.test/v1")
    assert data["queue"] == "prio.test/v1"
    assert data["settings"]["max-smtp-out"] == "1"
    assert data["settings"]["retry-after"] == "1"
    assert data["vmta"]["smtp-source-host"] == ["127.0.0.1 v1.mta.test"]
    assert world.ok("show settings hold.test")["settings"]["max-smtp-out"] == "2"
    assert "no virtual MTA 'nosuch'" in world.error("show settings a.test/nosuch")
    assert "not a pattern" in world.error("show settings *.test")
    vmta = world.ok("show vmta-settings v1")
    assert vmta["pools"] == ["pool1"] and vmta["settings"]["host-name"] == "mta.test"
    assert "no virtual MTA" in world.error("show vmta-settings nosuch")
    assert "global" in world.ok("show settings")


def test_show_version_details(world: World) -> None:
    """show version: product, Python, Twisted, OS and CPU; show license says the same."""
    data = world.ok("show version")
    assert data["product"]["name"] == "mtaserver" and data["cpu"]["count"] >= 1
    assert data["os"]["name"] and data["twisted"]
    assert world.message("show version").startswith("mtaserver v")
    assert "license" in world.ok("show license")


# -- DNS ------------------------------------------------------------------------------


def test_resolve_shows_mx_hosts_addresses_and_the_route(world: World) -> None:
    """resolve: the MX hosts by preference with their addresses, and the delivery route."""
    data = world.ok("resolve res.test")
    assert data["status"] == "StatusOk"
    assert [(h["pref"], h["name"], h["ip"]) for h in data["hosts"]] == [
        (10, "mx1.res.test", ["192.0.2.1"]),
        (20, "mx2.res.test", ["192.0.2.2", "2001:db8::2"]),
    ]
    # <domain *> routes everything to smtp-hosts: the route says so
    assert [t["ip"] for t in data["route"]] == ["127.0.0.1"]
    (implicit,) = world.ok("resolve nomx.test")["hosts"]
    assert implicit["implicit"] and implicit["ip"] == ["192.0.2.9"]
    missing = world.ok("resolve nosuch.test")
    assert missing["status"].startswith("5.1.2") and missing["hosts"] == []


def test_clear_dnscache_for_a_domain_and_all(world: World) -> None:
    """clear dnscache DOMAIN forgets that domain's cached answers; * forgets everything."""
    world.ok("resolve res.test")
    data = world.ok("clear dnscache res.test")
    assert data["cleared"] >= 2  # MX of res.test, A of its hosts
    assert world.ok("clear dnscache res.test")["cleared"] == 0
    assert world.message("clear dnscache *") == "DNS cache cleared."


# -- policy checks --------------------------------------------------------------------


def test_check_mfrom_and_rcpt(world: World) -> None:
    """check: the source a client gets, the reply, relaying, the vmta and the queue."""
    data = world.ok("check mfrom a@b.test 127.0.0.1")
    assert (data["source"], data["reply"], data["virtualMta"]) == (
        "127.0.0.1/32", "250 2.1.0 Sender ok", "")  # fmt: skip
    special = world.ok("check mfrom --source=special who@special.test 127.0.0.1")
    assert (special["virtualMta"], special["virtualMtaFrom"]) == ("v1", "pattern-list pl")
    denied = world.ok("check rcpt x@far.test 10.9.9.9")
    assert denied["reply"].startswith("550") and denied["relaying"] == "denied"
    routed = world.ok("check rcpt --source=vsrc --from=s@a.test x@Far.test 10.9.9.9")
    assert (routed["reply"], routed["queue"]) == ("250 2.1.5 Recipient ok", "far.test/v1")
    world.ok("suppression add blocked@far.test")
    blocked = world.ok("check rcpt blocked@far.test 127.0.0.1")
    assert blocked["reply"].startswith("550") and blocked["suppressed"]["scope"] == "global"
    assert "no <source nosuch>" in world.error("check rcpt --source=nosuch a@b.test 127.0.0.1")


# -- trace ----------------------------------------------------------------------------


def test_trace_returns_the_transcript_of_the_next_session(world: World) -> None:
    """trace schedules the queue and returns its session's transcript when it ends."""
    world.send(["t1@trace.test"], sender="tracer@src.test")
    world.send(["t2@trace.test"], sender="tracer@src.test", port=world.smtp2)  # vmta v1
    assert wait_until(lambda: len(world.ok("show queues --errors trace.test")) == 2)
    conf = world.server.directory / "conf.d" / "trace.conf"
    conf.write_text(
        f"<domain trace.test>\n smtp-hosts [127.0.0.1]:{world.receiver.port}\n"
        " retry-after 1h\n</domain>\n"
    )
    world.ok("reload")
    data = world.slow("trace --timeout=180 trace.test/{default}")
    lines = [line.split(" ", 2)[2] for line in data["transcript"]]
    assert lines[0] == "starting trace.test/{default}" and lines[-1] == "done trace.test/{default}"
    assert any(line.startswith(">>> 220") for line in lines)
    assert "<<< MAIL FROM:<tracer@src.test>" in " ".join(lines)
    assert any(line.startswith("delivered ") and "t1@trace.test" in line for line in lines)
    assert world.arrived("t1@trace.test") and not world.arrived("t2@trace.test")
    # show queues: PowerMTA's recipient events (the acct records' d/b/t), unless asked not
    assert wait_until(lambda: world.ok("show queues trace.test/{default}")[0]["rcptEvents"])
    (row,) = world.ok("show queues trace.test/{default}")
    assert [(e["type"], e["rcpt"]) for e in row["rcptEvents"]][-1] == ("delivered", "t1@trace.test")
    assert "rcptEvents" not in world.ok("show queues --no-rcpt-events trace.test/{default}")[0]
    # --source-ip: the session of v1's queue from that source (EHLO with its name)
    data = world.slow("trace --timeout=180 --source-ip=127.0.0.1 trace.test/v1")
    lines = [line.split(" ", 2)[2] for line in data["transcript"]]
    assert "source 127.0.0.1 v1.mta.test" in lines and "<<< EHLO v1.mta.test" in lines
    assert any(line.startswith("delivered ") and "t2@trace.test" in line for line in lines)
    # nothing left to deliver: no session starts, and the trace says so
    assert "no delivery session" in world.error("trace --timeout=1 trace.test")
    assert "no queue matches" in world.error("trace nosuch.test")
    assert "not supported" in world.error("trace --to-log trace.test")
    world.ok("pause queue trace.test")
    assert "is paused" in world.error("trace trace.test")
    world.ok("resume queue trace.test")


def test_rotate_acct_one_file(world: World) -> None:
    """rotate acct FILE rotates that acct file (by name or path); another name is an error."""
    assert world.ok("rotate acct acct.csv") == {"rotated": 1}
    assert world.ok(f"rotate acct {world.server.directory}/acct.csv") == {"rotated": 1}
    assert "no acct file 'other.csv'" in world.error("rotate acct other.csv")


# -- bad and hostile input ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("delete", "give --queue or --jobId"),
        ("delete --queue=* --no-accounting", "--no-accounting is not supported"),
        ("delete --queue=a.test --older-than=soon", "--older-than: expected an interval"),
        ("delete --queue=a.test --frobnicate", "unknown option --frobnicate"),
        ("delete --rcpt='a@b.test\r\nX: y' --queue=a.test", "is not an address"),
        ("delete --jobId=$'\x1b[31m'", "printable"),
        ("list --jobId=" + "j" * 300, "1 to 256 printable"),
        ("list --maxitems=0", "--maxitems: expected a number from 1"),
        ("list --pause", "--pause is not supported"),
        ("show queues --paused=maybe", "--paused: expected yes or no"),
        ("show queues --sort=age", "--sort: expected name or rcpt or size"),
        ("show queues --mode-events", "not supported"),
        ("show domains a.test/v1", "is not a domain"),
        ("set priority 101", "the priority is 0 to 100"),
        ("set priority --envId= 5", "--envId needs a value"),
        ("disable source 1.2.3 a.test", "is not an IP address"),
        ("disable source --reenable-after=later 127.0.0.1 a.test", "expected an interval"),
        ("enable source 127.0.0.1 a.test b.test", "too many arguments"),
        ("resolve 'bad name'", "is not a domain name"),
        ("resolve --tcp a.test", "--tcp is not supported"),
        ("check rcpt a@b.test 999.1.1.1", "is not an IP address"),
        ("check mfrom 'a\x00b@c.test' 127.0.0.1", "is not an address"),
        ("clear dnscache", "missing argument"),
        ("trace --timeout=0 a.test", "--timeout: expected seconds"),
        ("trace --source-ip=nope a.test", "is not an IP address"),
        ("show vmta-settings 'a b'", "is not a virtual MTA name"),
        ("show $'\x07'", "unknown command"),
    ],
)
def test_bad_and_hostile_arguments_are_refused(world: World, line: str, expected: str) -> None:
    """Each bad or hostile argument is a 400 naming it; no raw control character echoes."""
    before = world.ok("show status")["queue"]
    message = world.error(line)
    assert expected in message
    assert message.isprintable()
    assert world.ok("show status")["queue"]["recipients"] == before["recipients"]


def test_hostile_words_never_reach_the_acct_file(world: World) -> None:
    """A CR/LF in a delete's selection is refused; no acct line holds it."""
    world.error("delete --queue=a.test --orig='x@y.test\nb,forged'")
    assert all("forged" not in ",".join(r.values()) for r in world.acct())


def test_admin_commands_need_admin(tmp_path: Path) -> None:
    """trace, resolve, delete and set priority need admin; check and list need monitor."""
    with Receiver() as receiver:
        server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 monitor").start()
        try:
            for line in ("trace a.test", "resolve a.test", "delete --queue=*",
                         "set priority 5", "disable source 127.0.0.1 a.test",
                         "clear dnscache *", "reset status"):  # fmt: skip
                status, _ = server.command(line, key=None)
                assert status == 403, line
            for line in ("check mfrom a@b.test 127.0.0.1", "list", "show topqueues"):
                status, _ = server.command(line, key=None)
                assert status == 200, line
        finally:
            server.stop()
