"""`test config` (Command API, `mtactl test config`) gives startup's verdict.

Each config below is refused by a real start for a different reason (or starts); the
running server's `test config` must say the same: every refusal a start makes comes
from the loader or from a check the services register (`check_before_reload`, or
`check_at_start` for what a reload survives by keeping the old file).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mgmt_client import MgmtServer
from server_process import free_port

BAD_PEM = "-----BEGIN CERTIFICATE-----\nxx\n-----END CERTIFICATE-----\n"

#: name -> (config lines after the common head, whether a start accepts it)
CASES: dict[str, tuple[str, bool]] = {
    "valid": ("<domain *>\n max-smtp-out 2\n</domain>\n", True),
    "empty acct pipe": ("<acct-file |>\n</acct-file>\n", False),
    "webhook headers file": (
        "<acct-file {d}/a.csv>\n http-webhook-url http://127.0.0.1:9/x\n"
        " http-webhook-extra-headers {d}/headers\n</acct-file>\n",
        False,
    ),
    "webhook CA file": (
        "<acct-file {d}/b.csv>\n http-webhook-url https://127.0.0.1:9/x\n"
        " http-webhook-ca-file {d}/headers\n</acct-file>\n",
        False,
    ),
    "webhook client certificate": (
        "<acct-file {d}/c.csv>\n http-webhook-url https://127.0.0.1:9/x\n"
        " http-webhook-certificate {d}/bad.pem\n</acct-file>\n",
        False,
    ),
    "STARTTLS certificate": ("smtp-server-tls-certificate {d}/bad.pem\n", False),
    "management certificate": (
        "http-mgmt-port 127.0.0.1:{port}\nhttp-mgmt-tls-certificate {d}/bad.pem\n",
        False,
    ),
    "API certificate": (
        "<transmissions-api-listener 127.0.0.1:{port}>\n tls-certificate {d}/bad.pem\n"
        "</transmissions-api-listener>\n",
        False,
    ),
    "DKIM key": ("domain-key s,a.test,{d}/bad.pem\n", False),
    "log-file under a file": ("log-file {d}/bad.pem/mail.log\n", False),
    "log-file in new directories": ("log-file {d}/new/dir/mail.log\n", True),
    "TLS ciphers": ("smtp-server-tls-ciphers NOSUCHCIPHER\n", False),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    directory = tmp_path_factory.mktemp("parity")
    (directory / "bad.pem").write_text(BAD_PEM)
    (directory / "headers").write_text("no colon here\n")
    running = MgmtServer(directory, mx_port=free_port(), access="127.0.0.1/32 admin")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def starts(config: Path, smtp_port: int) -> bool:
    """Whether twistd with `config` comes up (its SMTP port answers) or exits."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        + ["-n", "--pidfile=", "mtaserver", "--config", str(config)],
        cwd=config.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", smtp_port), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{config.name}: neither started nor exited")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


@pytest.mark.parametrize("name", list(CASES))
def test_test_config_gives_the_verdict_of_a_start(server: MgmtServer, name: str) -> None:
    """`test config FILE` says valid exactly when a server started with FILE comes up."""
    lines, accepted = CASES[name]
    directory = server.directory
    smtp_port = free_port()
    config = directory / f"{name.replace(' ', '-')}.conf"
    config.write_text(
        f"host-name a.test\nspool {directory}/spool-{smtp_port}\n"
        f"smtp-listener 127.0.0.1:{smtp_port}\nhttp-webhook-allow-addresses 127.0.0.1\n"
        + lines.format(d=directory, port=free_port())
    )
    status, reply = server.command(f"test config {config.name}")
    assert (status == 200) == accepted, reply
    assert starts(config, smtp_port) == accepted
