"""End to end: the monitoring endpoints in PowerMTA's shapes, on the real server.

One server (module scope) with a real receiving MX; each test uses its own
destination domains (held with `pause queue` where a test needs mail to stay queued),
so the tests do not see each other's queues. The `/status` field list is the one of
the PowerMTA 5.0 User's Guide (5.3, `/status?format=xml` and `format=json`), written
out below; JSON and XML replies are parsed back and compared with it.
"""

from __future__ import annotations

import http.client
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import start_dns_server_in_thread
from mgmt_client import API_KEY, MgmtServer, free_port, wait_until
from mx_receiver import Receiver

#: Every leaf of `data` in the guide's `/status` sample (5.3), as a dotted path.
_WINDOW = ("out.rcp", "out.msg", "out.kb", "in.rcp", "in.msg", "in.kb")
_TYPES = ("smtp", "pipe", "discard", "file", "alias", "bounceProcessor", "feedbackLoopProcessor")
GUIDE_STATUS_FIELDS = frozenset(
    [
        *(
            f"mta.{f}"
            for f in (
                "product.name",
                "product.version",
                "product.buildDate",
                "product.revision",
                "product.bits",
                "lak.serial",
                "lak.instances",
                "os.name",
                "os.version",
                "os.build",
                "cpu.type",
                "cpu.count",
                "ram.real",
                "fullHostName",
                "userString",
                "hostId",
                "webUI.protocol",
            )
        ),
        "status.timeNow",
        "status.startupTime",
        "status.shuttingDown",
        *(
            f"status.traffic.{window}.{f}"
            for window in ("total", "lastHr", "lastMin", "topPerHr", "topPerMin")
            for f in (*_WINDOW, "bounceProcessed", "feedbackLoopProcessed")
        ),
        *(
            f"status.traffic.perf.lastMin.in.{f}"
            for f in ("count", "mailFromTime", "dataTime", "totalTime")
        ),
        *(f"status.conn.{d}.{f}" for d in ("smtpIn", "smtpOut") for f in ("cur", "max", "top")),
        "status.resolver.namesCached",
        "status.resolver.queriesPending",
        "status.resolver.queriesActive",
        *(f"status.queue.{t}.{f}" for t in _TYPES for f in ("rcp", "dom", "kb")),
        "status.spool.initPct",
        "status.spool.dirs",
        "status.spool.files.inUse",
        "status.spool.files.recycled",
        "status.spool.files.total",
        "status.spool.totalRcp",
        "status.spool.maxRcp",
        "status.status",
    ]
)
#: The fields of one queue, domain, vmta and job (the guide's tables: name, #rcpt,
#: kbytes, conn, mode/paused, retry, last error; DOM output `queue[0].retryTime`...).
QUEUE_FIELDS = {
    "name",
    "domain",
    "vmta",
    "rcp",
    "msg",
    "kb",
    "conn",
    "paused",
    "mode",
    "retryTime",
    "oldest",
    "lastError",
}
ROLLUP_FIELDS = {"name", "rcp", "msg", "kb", "conn", "queues", "paused", "lastError"}
JOB_FIELDS = {"name", "rcp", "msg", "kb", "paused"}
RECIPIENT_FIELDS = {
    "queue",
    "rcpt",
    "orig",
    "jobId",
    "envId",
    "msgId",
    "state",
    "attempts",
    "retryTime",
    "timeQueued",
    "kb",
}


def leaves(data: Any, path: str = "") -> set[str]:
    if isinstance(data, dict):
        return set().union(*(leaves(v, f"{path}.{k}" if path else k) for k, v in data.items()))
    return {path}


