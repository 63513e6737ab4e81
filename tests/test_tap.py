"""The twistd plugin as a user runs it: found, started, refusing a bad config, SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from server_process import wait_until

ROOT = Path(__file__).resolve().parent.parent


def twistd(*args: str) -> list[str]:
    """The command line of `twistd ARGS` in this interpreter."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *args]


def test_twistd_help_finds_the_plugin(tmp_path: Path) -> None:
    """`twistd --help` lists mtaserver and `twistd mtaserver --help` shows --config."""
    listing = subprocess.run(
        twistd("--help"), capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert "mtaserver" in listing.stdout
    help_text = subprocess.run(
        twistd("mtaserver", "--help"), capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert "--config" in help_text.stdout


def test_bad_config_exits_non_zero_with_every_file_line(tmp_path: Path) -> None:
    """A config with two errors stops the server with status 1 and both FILE:LINE lines."""
    conf = tmp_path / "bad.conf"
    conf.write_text("host-name ok\nfrobnicate 1\n<domain *>\n  retry-after never\n</domain>\n")
    result = subprocess.run(
        twistd("-n", "--pidfile=", "mtaserver", "--config", str(conf)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{conf}:2: unknown directive 'frobnicate'" in result.stderr
    assert f"{conf}:4: retry-after: expected an interval" in result.stderr


def test_server_starts_on_a_minimal_config_and_reloads_on_sighup(tmp_path: Path) -> None:
    """The server runs on a minimal config, and SIGHUP with a bad edit keeps it running."""
    conf = tmp_path / "min.conf"
    conf.write_text(f"spool {tmp_path}/spool\n")
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        twistd("-n", "--pidfile=", "--logfile", str(log), "mtaserver", "--config", str(conf)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(log, "mtaserver configured from"), read(log)
        conf.write_text("bogus-directive 1\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert wait_for(log, "unknown directive 'bogus-directive'"), read(log)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def wait_for(path: Path, text: str, timeout: float = 30) -> bool:
    return wait_until(lambda: text in read(path), timeout)


def test_default_config_serves_smtp_mgmt_and_api(tmp_path: Path) -> None:
    """`make run`'s config (SMTP 2525, management 8080, API 8585 on loopback) serves all three.

    The test runs that config with each port set to 0 and reads the bound ports back from
    the log, so it never races another process (or a parallel test) for a fixed port.
    """
    import re
    import smtplib
    import socket
    import urllib.error
    import urllib.request

    shipped = (ROOT / "etc" / "mtaserver.conf").read_text()
    addresses = ("127.0.0.1:2525", "127.0.0.1:8080", "127.0.0.1:8585")
    for address in addresses:
        assert address in shipped
    conf = tmp_path / "etc" / "mtaserver.conf"
    conf.parent.mkdir()
    for address in addresses:
        shipped = shipped.replace(address, "127.0.0.1:0")
    conf.write_text(shipped)
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen(
        twistd("-n", "--pidfile=", "--logfile", str(log), "mtaserver", "--config", str(conf)),
        cwd=tmp_path,
    )
    started = re.compile(r"(SmtpServerFactory|\w*Site) starting on (\d+)")
    try:
        assert wait_for(log, "spool recovered"), read(log)
        assert wait_until(lambda: len(started.findall(read(log))) >= 3), read(log)
        ports = [(kind, int(port)) for kind, port in started.findall(read(log))]
        (smtp,) = [port for kind, port in ports if kind == "SmtpServerFactory"]
        web = [port for kind, port in ports if kind != "SmtpServerFactory"]
        assert len(web) == 2
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as client:
            assert client.ehlo()[0] == 250
        statuses = []
        for port in web:
            try:
                url = f"http://127.0.0.1:{port}/status?format=json"
                with urllib.request.urlopen(url, timeout=30) as answer:
                    statuses.append(answer.status)
            except urllib.error.HTTPError as error:  # the API has no /status
                statuses.append(error.code)
        assert 200 in statuses, "the management port answers /status"
        for port in web:
            socket.create_connection(("127.0.0.1", port), timeout=30).close()
        assert (tmp_path / "var" / "spool").is_dir()
        proc.terminate()
        # twistd ends a SIGTERM shutdown by re-raising the signal: -15, after a clean stop
        assert proc.wait(timeout=30) in (0, -15)
        assert "Server Shut Down" in read(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
