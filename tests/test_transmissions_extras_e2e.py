"""Transmissions API extras end to end: start_time, ip_pool, smtputf8, unsupported fields.

The real server (`twistd -n mtaserver`) with its HTTPS Transmissions API, driven by
the unmodified `sparkpost` client (and `requests` for what the client cannot send),
delivering to aiosmtpd receivers on loopback; the management port's Command API
shows the queues, and the acct file what happened.
"""

from __future__ import annotations

import calendar
import copy
import email
import email.policy
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from mgmt_client import reply_data
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, read_acct, wait_until
from sparkpost import SparkPost
from sparkpost.exceptions import SparkPostAPIException

API_KEY = "extras_key_0123456789_0123456789_abcdef"
MGMT_KEY = "extras-mgmt-key"

CONFIG = """
host-name api.example.test
spool {dir}/spool
http-mgmt-port 127.0.0.1:{mgmt_port}
http-access 127.0.0.1/32 monitor
http-api-key {mgmt_key}
<transmissions-api-listener 127.0.0.1:{api_port}>
  tls-certificate {pem}
</transmissions-api-listener>
<transmissions-api>
  api-key {key}
  max-request-size 64K
</transmissions-api>
<virtual-mta vm-a>
  smtp-source-host 127.0.0.1 a.out.test
</virtual-mta>
<virtual-mta vm-b>
  smtp-source-host 127.0.0.1 b.out.test
</virtual-mta>
<virtual-mta-pool pool1>
  virtual-mta vm-a
  virtual-mta vm-b
</virtual-mta-pool>
<domain *>
  smtp-hosts [127.0.0.1]:{mx_port}
  use-starttls no
  retry-after 1s
</domain>
<acct-file {dir}/acct.csv>
  records r,d,b,t
</acct-file>
"""


class Server:
    """The server on `tmp_path` with its API (HTTPS), management port and acct file."""

    def __init__(self, tmp_path: Path, ca: trustme.CA, mx_port: int) -> None:
        pem = tmp_path / "api.pem"
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.bundle = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(self.bundle))
        self.api_port, self.mgmt_port = free_port(), free_port()
        self.acct = tmp_path / "acct.csv"
        config = CONFIG.format(
            dir=tmp_path,
            api_port=self.api_port,
            mgmt_port=self.mgmt_port,
            mgmt_key=MGMT_KEY,
            pem=pem,
            key=API_KEY,
            mx_port=mx_port,
        )
        self.process = ServerProcess(tmp_path, config, wait_ports=(self.api_port, self.mgmt_port))

    def sparkpost(self) -> SparkPost:
        return SparkPost(API_KEY, base_uri=f"127.0.0.1:{self.api_port}")

    def post(self, path: str, body: Any, key: str = API_KEY) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(
            f"https://127.0.0.1:{self.api_port}{path}",
            data=data,
            headers={"Authorization": key, "Content-Type": "application/json"},
            verify=str(self.bundle),
            timeout=30,
        )

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's `data` (JSON)."""
        return reply_data(self.mgmt_port, "GET", path, key=MGMT_KEY)

    def command(self, line: str) -> Any:
        """One Command API command (JSON); its `data`."""
        fields = {"command": line, "format": "json"}
        return reply_data(self.mgmt_port, "POST", "/command", fields, key=MGMT_KEY)


@contextmanager
def running_server(
    tmp_path: Path, ca: trustme.CA, mx_port: int, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    """A started `Server` whose CA the `sparkpost` client trusts (`REQUESTS_CA_BUNDLE`)."""
    running = Server(tmp_path, ca, mx_port)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(running.bundle))
    with running.process:
        yield running


@pytest.fixture
def server(
    tmp_path: Path, ca: trustme.CA, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    with running_server(tmp_path, ca, receiver.port, monkeypatch) as running:
        yield running


def iso(at: float) -> str:
    """SparkPost's start_time format, with a non-UTC offset to exercise offsets."""
    return datetime.fromtimestamp(at, UTC).astimezone().isoformat(timespec="seconds")


def acct_time(row: dict[str, str]) -> int:
    return calendar.timegm(time.strptime(row["timeLogged"], "%Y-%m-%d %H:%M:%S+0000"))


def spool_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "spool" / "msg").rglob("*") if p.is_file()]


