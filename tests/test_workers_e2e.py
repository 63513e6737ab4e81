"""Reception workers end to end: the real server with `reception-workers`, real SMTP
clients, a real receiving MX, and kill -9 of each kind of process under load.

What must hold whatever is killed: every message answered `250` is delivered, with
exactly one `d` record per recipient, once the server (or the worker) is back.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mx_receiver import Receiver
from server_configs import acct_file, domain, relay_config
from server_process import (
    ServerProcess,
    alive,
    children_of,
    free_port,
    read_acct,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)


def config(tmp_path: Path, port: int, mx_port: int, workers: str = "2", more: str = "") -> str:
    return relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv", "r,d,b"),
        domain(f"smtp-hosts [127.0.0.1]:{mx_port}\nretry-after 1s\nmax-smtp-out 10"),
        settings=f"reception-workers {workers}\n{more}",
    )


def delivered(tmp_path: Path) -> Counter[str]:
    """How many `d` records each recipient has."""
    return Counter(row["rcpt"] for row in read_acct(tmp_path / "acct.csv", "d"))


class Senders:
    """`count` SMTP clients sending one-recipient messages until stopped or `limit` each.

    A client whose session is cut (a killed process) reconnects while `reconnect` holds;
    only messages answered 250 are recorded as acknowledged.
    """

    def __init__(self, port: int, count: int = 6, limit: int = 60, reconnect: bool = True):
        self.port = port
        self.limit = limit
        self.reconnect = reconnect
        self.acknowledged: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def __enter__(self) -> Senders:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set() and n < self.limit:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as client:
                    while not self.stop.is_set() and n < self.limit:
                        token = f"w{worker}-{n}"
                        n += 1
                        body = f"Subject: {token}\r\n\r\n{token}\r\n" + ("x" * 76 + "\r\n") * 26
                        client.sendmail("s@src.test", [f"ok-{token}@dst.test"], body)
                        with self.lock:
                            self.acknowledged.append(f"ok-{token}@dst.test")
            except (smtplib.SMTPException, OSError):
                if not self.reconnect:
                    return
                time.sleep(0.2)

    def finish(self) -> None:
        """Wait until every client has sent its `limit`."""
        for thread in self.threads:
            thread.join(timeout=240)

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def test_workers_receive_and_the_master_delivers(tmp_path: Path, receiver: Receiver) -> None:
    """With two workers, every message is delivered once and worker log lines are tagged."""
    port = free_port()
    server = ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,))
    with server:
        assert server.proc is not None
        assert wait_until(lambda: len(children_of(server.proc.pid)) == 2)  # type: ignore[union-attr]
        with Senders(port, count=4, limit=10) as senders:
            senders.finish()
        assert senders.count() == 40
        assert wait_until(lambda: sum(delivered(tmp_path).values()) >= 40, timeout=120)
        assert server.wait_for_log("[worker 1]")
        assert server.wait_for_log("[worker 2]")
    counts = delivered(tmp_path)
    assert set(counts) == set(senders.acknowledged)
    assert set(counts.values()) == {1}
    # the r records come from the master's journal: one per message
    received = Counter(row["rcpt"] for row in read_acct(tmp_path / "acct.csv", "r"))
    assert set(received.values()) == {1}


def test_envelopes_larger_than_the_pipe_arrive_whole(tmp_path: Path, receiver: Receiver) -> None:
    """Messages of 1,000 long recipients from three sessions at once: their requests overflow
    the pipe to the master (64 KiB), wait in the worker and still arrive, each recipient
    with one `r` record; the 250s wait for them."""
    port = free_port()
    server = ServerProcess(
        tmp_path, config(tmp_path, port, receiver.port, workers="1"), wait_ports=(port,)
    )
    recipients = {n: [f"ok-{n}-{i:04d}-{'x' * 40}@dst.test" for i in range(1000)] for n in range(3)}
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                refused = client.sendmail("s@src.test", recipients[n], f"Subject: {n}\r\n\r\nx\r\n")
                assert refused == {}
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with server:
        threads = [threading.Thread(target=send, args=(n,)) for n in recipients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        expected = {a for addresses in recipients.values() for a in addresses}

        def received() -> Counter[str]:
            return Counter(row["rcpt"] for row in read_acct(tmp_path / "acct.csv", "r"))

        assert wait_until(lambda: set(received()) == expected, timeout=120)
    assert set(received().values()) == {1}


def test_one_process_mode_runs_no_worker(tmp_path: Path, receiver: Receiver) -> None:
    """`reception-workers 0` receives and delivers in the one server process."""
    port = free_port()
    server = ServerProcess(
        tmp_path, config(tmp_path, port, receiver.port, workers="0"), wait_ports=(port,)
    )
    with server:
        assert server.proc is not None
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("s@src.test", ["ok-1@dst.test"], b"Subject: one\r\n\r\nx\r\n")
        assert wait_until(lambda: delivered(tmp_path)["ok-1@dst.test"] == 1)
        assert children_of(server.proc.pid) == []
    assert "[worker" not in server.read_log()


def test_kill9_worker_under_load_is_restarted_and_loses_nothing(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A worker killed with -9 mid-load is restarted; every 250'd message gets one `d`."""
    port = free_port()
    server = ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,))
    with server:
        assert server.proc is not None
        master = server.proc.pid
        assert wait_until(lambda: len(children_of(master)) == 2)
        victim = children_of(master)[0]
        with Senders(port, count=6, limit=40) as senders:
            assert wait_until(lambda: senders.count() >= 30, timeout=120)
            os.kill(victim, signal.SIGKILL)
            assert server.wait_for_log("restarting it in")
            assert wait_until(
                lambda: len(children_of(master)) == 2 and victim not in children_of(master)
            )
        assert senders.count() > 30
        expected = set(senders.acknowledged)
        assert wait_until(lambda: expected <= set(delivered(tmp_path)), timeout=180)
    counts = delivered(tmp_path)
    assert expected <= set(counts)
    assert {counts[rcpt] for rcpt in expected} == {1}