def xml_leaves(element: ET.Element, path: str = "") -> set[str]:
    if len(element) == 0:
        return {path}
    return set().union(
        *(xml_leaves(child, f"{path}.{child.tag}" if path else child.tag) for child in element)
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def dns_port() -> Iterator[int]:
    port, stop = start_dns_server_in_thread({"mx.dns.test": [("A", "127.0.0.1")]})
    yield port
    stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, dns_port: int
) -> Iterator[MgmtServer]:
    directory: Path = tmp_path_factory.mktemp("monitor")
    mgmt = MgmtServer(directory, receiver.port)
    # refused.test goes to a port nobody listens on: queue-level failures, a last error;
    # dns.test's host is looked up in a real DNS server (namesCached)
    (directory / "conf.d" / "monitor.conf").write_text(
        f"name-server 127.0.0.1:{dns_port}\n"
        f"<domain refused.test>\n    smtp-hosts [127.0.0.1]:{free_port()}\n</domain>\n"
        f"<domain dns.test>\n    smtp-hosts mx.dns.test:{receiver.port}\n"
        "    mx-allow-private-addresses yes\n</domain>\n"
        "<virtual-mta idle-vmta>\n</virtual-mta>\n"
    )
    mgmt.start()
    yield mgmt
    mgmt.stop()


def get(server: MgmtServer, path: str, **params: str) -> tuple[int, str, bytes]:
    """GET with the query as given (no re-encoding surprises); (status, content type, body)."""
    query = urllib.parse.urlencode(params)
    connection = http.client.HTTPConnection("127.0.0.1", server.mgmt, timeout=30)
    try:
        connection.request("GET", f"{path}?{query}" if query else path)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def data(server: MgmtServer, path: str, **params: str) -> Any:
    status, reply = server.call("GET", path, params or None)
    assert status == 200, reply
    assert reply["status"] == "success" and reply["message"] == ""
    return reply["data"]


def xml_data(server: MgmtServer, path: str, **params: str) -> ET.Element:
    status, content_type, body = get(server, path, format="xml", **params)
    assert status == 200, body
    assert content_type.startswith("application/xml")
    root = ET.fromstring(body)
    assert root.tag == "rsp" and root.find("succ") is not None
    found = root.find("data")
    assert found is not None
    return found


def hold(server: MgmtServer, domain: str) -> None:
    status, reply = server.command(f"pause queue {domain}")
    assert status == 200, reply


def queued(server: MgmtServer, name: str) -> dict[str, Any] | None:
    items = data(server, "/queues", queue=name)["queue"]
    return items[0] if items else None


def test_status_json_has_the_guide_fields(server: MgmtServer) -> None:
    """/status?format=json has exactly the fields and nesting of the guide's sample."""
    found = data(server, "/status", format="json")
    assert leaves(found) == GUIDE_STATUS_FIELDS
    assert found["status"]["status"] == "running" and found["status"]["shuttingDown"] is False
    assert found["mta"]["fullHostName"] == "mta.test"
    assert found["status"]["conn"]["smtpOut"]["max"] == 1000
    assert len(found["status"]["timeNow"]) == len("2019-02-07 17:06:02")


def test_home_page_as_data(server: MgmtServer) -> None:
    """`/?format=json|xml` is the home page as data (`mta`); without format, the console."""
    home = data(server, "/", format="json")
    assert set(home) == {"mta"} and home["mta"]["product"]["name"] == "mtaserver"
    assert xml_data(server, "/").findtext("mta/fullHostName") == "mta.test"
    status, _, _ = get(server, "/")
    assert status == 302


def test_status_xml_parses_back_to_the_guide_fields(server: MgmtServer) -> None:
    """/status?format=xml is well-formed `<rsp>...<succ/></rsp>` with the guide's leaves."""
    element = xml_data(server, "/status")
    assert xml_leaves(element) == GUIDE_STATUS_FIELDS
    assert element.findtext("status/shuttingDown") == "0"
    assert element.findtext("status/queue/pipe/kb") == "0.0"