# -- start_time ------------------------------------------------------------------------


def test_start_time_holds_the_message_until_then_and_survives_a_crash(
    server: Server, receiver: Receiver, tmp_path: Path
) -> None:
    """A future start_time: shown as scheduled, kept across kill -9, delivered not before it."""
    start = int(time.time()) + 25
    result = server.sparkpost().transmissions.send(
        recipients=["ok-later@dest.example"],
        text="later",
        from_email="sender@api.example.test",
        subject="scheduled",
        start_time=iso(start),
    )
    assert result["total_accepted_recipients"] == 1
    listing = server.command("list --queue=dest.example/*")
    assert [(r["rcpt"], r["state"], r["nextAttempt"]) for r in listing["recipients"]] == [
        ("ok-later@dest.example", "scheduled", start)
    ]
    (queue,) = server.command("show queues")
    assert (queue["recipients"], queue["scheduled"]) == (1, 1)
    (row,) = server.monitor("/queues?format=mtaserver")
    assert (row["recipients"], row["scheduled"]) == (1, 1)
    (item,) = server.monitor("/queues")["queue"]
    assert item["rcp"] == 1 and item["retryTime"]  # PowerMTA's shape: the start time

    server.process.kill9()
    server.process.start()
    listing = server.command("list --queue=dest.example/*")
    assert [(r["state"], r["nextAttempt"]) for r in listing["recipients"]] == [("scheduled", start)]

    assert wait_until(lambda: read_acct(server.acct, "d"), timeout=90), server.process.read_log()
    (delivered,) = read_acct(server.acct, "d")
    assert acct_time(delivered) >= start
    assert [m.rcpt_tos for m in receiver.messages] == [["ok-later@dest.example"]]
    assert wait_until(lambda: not spool_files(tmp_path))


def test_start_time_in_the_past_or_now_sends_at_once(server: Server, receiver: Receiver) -> None:
    """A start_time in the past (and `now`) is sent without being held."""
    sp = server.sparkpost()
    for when in (iso(time.time() - 3600), "now"):
        sp.transmissions.send(
            recipients=["ok-now@dest.example"],
            text="now",
            from_email="sender@api.example.test",
            start_time=when,
        )
    assert wait_until(lambda: len(read_acct(server.acct, "d")) == 2)
    assert server.command("list --queue=dest.example/*")["total"] == 0


@pytest.mark.parametrize(
    ("start_time", "code", "text"),
    [
        ("in ten minutes", 400, "ISO 8601"),
        ("2030-01-01T10:00:00", 400, "offset"),
        (12345, 400, "string"),
        ("9999-12-31T23:59:59+00:00", 422, "3 days"),
    ],
)
def test_bad_start_times_are_refused(
    server: Server, tmp_path: Path, start_time: Any, code: int, text: str
) -> None:
    """A start_time that is not ISO 8601 with an offset (400), or too far ahead (422)."""
    body = {
        "options": {"start_time": start_time},
        "recipients": [{"address": "ok@dest.example"}],
        "content": {"from": "s@api.example.test", "text": "x"},
    }
    response = server.post("/api/v1/transmissions", body)
    assert response.status_code == code, response.text
    assert text in response.json()["errors"][0]["description"]
    assert "start_time" in response.json()["errors"][0]["description"]
    assert spool_files(tmp_path) == []


# -- ip_pool ---------------------------------------------------------------------------


