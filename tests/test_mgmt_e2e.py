"""End to end: the management port of the real server, with a real receiving MX.

One server (module scope) runs with `http-access 127.0.0.1/32 monitor` and an API key
(the `none` and no-match levels get servers of their own, since tests speak from
127.0.0.1 only); each test uses its own destination domain so the
tests do not see each other's queues.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mgmt_client import API_KEY, MgmtServer, wait_until
from mx_receiver import Receiver
from prometheus_client.parser import text_string_to_metric_families
from server_process import read_acct


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[MgmtServer]:
    mgmt = MgmtServer(tmp_path_factory.mktemp("mgmt"), receiver.port).start()
    yield mgmt
    mgmt.stop()


def arrived(receiver: Receiver, rcpt: str) -> bool:
    return any(rcpt in m.rcpt_tos for m in receiver.messages)


def queue_row(server: MgmtServer, name: str) -> dict | None:
    status, reply = server.command("show queues")
    assert status == 200
    return next((row for row in reply["data"] if row["name"] == name), None)


def acct(server: MgmtServer) -> list[dict[str, str]]:
    return read_acct(server.directory / "acct.csv")


def test_pause_holds_mail_and_resume_releases_it(server: MgmtServer, receiver: Receiver) -> None:
    """A paused queue delivers nothing to the real MX; after resume the mail arrives."""
    status, reply = server.command("pause queue sink.test/*")
    assert (status, reply["status"]) == (200, "success")
    server.send(["ok1@sink.test"])
    assert wait_until(lambda: (queue_row(server, "sink.test/{default}") or {}).get("recipients"))
    row = queue_row(server, "sink.test/{default}")
    assert row is not None and row["paused"] is True and row["messages"] == 1
    assert not wait_until(lambda: arrived(receiver, "ok1@sink.test"), timeout=2.0)
    status, paused = server.command("show queues --paused")
    assert [r["name"] for r in paused["data"]] == ["sink.test/{default}"]
    status, reply = server.command("resume queue sink.test/*")
    assert status == 200 and reply["data"]["queues"] == ["sink.test/{default}"]
    assert wait_until(lambda: arrived(receiver, "ok1@sink.test"))
    assert wait_until(lambda: (queue_row(server, "sink.test/{default}") or {}).get("delivered"))


def test_list_jobs_and_delete_by_job(server: MgmtServer, receiver: Receiver) -> None:
    """list shows waiting recipients; delete --jobId bounces only that job's (acct b)."""
    assert server.command("pause queue hold.test")[0] == 200
    server.send(["a@hold.test"], headers="X-Job: job1\r\n")
    server.send(["b@hold.test", "c@hold.test"], headers="X-Job: job2\r\n")
    assert wait_until(
        lambda: (queue_row(server, "hold.test/{default}") or {}).get("recipients") == 3
    )
    status, listing = server.command("list --queue=hold.test/*")
    assert status == 200
    rows = listing["data"]["recipients"]
    assert sorted((r["rcpt"], r["job"]) for r in rows) == [
        ("a@hold.test", "job1"),
        ("b@hold.test", "job2"),
        ("c@hold.test", "job2"),
    ]
    assert all(r["attempts"] == 0 and r["msgId"] for r in rows)
    status, jobs = server.command("show jobs")
    assert {(j["job"], j["recipients"]) for j in jobs["data"]} >= {("job1", 1), ("job2", 2)}
    status, reply = server.command("delete --queue=hold.test/* --jobId=job1")
    assert (status, reply["data"]) == (200, {"deleted": 1})
    status, listing = server.command("list --queue=hold.test --max=1")
    assert listing["data"]["total"] == 2 and listing["data"]["truncated"] is True
    assert wait_until(lambda: any(r["rcpt"] == "a@hold.test" for r in acct(server)))
    (bounce,) = [r for r in acct(server) if r["rcpt"] == "a@hold.test"]
    assert bounce["type"] == "b" and "deleted by administrator" in bounce["dsnDiag"]
    assert server.command("delete --queue=hold.test")[1]["data"] == {"deleted": 2}
    assert not arrived(receiver, "a@hold.test")