def test_status_counts_real_traffic_and_queued_mail(server: MgmtServer, receiver: Receiver) -> None:
    """Delivered and received mail shows in traffic; held mail in queue.smtp and spool."""
    server.send(["a@flow.test", "b@flow.test"])
    assert wait_until(
        lambda: sum("@flow.test" in r for m in receiver.messages for r in m.rcpt_tos) >= 2
    )

    def traffic() -> dict[str, Any]:
        return data(server, "/status")["status"]["traffic"]

    assert wait_until(lambda: traffic()["total"]["out"]["rcp"] >= 2)
    found = traffic()
    assert found["total"]["in"]["rcp"] >= 2 and found["total"]["in"]["kb"] > 0
    assert found["lastMin"]["out"]["rcp"] >= 2 and found["lastHr"]["out"]["msg"] >= 1
    assert found["topPerMin"]["out"]["rcp"] >= found["lastMin"]["out"]["rcp"] >= 2
    assert found["topPerHr"]["in"]["rcp"] >= 2

    hold(server, "held-status.test")
    server.send(["x@held-status.test", "y@held-status.test", "z@held-status.test"])
    assert wait_until(lambda: (queued(server, "held-status.test/*") or {}).get("rcp") == 3)
    status = data(server, "/status")["status"]
    assert status["queue"]["smtp"]["rcp"] >= 3 and status["queue"]["smtp"]["dom"] >= 1
    assert status["queue"]["smtp"]["kb"] > 0
    assert status["spool"]["files"]["inUse"] >= 1 and status["spool"]["totalRcp"] >= 3
    assert status["conn"]["smtpIn"]["top"] >= 1


def test_status_counts_cached_dns_names(server: MgmtServer, receiver: Receiver) -> None:
    """resolver.namesCached counts the DNS cache's answers once a host was looked up."""
    server.send(["n@dns.test"])
    assert wait_until(lambda: any("n@dns.test" in m.rcpt_tos for m in receiver.messages))
    assert data(server, "/status")["status"]["resolver"]["namesCached"] >= 1


def test_queues_fields_and_filters(server: MgmtServer) -> None:
    """/queues lists `<queue>`s with PowerMTA's fields; queue/domain/vmta/paused/mode filter."""
    hold(server, "qa.test")
    server.send(["1@qa.test", "2@qa.test"])
    assert wait_until(lambda: (queued(server, "qa.test/*") or {}).get("rcp") == 2)
    item = queued(server, "qa.test/{default}")
    assert item is not None and set(item) == QUEUE_FIELDS
    assert (item["name"], item["domain"], item["vmta"]) == (
        "qa.test/{default}",
        "qa.test",
        "{default}",
    )
    assert (item["msg"], item["paused"], item["mode"], item["conn"]) == (1, True, "normal", 0)
    assert item["kb"] > 0 and item["oldest"] != ""

    def names(**params: str) -> list[str]:
        return [q["name"] for q in data(server, "/queues", **params)["queue"]]

    assert names(domain="qa.test") == ["qa.test/{default}"]
    assert names(domain="qa.test", vmta="other") == []
    assert names(queue="*/{default}", domain="qa.test") == ["qa.test/{default}"]
    assert "qa.test/{default}" in names(paused="yes")
    assert "qa.test/{default}" not in names(paused="no")
    assert "qa.test/{default}" not in names(mode="backoff")
    assert "qa.test/{default}" not in names(connected="yes")
    assert len(names(maxitems="1")) == 1
    by_name = names(sort="name")
    assert by_name == sorted(by_name)
    by_rcpt = [q["rcp"] for q in data(server, "/queues")["queue"]]
    assert by_rcpt == sorted(by_rcpt, reverse=True)  # PowerMTA's "top queues" by default
    queues = xml_data(server, "/queues", queue="qa.test/*").findall("queue")
    assert [q.findtext("name") for q in queues] == ["qa.test/{default}"]
    assert queues[0].findtext("rcp") == "2" and queues[0].findtext("paused") == "1"


