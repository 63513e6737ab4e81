"""PowerMTA behaviours real configs rely on, end to end against real SMTP receivers.

Each test starts the real server (`twistd -n mtaserver`) with a PowerMTA-shaped
config, sends over SMTP and checks what the receiver saw and what the acct file says.
Source IPs are 127.0.0.1 only: virtual MTAs differ by their EHLO name.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
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


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def send(port: int, sender: str, rcpts: list[str], subject: str = "x") -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail(sender, rcpts, f"Subject: {subject}\r\n\r\nbody\r\n".encode())


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
