"""PowerMTA behaviours real configs rely on, end to end against real SMTP receivers.

Each test starts the real server (`twistd -n mtaserver`) with a PowerMTA-shaped
config, sends over SMTP and checks what the receiver saw and what the acct file says.
Source IPs are 127.0.0.1 only: virtual MTAs differ by their EHLO name.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, read_acct, wait_until


def base_config(tmp_path: Path, smtp_port: int, mx_port: int, extra: str = "") -> str:
    return f"""
host-name mta.test
postmaster postmaster@mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{smtp_port}
<acct-file {tmp_path}/acct.csv>
    records r,d,b,t,tq
</acct-file>
<domain *>
    retry-after 1s
    smtp-hosts [127.0.0.1]:{mx_port}
</domain>
{extra}
"""


def acct(tmp_path: Path, types: str | None = None) -> list[dict[str, str]]:
    return read_acct(tmp_path / "acct.csv", types)


def send(port: int, sender: str, rcpts: list[str], subject: str = "x") -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail(sender, rcpts, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


RELAY = "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n"

TWO_VMTAS = """
<virtual-mta vm-a>
    smtp-source-host 127.0.0.1 a.out.test
</virtual-mta>
<virtual-mta vm-b>
    smtp-source-host 127.0.0.1 b.out.test
</virtual-mta>
<virtual-mta-pool pool1>
    virtual-mta vm-a
    virtual-mta vm-b
</virtual-mta-pool>
"""


def test_pool_rotates_over_its_vmtas(tmp_path: Path, receiver: Receiver) -> None:
    """Messages for a <virtual-mta-pool> go out through each member in turn (acct vmta, EHLO)."""
    port = free_port()
    extra = TWO_VMTAS + "<source 127.0.0.1>\n always-allow-relaying yes\n"
    extra += " default-virtual-mta pool1\n</source>\n"
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        for n in range(4):
            send(port, "s@src.test", [f"ok{n}@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 4)
    delivered = acct(tmp_path, "d")
    assert sorted(r["vmta"] for r in delivered) == ["vm-a", "vm-a", "vm-b", "vm-b"]
    assert {r["vmtaPool"] for r in delivered} == {"pool1"}
    assert sorted(m.helo for m in receiver.messages) == [
        "a.out.test",
        "a.out.test",
        "b.out.test",
        "b.out.test",
    ]


def test_acct_rb_records_and_field_exclusion_start_and_write_crlf(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`records rb` and `record-fields d *,!orcpt` start; no orcpt column; CRLF lines."""
    port = free_port()
    conf = base_config(tmp_path, port, receiver.port, RELAY)
    conf += f"<acct-file {tmp_path}/pm.csv>\n records d\n"
    conf += " record-fields d *,!orcpt,!envId\n</acct-file>\n"
    conf += f"<acct-file {tmp_path}/rb.csv>\n records rb\n</acct-file>\n"
    with ServerProcess(tmp_path, conf, (port,)):
        send(port, "s@src.test", ["ok@dst.test"])
        assert wait_until(lambda: len(read_acct(tmp_path / "pm.csv", "d")) == 1)
    raw = (tmp_path / "pm.csv").read_bytes()
    header = raw.split(b"\r\n", 1)[0].decode()
    assert "orcpt" not in header.split(",") and "!orcpt" not in header
    assert "envId" not in header.split(",") and "rcpt" in header.split(",")
    assert raw.count(b"\r\n") == 2 and raw.count(b"\n") == 2  # header and one row
    (row,) = read_acct(tmp_path / "pm.csv", "d")
    assert row["dsnStatus"] == "2.0.0 (success)"