def test_domains_vmtas_and_jobs(server: MgmtServer) -> None:
    """/domains, /vmtas and /jobs roll queues up with PowerMTA's fields and filters."""
    hold(server, "rollup.test")
    server.send(["1@rollup.test", "2@rollup.test"], headers='X-Job: roll<&>"job\r\n')
    assert wait_until(lambda: (queued(server, "rollup.test/*") or {}).get("rcp") == 2)
    (domain,) = data(server, "/domains", domain="rollup.test")["domain"]
    assert set(domain) == ROLLUP_FIELDS
    assert (domain["name"], domain["rcp"], domain["queues"], domain["paused"]) == (
        "rollup.test",
        2,
        1,
        1,
    )
    vmtas = {v["name"]: v for v in data(server, "/vmtas")["vmta"]}
    assert vmtas["{default}"]["rcp"] >= 2 and vmtas["{default}"]["dom"] >= 1
    assert 0 < vmtas["{default}"]["pct"] <= 100
    assert vmtas["idle-vmta"]["rcp"] == 0  # configured, nothing queued: listed
    assert set(vmtas["idle-vmta"]) == ROLLUP_FIELDS | {"dom", "pct"}
    assert [v["name"] for v in data(server, "/vmtas", vmta="idle-*")["vmta"]] == ["idle-vmta"]
    (job,) = data(server, "/jobs", jobid='roll<&>"job')["job"]
    assert set(job) == JOB_FIELDS
    assert (job["rcp"], job["msg"], job["paused"]) == (2, 1, False) and job["kb"] > 0
    (element,) = xml_data(server, "/jobs", job="roll*").findall("job")
    assert element.findtext("name") == 'roll<&>"job'  # escaped on the way out, intact back


def test_detail_endpoints(server: MgmtServer, receiver: Receiver) -> None:
    """queueDetail, domainDetail, vmtaDetail and jobDetail show one thing with its events."""
    server.send(["d1@detail.test", "d2@detail.test"], headers="X-Job: detail-job\r\n")
    assert wait_until(
        lambda: sum("@detail.test" in r for m in receiver.messages for r in m.rcpt_tos) >= 2
    )

    def detail() -> dict[str, Any]:
        return data(server, "/queueDetail", queue="detail.test/{default}")["queue"]

    assert wait_until(lambda: len(detail()["rcptEvent"]) >= 2)
    found = detail()
    assert set(found) >= QUEUE_FIELDS and found["counters"]["deliveries"] >= 2
    event = found["rcptEvent"][-1]
    assert event["type"] == "delivered" and event["rcpt"].endswith("@detail.test")
    assert event["jobId"] == "detail-job" and event["destinationIp"] == "127.0.0.1"
    assert data(server, "/queueDetail", queue="detail.test")["queue"]["name"] == (
        "detail.test/{default}"
    )  # a bare domain is its {default} queue

    server.send(["r@refused.test"])

    def refused_events() -> bool:  # 404 until the master has queued it (after the 250)
        status, reply = server.call("GET", "/queueDetail", {"queue": "refused.test"})
        return status == 200 and reply["data"]["queue"]["event"] != []

    assert wait_until(refused_events)
    refused = data(server, "/queueDetail", queue="refused.test")["queue"]
    assert refused["lastError"] != "" and refused["event"][0]["type"] == "error"
    domain = data(server, "/domainDetail", domain="refused.test")["domain"]
    assert domain["lastError"] != "" and domain["event"] and domain["queue"][0]["rcp"] == 1
    (with_errors,) = data(server, "/domains", domain="refused.test", errors="yes")["domain"]
    assert with_errors["event"][-1]["text"] != ""
    vmta = data(server, "/vmtaDetail", vmta="idle-vmta")["vmta"]
    assert (vmta["name"], vmta["rcp"], vmta["queue"]) == ("idle-vmta", 0, [])

    hold(server, "jobdetail.test")
    server.send(["j1@jobdetail.test", "j2@jobdetail.test"], headers="X-Job: jd-7\r\n")
    assert wait_until(lambda: (queued(server, "jobdetail.test/*") or {}).get("rcp") == 2)
    job = data(server, "/jobDetail", jobid="jd-7")["job"]
    assert (job["name"], job["rcp"]) == ("jd-7", 2)
    assert job["queue"] == [{"name": "jobdetail.test/{default}", "rcp": 2}]
    root = xml_data(server, "/queueDetail", queue="refused.test")
    assert root.findtext("queue/event/type") == "error"


