"""mtactl, the console script, against the real running server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from mgmt_client import API_KEY, MgmtServer
from mgmt_client import run_mtactl as mtactl
from mx_receiver import Receiver
from server_process import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    with Receiver() as receiver:
        mgmt = MgmtServer(tmp_path_factory.mktemp("mtactl"), receiver.port).start()
        yield mgmt
        mgmt.stop()


def test_show_queues_json(server: MgmtServer) -> None:
    """`mtactl --url U --api-key K show queues --json` prints the JSON reply, exit 0."""
    server.command("pause queue cli.test")
    server.send(["a@cli.test"])
    result = mtactl("--url", server.url, "--api-key", API_KEY, "show", "queues", "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["status"] == "success"
    assert any(row["name"] == "cli.test/{default}" for row in reply["data"])


def test_text_tables_and_environment(server: MgmtServer) -> None:
    """URL and key come from MTACTL_URL / MTACTL_API_KEY; the default output is a table."""
    env = {"MTACTL_URL": server.url, "MTACTL_API_KEY": API_KEY}
    result = mtactl("show", "status", env=env)
    assert result.returncode == 0, result.stderr
    assert "Queues" in result.stdout and "Traffic" in result.stdout
    result = mtactl("pause", "queue", "cli2.test/*", env=env)
    assert result.returncode == 0 and "paused cli2.test/*" in result.stdout
    result = mtactl("show", "queues", env=env)
    assert result.stdout.splitlines()[0].split()[:3] == ["queue", "#rcpt", "kbytes"]


def test_failures_exit_non_zero(server: MgmtServer) -> None:
    """Bad arguments, refused access and an unreachable server all exit non-zero."""
    result = mtactl("--url", server.url, "--api-key", API_KEY, "pause", "queue")
    assert result.returncode == 1 and "missing argument" in result.stderr
    result = mtactl("--url", server.url, "pause", "queue", "x.test")  # monitor only
    assert result.returncode == 1 and "Access denied" in result.stderr
    result = mtactl("--url", server.url, "--api-key", "wrong", "show", "status")
    assert result.returncode == 1 and "Invalid API key" in result.stderr
    result = mtactl("--url", f"http://127.0.0.1:{free_port()}", "show", "status")
    assert result.returncode == 2 and "cannot reach" in result.stderr
    assert mtactl("--url", server.url).returncode == 2
    result = mtactl("--url", server.url, "--api-key", API_KEY, "--json", "bogus")
    assert result.returncode == 1 and json.loads(result.stdout)["status"] == "error"
