"""Transmissions API hardening against the real server: injection, JSON, rfc822 limits, retries.

The server runs as `twistd -n mtaserver` with a plain-HTTP API listener on loopback
and delivers to an aiosmtpd receiver. A refused request must be a 400 in the SparkPost
error shape naming the field, and must deliver nothing: after each refusal a marker
transmission is sent and, once the marker has arrived, the receiver must hold nothing
else for the test's recipients (the queue is first in, first out over one MX).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gated_api import post
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, wait_until

API_KEY = "hardening_key_0123456789_0123456789_abc"

CONFIG = """
host-name api.example.test
spool {dir}/spool
<transmissions-api-listener 127.0.0.1:{api_port}>
</transmissions-api-listener>
<transmissions-api>
  api-key {key}
</transmissions-api>
<source {{transmissions-api}}>
{source_extra}
</source>
<domain *>
  smtp-hosts [127.0.0.1]:{mx_port}
  use-starttls no
  retry-after 1s
</domain>
"""


class Api:
    """The server under test, its API port and its receiver."""

    def __init__(self, directory: Path, receiver: Receiver, source_extra: str = "") -> None:
        self.port = free_port()
        self.receiver = receiver
        config = CONFIG.format(
            dir=directory,
            api_port=self.port,
            key=API_KEY,
            mx_port=receiver.port,
            source_extra=source_extra,
        )
        self.process = ServerProcess(directory, config, wait_ports=(self.port,))

    def post(self, body: Any, raw: bytes | None = None, **headers: str) -> tuple[int, Any]:
        """`gated_api.post` to this server; `Idempotency_Key=...` sends `Idempotency-Key`."""
        named = {k.replace("_", "-"): v for k, v in headers.items()}
        return post(self.port, API_KEY, body, named, raw)

    def delivered_to(self, domain: str) -> list[bytes]:
        return [m.data for m in self.receiver.messages if m.rcpt_tos[0].endswith("@" + domain)]

    def marker(self, domain: str) -> None:
        """Send one good message to marker@domain and wait until it has arrived."""
        status, answer = self.post(simple(f"marker@{domain}", subject="marker"))
        assert status == 200, answer
        assert wait_until(
            lambda: any(b"Subject: marker" in d for d in self.delivered_to(domain))
        ), self.process.read_log()


def simple(recipient: Any, **content: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"from": "sender@api.example.test", "subject": "hi", "text": "body"}
    body.update(content)
    return {"recipients": [recipient], "content": body}


def message_id(data: bytes) -> bytes:
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line
    return b""


def fresh_domain() -> str:
    return f"d{uuid.uuid4().hex[:12]}.example"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    mx = Receiver()
    yield mx
    mx.stop()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("hardening"), receiver)
    with server.process:
        yield server


def assert_refused(api: Api, body: Any, field: str, raw: bytes | None = None) -> None:
    """400 naming `field` in SparkPost's error shape."""
    status, answer = api.post(body, raw=raw)
    assert status == 400, answer
    assert set(answer) == {"errors"}
    error = answer["errors"][0]
    assert error["message"] == "Invalid request"
    assert field in error["description"], error


def assert_nothing_delivered(api: Api, domain: str) -> None:
    """Once a later marker arrived, only the marker reached the receiver for `domain`."""
    api.marker(domain)
    delivered = api.delivered_to(domain)
    assert len(delivered) == 1, delivered
    assert b"ceo@bank.example" not in delivered[0]


# -- item 4: header injection through RFC 2047 encoded words --------------------------

INJECTED_NEWLINE = "x=?UTF-8?Q?=0A?=From: ceo@bank.example"
INJECTED_BODY = "x=?UTF-8?Q?=0D=0A=0D=0A?=ceo@bank.example replaced the body"
INJECTED_B64 = "=?utf-8?b?Cg==?=Bcc: ceo@bank.example"


