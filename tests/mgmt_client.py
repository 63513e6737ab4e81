"""Helpers for management-port tests: a real server with a receiver, and a tiny client.

`MgmtServer` starts the real process (`tests/server_process.py`) with an SMTP
listener, the management port, `http-access` rules and an API key, every domain
routed to a loopback aiosmtpd receiver. `call()` speaks HTTP from 127.0.0.1 (the only
loopback address tests use): a test of another access level starts a server with
another `http-access` line (`access=`).
"""

from __future__ import annotations

import http.client
import json
import os
import smtplib
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from server_process import ServerProcess, free_port, wait_until  # noqa: F401 - re-exported

API_KEY = "s3cret-key"
#: The `mtactl` installed next to the running Python (the console script users run).
MTACTL = str(Path(sys.executable).with_name("mtactl"))


def run_mtactl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `mtactl args` and capture its text output.

    The test's own `MTACTL_*` variables are dropped so only `args` and `env` choose
    the server and key a run talks to.
    """
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MTACTL_")}
    environment.update(env or {})
    return subprocess.run(
        [MTACTL, *args], capture_output=True, text=True, timeout=timeout, env=environment
    )


def config_text(
    directory: Path, smtp: int, mgmt: int, mx_port: int, access: str = "127.0.0.1/32 monitor"
) -> str:
    return f"""
host-name mta.test
postmaster postmaster@mta.test
spool {directory}/spool
smtp-listener 127.0.0.1:{smtp}
http-mgmt-port 127.0.0.1:{mgmt}
http-access {access}
http-api-key {API_KEY}
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
</source>
<acct-file {directory}/acct.csv>
    records d,b
</acct-file>
<domain *>
    retry-after 1s
    smtp-hosts [127.0.0.1]:{mx_port}
</domain>
include conf.d/*.conf
"""


def call(
    port: int,
    method: str,
    path: str,
    fields: dict[str, str] | None = None,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, Any]:
    """One request to the management port on `port`; returns (status, decoded JSON or text)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = dict(headers or {})
    body = None
    if key is not None:
        headers["X-API-Key"] = key
    if fields is not None:
        if method == "GET":
            path = f"{path}?{urllib.parse.urlencode(fields)}"
        else:
            body = urllib.parse.urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(raw)
    return response.status, raw.decode()


def reply_data(
    port: int,
    method: str,
    path: str,
    fields: dict[str, str] | None = None,
    key: str | None = API_KEY,
    timeout: float = 30,
) -> Any:
    """The `data` of a JSON reply that must be a 200 (a monitoring endpoint, a command)."""
    status, reply = call(port, method, path, fields, key, timeout=timeout)
    assert status == 200, reply
    return reply["data"]


class MgmtServer:
    def __init__(self, directory: Path, mx_port: int, access: str = "127.0.0.1/32 monitor") -> None:
        self.directory = directory
        self.smtp, self.mgmt = free_port(), free_port()
        (directory / "conf.d").mkdir(parents=True, exist_ok=True)
        (directory / "conf.d" / "domains.conf").write_text(
            "<domain hold.test>\n    max-smtp-out 2\n</domain>\n"
        )
        self.process = ServerProcess(
            directory,
            config_text(directory, self.smtp, self.mgmt, mx_port, access),
            wait_ports=(self.smtp, self.mgmt),
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt}"

    def start(self) -> MgmtServer:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def call(
        self,
        method: str,
        path: str,
        fields: dict[str, str] | None = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or text)."""
        return call(self.mgmt, method, path, fields, key, headers, timeout)

    def command(self, line: str, key: str | None = API_KEY, **kw: Any) -> tuple[int, Any]:
        return self.call("POST", "/command", {"command": line, "format": "json"}, key=key, **kw)

    def send(self, rcpts: list[str], headers: str = "", sender: str = "s@src.test") -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            client.sendmail(sender, rcpts, f"Subject: t\r\n{headers}\r\nbody\r\n".encode())