def test_ip_pool_sends_through_the_pools_virtual_mtas(server: Server, receiver: Receiver) -> None:
    """options.ip_pool: the messages go out through the pool's members (acct vmta, vmtaPool)."""
    sp = server.sparkpost()
    for n in range(2):
        sp.transmissions.send(
            recipients=[f"ok-pool{n}@dest.example"],
            text="pooled",
            from_email="sender@api.example.test",
            ip_pool="pool1",
        )
    assert wait_until(lambda: len(read_acct(server.acct, "d")) == 2)
    delivered = read_acct(server.acct, "d")
    assert {r["vmtaPool"] for r in delivered} == {"pool1"}
    assert sorted(r["vmta"] for r in delivered) == ["vm-a", "vm-b"]
    assert sorted(m.helo for m in receiver.messages) == ["a.out.test", "b.out.test"]


def test_unknown_ip_pool_is_422_naming_it(server: Server, tmp_path: Path) -> None:
    """An ip_pool that is no <virtual-mta-pool> (a vmta's name included) is a 422 naming it."""
    sp = server.sparkpost()
    for name in ("nosuch-pool", "vm-a"):
        with pytest.raises(SparkPostAPIException) as info:
            sp.transmissions.send(
                recipients=["ok@dest.example"],
                text="x",
                from_email="sender@api.example.test",
                ip_pool=name,
            )
        assert info.value.status == 422
        assert name in str(info.value)
    assert spool_files(tmp_path) == []


# -- smtputf8 --------------------------------------------------------------------------


def test_smtputf8_with_ascii_addresses_is_delivered_without_smtputf8(
    tmp_path: Path, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """options.smtputf8 with all-ASCII addresses: a receiver without SMTPUTF8 takes the mail."""
    plain = Receiver(smtputf8=False)
    try:
        with running_server(tmp_path, ca, plain.port, monkeypatch) as running:
            response = running.post(
                "/api/v1/transmissions",
                {
                    "options": {"smtputf8": True},
                    "recipients": [{"address": "ok-ascii@dest.example"}],
                    "content": {
                        "from": {"email": "sender@api.example.test", "name": "Ren\u00e9"},
                        "subject": "D\u00e9j\u00e0 vu",
                        "text": "caf\u00e9",
                    },
                },
            )
            assert response.status_code == 200, response.text
            assert wait_until(lambda: read_acct(running.acct, "d")), running.process.read_log()
        (message,) = plain.messages
        assert not any("SMTPUTF8" in o.upper() for o in message.mail_options)
        head = message.data.split(b"\r\n\r\n", 1)[0]
        assert head.isascii()  # the non-ASCII subject and name as RFC 2047 words
        parsed = email.message_from_bytes(message.data, policy=email.policy.default)
        assert parsed["Subject"] == "D\u00e9j\u00e0 vu"
    finally:
        plain.stop()


# -- fields never ignored --------------------------------------------------------------


def with_changes(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of the request body `base` with `changes`; `content_X=` sets `content.X`."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if key.startswith("content_"):
            result["content"][key.removeprefix("content_")] = value
        else:
            result[key] = value
    return result


BODY: dict[str, Any] = {
    "recipients": [{"address": "ok@dest.example"}],
    "content": {"from": "s@api.example.test", "subject": "s", "text": "x"},
}


def body(**changes: Any) -> dict[str, Any]:
    return with_changes(BODY, **changes)


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        (body(options={"open_tracking": True}), "options.open_tracking"),
        (body(options={"click_tracking": True}), "options.click_tracking"),
        (body(options={"inline_css": True}), "options.inline_css"),
        (body(options={"sandbox": True}), "options.sandbox"),
        (body(options={"fast_lane": True}), "options.fast_lane"),
        (body(recipients={"list_id": "my-list"}), "recipients.list_id"),
        (body(content_amp_html="<p>amp</p>"), "content.amp_html"),
        (body(content_body="typo for text"), "content.body"),
        (body(campaign="typo for campaign_id"), "campaign"),
        (
            body(recipients=[{"address": "ok@dest.example", "substitution": {}}]),
            "recipients[0].substitution",
        ),
        (
            body(recipients=[{"address": {"email": "ok@dest.example", "mail": "x"}}]),
            "recipients[0].address.mail",
        ),
    ],
)
def test_unsupported_and_unknown_fields_are_422_naming_them(
    server: Server, tmp_path: Path, request_body: dict[str, Any], field: str
) -> None:
    """A field this server cannot honour, or does not know, is a 422 naming it; nothing spooled."""
    response = server.post("/api/v1/transmissions", request_body)
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"][0]["description"]
    assert spool_files(tmp_path) == []