def test_list_queue_pages_and_filters(server: MgmtServer) -> None:
    """/listQueue pages through a queue's recipients; rcpt, orig, jobid, envid filter."""
    hold(server, "page.test")
    rcpts = [f"p{i}@page.test" for i in range(7)]
    server.send(rcpts, headers="X-Job: pager\r\n", sender="owner@src.test")
    assert wait_until(lambda: (queued(server, "page.test/*") or {}).get("rcp") == 7)
    first = data(server, "/listQueue", queue="page.test/*", maxitems="3")
    assert (first["total"], first["offset"], first["next"], len(first["recipient"])) == (7, 0, 3, 3)
    assert set(first["recipient"][0]) == RECIPIENT_FIELDS
    seen = [r["rcpt"] for r in first["recipient"]]
    offset = first["next"]
    while offset is not None:
        page = data(server, "/listQueue", queue="page.test/*", maxitems="3", offset=str(offset))
        seen += [r["rcpt"] for r in page["recipient"]]
        offset = page["next"]
    assert sorted(seen) == sorted(rcpts)  # every recipient once, across the pages
    last = data(server, "/listQueue", queue="page.test/*", maxitems="3", offset="6")
    assert (len(last["recipient"]), last["next"]) == (1, None)
    one = data(server, "/listqueue", queue="*/*", rcpt="P3@page.test")["recipient"]
    assert [(r["rcpt"], r["orig"], r["jobId"], r["state"]) for r in one] == [
        ("p3@page.test", "owner@src.test", "pager", "ready")
    ]
    assert data(server, "/listQueue", domain="page.test", orig="owner@src.test")["total"] == 7
    assert data(server, "/listQueue", domain="page.test", jobid="other")["total"] == 0
    assert data(server, "/listQueue", domain="page.test", envid="none")["total"] == 0
    element = xml_data(server, "/listQueue", queue="page.test/*", maxitems="2")
    assert element.findtext("total") == "7" and len(element.findall("recipient")) == 2
    assert element.findtext("next") == "2"


def json_paths(value: Any, path: str = "") -> set[str]:
    """The element paths XML gives for JSON data: a list repeats its key's element."""
    if isinstance(value, dict):
        found: set[str] = set()
        for key, item in value.items():
            found |= json_paths(item, f"{path}/{key}" if path else key)
        return found or {path}
    if isinstance(value, list):
        return set().union(*(json_paths(item, path) for item in value)) if value else set()
    return {path}


def xml_paths(element: ET.Element, path: str = "") -> set[str]:
    if len(element) == 0:
        return {path}
    return set().union(
        *(xml_paths(child, f"{path}/{child.tag}" if path else child.tag) for child in element)
    )


def test_xml_mirrors_json_on_every_endpoint(server: MgmtServer) -> None:
    """Every endpoint's XML has the same elements, and the same values, as its JSON."""
    hold(server, "mirror.test")
    server.send(["m1@mirror.test", "m2@mirror.test"], headers="X-Job: mirror\r\n")
    assert wait_until(lambda: (queued(server, "mirror.test/*") or {}).get("rcp") == 2)
    for path, params in (
        ("/status", {}),
        ("/queues", {"queue": "mirror.test/*", "errors": "yes"}),
        ("/domains", {"domain": "mirror.test"}),
        ("/vmtas", {}),
        ("/jobs", {"jobid": "mirror"}),
        ("/queueDetail", {"queue": "mirror.test"}),
        ("/domainDetail", {"domain": "mirror.test"}),
        ("/vmtaDetail", {"vmta": "{default}"}),
        ("/jobDetail", {"jobid": "mirror"}),
        ("/listQueue", {"queue": "mirror.test/*"}),
    ):
        found = data(server, path, **params)
        element = xml_data(server, path, **params)
        assert xml_paths(element) - {""} == json_paths(found), path
        if path == "/queueDetail":
            assert element.findtext("queue/rcp") == str(found["queue"]["rcp"])
            assert element.findtext("queue/paused") == "1" and found["queue"]["paused"] is True