def test_kill9_master_under_load_loses_nothing_after_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    """kill -9 of the master stops its workers; after a restart every 250'd message has one `d`."""
    port = free_port()
    down = free_port()  # nothing listens: the queue holds what was acknowledged
    server = ServerProcess(tmp_path, config(tmp_path, port, down), wait_ports=(port,)).start()
    assert server.proc is not None
    master = server.proc.pid
    assert wait_until(lambda: len(children_of(master)) == 2)
    workers = children_of(master)
    with Senders(port, count=6, limit=40, reconnect=False) as senders:
        assert wait_until(lambda: senders.count() >= 40, timeout=120)
        server.kill9()
    assert wait_until(lambda: not any(alive(pid) for pid in workers))  # they die with it
    expected = set(senders.acknowledged)
    assert len(expected) >= 40
    server = ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,))
    with server:
        assert wait_until(lambda: expected <= set(delivered(tmp_path)), timeout=180)
    counts = delivered(tmp_path)
    assert {counts[rcpt] for rcpt in expected} == {1}
    assert set(counts.values()) == {1}


def test_reload_reaches_the_workers(tmp_path: Path, receiver: Receiver) -> None:
    """A reload that lowers max-message-size is enforced by the workers at once."""
    port = free_port()
    server = ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,))
    with server:
        assert server.proc is not None
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "s@src.test",
                ["ok-big@dst.test"],
                b"Subject: a\r\n\r\n" + (b"y" * 70 + b"\r\n") * 70,
            )
        small = config(tmp_path, port, receiver.port).replace(
            "always-allow-relaying yes", "always-allow-relaying yes\n    max-message-size 1K"
        )
        server.config.write_text(small)
        server.proc.send_signal(signal.SIGHUP)
        assert server.wait_for_log("config reloaded")

        def refused() -> bool:
            # each worker reloads on its own; try until both have (new sessions land anywhere)
            refusals = 0
            for _ in range(6):
                with smtplib.SMTP("127.0.0.1", port) as client:
                    try:
                        client.sendmail(
                            "s@src.test",
                            ["ok-2@dst.test"],
                            b"Subject: b\r\n\r\n" + (b"y" * 70 + b"\r\n") * 70,
                        )
                    except smtplib.SMTPResponseException as exc:
                        refusals += exc.smtp_code == 552
            return refusals == 6

        assert wait_until(refused, timeout=60)
        assert server.wait_for_log("[worker 1] config reloaded")
        assert server.wait_for_log("[worker 2] config reloaded")


