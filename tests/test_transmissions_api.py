"""The Transmissions API in front of a real spool: in-process over StubTreq, and a real socket.

Most tests drive the Klein resource with `treq.testing.StubTreq`, with thread work run
inline and a `task.Clock` (`StubApiServer`: no socket, no thread, fast). A few
smoke tests (`real_server`, and the `any_server` ones) run the API on the reactor
thread of `reactor_thread`, over plain HTTP on 127.0.0.1, driven by raw http.client.
`accepted` collects what the API hands to the scheduler. Every error code has a test,
and every refused request is checked to have spooled nothing.
"""

from __future__ import annotations

import base64
import email
import email.policy
import errno
import http.client
import json
import os
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from reactor_thread import run_in_reactor, run_in_thread
from smtp_helpers import holder_from_text
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.server import Site

from mtaserver.events import Envelope
from mtaserver.http.transmissions import TransmissionsAPI
from mtaserver.spool import Journal, MessageStore, open_spool, recover
from mtaserver.spool.fileops import FileOps
from mtaserver.spool.testing import run_now

KEY = "api_key_0123456789_0123456789_0123456789"
OTHER_KEY = "second_key_0123456789_0123456789_0123456"

CONFIG = """
host-name api.example.test
<transmissions-api>
  api-key {key}
  api-key {other}
  max-request-size 64K
</transmissions-api>
<source {{transmissions-api}}>
  process-x-job yes
  process-x-virtual-mta yes
  max-message-size 32K
{source_extra}
</source>
<virtual-mta blue>
  smtp-source-host 127.0.0.1 blue.example.test
</virtual-mta>
"""


def failing_fdatasync(fd: int) -> None:
    raise OSError(errno.EIO, "injected I/O error")


