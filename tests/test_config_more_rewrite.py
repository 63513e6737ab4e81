"""`rewrite-list` inside `<virtual-mta>` and `<virtual-mta-pool>`: applied at delivery.

A message through a vmta with a rewrite list leaves with MAIL FROM and the From domain
rewritten (the acct record keeps the original sender); through another vmta it leaves
as it came. Real server, aiosmtpd receiver.
"""

from __future__ import annotations

import email
import smtplib
from pathlib import Path

from mx_receiver import Receiver
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_catalog import errors, load

from mtaserver.message.builder import rewrite_from_header

VMTAS = """
<rewrite-list bounces>
    mail-from *@src.test *@bounce.test
    from-domain src.test news.test
</rewrite-list>
<virtual-mta vm-a>
    smtp-source-host 127.0.0.1 a.out.test
    rewrite-list bounces
</virtual-mta>
<virtual-mta vm-b>
    smtp-source-host 127.0.0.1 b.out.test
</virtual-mta>
<virtual-mta-pool pool-r>
    virtual-mta vm-b
    rewrite-list bounces
</virtual-mta-pool>
"""


def test_vmta_rewrite_list_rewrites_mail_from_and_from_domain(tmp_path: Path) -> None:
    """vm-a's (and pool-r's) rewrite-list changes MAIL FROM and From; plain vm-b does not."""
    port = free_port()
    with Receiver() as mx:
        config = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv", "d"),
            domain(f"smtp-hosts [127.0.0.1]:{mx.port}"),
            VMTAS,
            source="process-x-virtual-mta yes",
        )
        with ServerProcess(tmp_path, config, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for vmta, rcpt in (
                    ("vm-a", "a@dst.test"),
                    ("vm-b", "b@dst.test"),
                    ("pool-r", "p@dst.test"),
                ):
                    message = (
                        f"From: News <s@src.test>\r\nX-Virtual-MTA: {vmta}\r\n"
                        "Subject: x\r\n\r\nbody\r\n"
                    )
                    client.sendmail("s@src.test", [rcpt], message.encode())
            assert wait_until(lambda: len(read_acct(tmp_path / "acct.csv", "d")) == 3)
        seen = {
            m.rcpt_tos[0]: (m.mail_from, str(email.message_from_bytes(m.data)["From"]))
            for m in mx.messages
        }
    assert seen == {
        "a@dst.test": ("s@bounce.test", "News <s@news.test>"),
        "b@dst.test": ("s@src.test", "News <s@src.test>"),
        "p@dst.test": ("s@bounce.test", "News <s@news.test>"),
    }
    assert {r["orig"] for r in read_acct(tmp_path / "acct.csv", "d")} == {"s@src.test"}


def test_vmta_rewrite_list_must_exist(tmp_path: Path) -> None:
    """A vmta naming an undefined rewrite-list is a config error; a defined one loads quietly."""
    bad = "<virtual-mta v>\n    rewrite-list nowhere\n</virtual-mta>\n"
    assert errors(tmp_path, bad) == ["no <rewrite-list nowhere> is defined"]
    config = load(tmp_path, VMTAS)
    assert config.warnings == ()
    assert config.domain_settings("x.test", "vm-a").rewrite_list == "bounces"
    assert config.domain_settings("x.test", "vm-b", "pool-r").rewrite_list == "bounces"
    assert config.domain_settings("x.test", "vm-b").rewrite_list is None


def test_rewrite_from_header_touches_only_the_from_field() -> None:
    """Only the From field's domains change; folded lines, other fields and the body stay."""
    message = (
        b"To: x@src.test\r\nFrom: A <a@src.test>,\r\n B <b@src.test>\r\n"
        b"Subject: a@src.test\r\n\r\nFrom: c@src.test\r\n"
    )
    out = rewrite_from_header(message, lambda d: "new.test" if d == "src.test" else d)
    assert out == (
        b"To: x@src.test\r\nFrom: A <a@new.test>,\r\n B <b@new.test>\r\n"
        b"Subject: a@src.test\r\n\r\nFrom: c@src.test\r\n"
    )
    assert rewrite_from_header(b"Subject: x\r\n\r\nbody", str.upper) == b"Subject: x\r\n\r\nbody"
