"""The web console in a real headless Chromium, against the real server.

One server (module scope) runs with `http-access 127.0.0.1/32 admin`, another with
`http-access 127.0.0.1/32 monitor`; both route `*.test` to an aiosmtpd receiver
that accepts mail, and `html.test`, `act.test`, ... to one that defers every session
with a 451 whose text carries HTML (a `<script>` that would set `window.__pwned`,
`tests/refusing_mx.py`). Each test uses its own domains, so the order of the tests
does not matter.

Screenshots go to `tmp_path`, or to `$MTASERVER_SCREENSHOTS` (how
`docs/screenshots/` was made: `MTASERVER_SCREENSHOTS=docs/screenshots pytest
tests/test_console_browser.py -k screenshots`).
"""

from __future__ import annotations

import http.client
import json
import os
import smtplib
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, console_errors, foreign_requests, requested_urls
from mx_receiver import Receiver
from refusing_mx import RefusingMX
from server_process import ServerProcess, free_port, wait_until

HTML_ERROR = "451 4.3.0 <script>window.__pwned=1</script><b>greylisted</b> & try later"
DEFERRED_DOMAINS = ("html.test", "act.test", "del.test", "mon.test", "job.test")


@pytest.fixture(scope="module")
def good_mx() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def html_mx() -> Iterator[RefusingMX]:
    with RefusingMX(HTML_ERROR) as receiver:
        yield receiver