def injection_cases(rcpt: str) -> list[tuple[dict[str, Any], str]]:
    """(request, the field its 400 must name) for every header the API builds."""
    attachment = {"name": "a.txt", "type": "text/plain", "data": "aGk="}
    return [
        (simple(rcpt, subject=INJECTED_NEWLINE), "content.subject"),
        (simple(rcpt, subject=INJECTED_BODY), "content.subject"),
        (simple(rcpt, headers={"X-Campaign": INJECTED_NEWLINE}), "content.headers.X-Campaign"),
        (simple(rcpt, headers={"X-Campaign": INJECTED_B64}), "content.headers.X-Campaign"),
        (
            {**simple(rcpt, subject="Hello {{name}}"), "substitution_data": {"name": INJECTED_B64}},
            "content.subject (after substitution)",
        ),
        (
            simple(rcpt, **{"from": {"email": "s@api.example.test", "name": INJECTED_NEWLINE}}),
            "content.from.name",
        ),
        (simple(rcpt, reply_to=INJECTED_NEWLINE), "content.reply_to"),
        (
            simple({"address": {"email": rcpt, "name": INJECTED_NEWLINE}}),
            "recipients[0].address.name",
        ),
        (
            simple({"address": {"email": rcpt, "header_to": INJECTED_BODY}}),
            "recipients[0].address.header_to",
        ),
        (
            simple(rcpt, attachments=[{**attachment, "name": "=?utf-8?q?a=0D=0A=0D=0A?=.txt"}]),
            "content.attachments[0].name",
        ),
        (
            simple(rcpt, attachments=[{**attachment, "type": "text/plain\r\nFrom: x@y"}]),
            "content.attachments[0].type",
        ),
        (
            simple(rcpt, headers={"Content-Type": "text/html; =?utf-8?q?=0A?=From: x@y"}),
            "content.headers",
        ),
    ]


@pytest.mark.parametrize("case", range(12))
def test_encoded_word_header_injection_is_400_and_nothing_arrives(api: Api, case: int) -> None:
    """An encoded word decoding to CR/LF in any API header value is a 400 naming the field."""
    domain = fresh_domain()
    body, field = injection_cases(f"ok@{domain}")[case]
    assert_refused(api, body, field)
    assert_nothing_delivered(api, domain)


def test_a_harmless_encoded_word_still_goes_through(api: Api) -> None:
    """Encoded words without line breaks are fine: the receiver gets one From and the subject."""
    domain = fresh_domain()
    status, answer = api.post(simple(f"ok@{domain}", subject="=?UTF-8?Q?Caf=C3=A9?= menu"))
    assert status == 200, answer
    assert wait_until(lambda: len(api.delivered_to(domain)) == 1)
    data = api.delivered_to(domain)[0]
    header = data.split(b"\r\n\r\n", 1)[0]
    assert header.lower().count(b"\r\nfrom:") + header.lower().startswith(b"from:") == 1
    assert b"Caf" in header


@pytest.mark.parametrize(
    "name", ["Bcc", "Return-Path", "Received", "DKIM-Signature", "content-transfer-encoding"]
)
def test_headers_the_server_owns_are_refused_in_content_headers(api: Api, name: str) -> None:
    """Bcc, Return-Path, Received, DKIM-Signature (and MIME fields) in content.headers: 400."""
    domain = fresh_domain()
    assert_refused(api, simple(f"ok@{domain}", headers={name: "x@y.example"}), name)
    assert_nothing_delivered(api, domain)


# -- item 13: JSON ------------------------------------------------------------------------


def test_json_nested_100000_deep_is_400_not_500(api: Api) -> None:
    """A 100000-deep array is refused before parsing (no RecursionError, no 500)."""
    raw = b'{"content": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    assert_refused(api, None, "nested deeper than 64", raw=raw)


def test_brackets_inside_strings_do_not_count_as_depth(api: Api) -> None:
    """Deep-looking text inside a string is content, not nesting: accepted and delivered."""
    domain = fresh_domain()
    status, answer = api.post(simple(f"ok@{domain}", text="[{" * 500 + '\\"]' * 100))
    assert status == 200, answer
    assert wait_until(lambda: len(api.delivered_to(domain)) == 1)