class ApiServer:
    """TransmissionsAPI on 127.0.0.1 over a spool in `directory`."""

    def __init__(self, directory: Path, config: str, min_free: int = 0, broken: bool = False):
        self.directory = directory
        self.spool = str(directory / "spool")
        self.holder = holder_from_text(config, str(directory))
        self.accepted: list[Envelope] = []

        def start() -> Any:
            if broken:
                recover(self.spool)
                self.journal = Journal(os.path.join(self.spool, "journal"), run_in_thread)
                self.store = MessageStore(
                    self.spool,
                    self.journal,
                    run_in_thread,
                    file_ops=FileOps(fdatasync=failing_fdatasync),
                )
            else:
                _, self.journal, self.store = open_spool(
                    self.spool, run_in_thread, min_free_space=min_free
                )
            self.api = TransmissionsAPI(self.holder, self.store, self.accepted.append, reactor)
            site = Site(self.api.app.resource())
            return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)

        self.port = run_in_reactor(start)

    def request(
        self,
        body: Any,
        method: str = "POST",
        path: str = "/api/v1/transmissions",
        key: str | None = KEY,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port.getHost().port, timeout=10)
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = key
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data if method != "GET" else None, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        conn.close()
        return response.status, json.loads(raw), response

    def body(self, msg_id: str) -> bytes:
        return run_in_reactor(self.store.read_body, msg_id)  # type: ignore[no-any-return]

    def message(self, envelope: Envelope) -> EmailMessage:
        parsed = email.message_from_bytes(self.body(envelope.msg_id), policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    def spooled_files(self) -> list[str]:
        found = []
        for _root, _dirs, files in os.walk(os.path.join(self.spool, "msg")):
            found.extend(files)
        return found

    def stop(self) -> None:
        run_in_reactor(self.port.stopListening)
        run_in_reactor(self.journal.close)


class StubResponse:
    """The part of `http.client.HTTPResponse` the tests read, from a treq response."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def getheader(self, name: str) -> str | None:
        values = self.response.headers.getRawHeaders(name)
        return values[0] if values else None


class StubApiServer(ApiServer):
    """The same API and spool in-process: StubTreq, thread work inline, a task.Clock."""

    def __init__(self, directory: Path, config: str, min_free: int = 0, broken: bool = False):
        self.directory = directory
        self.spool = str(directory / "spool")
        self.holder = holder_from_text(config, str(directory))
        self.accepted: list[Envelope] = []
        self.clock = task.Clock()
        if broken:
            recover(self.spool)
            self.journal = Journal(os.path.join(self.spool, "journal"), run_now)
            self.store = MessageStore(
                self.spool, self.journal, run_now, file_ops=FileOps(fdatasync=failing_fdatasync)
            )
        else:
            _, self.journal, self.store = open_spool(self.spool, run_now, min_free_space=min_free)
        self.api = TransmissionsAPI(
            self.holder, self.store, self.accepted.append, self.clock, run_in_thread=run_now
        )
        self.treq = StubTreq(self.api.app.resource())

    def request(  # type: ignore[override]
        self,
        body: Any,
        method: str = "POST",
        path: str = "/api/v1/transmissions",
        key: str | None = KEY,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any], StubResponse]:
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = key
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        answer = self.treq.request(
            method, f"http://127.0.0.1{path}", data=data if method != "GET" else None,
            headers=headers,
        )  # fmt: skip
        self.treq.flush()
        response = self.result(answer)
        raw = self.result(self.treq.content(response))
        return response.code, json.loads(raw), StubResponse(response)

    def result(self, d: Any) -> Any:
        """The result of a Deferred that StubTreq has already fired."""
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "the request did not finish in-process"
        if hasattr(results[0], "raiseException"):
            results[0].raiseException()
        return results[0]

    def body(self, msg_id: str) -> bytes:
        return self.result(self.store.read_body(msg_id))  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.journal.close()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    servers: list[ApiServer] = []

    def make(
        extra: str = "", min_free: int = 0, broken: bool = False, real: bool = False
    ) -> ApiServer:
        directory = tmp_path / f"api{len(servers)}"
        directory.mkdir()
        config = CONFIG.format(key=KEY, other=OTHER_KEY, source_extra=extra)
        kind = ApiServer if real else StubApiServer
        server = kind(directory, config, min_free=min_free, broken=broken)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: Any) -> ApiServer:
    """The API in-process over StubTreq."""
    return make_server()  # type: ignore[no-any-return]


@pytest.fixture(params=["stub", "socket"])
def any_server(make_server: Any, request: pytest.FixtureRequest) -> ApiServer:
    """The API both in-process and on a real loopback socket (the smoke tests)."""
    return make_server(real=request.param == "socket")  # type: ignore[no-any-return]


def content(**extra: Any) -> dict[str, Any]:
    base = {"from": "sender@api.example.test", "subject": "Hello", "text": "Hi there"}
    base.update(extra)
    return base


def transmission(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "recipients": [{"address": "rcpt@dest.example"}],
        "content": content(),
    }
    body.update(extra)
    return body


def assert_error(status: int, reply: dict[str, Any], code: int, text: str) -> None:
    assert status == code, reply
    assert set(reply) == {"errors"}
    assert text in json.dumps(reply["errors"][0])
    assert "message" in reply["errors"][0]


# -- success ------------------------------------------------------------------------


def test_a_plain_transmission_is_spooled_and_queued(any_server: ApiServer) -> None:
    """200 with SparkPost's results; the envelope is from the API and the body is CRLF."""
    status, reply, _ = any_server.request(
        transmission(return_path="bounces@api.example.test", campaign_id="summer")
    )
    assert status == 200, reply
    assert reply["results"]["total_accepted_recipients"] == 1
    assert reply["results"]["total_rejected_recipients"] == 0
    [envelope] = any_server.accepted
    assert reply["results"]["id"] == envelope.msg_id
    assert envelope.src_type == "api" and envelope.src_mta == "127.0.0.1"
    assert envelope.sender == "bounces@api.example.test"
    assert envelope.job_id == "summer"
    assert [r.address for r in envelope.recipients] == ["rcpt@dest.example"]
    body = any_server.body(envelope.msg_id)
    assert b"\n" not in body.replace(b"\r\n", b"")
    assert body.startswith(b"Received: from [127.0.0.1]\r\n\tby api.example.test (mtaserver)")
    parsed = any_server.message(envelope)
    assert parsed["Message-ID"] == f"<{envelope.msg_id}@api.example.test>"
    assert parsed["Date"]
    stats = any_server.api.stats  # shared with SMTP reception: monitoring's traffic in
    assert (stats.messages_received, stats.recipients_received) == (1, 1)
    assert stats.bytes_received == envelope.size > 0


def test_email_rfc822_lf_only_is_stored_with_crlf(server: ApiServer) -> None:
    """An rfc822 message with bare LF endings is stored with CRLF, X-headers taken out."""
    raw = "From: a@b.example\nX-Job: j9\nX-Virtual-MTA: blue\nSubject: s\n\nline1\nline2"
    status, reply, _ = server.request(
        {
            "return_path": "rp@api.example.test",
            "recipients": [{"address": "x@dest.example"}, "y@dest.example"],
            "content": {"email_rfc822": raw},
        }
    )
    assert status == 200, reply
    [envelope] = server.accepted
    assert [r.address for r in envelope.recipients] == ["x@dest.example", "y@dest.example"]
    assert envelope.job_id == "j9" and envelope.vmta == "blue"
    body = server.body(envelope.msg_id)
    assert b"From: a@b.example\r\nSubject: s\r\nMessage-ID: <" in body
    assert body.endswith(b"\r\n\r\nline1\r\nline2\r\n")
    assert b"X-Job" not in body and b"X-Virtual-MTA" not in body


def test_campaign_id_wins_over_x_job(server: ApiServer) -> None:
    """campaign_id is the job id even when content.headers carry an X-Job."""
    status, _, _ = server.request(
        transmission(campaign_id="camp", content=content(headers={"X-Job": "hdr"}))
    )
    assert status == 200
    assert server.accepted[0].job_id == "camp"
    assert b"X-Job" not in server.body(server.accepted[0].msg_id)


def test_recipient_return_path_splits_messages(server: ApiServer) -> None:
    """Recipients with different return paths go in different messages with those senders."""
    status, reply, _ = server.request(
        {
            "return_path": "main@api.example.test",
            "recipients": [
                {"address": "a@dest.example"},
                {"address": "b@dest.example", "return_path": "other@api.example.test"},
                {"address": "c@dest.example"},
            ],
            "content": {"email_rfc822": "Subject: x\r\n\r\nbody\r\n"},
        }
    )
    assert status == 200, reply
    senders = {e.sender: [r.address for r in e.recipients] for e in server.accepted}
    assert senders == {
        "main@api.example.test": ["a@dest.example", "c@dest.example"],
        "other@api.example.test": ["b@dest.example"],
    }


def test_a_shared_to_header_makes_one_message(server: ApiServer) -> None:
    """Without substitution and with a fixed To, all recipients share one message."""
    status, _, _ = server.request(
        transmission(
            recipients=[{"address": f"r{i}@dest.example"} for i in range(5)],
            content=content(headers={"To": "list@dest.example"}),
        )
    )
    assert status == 200
    [envelope] = server.accepted
    assert len(envelope.recipients) == 5
    assert server.message(envelope)["To"] == "list@dest.example"


def test_each_recipient_sees_its_own_to(server: ApiServer) -> None:
    """SparkPost content: each recipient's To is its name and address, or its header_to."""
    status, _, _ = server.request(
        transmission(
            recipients=[
                {"address": {"email": "ann@dest.example", "name": "Ann Lee"}},
                {"address": {"email": "cc@dest.example", "header_to": "ann@dest.example"}},
            ]
        )
    )
    assert status == 200
    to = {e.recipients[0].address: server.message(e)["To"] for e in server.accepted}
    assert to == {
        "ann@dest.example": "Ann Lee <ann@dest.example>",
        "cc@dest.example": "ann@dest.example",
    }


def test_substitution_message_and_recipient_level(server: ApiServer) -> None:
    """Recipient substitution_data wins over message level; missing keys render empty."""
    status, _, _ = server.request(
        transmission(
            substitution_data={"name": "friend", "offer": {"code": "MSG"}, "shop": "Acme"},
            recipients=[
                {"address": "one@dest.example", "substitution_data": {"name": "Ann"}},
                {"address": "two@dest.example"},
            ],
            content=content(
                subject="Hi {{name}} from {{ shop }}",
                text="Code {{offer.code}} [{{missing}}]",
                html="<p>{{name}}</p>",
                headers={"X-Name": "{{name}}"},
            ),
        )
    )
    assert status == 200
    got = {}
    for envelope in server.accepted:
        parsed = server.message(envelope)
        text = parsed.get_body(("plain",))
        html = parsed.get_body(("html",))
        assert text is not None and html is not None
        got[envelope.recipients[0].address] = (
            parsed["Subject"],
            parsed["X-Name"],
            text.get_content().rstrip(),
            html.get_content().rstrip(),
        )
    assert got["one@dest.example"] == ("Hi Ann from Acme", "Ann", "Code MSG []", "<p>Ann</p>")
    assert got["two@dest.example"][:3] == ("Hi friend from Acme", "friend", "Code MSG []")


def test_identical_renderings_share_a_message(server: ApiServer) -> None:
    """Recipients whose substitution gives the same message (and a fixed To) share it."""
    status, _, _ = server.request(
        transmission(
            recipients=[
                {"address": "a@dest.example", "substitution_data": {"tier": "gold"}},
                {"address": "b@dest.example", "substitution_data": {"tier": "gold"}},
                {"address": "c@dest.example", "substitution_data": {"tier": "tin"}},
            ],
            content=content(text="Tier {{tier}}", headers={"To": "members@dest.example"}),
        )
    )
    assert status == 200
    groups = sorted(sorted(r.address for r in e.recipients) for e in server.accepted)
    assert groups == [["a@dest.example", "b@dest.example"], ["c@dest.example"]]


def test_invalid_recipients_are_rejected_individually(server: ApiServer) -> None:
    """A bad address goes into rcpt_to_errors; the others are accepted."""
    status, reply, _ = server.request(
        transmission(recipients=[{"address": "good@dest.example"}, {"address": "not an address"}])
    )
    assert status == 200, reply
    results = reply["results"]
    assert results["total_accepted_recipients"] == 1
    assert results["total_rejected_recipients"] == 1
    assert "not an address" in results["rcpt_to_errors"][0]["description"]
    assert [r.address for e in server.accepted for r in e.recipients] == ["good@dest.example"]


def test_smtputf8_allows_non_ascii_addresses(server: ApiServer) -> None:
    """With options.smtputf8 a non-ASCII recipient is accepted and the envelope says so."""
    status, reply, _ = server.request(
        transmission(options={"smtputf8": True}, recipients=[{"address": "josé@dest.example"}])
    )
    assert status == 200, reply
    assert server.accepted[0].smtputf8
    assert server.accepted[0].recipients[0].address == "josé@dest.example"


def test_second_configured_key_is_accepted(server: ApiServer) -> None:
    """Every configured api-key works."""
    status, _, _ = server.request(transmission(), key=OTHER_KEY)
    assert status == 200


def test_default_virtual_mta_and_unknown_vmta(make_server: Any) -> None:
    """default-virtual-mta selects the vmta; an unknown X-Virtual-MTA is a 400, nothing spooled."""
    server = make_server(extra="default-virtual-mta blue")
    status, _, _ = server.request(transmission())
    assert status == 200
    assert server.accepted[0].vmta == "blue"
    status, reply, _ = server.request(
        transmission(content=content(headers={"X-Virtual-MTA": "nosuch"}))
    )
    assert_error(status, reply, 400, "nosuch")
    assert len(server.accepted) == 1 and len(server.spooled_files()) == 1


# -- errors ----------------------------------------------------------------------------------


def test_unknown_path_is_404(server: ApiServer) -> None:
    """Any other path is a JSON 404."""
    status, reply, _ = server.request(transmission(), path="/api/v1/recipient-lists")
    assert_error(status, reply, 404, "/api/v1/recipient-lists")


def test_wrong_method_is_405(any_server: ApiServer) -> None:
    """GET on the transmissions resource is a JSON 405 with Allow: POST."""
    status, reply, response = any_server.request(None, method="GET")
    assert_error(status, reply, 405, "POST")
    assert response.getheader("Allow") == "POST"


@pytest.mark.parametrize("key", [None, "", "wrong_key_0123456789_0123456789_01234567", KEY[:-1]])
def test_missing_or_wrong_key_is_403(server: ApiServer, key: str | None) -> None:
    """No Authorization, an empty one, or an unknown key: 403, nothing spooled."""
    status, reply, _ = server.request(transmission(), key=key)
    assert_error(status, reply, 403, "api-key")
    assert server.accepted == [] and server.spooled_files() == []


def test_no_configured_key_refuses_everything(tmp_path: Path) -> None:
    """Without any api-key the API answers 403 to every request."""
    server = ApiServer(tmp_path, "host-name h.example\n")
    try:
        status, reply, _ = server.request(transmission(), key="")
        assert_error(status, reply, 403, "api-key")
    finally:
        server.stop()


def test_wrong_content_type_is_415(server: ApiServer) -> None:
    """A form post is a 415."""
    status, reply, _ = server.request(
        transmission(), content_type="application/x-www-form-urlencoded"
    )
    assert_error(status, reply, 415, "application/json")


def test_content_type_with_charset_is_fine(server: ApiServer) -> None:
    """application/json; charset=utf-8 is JSON."""
    status, _, _ = server.request(transmission(), content_type="application/json; charset=utf-8")
    assert status == 200


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"'])
def test_broken_json_is_400(server: ApiServer, raw: bytes) -> None:
    """Malformed JSON, bad UTF-8, or a non-object body: 400."""
    status, reply, _ = server.request(raw)
    assert_error(status, reply, 400, "")
    assert server.spooled_files() == []


def test_body_over_max_request_size_is_413(any_server: ApiServer) -> None:
    """A body over max-request-size (64K here) is a 413."""
    status, reply, _ = any_server.request(transmission(content=content(text="x" * 70000)))
    assert_error(status, reply, 413, "65536")
    assert any_server.spooled_files() == []


def test_message_over_max_message_size_is_413(server: ApiServer) -> None:
    """A built message over the source's max-message-size (32K) is a 413, nothing kept."""
    data = base64.b64encode(os.urandom(30000)).decode()
    attachments = [{"name": "big.bin", "type": "application/octet-stream", "data": data}]
    status, reply, _ = server.request(transmission(content=content(attachments=attachments)))
    assert_error(status, reply, 413, "max-message-size")
    assert server.accepted == []
    rfc822 = "Subject: big\r\n\r\n" + "y" * 40000
    status, reply, _ = server.request(
        transmission(return_path="r@api.example.test", content={"email_rfc822": rfc822})
    )
    assert_error(status, reply, 413, "max-message-size")
    assert server.accepted == [] and server.spooled_files() == []


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            {
                "recipients": [{"address": "a@b.example"}],
                "content": {"email_rfc822": "S: x\r\n\r\nb"},
            },
            "return_path",
        ),
        (transmission(recipients=[]), "recipients"),
        (transmission(content={"from": "s@api.example.test"}), "text, html"),
        (transmission(content={"text": "no from"}), "content.from"),
        (transmission(content=content(template_id="t1")), "template_id"),
        (transmission(recipients=[{"address": "jos\u00e9@dest.example"}]), "smtputf8"),
        (transmission(return_path="bad address"), "return_path"),
        (transmission(campaign_id=7), "campaign_id"),
        (transmission(options={"smtputf8": "yes"}), "smtputf8"),
        (transmission(recipients=[{"address": "x y"}, {"address": "@@"}]), "All recipients"),
        (
            transmission(
                content=content(
                    attachments=[{"name": "a", "type": "text/plain", "data": "!!notbase64"}]
                )
            ),
            "base64",
        ),
        (
            transmission(
                content=content(inline_images=[{"name": "i", "type": "image/png", "data": "aGk="}])
            ),
            "html",
        ),
    ],
)
def test_bad_requests_are_400(server: ApiServer, body: dict[str, Any], text: str) -> None:
    """Each malformed transmission is a 400 naming the problem, with nothing spooled."""
    status, reply, _ = server.request(body)
    assert_error(status, reply, 400, text)
    assert server.accepted == [] and server.spooled_files() == []