class ConsoleServer:
    """The real server with a management port at `access`, and a small HTTP client."""

    def __init__(self, directory: Path, access: str, good: int, deferring: int) -> None:
        self.directory = directory
        self.smtp, self.mgmt = free_port(), free_port()
        deferred = "".join(
            f"<domain {name}>\n    retry-after 10m\n    smtp-hosts [127.0.0.1]:{deferring}\n"
            "</domain>\n"
            for name in DEFERRED_DOMAINS
        )
        self.process = ServerProcess(
            directory,
            f"""
host-name console.test
postmaster postmaster@console.test
spool {directory}/spool
smtp-listener 127.0.0.1:{self.smtp}
http-mgmt-port 127.0.0.1:{self.mgmt}
http-access 127.0.0.1/32 {access}
http-api-key admin-key
<source 127.0.0.1>
    always-allow-relaying yes
    process-x-job yes
</source>
<virtual-mta-pool pool1>
    virtual-mta vmta1
</virtual-mta-pool>
<virtual-mta vmta1>
</virtual-mta>
{deferred}
<domain *>
    retry-after 1s
    smtp-hosts [127.0.0.1]:{good}
</domain>
""",
            wait_ports=(self.smtp, self.mgmt),
        )

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.mgmt}"

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.mgmt, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data), response
        return response.status, data, response

    def command(self, line: str) -> dict[str, Any]:
        body = urllib.parse.urlencode({"command": line}).encode()
        status, reply, _ = self.call(
            "POST",
            "/command",
            body,
            {"X-API-Key": "admin-key", "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200, reply
        return reply  # type: ignore[no-any-return]

    def data(self, path: str) -> Any:
        status, reply, _ = self.call("GET", path)
        assert status == 200, reply
        return reply["data"]

    def queue(self, name: str) -> dict[str, Any] | None:
        return next((q for q in self.data("/ui/api/queues") if q["name"] == name), None)

    def send(self, rcpts: list[str], headers: str = "") -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            client.sendmail("s@src.test", rcpts, f"Subject: t\r\n{headers}\r\nbody\r\n".encode())


@pytest.fixture(scope="module")
def admin(
    tmp_path_factory: pytest.TempPathFactory, good_mx: Receiver, html_mx: RefusingMX
) -> Iterator[ConsoleServer]:
    server = ConsoleServer(tmp_path_factory.mktemp("admin"), "admin", good_mx.port, html_mx.port)
    server.process.start()
    yield server
    server.process.stop()


@pytest.fixture(scope="module")
def monitor(
    tmp_path_factory: pytest.TempPathFactory, good_mx: Receiver, html_mx: RefusingMX
) -> Iterator[ConsoleServer]:
    server = ConsoleServer(
        tmp_path_factory.mktemp("monitor"), "monitor", good_mx.port, html_mx.port
    )
    server.process.start()
    yield server
    server.process.stop()


def held(server: ConsoleServer, domain: str, rcpts: int) -> str:
    """Pause `domain`'s queues, queue `rcpts` recipients there; the queue's name."""
    server.command(f"pause queue {domain}")
    server.send([f"r{i}@{domain}" for i in range(rcpts)])
    name = f"{domain}/{{default}}"
    assert wait_until(lambda: (server.queue(name) or {}).get("recipients") == rcpts)
    return name


def deferred(server: ConsoleServer, domain: str, headers: str = "") -> str:
    """Queue one recipient for `domain` and wait for the receiver's 451 to be recorded."""
    server.send([f"r@{domain}"], headers)
    name = f"{domain}/{{default}}"
    assert wait_until(lambda: "greylisted" in ((server.queue(name) or {}).get("lastError") or ""))
    return name


def row_cells(driver: Any, table: str, queue: str) -> list[str]:
    """The texts of the cells of `queue`'s row in the table with id `table`."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """
        const [table, queue] = arguments;
        for (const row of document.querySelectorAll('#' + table + ' tbody tr')) {
          const head = row.querySelector('th');
          if (head && head.textContent === queue) {
            return Array.from(row.children).map((c) => c.textContent);
          }
        }
        return null;
        """,
        table,
        queue,
    )


def open_view(driver: Any, server: ConsoleServer, view: str) -> None:
    driver.get(f"{server.origin}/ui/#{view}")
    assert wait_until(
        lambda: driver.execute_script(
            "return document.querySelector('.live').textContent"
        ).startswith("live")
    )


def test_root_redirects_to_the_console_with_a_strict_policy(admin: ConsoleServer) -> None:
    """`/` redirects to `/ui/`; page and assets carry the CSP; assets are cached by ETag."""
    status, _, response = admin.call("GET", "/")
    assert (status, response.getheader("Location")) == (302, "/ui/")
    status, page, response = admin.call("GET", "/ui/")
    assert status == 200
    policy = response.getheader("Content-Security-Policy")
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy
    assert b'<script src="/ui/static/console.js"' in page and b"<style" not in page
    status, script, response = admin.call("GET", "/ui/static/console.js")
    assert status == 200 and b"innerHTML" not in script
    assert "max-age" in response.getheader("Cache-Control")
    etag = response.getheader("ETag")
    status, _, _ = admin.call("GET", "/ui/static/console.js", headers={"If-None-Match": etag})
    assert status == 304
    assert admin.call("GET", "/ui/static/missing.js")[0] == 404


def test_status_page_shows_the_real_counts(admin: ConsoleServer) -> None:
    """The status page's queued-recipients card shows what `/status` reports."""
    held(admin, "status.test", 3)
    with chromium() as driver:
        open_view(driver, admin, "status")

        def card_matches() -> bool:
            expected = admin.data("/status?format=mtaserver")["queue"]["recipients"]
            card = driver.find_element("css selector", "#card-recipients .card-value").text
            return card == f"{expected:,}" and expected >= 3

        assert wait_until(card_matches)
        assert (
            driver.find_element("css selector", "#card-version .card-value").text
            == (admin.data("/status?format=mtaserver")["version"])
        )
        assert console_errors(driver) == []


def test_queues_table_lists_queues_with_escaped_errors(admin: ConsoleServer) -> None:
    """Both queues are listed with their counts; a 451 text with HTML shows as text."""
    paused = held(admin, "held.test", 2)
    html = deferred(admin, "html.test")
    with chromium() as driver:
        open_view(driver, admin, "queues")
        assert wait_until(lambda: row_cells(driver, "queues", html) is not None)
        held_row = row_cells(driver, "queues", paused)
        html_row = row_cells(driver, "queues", html)
        assert held_row[1:3] == ["2", "1"] and "paused" in held_row[5]
        assert html_row[1:3] == ["1", "1"]
        assert "<script>window.__pwned=1</script><b>greylisted</b>" in html_row[7]
        assert driver.execute_script("return window.__pwned === undefined")
        assert driver.execute_script("return document.querySelectorAll('main script, main b')"
                                     ".length") == 0  # fmt: skip
        assert console_errors(driver) == []


def test_chart_renders_the_servers_history(admin: ConsoleServer) -> None:
    """The traffic chart draws 60 per-minute points, with the received recipients."""
    admin.send(["c1@chart.test", "c2@chart.test"])
    assert wait_until(lambda: sum(m["received"] for m in admin.data("/ui/api/history")) >= 2)
    with chromium() as driver:
        open_view(driver, admin, "status")
        polyline = "#chart-traffic polyline[data-series='received']"
        assert wait_until(lambda: driver.find_elements("css selector", polyline))
        line = driver.find_element("css selector", polyline)
        assert line.get_attribute("data-points") == "60"
        assert len(line.get_attribute("points").split()) == 60
        label = driver.find_element("css selector", "#chart-traffic").get_attribute("aria-label")
        received = int(label.split("received ")[1].split(",")[0])
        assert received >= 2
        assert driver.find_element("css selector", "#chart-traffic").size["height"] > 50
        assert console_errors(driver) == []


def test_the_page_updates_when_mail_arrives(admin: ConsoleServer) -> None:
    """Without a reload, the queues table shows a new message's recipient."""
    name = held(admin, "live.test", 1)
    with chromium() as driver:
        open_view(driver, admin, "queues")
        assert wait_until(lambda: (row_cells(driver, "queues", name) or [""])[1:2] == ["1"])
        driver.execute_script("window.__sameDocument = true")
        admin.send(["again@live.test"])
        assert wait_until(lambda: (row_cells(driver, "queues", name) or [""])[1:2] == ["2"])
        assert driver.execute_script("return window.__sameDocument === true")


def test_admin_pauses_and_resumes_a_queue_with_the_buttons(admin: ConsoleServer) -> None:
    """The Pause and Resume buttons change the queue, as the JSON API confirms."""
    name = deferred(admin, "act.test")
    with chromium() as driver:
        open_view(driver, admin, "queues")
        pause = f"act-pause-{name}"
        assert wait_until(lambda: driver.find_elements("id", pause))
        driver.find_element("id", pause).click()
        assert wait_until(lambda: admin.queue(name)["paused"] is True)
        assert wait_until(lambda: "paused" in (row_cells(driver, "queues", name) or [""] * 6)[5])
        driver.find_element("id", f"act-resume-{name}").click()
        assert wait_until(lambda: admin.queue(name)["paused"] is False)
        assert console_errors(driver) == []


def test_admin_deletes_a_queue_after_confirming(admin: ConsoleServer) -> None:
    """Delete asks first; dismissed it keeps the mail, accepted it deletes the recipients."""
    name = deferred(admin, "del.test")
    with chromium() as driver:
        open_view(driver, admin, f"queue/{name}")
        button = f"act-delete-{name}"
        assert wait_until(lambda: driver.find_elements("id", button))
        driver.find_element("id", button).click()
        driver.switch_to.alert.dismiss()
        assert admin.queue(name)["recipients"] == 1
        driver.find_element("id", button).click()
        driver.switch_to.alert.accept()
        assert wait_until(lambda: (admin.queue(name) or {"recipients": 0})["recipients"] == 0)


def test_actions_need_the_token_and_this_origin(admin: ConsoleServer) -> None:
    """An admin POST without the token, from another origin, or a GET changes nothing."""
    name = held(admin, "csrf.test", 1)
    token = admin.data("/ui/api/session")["csrfToken"]
    body = json.dumps({"action": "resume", "queue": name}).encode()
    json_type = {"Content-Type": "application/json"}
    refused = [
        admin.call("POST", "/ui/action", body, json_type),
        admin.call("POST", "/ui/action", body, {**json_type, "X-CSRF-Token": "guess"}),
        admin.call(
            "POST",
            "/ui/action",
            body,
            {**json_type, "X-CSRF-Token": token, "Origin": "http://evil.example"},
        ),
        admin.call(
            "POST",
            "/ui/action",
            body,
            {**json_type, "X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
        ),
        admin.call(
            "POST",
            "/ui/action",
            urllib.parse.urlencode({"action": "resume", "queue": name}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": token},
        ),
    ]
    assert [status for status, _, _ in refused] == [403, 403, 403, 403, 415]
    assert admin.call("GET", "/ui/action?action=resume&queue=" + name)[0] == 405
    assert admin.queue(name)["paused"] is True
    status, reply, _ = admin.call(
        "POST", "/ui/action", body, {**json_type, "X-CSRF-Token": token, "Origin": admin.origin}
    )
    assert (status, reply["status"]) == (200, "success")
    assert wait_until(lambda: (admin.queue(name) or {"paused": False})["paused"] is False)


def test_monitor_sees_no_buttons_and_cannot_act(monitor: ConsoleServer) -> None:
    """A monitor-level page has no action buttons, and its forged POST is refused."""
    name = deferred(monitor, "mon.test")
    with chromium() as driver:
        open_view(driver, monitor, "queues")
        assert wait_until(lambda: row_cells(driver, "queues", name) is not None)
        assert driver.find_elements("css selector", "button.act") == []
        open_view(driver, monitor, "status")
        assert wait_until(lambda: driver.find_elements("id", "chart-traffic"))
        assert driver.find_elements("css selector", "button.act") == []
        assert driver.find_element("id", "level").text.endswith("monitor")
        assert console_errors(driver) == []
    session = monitor.data("/ui/api/session")
    assert (session["level"], session["canAct"]) == ("monitor", False)
    status, reply, _ = monitor.call(
        "POST",
        "/ui/action",
        json.dumps({"action": "pause", "queue": name}).encode(),
        {
            "Content-Type": "application/json",
            "X-CSRF-Token": session["csrfToken"],
            "Origin": monitor.origin,
        },  # fmt: skip
    )
    assert status == 403 and "admin" in reply["message"]
    assert monitor.queue(name)["paused"] is False


def test_every_page_loads_clean_and_stays_on_its_origin(
    admin: ConsoleServer, tmp_path: Path
) -> None:
    """Every view renders with no console error and no request off the server's origin."""
    paused = held(admin, "tour.test", 2)
    deferred(admin, "job.test", "X-Job: campaign-<i>7</i>\r\n")
    shots = Path(os.environ.get("MTASERVER_SCREENSHOTS", tmp_path))
    views = {
        "status": "#chart-traffic",
        "queues": "#queues tbody tr",
        "domains": "#domains tbody tr",
        "vmtas": "#pools tbody tr",
        "jobs": "#jobs tbody tr",
        f"queue/{paused}": "#recipients tbody tr",
        "domain/tour.test": "#domain-queues tbody tr",
        "job/campaign-<i>7</i>": "#recipients tbody tr",
    }
    urls: list[str] = []
    with chromium() as driver:
        for view, ready in views.items():
            open_view(driver, admin, urllib.parse.quote(view, safe="/"))
            assert wait_until(lambda ready=ready: driver.find_elements("css selector", ready))
            assert driver.find_element("css selector", "h1").text.lower().split()[0] in (
                view.split("/")[0],
                "virtual",
            )
            assert console_errors(driver) == [], view
            urls += requested_urls(driver)
            name = view.split("/")[0]
            driver.save_screenshot(str(shots / f"console-{name}.png"))
        assert "campaign-<i>7</i>" in driver.find_element("css selector", "h1").text
        dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
        open_view(driver, admin, "queues")
        background = "return getComputedStyle(document.body).backgroundColor"
        assert wait_until(lambda: driver.execute_script(background) == "rgb(15, 18, 22)")
        assert wait_until(lambda: driver.find_elements("css selector", "#queues tbody tr"))
        driver.save_screenshot(str(shots / "console-dark-queues.png"))
    with chromium(width=390, height=844, phone=True) as phone:
        open_view(phone, admin, "queues")
        assert wait_until(lambda: phone.find_elements("css selector", "#queues tbody tr"))
        assert phone.execute_script("return window.innerWidth") == 390
        width = phone.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390  # the table scrolls inside its box, the page does not
        phone.save_screenshot(str(shots / "console-phone-queues.png"))
        urls += requested_urls(phone)
    assert f"{admin.origin}/ui/static/console.js" in urls
    assert foreign_requests(urls, admin.origin) == []


def test_the_page_shows_when_the_server_stops_answering(
    tmp_path: Path, good_mx: Receiver, html_mx: RefusingMX
) -> None:
    """When the server goes away the page says so, and recovers when it is back."""
    server = ConsoleServer(tmp_path, "admin", good_mx.port, html_mx.port)
    server.process.start()
    try:
        with chromium() as driver:
            open_view(driver, server, "status")
            assert not driver.find_element("id", "offline").is_displayed()
            server.process.stop()
            banner = driver.find_element("id", "offline")
            assert wait_until(banner.is_displayed)
            assert "not answering" in banner.text
            assert driver.find_element("id", "live").text == "not answering"
            server.process.start()
            assert wait_until(lambda: not driver.find_element("id", "offline").is_displayed())
    finally:
        server.process.stop()


def test_keyboard_filters_and_sorts_and_keeps_focus(admin: ConsoleServer) -> None:
    """Typing filters the queues, Enter on a header sorts, focus survives live refreshes."""
    first, second = held(admin, "kb1.test", 3), held(admin, "kb2.test", 1)
    with chromium() as driver:
        open_view(driver, admin, "queues")
        box = driver.find_element("id", "filter")
        box.click()
        box.send_keys("kb")

        def names() -> list[str]:
            return driver.execute_script(  # type: ignore[no-any-return]
                "return Array.from(document.querySelectorAll('#queues tbody th'))"
                ".map((th) => th.textContent)"
            )

        assert wait_until(lambda: names() == [second, first])  # by recipients, ascending
        assert driver.switch_to.active_element.get_attribute("id") == "filter"
        active = driver.switch_to.active_element
        active.send_keys("\ue004")  # Tab: the first column header's sort button
        assert driver.switch_to.active_element.get_attribute("id") == "sort-queues-name"
        driver.switch_to.active_element.send_keys("\ue007")  # Enter
        assert wait_until(lambda: names() == [first, second])
        driver.switch_to.active_element.send_keys("\ue007")
        assert wait_until(lambda: names() == [second, first])
        header = driver.find_element("id", "sort-queues-name").find_element("xpath", "..")
        assert header.get_attribute("aria-sort") == "descending"
        stamp = driver.find_element("id", "live").text
        assert wait_until(lambda: driver.find_element("id", "live").text != stamp)  # a refresh
        assert driver.switch_to.active_element.get_attribute("id") == "sort-queues-name"
        assert driver.find_element("id", "filter").get_attribute("value") == "kb"


def test_history_survives_a_reload(admin: ConsoleServer) -> None:
    """`reload` keeps the per-minute history: the management service is not rebuilt."""
    admin.send(["h1@reload.test", "h2@reload.test", "h3@reload.test"])

    def received() -> int:
        return sum(m["received"] for m in admin.data("/ui/api/history"))

    assert wait_until(lambda: received() >= 3)
    before = received()
    assert admin.command("reload")["status"] == "success"
    assert received() >= before