def test_tracking_options_set_to_false_and_metadata_are_accepted(
    server: Server, receiver: Receiver
) -> None:
    """Options that ask for nothing (false), metadata, tags and description are accepted."""
    request_body = body(
        options={"open_tracking": False, "click_tracking": False, "transactional": False},
        description="a test",
        metadata={"k": "v"},
        recipients=[{"address": "ok-meta@dest.example", "tags": ["a"], "metadata": {"x": 1}}],
    )
    response = server.post("/api/v1/transmissions", request_body)
    assert response.status_code == 200, response.text
    assert wait_until(lambda: receiver.messages)


# -- transactional and skip_suppression ------------------------------------------------


def test_transactional_and_skip_suppression_follow_sparkposts_rules(
    server: Server, receiver: Receiver
) -> None:
    """transactional: only transactional entries refuse; skip_suppression: none does."""
    for rcpt, entry in (
        ("ok-nt@dest.example", {"type": "non_transactional"}),
        ("ok-both@dest.example", {}),
    ):
        response = requests.put(
            f"https://127.0.0.1:{server.api_port}/api/v1/suppression-list/{rcpt}",
            json=entry,
            headers={"Authorization": API_KEY},
            verify=str(server.bundle),
            timeout=30,
        )
        assert response.status_code == 200, response.text

    def send(options: dict[str, Any]) -> requests.Response:
        return server.post(
            "/api/v1/transmissions",
            body(
                options=options,
                recipients=[{"address": "ok-nt@dest.example"}, {"address": "ok-both@dest.example"}],
            ),
        )

    refused = send({})
    assert refused.status_code == 400 and "All recipients rejected" in refused.text
    results = send({"transactional": True}).json()["results"]
    assert results["total_accepted_recipients"] == 1
    assert [e["code"] for e in results["rcpt_to_errors"]] == ["1902"]
    assert "ok-both@dest.example" in results["rcpt_to_errors"][0]["description"]
    results = send({"skip_suppression": True}).json()["results"]
    assert results["total_accepted_recipients"] == 2
    assert wait_until(lambda: sum(len(m.rcpt_tos) for m in receiver.messages) == 3)
    delivered = sorted(r for m in receiver.messages for r in m.rcpt_tos)
    assert delivered == ["ok-both@dest.example", "ok-nt@dest.example", "ok-nt@dest.example"]


def test_hostile_option_values_are_400_naming_the_option(server: Server, tmp_path: Path) -> None:
    """Control characters, wrong types and oversized names in options: a 400 naming it."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ip_pool": "pool1\r\nX-Injected: yes"}, "options.ip_pool"),
        ({"ip_pool": ""}, "options.ip_pool"),
        ({"ip_pool": 5}, "options.ip_pool"),
        ({"ip_pool": "p" * 300}, "options.ip_pool"),
        ({"start_time": "2030-01-01T00:00:00+00:00\r\nX: y"}, "options.start_time"),
        ({"start_time": ["now"]}, "options.start_time"),
        ({"transactional": "yes"}, "options.transactional"),
        ({"skip_suppression": 1}, "options.skip_suppression"),
        ({"perform_substitutions": "false"}, "options.perform_substitutions"),
        ({"open_tracking": "no"}, "options.open_tracking"),
    ]
    for options, field in cases:
        response = server.post("/api/v1/transmissions", body(options=options))
        assert response.status_code == 400, (options, response.text)
        assert field in response.json()["errors"][0]["description"], options
    response = server.post("/api/v1/transmissions", body(options=["start_time"]))
    assert response.status_code == 400 and "options must be an object" in response.text
    assert spool_files(tmp_path) == []