def test_test_config_and_startup_agree_on_acct_fields(tmp_path: Path) -> None:
    """An unknown acct field fails `test config` (load_config), as it would fail startup."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    path = tmp_path / "bad.conf"
    acct_file = f"spool {tmp_path}/s\n<acct-file {tmp_path}/a.csv>\n"
    path.write_text(acct_file + " record-fields d rcpt,bogus\n</acct-file>\n")
    with pytest.raises(ConfigError, match="unknown acct field 'bogus'"):
        load_config(str(path))
    path.write_text(acct_file + " records rb,rs,d\n</acct-file>\n")
    load_config(str(path))


def test_bounce_dsn_status_has_powermta_text(tmp_path: Path, receiver: Receiver) -> None:
    """A 550 5.1.1 is written as `5.1.1 (bad destination mailbox address)`."""
    port = free_port()
    conf = base_config(tmp_path, port, receiver.port, RELAY)
    with ServerProcess(tmp_path, conf, (port,)):
        send(port, "<>", ["hard@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "b")) == 1)
    (bounce,) = acct(tmp_path, "b")
    assert bounce["dsnStatus"] == "5.1.1 (bad destination mailbox address)"


def test_nxdomain_writes_no_delayed_record_with_a_permanent_status(tmp_path: Path) -> None:
    """A permanent DNS answer bounces (b, 5.1.2) and writes no `tq,delayed,5.x.x` line."""
    from dns_server import start_dns_server_in_thread

    dns_port, stop_dns = start_dns_server_in_thread({"other.test": [("A", "127.0.0.1")]})
    port = free_port()
    conf = f"""
host-name mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
name-server 127.0.0.1:{dns_port}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file {tmp_path}/acct.csv>
    records b,t,tq
</acct-file>
"""
    try:
        with ServerProcess(tmp_path, conf, (port,)):
            send(port, "<>", ["x@nosuch.test"])
            assert wait_until(lambda: len(acct(tmp_path, "b")) == 1)
    finally:
        stop_dns()
    records = acct(tmp_path)
    assert [r["type"] for r in records] == ["b"]
    assert records[0]["dsnStatus"].startswith("5.1.2")
    assert not [r for r in records if r["dsnAction"] == "delayed" and r["dsnStatus"][:1] == "5"]


def test_monitoring_last_error_after_a_451_to_rcpt(tmp_path: Path, receiver: Receiver) -> None:
    """A per-recipient 451 sets the queue's lastError in the monitoring JSON."""
    from mgmt_client import MgmtServer

    server = MgmtServer(tmp_path, receiver.port).start()
    try:
        server.send(["soft@dst.test"])
        assert wait_until(
            lambda: read_acct(tmp_path / "acct.csv") == [] and receiver.commands.count("RCPT") >= 1
        )

        def last_error() -> str:
            status, body = server.call("GET", "/queues", {"format": "mtaserver"})
            rows = [q for q in body["data"] if q["domain"] == "dst.test"] if status == 200 else []
            return rows[0]["lastError"] if rows else ""

        assert wait_until(lambda: "451" in last_error() or "4.2.0" in last_error())
        assert "mailbox busy" in last_error()
    finally:
        server.stop()