def test_new_listener_on_reload_is_served_by_workers(tmp_path: Path, receiver: Receiver) -> None:
    """A reload adding an smtp-listener restarts the workers on the new set of sockets."""
    port, second = free_port(), free_port()
    server = ServerProcess(tmp_path, config(tmp_path, port, receiver.port), wait_ports=(port,))
    with server:
        assert server.proc is not None
        text = config(tmp_path, port, receiver.port).replace(
            f"smtp-listener 127.0.0.1:{port}\n",
            f"smtp-listener 127.0.0.1:{port}\nsmtp-listener 127.0.0.1:{second}\n",
        )
        server.config.write_text(text)
        server.proc.send_signal(signal.SIGHUP)
        assert server.wait_for_log("restarting the reception workers")
        for target in (second, port):

            def sent(target: int = target) -> bool:
                try:
                    with smtplib.SMTP("127.0.0.1", target, timeout=10) as client:
                        client.sendmail(
                            "s@src.test", [f"ok-{target}@dst.test"], b"Subject: n\r\n\r\nx\r\n"
                        )
                    return True
                except (OSError, smtplib.SMTPException):
                    return False

            assert wait_until(sent, timeout=60)
        assert wait_until(lambda: delivered(tmp_path)[f"ok-{second}@dst.test"] == 1)


MGMT_KEY = "s3cret-key"
MTACTL = str(Path(sys.executable).with_name("mtactl"))


def mtactl(mgmt: int, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MTACTL_")}
    return subprocess.run(
        [MTACTL, "--url", f"http://127.0.0.1:{mgmt}", "--api-key", MGMT_KEY, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


@pytest.mark.parametrize("action", ["refuse", "drop"])
def test_suppression_added_in_the_master_applies_at_the_next_rcpt_in_workers(
    tmp_path: Path, receiver: Receiver, action: str
) -> None:
    """An entry added through mtactl is enforced by every worker at the very next RCPT."""
    port, mgmt = free_port(), free_port()
    more = f"http-mgmt-port 127.0.0.1:{mgmt}\nhttp-api-key {MGMT_KEY}"
    text = config(tmp_path, port, receiver.port, more=more).replace(
        "always-allow-relaying yes",
        f"always-allow-relaying yes\n    suppressed-recipient-action {action}",
    )
    with ServerProcess(tmp_path, text, wait_ports=(port, mgmt)):
        for n in range(4):  # sessions land on either worker: each must see each add
            added = mtactl(mgmt, "suppression", "add", f"gone{n}@dst.test")
            assert added.returncode == 0, added.stderr
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("client.test")
                client.mail("s@src.test")
                code, _ = client.rcpt(f"gone{n}@dst.test")
                assert code == (550 if action == "refuse" else 250)
                assert client.rcpt("ok-kept@dst.test")[0] == 250
                assert client.data(b"Subject: s\r\n\r\nx\r\n")[0] == 250
        assert wait_until(lambda: delivered(tmp_path)["ok-kept@dst.test"] == 4)
        if action == "drop":
            bounced = lambda: {r["rcpt"] for r in read_acct(tmp_path / "acct.csv", "b")}  # noqa: E731
            assert wait_until(lambda: bounced() == {f"gone{n}@dst.test" for n in range(4)})
    assert not any(m for m in receiver.messages if any("gone" in r for r in m.rcpt_tos))


def status(mgmt: int) -> dict[str, Any]:
    """`show status` through the Command API, as JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", mgmt, timeout=30)
    body = urllib.parse.urlencode({"command": "show status", "format": "json"})
    headers = {"X-API-Key": MGMT_KEY, "Content-Type": "application/x-www-form-urlencoded"}
    try:
        connection.request("POST", "/command", body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    assert response.status == 200, data
    result: dict[str, Any] = json.loads(data)
    return result


def test_session_counters_of_workers_reach_the_master(tmp_path: Path, receiver: Receiver) -> None:
    """`show status` counts the sessions open in workers, and drops a killed worker's."""
    port, mgmt = free_port(), free_port()
    more = f"http-mgmt-port 127.0.0.1:{mgmt}\nhttp-api-key {MGMT_KEY}"
    text = config(tmp_path, port, receiver.port, workers="1", more=more)
    server = ServerProcess(tmp_path, text, wait_ports=(port, mgmt))
    with server:
        assert server.proc is not None

        def smtp_in() -> dict[str, int]:
            found: dict[str, int] = status(mgmt)["data"]["conn"]["smtpIn"]
            return found

        clients = [smtplib.SMTP("127.0.0.1", port, timeout=30) for _ in range(3)]
        try:
            for client in clients:
                client.ehlo("client.test")
            assert wait_until(lambda: smtp_in()["cur"] == 3)
            total = smtp_in()["total"]
            assert total >= 3  # and the start-up probe of the port
            [worker] = children_of(server.proc.pid)
            os.kill(worker, signal.SIGKILL)
            assert wait_until(lambda: smtp_in()["cur"] == 0)
            assert smtp_in()["total"] == total
        finally:
            for client in clients:
                client.close()
