"""Job pause end to end: the real server with a real MX, mtactl, and the console in Chromium.

Two jobs share one queue: the paused one's mail waits in the queue while the other's
arrives at the receiver; resumed, it arrives too. The console test drives the Pause
and Resume buttons of the jobs table and of a job's page as an admin, and checks the
result with `show jobs` over the command API.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from browser import chromium, console_errors
from mgmt_client import API_KEY, MgmtServer, run_mtactl, wait_until
from mx_receiver import Receiver
from refusing_mx import RefusingMX
from test_console_browser import HTML_ERROR, ConsoleServer, open_view, row_cells


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[MgmtServer]:
    mgmt = MgmtServer(tmp_path_factory.mktemp("jobpause"), receiver.port).start()
    yield mgmt
    mgmt.stop()


def arrived(receiver: Receiver, rcpt: str) -> bool:
    return any(rcpt in m.rcpt_tos for m in receiver.messages)


def jobs(server: MgmtServer) -> dict[str, dict[str, Any]]:
    status, reply = server.command("show jobs")
    assert status == 200, reply
    return {row["job"]: row for row in reply["data"]}


def waiting(server: MgmtServer, queue: str) -> list[tuple[str, str, str]]:
    status, reply = server.command(f"list --queue={queue}")
    assert status == 200, reply
    return [(r["rcpt"], r["job"], r["state"]) for r in reply["data"]["recipients"]]


def mtactl(server: MgmtServer, *args: str) -> subprocess.CompletedProcess[str]:
    return run_mtactl(*args, env={"MTACTL_URL": server.url, "MTACTL_API_KEY": API_KEY})


def test_paused_job_waits_while_the_other_job_of_the_queue_arrives(
    server: MgmtServer, receiver: Receiver
) -> None:
    """Of two jobs in one queue, the paused one's mail waits, the other's arrives;
    `mtactl resume job` releases it and it arrives."""
    status, reply = server.command("pause job 'spring sale'")
    assert (status, reply["data"]) == (200, {"job": "spring sale", "paused": True, "recipients": 0})
    server.send(["held@twojobs.test"], headers="X-Job: spring sale\r\n")
    server.send(["flows@twojobs.test"], headers="X-Job: summer\r\n")
    assert wait_until(lambda: arrived(receiver, "flows@twojobs.test"))
    assert wait_until(
        lambda: waiting(server, "twojobs.test") == [("held@twojobs.test", "spring sale", "paused")]
    )
    assert not arrived(receiver, "held@twojobs.test")
    job = jobs(server)["spring sale"]
    assert (job["paused"], job["messages"], job["recipients"]) == (True, 1, 1)
    assert "summer" not in jobs(server)
    status, reply = server.call("GET", "/queues", {"format": "mtaserver"})
    (row,) = [q for q in reply["data"] if q["name"] == "twojobs.test/{default}"]
    assert (row["paused"], row["recipients"]) == (False, 1)  # the queue itself flows
    text = mtactl(server, "show", "jobs")
    assert text.returncode == 0, text.stderr
    rows = [line.split() for line in text.stdout.splitlines()]
    assert any(row[:3] == ["spring", "sale", "1"] and row[-1] == "yes" for row in rows)
    result = mtactl(server, "resume", "job", "spring sale")
    assert result.returncode == 0, result.stderr
    assert "resumed job spring sale" in result.stdout
    assert wait_until(lambda: arrived(receiver, "held@twojobs.test"))
    assert wait_until(lambda: "spring sale" not in jobs(server))


def test_job_pause_needs_admin(server: MgmtServer) -> None:
    """Without the API key (monitor level) pause job is refused and nothing is paused."""
    status, reply = server.command("pause job refused", key=None)
    assert status == 403, reply
    assert "refused" not in jobs(server)
    status, reply = server.command("pause job")
    assert status == 400 and "missing argument" in reply["message"]


@pytest.fixture(scope="module")
def admin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    with Receiver() as good, RefusingMX(HTML_ERROR) as deferring:
        server = ConsoleServer(tmp_path_factory.mktemp("jobconsole"), "admin", good.port,
                               deferring.port)  # fmt: skip
        server.process.start()
        yield server
        server.process.stop()


def console_job(server: ConsoleServer, job: str) -> dict[str, Any] | None:
    """The job's `show jobs` row, through the command API (not the console)."""
    rows = server.command("show jobs")["data"]
    return next((row for row in rows if row["job"] == job), None)


def test_admin_pauses_and_resumes_a_job_with_the_buttons(admin: ConsoleServer) -> None:
    """The jobs table's and the job page's Pause/Resume buttons pause and resume the job,
    as `show jobs` confirms; the table and the page show the paused state."""
    # job.test defers (451, retry in 10m): the job's recipient stays queued throughout
    admin.send(["r@job.test"], "X-Job: promo-7\r\n")
    assert wait_until(lambda: console_job(admin, "promo-7") is not None)
    with chromium() as driver:
        open_view(driver, admin, "jobs")
        pause = "act-pause-job-promo-7"
        assert wait_until(lambda: driver.find_elements("id", pause))
        assert (row_cells(driver, "jobs", "promo-7") or [""] * 4)[3] == "no"
        driver.find_element("id", pause).click()
        assert wait_until(lambda: (console_job(admin, "promo-7") or {}).get("paused") is True)
        assert wait_until(lambda: (row_cells(driver, "jobs", "promo-7") or [""] * 4)[3] == "paused")
        open_view(driver, admin, "job/promo-7")
        resume = "act-resume-job-promo-7"
        assert wait_until(lambda: driver.find_elements("id", resume))
        assert driver.find_element("css selector", ".heading .sub").text.startswith("paused")
        driver.find_element("id", resume).click()
        assert wait_until(lambda: (console_job(admin, "promo-7") or {}).get("paused") is False)
        assert wait_until(lambda: driver.find_elements("id", pause))
        driver.find_element("id", pause).click()  # the page's Pause, then the table's Resume
        assert wait_until(lambda: (console_job(admin, "promo-7") or {}).get("paused") is True)
        open_view(driver, admin, "jobs")
        assert wait_until(lambda: driver.find_elements("id", resume))
        driver.find_element("id", resume).click()
        assert wait_until(lambda: (console_job(admin, "promo-7") or {}).get("paused") is False)
        assert console_errors(driver) == []