def test_smtp_pattern_list_ignores_case_and_puts_the_queue_in_backoff(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`/MAILBOX BUSY/` matches the receiver's "451 4.2.0 mailbox busy": the queue backs off."""
    from mgmt_client import MgmtServer

    server = MgmtServer(tmp_path, receiver.port)
    (tmp_path / "conf.d" / "patterns.conf").write_text(
        "<smtp-pattern-list busy>\n"
        "    reply /MAILBOX BUSY/ mode=backoff,skip-mx\n"
        "    reply /TS03/ mode=backoff,disable-source-ip,reenable-after=1h\n"
        "</smtp-pattern-list>\n"
        "<domain dst.test>\n    smtp-pattern-list busy\n</domain>\n"
    )
    server.start()
    try:
        server.send(["soft@dst.test"])

        def mode() -> str:
            status, body = server.call("GET", "/queues", {"format": "mtaserver"})
            rows = [q for q in body["data"] if q["domain"] == "dst.test"] if status == 200 else []
            return rows[0]["mode"] if rows else ""

        assert wait_until(lambda: mode() == "backoff")
    finally:
        server.stop()


def test_domain_macro_expands_to_each_domain(tmp_path: Path, receiver: Receiver) -> None:
    """`<domain $NAME>` routes each domain of `domain-macro NAME` (others go nowhere)."""
    port, dead = free_port(), free_port()
    conf = base_config(tmp_path, port, dead, RELAY)
    conf += "domain-macro twins a.test,b.test\n<domain $twins>\n"
    conf += f"    smtp-hosts [127.0.0.1]:{receiver.port}\n</domain>\n"
    with ServerProcess(tmp_path, conf, (port,)):
        send(port, "s@src.test", ["ok1@a.test", "ok2@b.test", "ok3@c.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 2)
        assert wait_until(lambda: any(r["queue"] == "c.test/{default}" for r in acct(tmp_path)))
    assert sorted(r["rcpt"] for r in acct(tmp_path, "d")) == ["ok1@a.test", "ok2@b.test"]
    assert sorted(r for m in receiver.messages for r in m.rcpt_tos) == ["ok1@a.test", "ok2@b.test"]


def test_undefined_domain_macro_is_an_error(tmp_path: Path) -> None:
    """`<domain $nosuch>` without a `domain-macro nosuch` is a config error."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    path = tmp_path / "m.conf"
    path.write_text(f"spool {tmp_path}/s\n<domain $nosuch>\n max-smtp-out 1\n</domain>\n")
    with pytest.raises(ConfigError, match="nosuch"):
        load_config(str(path))


def test_pattern_list_chooses_the_vmta_by_sender(tmp_path: Path, receiver: Receiver) -> None:
    """A source's `pattern-list` routes by MAIL FROM (case-insensitively); no match: default."""
    port = free_port()
    extra = TWO_VMTAS + (
        "<pattern-list by-sender>\n"
        "    mail-from /^abc/ virtual-mta=vm-a\n"
        "    mail-from /@B-SIDE\\.test$/ virtual-mta=vm-b\n"
        "</pattern-list>\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n pattern-list by-sender\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "abc@x.test", ["ok1@dst.test"])
        send(port, "zed@b-side.test", ["ok2@dst.test"])
        send(port, "other@x.test", ["ok3@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 3)
    vmta_by_rcpt = {r["rcpt"]: r["vmta"] for r in acct(tmp_path, "d")}
    assert vmta_by_rcpt == {
        "ok1@dst.test": "vm-a",
        "ok2@dst.test": "vm-b",
        "ok3@dst.test": "{default}",
    }
    helo_by_rcpt = {m.rcpt_tos[0]: m.helo for m in receiver.messages}
    assert helo_by_rcpt["ok1@dst.test"] == "a.out.test"
    assert helo_by_rcpt["ok2@dst.test"] == "b.out.test"
    assert helo_by_rcpt["ok3@dst.test"] == "mta.test"


def test_pattern_list_naming_an_unknown_vmta_is_an_error(tmp_path: Path) -> None:
    """A `<pattern-list>` result must name a defined virtual MTA or pool."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    path = tmp_path / "p.conf"
    path.write_text(
        f"spool {tmp_path}/s\n<pattern-list p>\n mail-from /x/ virtual-mta=ghost\n"
        "</pattern-list>\n<source 0/0>\n pattern-list p\n</source>\n"
    )
    with pytest.raises(ConfigError, match="ghost"):
        load_config(str(path))


def test_verp_default_puts_a_verp_return_path_on_the_wire(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`verp-default yes`: each recipient gets MAIL FROM sender-local=domain@senderdomain."""
    from mtaserver.inbound.verp import decode_verp

    port = free_port()
    extra = "<source 127.0.0.1>\n always-allow-relaying yes\n verp-default yes\n</source>\n"
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "news@src.test", ["ok1@dst.test", "ok2@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 2)
    senders = sorted((m.mail_from, tuple(m.rcpt_tos)) for m in receiver.messages)
    assert senders == [
        ("news-ok1=dst.test@src.test", ("ok1@dst.test",)),
        ("news-ok2=dst.test@src.test", ("ok2@dst.test",)),
    ]
    decoded = decode_verp(senders[0][0], ["news"])
    assert decoded is not None and (decoded.orig, decoded.rcpt) == ("news@src.test", "ok1@dst.test")
    assert {r["orig"] for r in acct(tmp_path, "d")} == {"news@src.test"}


PIPE_CHILD = """
import os, sys
out, pids = sys.argv[1], sys.argv[2]
with open(pids, "a") as stream:
    stream.write(f"{os.getpid()}\\n")
with open(out, "a") as stream:
    for line in sys.stdin:
        stream.write(line)
        stream.flush()
"""


def test_acct_pipe_feeds_a_child_that_restarts_without_losing_records(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`<acct-file |cmd>` feeds cmd's stdin; killed, cmd is restarted and gets what it missed."""
    import os
    import signal
    import sys

    script, out, pids = tmp_path / "child.py", tmp_path / "piped.csv", tmp_path / "pids"
    script.write_text(PIPE_CHILD)
    port = free_port()
    extra = (
        RELAY + f"<acct-file |{sys.executable} {script} {out} {pids}>\n records d\n</acct-file>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "s@src.test", ["ok1@dst.test"])
        assert wait_until(lambda: out.exists() and "ok1@dst.test" in out.read_text())
        first = int(pids.read_text().split()[0])
        os.kill(first, signal.SIGKILL)
        send(port, "s@src.test", ["ok2@dst.test"])
        assert wait_until(lambda: "ok2@dst.test" in out.read_text(), timeout=60)
        assert len(pids.read_text().split()) == 2
    assert not (tmp_path / "|").exists()
    lines = out.read_text().splitlines()
    assert lines[0].startswith("type,") and lines.count(lines[0]) == 2  # a header a start
    rows = [line for line in lines if line.startswith("d,")]
    assert {r.split(",")[4] for r in rows} == {"ok1@dst.test", "ok2@dst.test"}


def test_mx_rollup_puts_domains_with_the_same_mx_in_one_queue(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`mx-rollup yes`: a.test and b.test (both MX mx.shared.test) share one queue."""
    from dns_server import start_dns_server_in_thread

    records = {
        "a.test": [("MX", 10, "mx.shared.test")],
        "b.test": [("MX", 5, "mx.shared.test")],
        "c.test": [("MX", 10, "mx.other.test")],
        "mx.shared.test": [("A", "127.0.0.1")],
        "mx.other.test": [("A", "127.0.0.1")],
    }
    dns_port, stop_dns = start_dns_server_in_thread(records)
    port = free_port()
    conf = f"""
host-name mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
name-server 127.0.0.1:{dns_port}
{RELAY}
<acct-file {tmp_path}/acct.csv>
    records d
</acct-file>
<domain *>
    mx-rollup yes
    default-smtp-port {receiver.port}
    mx-allow-private-addresses yes
</domain>
"""
    try:
        with ServerProcess(tmp_path, conf, (port,)):
            send(port, "s@src.test", ["ok1@a.test", "ok2@b.test", "ok3@c.test"])
            assert wait_until(lambda: len(acct(tmp_path, "d")) == 3)
    finally:
        stop_dns()
    queues = {r["rcpt"]: r["queue"] for r in acct(tmp_path, "d")}
    assert queues == {
        "ok1@a.test": "mx.shared.test/{default}",
        "ok2@b.test": "mx.shared.test/{default}",
        "ok3@c.test": "mx.other.test/{default}",
    }


def test_bounce_category_patterns_override_the_built_in_categories(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A matching `<bounce-category-patterns>` line gives the category (else the built-in)."""
    port = free_port()
    extra = RELAY + (
        "<bounce-category-patterns>\n"
        "    /NO SUCH USER/ inactive-mailbox\n"
        "    /nothing matches this/ spam-related\n"
        "</bounce-category-patterns>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "<>", ["hard@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "b")) == 1)
    (bounce,) = acct(tmp_path, "b")
    assert bounce["bounceCat"] == "inactive-mailbox"


def test_backoff_to_normal_after_delivery(tmp_path: Path, receiver: Receiver) -> None:
    """`backoff-to-normal-after-delivery yes`: the first delivery in backoff ends it."""
    from mgmt_client import MgmtServer

    server = MgmtServer(tmp_path, receiver.port)
    (tmp_path / "conf.d" / "patterns.conf").write_text(
        "<smtp-pattern-list busy>\n    reply /mailbox busy/ mode=backoff\n"
        "</smtp-pattern-list>\n<domain dst.test>\n    smtp-pattern-list busy\n"
        "    backoff-to-normal-after-delivery yes\n    backoff-to-normal-after 1h\n</domain>\n"
    )
    server.start()
    try:

        def mode() -> str:
            status, body = server.call("GET", "/queues", {"format": "mtaserver"})
            rows = [q for q in body["data"] if q["domain"] == "dst.test"] if status == 200 else []
            return rows[0]["mode"] if rows else ""

        server.send(["soft@dst.test"])
        assert wait_until(lambda: mode() == "backoff")
        server.send(["ok@dst.test"])
        assert wait_until(lambda: any("ok@dst.test" in m.rcpt_tos for m in receiver.messages))
        assert wait_until(lambda: mode() == "normal")
    finally:
        server.stop()


def test_source_header_directives(tmp_path: Path, receiver: Receiver) -> None:
    """jobid-header, retain-x-job, process-x-envid, remove-received-headers, hide-message-source."""
    port = free_port()
    extra = (
        "<source 127.0.0.1>\n always-allow-relaying yes\n process-x-job yes\n"
        " jobid-header X-Campaign\n retain-x-job yes\n process-x-envid yes\n"
        " remove-received-headers yes\n hide-message-source yes\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "s@src.test",
                ["ok@dst.test"],
                b"Received: from evil.test by relay.test\r\nX-Campaign: c7\r\n"
                b"X-EnvID: env42\r\nSubject: h\r\n\r\nbody\r\n",
            )
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 1)
    (record,) = acct(tmp_path, "d")
    assert (record["jobId"], record["envId"]) == ("c7", "env42")
    data = receiver.messages[0].data
    assert b"X-Campaign: c7" in data and b"X-EnvID" not in data
    assert b"evil.test" not in data and b"127.0.0.1" not in data
    assert data.count(b"Received:") == 1 and b"Received: by mta.test" in data


def test_remove_header_drops_the_named_fields(tmp_path: Path, receiver: Receiver) -> None:
    """`remove-header X-Mailer,X-Originating-IP` drops those fields (any case) at reception."""
    port = free_port()
    extra = RELAY.replace("</source>", " remove-header X-Mailer,x-originating-ip\n</source>")
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "s@src.test",
                ["ok@dst.test"],
                b"x-mailer: m1\r\nX-Originating-IP: [10.1.2.3]\r\nX-Keep: k\r\n"
                b"Subject: r\r\n\r\nb\r\n",
            )
        assert wait_until(lambda: len(receiver.messages) == 1)
    data = receiver.messages[0].data
    assert b"m1" not in data and b"10.1.2.3" not in data and b"X-Keep: k" in data


def test_virtual_mta_domain_key_signs_its_mail(tmp_path: Path, receiver: Receiver) -> None:
    """A `domain-key` inside `<virtual-mta>` signs that vmta's mail (verified by dkimpy)."""
    import dkim
    from test_e2e_delivery import _rsa_key_pem

    global_record = _rsa_key_pem(tmp_path / "global.pem")
    vmta_record = _rsa_key_pem(tmp_path / "vmta.pem")
    port = free_port()
    extra = (
        f"domain-key g1,brand.test,{tmp_path}/global.pem\n"
        f"<virtual-mta signer>\n domain-key v1,brand.test,{tmp_path}/vmta.pem\n</virtual-mta>\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n process-x-virtual-mta yes\n</source>\n"
        "<domain dst.test>\n dkim-sign yes\n</domain>\n"
    )
    message = b"From: <news@brand.test>\r\nTo: <ok@dst.test>\r\nSubject: s\r\n"
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("news@brand.test", ["ok1@dst.test"], message + b"\r\nplain\r\n")
            client.sendmail(
                "news@brand.test",
                ["ok2@dst.test"],
                message + b"X-Virtual-MTA: signer\r\n\r\nvia vmta\r\n",
            )
        assert wait_until(lambda: len(receiver.messages) == 2)
    records = {
        b"g1._domainkey.brand.test.": global_record,
        b"v1._domainkey.brand.test.": vmta_record,
    }

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    by_rcpt = {m.rcpt_tos[0]: m.data for m in receiver.messages}
    assert b"s=g1;" in by_rcpt["ok1@dst.test"] and dkim.verify(
        by_rcpt["ok1@dst.test"], dnsfunc=dnsfunc
    )
    assert b"s=v1;" in by_rcpt["ok2@dst.test"] and dkim.verify(
        by_rcpt["ok2@dst.test"], dnsfunc=dnsfunc
    )


def test_cold_virtual_mta_takes_the_days_first_messages(tmp_path: Path, receiver: Receiver) -> None:
    """`cold-virtual-mta` + `max-cold-virtual-mta-msg 2/day`: 2 messages go cold, the rest warm."""
    port = free_port()
    extra = (
        "<virtual-mta warm>\n smtp-source-host 127.0.0.1 warm.out.test\n"
        " cold-virtual-mta cold\n <domain *>\n  max-cold-virtual-mta-msg 2/day,5/day\n"
        " </domain>\n</virtual-mta>\n"
        "<virtual-mta cold>\n smtp-source-host 127.0.0.1 cold.out.test\n</virtual-mta>\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n default-virtual-mta warm\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        for n in range(5):
            send(port, "s@src.test", [f"ok{n}@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 5)
    vmtas = sorted(r["vmta"] for r in acct(tmp_path, "d"))
    assert vmtas == ["cold", "cold", "warm", "warm", "warm"]
    assert sorted(m.helo for m in receiver.messages).count("cold.out.test") == 2


def test_queue_to_and_route(tmp_path: Path, receiver: Receiver) -> None:
    """`queue-to a.test` queues b.test in a.test's queue; `route` routes like smtp-hosts."""
    port, dead = free_port(), free_port()
    extra = RELAY + (
        f"<domain a.test>\n smtp-hosts [127.0.0.1]:{receiver.port}\n</domain>\n"
        "<domain b.test>\n queue-to a.test\n</domain>\n"
        f"<domain r.test>\n route [127.0.0.1]:{receiver.port}\n</domain>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, dead, extra), (port,)):
        send(port, "s@src.test", ["ok1@a.test", "ok2@b.test", "ok3@r.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 3)
    queues = {r["rcpt"]: r["queue"] for r in acct(tmp_path, "d")}
    assert queues == {
        "ok1@a.test": "a.test/{default}",
        "ok2@b.test": "a.test/{default}",
        "ok3@r.test": "r.test/{default}",
    }


def test_ignore_8bitmime_and_pipelining(tmp_path: Path, receiver: Receiver) -> None:
    """`ignore-8bitmime`/`ignore-pipelining`: no BODY=8BITMIME, no pipelined RCPT."""
    port = free_port()
    extra = RELAY + "<domain dst.test>\n ignore-8bitmime yes\n ignore-pipelining yes\n</domain>\n"
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "s@src.test",
                ["ok1@dst.test", "ok2@dst.test"],
                "Subject: 8\r\n\r\ncaf\u00e9\r\n".encode(),
                mail_options=["BODY=8BITMIME"],
            )
            client.sendmail(
                "s@src.test",
                ["ok3@other.test", "ok4@other.test"],
                "Subject: 8\r\n\r\ncaf\u00e9\r\n".encode(),
                mail_options=["BODY=8BITMIME"],
            )
        assert wait_until(lambda: len(receiver.messages) == 2)
    by_domain = {m.rcpt_tos[0].split("@")[1]: m for m in receiver.messages}
    assert "BODY=8BITMIME" not in by_domain["dst.test"].mail_options
    assert "BODY=8BITMIME" in by_domain["other.test"].mail_options
    assert receiver.mail_pipelined.count(True) == 1  # other.test only


def test_smtp_greeting_timeout(tmp_path: Path) -> None:
    """`smtp-greeting-timeout 1s`: a server that never greets is given up on in about 1s."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    held: list[socket.socket] = []
    port = free_port()
    extra = RELAY + "<domain dst.test>\n smtp-greeting-timeout 1s\n retry-after 1h\n</domain>\n"
    conf = base_config(tmp_path, port, silent.getsockname()[1], extra)
    conf = conf.replace("records r,d,b,t,tq", "records t,tq")
    try:
        with ServerProcess(tmp_path, conf, (port,)):
            send(port, "s@src.test", ["ok@dst.test"])
            assert wait_until(lambda: bool(acct(tmp_path)), timeout=20)
            held.append(silent.accept()[0])
    finally:
        for connection in held:
            connection.close()
        silent.close()
    (record,) = acct(tmp_path)[:1]
    assert record["dsnStatus"].startswith("4.") and "greeting" in record["dsnDiag"]


@pytest.mark.parametrize(("limit", "connections"), [("unlimited", 1), ("1", 2)])
def test_max_errors_per_connection(
    tmp_path: Path, receiver: Receiver, limit: str, connections: int
) -> None:
    """`max-errors-per-connection 1`: after a 451 the next transaction gets a new connection."""
    port = free_port()
    extra = RELAY + (
        "<domain dst.test>\n max-rcpt-per-transaction 1\n retry-after 1h\n max-smtp-out 1\n"
        f" max-errors-per-connection {limit}\n</domain>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "s@src.test", ["soft1@dst.test", "ok2@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 1)
    assert len(receiver.connections) == connections


def test_listener_named_source(tmp_path: Path, receiver: Receiver) -> None:
    """`smtp-listener IP:PORT source=NAME`: that listener's clients get `<source NAME>`."""
    port, named_port = free_port(), free_port()
    extra = (
        TWO_VMTAS
        + RELAY
        + (
            f"smtp-listener 127.0.0.1:{named_port} source=via-a\n"
            "<source via-a>\n always-allow-relaying yes\n default-virtual-mta vm-a\n</source>\n"
        )
    )
    conf = base_config(tmp_path, port, receiver.port, extra)
    with ServerProcess(tmp_path, conf, (port, named_port)):
        send(port, "s@src.test", ["ok1@dst.test"])
        send(named_port, "s@src.test", ["ok2@dst.test"])
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 2)
    vmtas = {r["rcpt"]: r["vmta"] for r in acct(tmp_path, "d")}
    assert vmtas == {"ok1@dst.test": "{default}", "ok2@dst.test": "vm-a"}


def test_listener_naming_an_undefined_source_is_an_error(tmp_path: Path) -> None:
    """`source=NAME` must name a `<source NAME>`."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    path = tmp_path / "l.conf"
    path.write_text(f"spool {tmp_path}/s\nsmtp-listener 127.0.0.1:2525 source=ghost\n")
    with pytest.raises(ConfigError, match="ghost"):
        load_config(str(path))


def test_acct_move_to_and_world_readable(tmp_path: Path, receiver: Receiver) -> None:
    """`move-to DIR` gets the rotated files; files are 0640 unless `world-readable yes`."""
    import stat

    port = free_port()
    extra = RELAY + (
        f"<acct-file {tmp_path}/moved.csv>\n records d\n max-size 1\n move-to {tmp_path}/old\n"
        f"</acct-file>\n<acct-file {tmp_path}/open.csv>\n records d\n world-readable yes\n"
        "</acct-file>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        send(port, "s@src.test", ["ok@dst.test"])
        assert wait_until(lambda: (tmp_path / "old").exists() and any((tmp_path / "old").iterdir()))
    (rotated,) = list((tmp_path / "old").iterdir())
    assert rotated.name.startswith("moved-") and "ok@dst.test" in rotated.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("moved-")]
    assert stat.S_IMODE((tmp_path / "moved.csv").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "open.csv").stat().st_mode) == 0o644


def test_reject_invalid_virtual_mta_no_uses_the_fallback(
    tmp_path: Path, receiver: Receiver
) -> None:
    """`reject-invalid-virtual-mta no`: an unknown X-Virtual-MTA goes out via the fallback."""
    port = free_port()
    extra = TWO_VMTAS + (
        "invalid-virtual-mta-fallback vm-b\n<source 127.0.0.1>\n always-allow-relaying yes\n"
        " process-x-virtual-mta yes\n reject-invalid-virtual-mta no\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "s@src.test", ["ok@dst.test"], b"X-Virtual-MTA: ghost\r\nSubject: f\r\n\r\nb\r\n"
            )
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 1)
    assert acct(tmp_path, "d")[0]["vmta"] == "vm-b"
    assert receiver.messages[0].helo == "b.out.test"