def test_set_mode_schedule_and_domain_views(server: MgmtServer) -> None:
    """set queue --mode=backoff shows in /queues; schedule and the grouped views answer."""
    assert server.command("pause queue mode.test")[0] == 200
    server.send(["x@mode.test"])
    assert wait_until(lambda: queue_row(server, "mode.test/{default}"))
    status, reply = server.command("set queue --mode=backoff mode.test/*")
    assert status == 200 and reply["data"]["queues"] == ["mode.test/{default}"]
    assert queue_row(server, "mode.test/{default}")["mode"] == "backoff"
    assert server.command("set queue --mode=normal mode.test")[0] == 200
    assert queue_row(server, "mode.test/{default}")["mode"] == "normal"
    assert server.command("schedule mode.test")[1]["status"] == "success"
    status, domains = server.call("GET", "/domains", {"format": "mtaserver"})
    (row,) = [d for d in domains["data"] if d["domain"] == "mode.test"]
    assert row["recipients"] == 1 and row["paused"] == 1
    status, vmtas = server.call("GET", "/vmtas", {"format": "mtaserver"})
    assert any(v["vmta"] == "{default}" and v["recipients"] >= 1 for v in vmtas["data"])
    server.command("resume queue mode.test")


def test_monitoring_endpoints_report_traffic(server: MgmtServer, receiver: Receiver) -> None:
    """GET /status?format=mtaserver (the pre-PowerMTA-shape JSON) counts traffic; views answer."""
    server.send(["m1@watch.test", "m2@watch.test"])
    assert wait_until(lambda: arrived(receiver, "m2@watch.test"))

    def delivered() -> int:
        status, reply = server.call("GET", "/status", {"format": "mtaserver"})
        return int(reply["data"]["traffic"]["out"]["lastMin"]["recipients"])

    assert wait_until(lambda: delivered() >= 2)
    status, reply = server.call("GET", "/status", {"format": "mtaserver"})
    data = reply["data"]
    assert data["traffic"]["in"]["lastMin"]["recipients"] >= 2
    assert data["traffic"]["in"]["total"]["bytes"] > 0
    assert data["traffic"]["out"]["lastHr"]["messages"] >= 1
    assert data["conn"]["smtpIn"]["total"] >= 1
    for path in ("/queues", "/domains", "/vmtas", "/jobs"):
        status, reply = server.call("GET", path, {"format": "mtaserver"})
        assert (status, reply["status"]) == (200, "success") and isinstance(reply["data"], list)
    status, text = server.call("GET", "/queues", {"format": "json-text"})
    assert text["data"].startswith("queue")
    assert server.call("GET", "/status", {"format": "yaml"})[0] == 400


def test_metrics_parse_as_prometheus_text(server: MgmtServer, receiver: Receiver) -> None:
    """/metrics parses with prometheus_client and counts a delivery to its queue."""
    server.send(["p@metrics.test"])
    assert wait_until(lambda: arrived(receiver, "p@metrics.test"))

    def families() -> dict:
        status, text = server.call("GET", "/metrics")
        assert status == 200
        return {f.name: f for f in text_string_to_metric_families(text)}

    def delivered() -> float:
        family = families().get("mtaserver_delivered_recipients")
        samples = family.samples if family else []
        return sum(
            s.value
            for s in samples
            if s.labels.get("queue") == "metrics.test/{default}" and s.name.endswith("_total")
        )

    assert wait_until(lambda: delivered() >= 1)
    found = families()
    assert found["mtaserver_received_messages"].type == "counter"
    assert found["mtaserver_queue_recipients"].type == "gauge"
    latency = found["mtaserver_delivery_latency_seconds"]
    assert latency.type == "histogram"
    count = [s for s in latency.samples if s.name.endswith("_count")]
    assert count and count[0].value >= 1
    connections = {s.labels["direction"] for s in found["mtaserver_connections"].samples}
    assert connections == {"in", "out"}


def test_access_levels(server: MgmtServer, receiver: Receiver) -> None:
    """monitor reads but cannot pause; the API key is admin; none and no-match get 403."""
    status, reply = server.call("GET", "/status", {"format": "json"})
    assert status == 200
    assert server.command("show queues", key=None)[0] == 200
    status, reply = server.command("pause queue access.test", key=None)
    assert status == 403 and reply["status"] == "error" and "admin" in reply["message"]
    server.send(["ok@access.test"])  # the refused pause did not happen: mail flows
    assert wait_until(lambda: arrived(receiver, "ok@access.test"))
    status, reply = server.command("pause queue access.test", key="wrong")
    assert status == 401 and reply["status"] == "error"
    assert server.command("pause queue access.test", key=API_KEY)[0] == 200
    assert server.command("resume queue access.test", key=API_KEY)[0] == 200
    for access in ("127.0.0.1/32 none", "10.9.9.9/32 monitor"):  # none, and no rule matches
        other = MgmtServer(
            server.directory / access.split("/")[0].replace(" ", "-"), receiver.port, access
        ).start()
        try:
            assert other.call("GET", "/status")[0] == 403, access
            assert other.call("GET", "/metrics")[0] == 403, access
            assert other.command("show status", key=None)[0] == 403, access
            assert other.command("show status", key=API_KEY)[0] == 200, access
        finally:
            other.stop()
    commit = {"op": "commit", "file.1.name": "x.conf", "file.1.content": ""}
    assert server.call("POST", "/configFile", commit)[0] == 403
    assert not (server.directory / "x.conf").exists()
    listing = server.call("GET", "/configFile", {"op": "listconfigfiles", "format": "json"})
    assert listing[0] == 200


