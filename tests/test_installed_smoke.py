"""Smoke test of the product as installed: `twistd mtaserver` relays one message.

The regular suite runs it against the development install. `make wheel-check`
(called by `.ci/run`) runs it again from a folder outside the checkout, in a
throwaway virtualenv holding only the built wheel, with `MTASERVER_EXPECT_INSTALLED`
set to that venv: then it also checks that `mtaserver` and the twistd plugin were
imported from the venv, not from the checkout.
"""

from __future__ import annotations

import csv
import os
import smtplib
import subprocess
import sys
from pathlib import Path

from mx_receiver import Receiver
from server_process import ServerProcess, free_port, wait_until

import mtaserver


def installed_prefix() -> str | None:
    return os.environ.get("MTASERVER_EXPECT_INSTALLED")


def test_imported_from_the_expected_place() -> None:
    """Under wheel-check, mtaserver and its plugin come from the venv, never the checkout."""
    prefix = installed_prefix()
    package = Path(mtaserver.__file__).resolve()
    if prefix is None:
        assert package.name == "__init__.py"
        return
    assert package.is_relative_to(Path(prefix).resolve()), package
    from twisted.plugin import IPlugin, getPlugins

    from twisted.plugins import mtaserver_plugin  # type: ignore[attr-defined]

    assert Path(mtaserver_plugin.__file__).resolve().is_relative_to(Path(prefix).resolve())
    names = {getattr(p, "tapname", None) for p in getPlugins(IPlugin)}
    assert "mtaserver" in names


def test_twistd_help_lists_the_plugin_and_mtactl_answers() -> None:
    """`twistd --help` lists mtaserver; `mtactl --help` and `--version` work."""
    twistd = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mtaserver" in twistd.stdout
    bindir = Path(sys.executable).parent
    mtactl = subprocess.run(
        [str(bindir / "mtactl"), "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: mtactl" in mtactl.stdout
    version = subprocess.run(
        [str(bindir / "mtactl"), "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"mtactl {mtaserver.__version__}"


def test_installed_server_relays_one_message(tmp_path: Path) -> None:
    """Start on a minimal config, relay one message to a local receiver, see its d record."""
    smtp_port = free_port()
    with Receiver() as receiver:
        conf = f"""
host-name mta.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{smtp_port}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<acct-file {tmp_path}/acct.csv>
    records r,d,b
</acct-file>
<domain *>
    smtp-hosts [127.0.0.1]:{receiver.port}
</domain>
"""
        with ServerProcess(tmp_path, conf, wait_ports=(smtp_port,)) as server:
            with smtplib.SMTP("127.0.0.1", smtp_port) as client:
                client.sendmail("me@src.test", ["you@dst.test"], b"Subject: smoke\r\n\r\nhello\r\n")

            def delivered() -> bool:
                path = tmp_path / "acct.csv"
                if not path.exists():
                    return False
                with path.open(newline="") as stream:
                    return any(row["type"] == "d" for row in csv.DictReader(stream))

            assert wait_until(delivered), server.read_log()
        assert [m.rcpt_tos for m in receiver.messages] == [["you@dst.test"]]