def test_lone_surrogate_is_400_naming_the_field(api: Api) -> None:
    """`"\\udfff"` is not Unicode text: 400 naming content.subject, not a 500."""
    domain = fresh_domain()
    raw = json.dumps(simple(f"ok@{domain}")).replace('"hi"', '"\\udfff"').encode()
    assert_refused(api, None, "content.subject", raw=raw)
    assert_nothing_delivered(api, domain)


def test_nul_in_text_is_400_naming_the_field(api: Api) -> None:
    """`"\\u0000"` in content.text is refused (it was spooled and relayed)."""
    domain = fresh_domain()
    assert_refused(api, simple(f"ok@{domain}", text="a\x00b"), "content.text")
    assert_nothing_delivered(api, domain)


def test_nul_in_email_rfc822_is_400(api: Api) -> None:
    """NUL in email_rfc822 never reaches the receiver: 400 naming content.email_rfc822."""
    domain = fresh_domain()
    body = rfc822_request(domain, "From: s@api.example.test\r\nSubject: x\r\n\r\na\x00b\r\n")
    assert_refused(api, body, "content.email_rfc822")
    assert_nothing_delivered(api, domain)


def test_nul_in_substitution_data_is_400(api: Api) -> None:
    """A NUL anywhere in the document is refused with its JSON path."""
    domain = fresh_domain()
    body = {**simple(f"ok@{domain}"), "substitution_data": {"a": ["x", "y\x00"]}}
    assert_refused(api, body, "substitution_data.a[1]")
    assert_nothing_delivered(api, domain)


# -- items 14, 17 and the email_rfc822 limits -------------------------------------------


def rfc822_request(domain: str, message: str) -> dict[str, Any]:
    return {
        "recipients": [f"ok@{domain}"],
        "return_path": "bounce@api.example.test",
        "content": {"email_rfc822": message},
    }


def received_fields(count: int) -> str:
    return "".join(
        f"Received: from h{i}.example by h{i + 1}.example; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
        for i in range(count)
    )


def test_more_received_fields_than_max_message_hops_is_400(api: Api) -> None:
    """101 Received fields (default max-message-hops 100) is a mail loop: 400, nothing sent."""
    domain = fresh_domain()
    message = received_fields(101) + "From: s@api.example.test\r\nSubject: loop\r\n\r\nbody\r\n"
    assert_refused(api, rfc822_request(domain, message), "max-message-hops")
    assert_nothing_delivered(api, domain)


def test_received_fields_up_to_max_message_hops_pass(api: Api) -> None:
    """100 Received fields are still fine: the message is delivered."""
    domain = fresh_domain()
    message = received_fields(100) + "From: s@api.example.test\r\nSubject: hops\r\n\r\nbody\r\n"
    status, answer = api.post(rfc822_request(domain, message))
    assert status == 200, answer
    assert wait_until(lambda: len(api.delivered_to(domain)) == 1)


def test_a_5000_octet_line_in_email_rfc822_is_400_naming_the_line(api: Api) -> None:
    """Lines over 998 octets are refused (not re-encoded): the error names the line."""
    domain = fresh_domain()
    message = "From: s@api.example.test\r\nSubject: long\r\n\r\nfirst\r\n" + "x" * 5000 + "\r\n"
    assert_refused(api, rfc822_request(domain, message), "content.email_rfc822 line 5")
    assert_nothing_delivered(api, domain)


def test_header_count_over_max_header_count_is_400(api: Api) -> None:
    """1001 header fields (default max-header-count 1000): 400."""
    domain = fresh_domain()
    fields = "".join(f"X-F{i}: v\r\n" for i in range(1000))
    message = "From: s@api.example.test\r\n" + fields + "\r\nbody\r\n"
    assert_refused(api, rfc822_request(domain, message), "max-header-count")
    assert_nothing_delivered(api, domain)