@pytest.mark.parametrize(
    "body",
    [
        transmission(content=content(subject="a\r\nBcc: x@evil.example")),
        transmission(content=content(subject="a\nBcc: x@evil.example")),
        transmission(content=content(headers={"X-Bad:Name": "v"})),
        transmission(content=content(headers={"X Bad": "v"})),
        transmission(content=content(headers={"X-Ok": "v\r\nBcc: x@evil.example"})),
        transmission(content=content(reply_to="r@x.example\rBcc: x@evil.example")),
        transmission(
            content=content(
                **{"from": {"email": "s@api.example.test", "name": "S\r\nBcc: x@evil.example"}}
            )
        ),
        transmission(
            recipients=[
                {
                    "address": {
                        "email": "a@dest.example",
                        "header_to": "a@dest.example\r\nBcc: x@evil.example",
                    }
                }
            ]
        ),
        transmission(
            recipients=[{"address": {"email": "a@dest.example", "name": "A\nBcc: x@evil.example"}}]
        ),
        transmission(
            recipients=[
                {
                    "address": "a@dest.example",
                    "substitution_data": {"s": "x\r\nBcc: x@evil.example"},
                }
            ],
            content=content(subject="{{s}}"),
        ),
        transmission(content=content(headers={"Content-Type": "text/html"})),
    ],
)
def test_header_injection_is_400_and_spools_nothing(
    server: ApiServer, body: dict[str, Any]
) -> None:
    """CR or LF in any header part, or a bad header name, is a 400; nothing is spooled."""
    status, reply, _ = server.request(body)
    assert_error(status, reply, 400, "")
    assert server.accepted == [] and server.spooled_files() == []