def test_hostile_and_unknown_parameters_are_a_clear_400(server: MgmtServer) -> None:
    """Unknown, repeated, control-character and out-of-range parameters: a 400 naming them."""

    def refused(path: str, query: str, expect: str, code: int = 400) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.mgmt, timeout=30)
        try:
            connection.request("GET", f"{path}?{query}")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        assert response.status == code, body
        assert expect in body and "\r" not in body and "\n" not in body

    refused("/queues", "bogus=1", "bogus is not a parameter here")
    refused("/status", "queue=a", "queue is not a parameter here")
    refused("/queues", "evil%0D%0AX-Injected:%201=1", "Unknown parameter")
    refused("/queues", "queue=a%0D%0Ab", "queue contains a control character")
    refused("/queues", "queue=a&queue=b", "given more than once")
    refused("/queues", "maxitems=99999999999999999999999", "maxitems must be a whole number")
    refused("/queues", "maxitems=0", "maxitems must be a whole number")
    refused("/listQueue", "maxitems=-1", "maxitems must be a whole number")
    refused("/queues", "sort=%3Cscript%3E", "sort must be one of")
    refused("/queues", "paused=maybe", "paused must be yes or no")
    refused("/status", "format=yaml", "format must be one of")
    refused("/status", "format=json&FORMAT=xml", "format must be one of")
    status, content_type, _ = get(server, "/status", FORMAT="XML")  # names, values: any case
    assert status == 200 and content_type.startswith("application/xml")
    refused("/jobDetail", "", "jobid is required")
    refused("/queueDetail", "queue=*/*", "must be a name, not a pattern")
    refused("/listQueue", "queue=a/*&domain=b", "not both")
    refused("/queueDetail", "queue=%3Cnone%3E.test", "no queue is named", code=404)
    assert data(server, "/queues", queue="<script>/*")["queue"] == []  # a pattern, no match
    status, content_type, body = get(server, "/queueDetail", format="xml", queue="<x>&y.test")
    assert (status, content_type.split(";")[0]) == (404, "application/xml")
    root = ET.fromstring(body)
    assert root.find("fail") is not None
    assert "<x>&y.test" in (root.findtext("error/description") or "")
    status, _, body = get(server, "/queues", format="xml", foo="1")
    assert status == 400 and ET.fromstring(body).findtext("error/message") == "Unknown parameter"


def test_text_and_mtaserver_formats(server: MgmtServer) -> None:
    """json-text/xml-text carry the text an operator reads; format=mtaserver the old JSON."""
    hold(server, "fmt.test")
    server.send(["f@fmt.test"])
    assert wait_until(lambda: queued(server, "fmt.test/*") is not None)
    old = data(server, "/queues", format="mtaserver", queue="fmt.test/*")
    assert [(row["name"], row["recipients"]) for row in old] == [("fmt.test/{default}", 1)]
    assert "version" in data(server, "/status", format="mtaserver")
    text = data(server, "/queues", format="json-text", queue="fmt.test/*")
    assert "fmt.test/{default}" in text
    element = xml_data(server, "/queues", queue="fmt.test/*")
    assert element.find("queue") is not None
    status, _, body = get(server, "/queues", format="xml-text", queue="fmt.test/*")
    assert status == 200 and "fmt.test/{default}" in (ET.fromstring(body).findtext("data") or "")
    dom = data(server, "/queueDetail", format="json-text", queue="fmt.test/{default}")
    assert 'queue.name="fmt.test/{default}"' in dom.splitlines()
    status, reply = server.call("GET", "/queueDetail", {"format": "mtaserver", "queue": "fmt.test"})
    assert status == 400 and "mtaserver" in reply["message"]


def test_monitoring_needs_monitor_access(server: MgmtServer, tmp_path: Path) -> None:
    """A client below `monitor` gets a 403 before anything is read (the guard's, in JSON)."""
    other = MgmtServer(tmp_path, mx_port=9, access="127.0.0.1/32 none").start()
    try:
        for path in ("/queues", "/listQueue", "/queueDetail"):
            status, reply = other.call("GET", path, {"format": "xml"})
            assert status == 403 and reply["errors"][0]["message"] == "Access denied"
        assert other.call("GET", "/listQueue", key=API_KEY)[0] == 200
    finally:
        other.stop()
