"""Catalog directives a PowerMTA operator relies on, taken from "not yet" to implemented.

* global `smtp-source-host IP HOSTNAME`: the `{default}` queues' source and EHLO name,
  and that of each `<virtual-mta>` without its own (a CIDR range warns, not expanded);
* `max-msg-per-hour` / `backoff-max-msg-per-hour` (deprecated): `N/h` rates;
* `use-dane`, `use-mta-sts`: recognised, "not yet", saying what happens instead.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from mx_receiver import Receiver
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_catalog import load

from mtaserver.config.values import Rate


def test_global_smtp_source_host_is_the_default_source(tmp_path: Path) -> None:
    """{default} mail says EHLO global.out.test; a vmta with its own source keeps it."""
    port = free_port()
    with Receiver() as mx:
        config = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv", "d"),
            domain(f"smtp-hosts [127.0.0.1]:{mx.port}"),
            "<virtual-mta own>\n    smtp-source-host 127.0.0.1 own.out.test\n</virtual-mta>\n"
            "<virtual-mta bare>\n</virtual-mta>\n",
            settings="smtp-source-host 127.0.0.1 global.out.test\n",
            source="process-x-virtual-mta yes",
        )
        with ServerProcess(tmp_path, config, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                for vmta, rcpt in (
                    ("", "a@dst.test"),
                    ("own", "b@dst.test"),
                    ("bare", "c@dst.test"),
                ):
                    header = f"X-Virtual-MTA: {vmta}\r\n" if vmta else ""
                    client.sendmail(
                        "s@src.test", [rcpt], f"{header}Subject: x\r\n\r\nx\r\n".encode()
                    )
            assert wait_until(lambda: len(read_acct(tmp_path / "acct.csv", "d")) == 3)
        helo = {m.rcpt_tos[0]: m.helo for m in mx.messages}
    assert helo == {
        "a@dst.test": "global.out.test",
        "b@dst.test": "own.out.test",
        "c@dst.test": "global.out.test",
    }
    assert {r["dlvSourceIp"] for r in read_acct(tmp_path / "acct.csv", "d")} == {"127.0.0.1"}


def test_global_smtp_source_host_forms(tmp_path: Path) -> None:
    """IP and /32 forms are sources; a wider CIDR loads with a warning and is ignored."""
    config = load(
        tmp_path,
        "smtp-source-host 192.0.2.1 a.test\nsmtp-source-host 192.0.2.2/32 b.test\n"
        "smtp-source-host 10/8 c.test\n",
    )
    assert [(h.ip, h.host_name) for h in config.source_hosts(None)] == [
        ("192.0.2.1", "a.test"),
        ("192.0.2.2", "b.test"),
    ]
    assert [(w.line, w.message.split(":")[0]) for w in config.warnings] == [
        (3, "smtp-source-host CIDR is not yet implemented")
    ]


def test_max_msg_per_hour_is_a_rate(tmp_path: Path) -> None:
    """max-msg-per-hour N is max-msg-rate N/h, unless max-msg-rate is set; backoff too."""
    config = load(
        tmp_path,
        "<domain *>\n max-msg-per-hour 600\n backoff-max-msg-per-hour 60\n</domain>\n"
        "<domain set.test>\n max-msg-rate 5/m\n</domain>\n",
    )
    plain = config.domain_settings("x.test")
    assert (plain.max_msg_rate, plain.backoff_max_msg_rate) == (Rate(600, 3600.0), Rate(60, 3600.0))
    assert config.domain_settings("set.test").max_msg_rate == Rate(5, 60.0)
    assert config.warnings == ()


def test_dane_and_mta_sts_are_recognised_not_yet(tmp_path: Path) -> None:
    """use-dane and use-mta-sts load, each with a not-yet warning naming what happens."""
    config = load(tmp_path, "<domain *>\n use-dane yes\n use-mta-sts yes\n</domain>\n")
    messages = [w.message for w in config.warnings]
    assert [m.split(" ")[0] for m in messages] == ["use-dane", "use-mta-sts"]
    assert all("is not yet implemented" in m and "require-starttls" in m for m in messages)


def test_disconnect_on_transient_error_closes_instead_of_4xx(tmp_path: Path) -> None:
    """With disconnect-on-transient-error a 452 (too many recipients) closes the session."""
    for flag, expect_close in (("no", False), ("yes", True)):
        port = free_port()
        base = tmp_path / flag
        base.mkdir()
        config = relay_config(
            base,
            port,
            domain("type discard"),
            source=f"max-rcpt-per-message 1\ndisconnect-on-transient-error {flag}",
        )
        server = ServerProcess(base, config, wait_ports=(port,))
        with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            assert client.mail("s@src.test")[0] == 250
            assert client.rcpt("a@dst.test")[0] == 250
            if expect_close:
                with pytest.raises(smtplib.SMTPServerDisconnected):
                    client.rcpt("b@dst.test")
            else:
                assert client.rcpt("b@dst.test")[0] == 452


def test_allow_auth_no_neither_offers_nor_takes_auth(tmp_path: Path) -> None:
    """allow-auth no: EHLO has no AUTH line and AUTH gets 502 5.5.1, though users exist."""
    port = free_port()
    config = relay_config(
        tmp_path,
        port,
        domain("type discard"),
        "<smtp-user u>\n    password p\n</smtp-user>\n",
        source="allow-auth no\nallow-unencrypted-plain-auth yes",
    )
    server = ServerProcess(tmp_path, config, wait_ports=(port,))
    with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        code, text = client.docmd("AUTH", "PLAIN AHUAcA==")
        assert (code, text[:5]) == (502, b"5.5.1")


def test_relay_address_and_relay_debug(tmp_path: Path) -> None:
    """Any client may send to a relay-address (or /REGEX/); relay-debug makes refusals 450."""
    port = free_port()
    config = (
        f"host-name mta.test\nspool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{port}\n"
        "relay-address bounce@in.test\nrelay-address /@lists\\.in\\.test$/\nrelay-debug yes\n"
        "<domain *>\n    type discard\n</domain>\n"
    )
    server = ServerProcess(tmp_path, config, wait_ports=(port,))
    with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail("s@elsewhere.test")[0] == 250
        assert client.rcpt("Bounce@IN.test")[0] == 250
        assert client.rcpt("x@LISTS.in.test")[0] == 250
        code, text = client.rcpt("other@in.test")
        assert (code, text[:5]) == (450, b"4.7.1")
    assert load(tmp_path, "relay-debug yes\nrelay-address a@b.test\n").warnings == ()
