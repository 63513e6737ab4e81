"""`<domain-key-list NAME>` and the X-DKIM-Options `key-list=` and `q=` options.

The guide: with `key-list=NAME`, PowerMTA "will search for the key with the selector
... in the domain-key-list named NAME. If not found, then PMTA will not sign the
message"; without it the vmta's and global keys apply. Real server, aiosmtpd receiver,
signatures checked with dkimpy.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from mx_receiver import Receiver
from server_configs import acct_file, domain, relay_config, write_rsa_key
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_catalog import load
from test_hardening_powermta_more import _dkim_tags


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_key_list_option_signs_only_with_that_list(tmp_path: Path, receiver: Receiver) -> None:
    """key-list=cust signs with cust's key; an unknown list or selector leaves it unsigned."""
    records = {
        b"g1._domainkey.brand.test.": write_rsa_key(tmp_path / "g1.pem"),
        b"c1._domainkey.brand.test.": write_rsa_key(tmp_path / "c1.pem"),
    }
    port = free_port()
    config = relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv", "d"),
        domain(f"smtp-hosts [127.0.0.1]:{receiver.port}\ndkim-sign yes"),
        f"<domain-key-list cust>\n    domain-key c1,brand.test,{tmp_path}/c1.pem\n"
        "</domain-key-list>\n",
        settings=f"domain-key g1,brand.test,{tmp_path}/g1.pem\n",
        source="process-x-dkim-options yes",
    )
    head = b"From: <news@brand.test>\r\nSubject: s\r\n"
    cases = {
        "plain@dst.test": b"",
        "list@dst.test": b"X-DKIM-Options: s=c1; key-list=cust; q=dns/txt\r\n",
        "nolist@dst.test": b"X-DKIM-Options: key-list=nosuch\r\n",
        "noselector@dst.test": b"X-DKIM-Options: s=g1; key-list=cust\r\n",
    }
    with ServerProcess(tmp_path, config, wait_ports=(port,)):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            for rcpt, option in cases.items():
                client.sendmail("n@brand.test", [rcpt], head + option + b"\r\nbody\r\n")
        assert wait_until(lambda: len(read_acct(tmp_path / "acct.csv", "d")) == len(cases))

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    data = {m.rcpt_tos[0]: m.data for m in receiver.messages}
    assert _dkim_tags(data["plain@dst.test"])["s"] == "g1"
    assert _dkim_tags(data["list@dst.test"])["s"] == "c1"
    assert dkim.verify(data["list@dst.test"], dnsfunc=dnsfunc)
    assert b"DKIM-Signature" not in data["nolist@dst.test"]
    assert b"DKIM-Signature" not in data["noselector@dst.test"]


def test_domain_key_list_loads_without_warning(tmp_path: Path) -> None:
    """A <domain-key-list> is implemented: no warning; its key files must exist."""
    (tmp_path / "k.pem").write_text("x")
    text = f"<domain-key-list a>\n domain-key s,a.test,{tmp_path}/k.pem\n</domain-key-list>\n"
    config = load(tmp_path, text)
    assert config.warnings == ()
    assert [k.selector for k in config.domain_key_lists["a"]] == ["s"]