def test_header_over_max_header_size_is_400(api: Api) -> None:
    """A header block over 1 MiB (default max-header-size) in 600 folded fields: 400."""
    domain = fresh_domain()
    fold = "\r\n\t" + "w" * 990
    fields = "".join(f"X-F{i}: v{fold}{fold}\r\n" for i in range(600))
    message = "From: s@api.example.test\r\n" + fields + "\r\nbody\r\n"
    assert_refused(api, rfc822_request(domain, message), "max-header-size")
    assert_nothing_delivered(api, domain)


def nested_multipart(depth: int) -> str:
    head = "".join(
        f'--b{i - 1}\r\nContent-Type: multipart/mixed; boundary="b{i}"\r\n\r\n'
        for i in range(1, depth)
    )
    tail = "".join(f"--b{i}--\r\n" for i in range(depth - 1, -1, -1))
    return (
        "From: s@api.example.test\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b0"\r\n\r\n'
        + head
        + f"--b{depth - 1}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n"
        + tail
    )


def test_mime_nesting_over_max_mime_depth_is_400(api: Api) -> None:
    """Multiparts nested 101 deep (default max-mime-depth 100): 400, nothing sent."""
    domain = fresh_domain()
    assert_refused(api, rfc822_request(domain, nested_multipart(101)), "max-mime-depth")
    assert_nothing_delivered(api, domain)


def test_mime_nesting_within_max_mime_depth_passes(api: Api) -> None:
    """Multiparts nested 10 deep are delivered."""
    domain = fresh_domain()
    status, answer = api.post(rfc822_request(domain, nested_multipart(10)))
    assert status == 200, answer
    assert wait_until(lambda: len(api.delivered_to(domain)) == 1)


def test_two_from_fields_in_email_rfc822_is_400(api: Api) -> None:
    """A second From in a client message is refused (RFC 5322 allows one)."""
    domain = fresh_domain()
    message = "From: s@api.example.test\r\nFrom: ceo@bank.example\r\n\r\nbody\r\n"
    assert_refused(api, rfc822_request(domain, message), "From")
    assert_nothing_delivered(api, domain)


# -- Idempotency-Key -------------------------------------------------------------------


def test_idempotency_key_survives_kill_9(tmp_path: Path, receiver: Receiver) -> None:
    """Same key: same id and one delivery, also after kill -9; another body with it: 422."""
    server = Api(tmp_path, receiver, source_extra="  max-message-hops 3")
    domain = fresh_domain()
    body = simple(f"ok@{domain}", subject="once")
    with server.process:
        first = server.post(body, Idempotency_Key="order-42")
        assert first[0] == 200, first
        second = server.post(body, Idempotency_Key="order-42")
        assert second == first
        assert wait_until(lambda: len(server.delivered_to(domain)) == 1)
        other = server.post(simple(f"ok@{domain}", subject="other"), Idempotency_Key="order-42")
        assert other[0] == 422, other
        assert "Idempotency-Key" in other[1]["errors"][0]["message"]
        # the source's max-message-hops is read from the config
        hops = rfc822_request(domain, received_fields(4) + "From: s@api.example.test\r\n\r\nb\r\n")
        assert_refused(server, hops, "max-message-hops is 3")
        server.process.kill9()
        server.process.start()
        again = server.post(body, Idempotency_Key="order-42")
        assert again == first
        server.marker(domain)
        once = [d for d in server.delivered_to(domain) if b"Subject: once" in d]
        # one spooled message (a redelivery after kill -9 would carry the same Message-ID)
        assert len({message_id(d) for d in once}) == 1
        fresh = server.post(body, Idempotency_Key="order-43")
        assert fresh[0] == 200 and fresh[1]["results"]["id"] != first[1]["results"]["id"]


def test_invalid_idempotency_key_is_400(api: Api) -> None:
    """A key with spaces or over 255 characters is refused, naming the header."""
    domain = fresh_domain()
    for key in ("has space", "k" * 256):
        status, answer = api.post(simple(f"ok@{domain}"), Idempotency_Key=key)
        assert status == 400, answer
        assert "Idempotency-Key" in answer["errors"][0]["description"]
    assert_nothing_delivered(api, domain)