def test_a_header_the_builder_cannot_use_is_400(server: ApiServer) -> None:
    """A content header the email package cannot parse rejects its recipients: 400, no file."""
    status, reply, _ = server.request(transmission(content=content(headers={"Message-ID": "<<>>"})))
    assert_error(status, reply, 400, "Message-ID")
    assert server.accepted == [] and server.spooled_files() == []


def test_control_characters_in_header_to_are_400(server: ApiServer) -> None:
    """A control character other than TAB in header_to is refused like CR/LF."""
    rcpt = {"address": {"email": "a@dest.example", "header_to": "a\x01b@dest.example"}}
    status, reply, _ = server.request(transmission(recipients=[rcpt]))
    assert_error(status, reply, 400, "header_to")
    assert server.accepted == []


def test_spool_full_is_503_with_retry_after(make_server: Any) -> None:
    """A spool below its free-space minimum answers 503 with Retry-After, nothing spooled."""
    server = make_server(min_free=2**62)
    status, reply, response = server.request(transmission())
    assert_error(status, reply, 503, "try again later")
    assert response.getheader("Retry-After") == "60"
    assert server.accepted == [] and server.spooled_files() == []


def test_spool_io_error_is_500(make_server: Any) -> None:
    """An I/O error while committing is a 500 and no message file is left behind."""
    server = make_server(broken=True)
    status, reply, _ = server.request(transmission())
    assert_error(status, reply, 500, "could not be stored")
    assert server.accepted == []
    assert [f for f in server.spooled_files() if not f.endswith(".tmp")] == []