def test_curl_multipart_command(server: MgmtServer) -> None:
    """`curl -F command=... -F format=json` (multipart/form-data) runs a command."""
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-H",
            f"X-API-Key: {API_KEY}",
            "-F",
            "command=show version",
            "-F",
            "format=json",
            f"{server.url}/command",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    reply = json.loads(result.stdout)
    assert reply["status"] == "success" and reply["data"]["name"] == "mtaserver"
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            f"X-API-Key: {API_KEY}",
            "-F",
            "command=pause queue",
            f"{server.url}/command",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == "400"


def test_command_request_errors(server: MgmtServer) -> None:
    """Missing command, bad format and unknown commands are 400s with a message."""
    status, reply = server.call("POST", "/command", {"format": "json"}, key=API_KEY)
    assert status == 400 and "command" in reply["message"]
    status, reply = server.call(
        "POST", "/command", {"command": "show status", "format": "yaml"}, key=API_KEY
    )
    assert status == 400 and "format" in reply["message"]
    status, reply = server.command("launch rockets")
    assert status == 400 and reply["status"] == "error" and "unknown command" in reply["message"]
    status, reply = server.command("set queue --mode=turbo x.test")
    assert status == 400 and "--mode: expected normal or backoff" in reply["message"]
    assert server.call("GET", "/command")[0] == 405


def test_cross_site_posts_are_refused_whatever_the_level(
    server: MgmtServer, receiver: Receiver
) -> None:
    """A browser form post from another site (Origin or Sec-Fetch-Site) changes nothing."""
    fields = {"command": "pause queue csrf.test/*", "format": "json"}
    for headers in (
        {"Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        status, reply = server.call("POST", "/command", fields, key=API_KEY, headers=headers)
        assert status == 403 and "Cross-site" in reply["message"], headers
    server.send(["ok1@csrf.test"])
    assert wait_until(lambda: arrived(receiver, "ok1@csrf.test"))  # never paused
    same = {"Origin": f"http://127.0.0.1:{server.mgmt}", "Sec-Fetch-Site": "same-origin"}
    status, _ = server.call("POST", "/command", fields, key=API_KEY, headers=same)
    assert status == 200
    server.send(["ok2@csrf.test"])
    assert wait_until(lambda: (queue_row(server, "csrf.test/{default}") or {}).get("paused"))
    assert server.command("resume queue csrf.test/*")[0] == 200
    assert wait_until(lambda: arrived(receiver, "ok2@csrf.test"))


def test_commit_refused_with_file_line_and_nothing_written(server: MgmtServer) -> None:
    """An invalid commit names the real FILE:LINE and leaves every file untouched."""
    conf_d = server.directory / "conf.d"
    before = (conf_d / "domains.conf").read_bytes()
    main_before = (server.directory / "mtaserver.conf").read_bytes()
    fields = {
        "op": "commit",
        "file.1.name": "conf.d/domains.conf",
        "file.1.op": "write",
        "file.1.content": "<domain hold.test>\n    max-smtp-out lots\n</domain>\n",
        "file.2.name": "conf.d/new.conf",
        "file.2.content": "# fine on its own\n",
    }
    status, reply = server.call("POST", "/configFile", fields, key=API_KEY)
    assert status == 400 and reply["status"] == "error"
    real = os.path.realpath(conf_d / "domains.conf")
    assert any(line.startswith(f"{real}:2:") for line in reply["data"]), reply
    assert "mtaserver-config-" not in json.dumps(reply)  # the mirror's name never leaks
    assert (conf_d / "domains.conf").read_bytes() == before
    assert (server.directory / "mtaserver.conf").read_bytes() == main_before
    assert sorted(os.listdir(conf_d)) == ["domains.conf"]


def test_commit_writes_and_reload_applies(server: MgmtServer) -> None:
    """A valid commit is written (read back), changes nothing until `reload`."""
    content = "<domain hold.test>\n    max-smtp-out 2\n</domain>\n<domain commit.test>\n</domain>\n"
    fields = {
        "op": "commit",
        "file.1.name": "conf.d/domains.conf",
        "file.1.op": "write",
        "file.1.content": content,
    }
    status, reply = server.call("POST", "/configFile", fields, key=API_KEY)
    assert (status, reply["status"]) == (200, "success"), reply
    assert (server.directory / "conf.d" / "domains.conf").read_text() == content
    status, read = server.call(
        "GET",
        "/configFile",
        {"op": "read", "filename": "conf.d/domains.conf", "format": "json-text"},
        key=API_KEY,
    )
    assert (status, read["data"]) == (200, content)
    assert "commit.test" not in server.command("show settings")[1]["data"]["domains"]
    status, reply = server.command("reload")
    assert (status, reply["status"]) == (200, "success")
    assert "commit.test" in server.command("show settings")[1]["data"]["domains"]
    status, files = server.call("GET", "/configFile", {"op": "listconfigfiles", "format": "json"})
    assert files["data"] == ["mtaserver.conf", os.path.join("conf.d", "domains.conf")]


def test_path_traversal_is_refused(server: MgmtServer, tmp_path: Path) -> None:
    """`../x`, absolute names and symlinks leading outside are 403 for read and commit."""
    outside = tmp_path / "outside.conf"
    outside.write_text("secret\n")
    link = server.directory / "conf.d" / "escape.txt"
    link.symlink_to(outside)
    try:
        for name in (
            "../outside.conf",
            "/etc/passwd",
            str(outside),
            "conf.d/escape.txt",
            "conf.d/../../x",
            "",
        ):
            status, reply = server.call(
                "GET", "/configFile", {"op": "read", "filename": name}, key=API_KEY
            )
            assert status == 403, (name, reply)
            fields = {"op": "commit", "file.1.name": name, "file.1.content": "x\n"}
            status, reply = server.call("POST", "/configFile", fields, key=API_KEY)
            assert status == 403, (name, reply)
        assert outside.read_text() == "secret\n"
        assert not (server.directory.parent / "x").exists()
        assert server.command("test config ../outside.conf")[0] == 400
    finally:
        link.unlink()


def test_test_config_and_failed_reload_change_nothing(server: MgmtServer) -> None:
    """test config reports FILE:LINE; a failing reload keeps the running config."""
    broken = server.directory / "broken.conf"
    broken.write_text("host-name ok.test\nno-such-directive 1\n")
    status, reply = server.command("test config broken.conf")
    assert status == 400 and reply["status"] == "error"
    (problem,) = reply["data"]
    assert problem.startswith(f"{os.path.realpath(broken)}:2: ") and "no-such-directive" in problem
    status, reply = server.command("test config")
    assert (status, reply["status"]) == (200, "success")
    include = server.directory / "conf.d" / "domains.conf"
    good = include.read_text()
    include.write_text(good + "bogus-line here\n")
    try:
        status, reply = server.command("reload")
        assert status == 400 and any(":" in line and "bogus-line" in line for line in reply["data"])
        assert server.command("show status")[0] == 200
    finally:
        include.write_text(good)
        broken.unlink()
    assert server.command("reload")[0] == 200


def test_rotate_acct_and_reset_counters(server: MgmtServer) -> None:
    """rotate acct rotates the acct file; reset counters zeroes the since-start figures."""
    status, reply = server.command("rotate acct")
    assert (status, reply["data"]) == (200, {"rotated": 1})
    status, reply = server.command("reset counters")
    assert status == 200
    status, reply = server.command("show status")
    assert reply["data"]["traffic"]["out"]["total"]["recipients"] == 0
    assert all(r["delivered"] == 0 for r in server.command("show queues")[1]["data"])
    status, text = server.call(
        "POST", "/command", {"command": "show status", "format": "json-text"}, key=API_KEY
    )
    assert "Queues" in text["data"] and "Last Hour" in text["data"]


def test_openapi_document_is_served(server: MgmtServer) -> None:
    """/api/v1/openapi.json is an OpenAPI 3 document listing every endpoint."""
    status, document = server.call("GET", "/api/v1/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert {
        "/command",
        "/configFile",
        "/status",
        "/queues",
        "/domains",
        "/vmtas",
        "/jobs",
        "/metrics",
        "/api/v1/transmissions",
    } <= set(document["paths"])
