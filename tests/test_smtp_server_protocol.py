"""The SMTP server protocol over a StringTransport: conversation, policy, limits, timeouts."""

from __future__ import annotations

import base64
import re

import pytest
from smtp_helpers import FakeStore, Session, holder_from_text

from mtaserver.spool.errors import SpoolFullError, SpoolIOError

BASE = """
host-name mx.example.test
relay-domain relay.example
relay-domain *.wild.example
<virtual-mta vm1>
</virtual-mta>
<virtual-mta vm2>
</virtual-mta>
<virtual-mta-pool pool1>
  virtual-mta vm1
</virtual-mta-pool>
<smtp-user alice>
  password wonderland
</smtp-user>
<source {auth}>
  max-rcpt-per-message 5
</source>
<acct-file /tmp/mtaserver-test-acct.csv>
  map-header-to-field r X-Campaign
</acct-file>
"""


def session(extra: str = "", peer: str = "127.0.0.1", store: FakeStore | None = None) -> Session:
    return Session(holder_from_text(BASE + extra), store=store, peer=peer)


def source(body: str, cidr: str = "127.0.0.1/32") -> str:
    return f"<source {cidr}>\n{body}\n</source>\n"


def transaction(s: Session, rcpts: tuple[str, ...] = ("bob@relay.example",), body: str = "") -> str:
    """EHLO, MAIL, RCPTs, DATA with `body`; return the final reply."""
    assert s.command("EHLO client.test").startswith("250 ")
    assert s.command("MAIL FROM:<alice@sender.test>").startswith("250 2.1.0")
    for rcpt in rcpts:
        assert s.command(f"RCPT TO:<{rcpt}>").startswith("250 2.1.5")
    assert s.command("DATA").startswith("354")
    return s.send((body or "Subject: hi\r\n\r\nHello\r\n") + ".\r\n")[-1]


def test_greeting_and_ehlo_extensions() -> None:
    """The greeting is 220 and EHLO lists the extensions with SIZE from the source."""
    s = session(source("max-message-size 10M"))
    assert s.lines() == ["220 mx.example.test ESMTP mtaserver"]
    lines = s.send("EHLO client.test\r\n")
    assert lines[0] == "250-mx.example.test Hello [127.0.0.1]"
    keywords = [line[4:] for line in lines[1:]]
    assert keywords == [
        "PIPELINING",
        "SIZE 10485760",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ]
    assert lines[-1].startswith("250 ")


def test_auth_offered_only_when_source_allows_plaintext() -> None:
    """Without TLS, AUTH is offered only with allow-unencrypted-plain-auth yes."""
    assert not any("AUTH" in line for line in session().send("EHLO c\r\n"))
    s = session(source("allow-unencrypted-plain-auth yes"))
    assert "250 AUTH PLAIN LOGIN" in s.send("EHLO c\r\n")
    s = session(source("allow-unencrypted-plain-auth yes\nrequire-starttls-before-auth yes"))
    assert not any("AUTH" in line for line in s.send("EHLO c\r\n"))


def test_smtputf8_not_offered_when_disallowed() -> None:
    """allow-smtputf8 no hides SMTPUTF8 and refuses the parameter with 555."""
    s = session(source("allow-smtputf8 no"))
    assert "250-SMTPUTF8" not in s.send("EHLO c\r\n")
    assert s.command("MAIL FROM:<a@b.test> SMTPUTF8").startswith("555 5.5.4")


def test_message_accepted_with_envelope_parameters() -> None:
    """MAIL/RCPT parameters end up in the Envelope and Recipient; on_accepted hears of it."""
    s = session()
    s.command("EHLO client.test")
    assert s.command(
        "MAIL FROM:<alice@sender.test> SIZE=100 BODY=8BITMIME ENVID=abc+2Bdef RET=HDRS"
    ).startswith("250 2.1.0")
    assert s.command(
        "RCPT TO:<bob@relay.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40relay.example"
    ).startswith("250 2.1.5")
    s.command("DATA")
    reply = s.send("Subject: hi\r\n\r\nHello\r\n.\r\n")
    assert reply == ["250 2.0.0 Ok: queued as msg0001"]
    envelope, body = s.store.only()
    assert envelope.sender == "alice@sender.test"
    assert envelope.env_id == "abc+def"
    assert envelope.ret == "HDRS"
    assert envelope.body_type == "8BITMIME"
    assert envelope.src_mta == "client.test (127.0.0.1)"
    (rcpt,) = envelope.recipients
    assert (rcpt.address, rcpt.notify, rcpt.orcpt) == (
        "bob@relay.example",
        "SUCCESS,FAILURE",
        "rfc822;bob@relay.example",
    )
    assert s.accepted == [envelope]
    assert envelope.size == len(body)
    stats = s.factory.stats
    assert (stats.messages_received, stats.recipients_received) == (1, 1)
    assert stats.bytes_received == len(body)


def test_headers_added() -> None:
    """Received goes first; Message-ID and Date are added at the end of the header block."""
    s = session()
    transaction(s)
    _, body = s.store.only()
    header, _, rest = body.partition(b"\r\n\r\n")
    lines = header.split(b"\r\n")
    assert lines[0].startswith(b"Received: from client.test ([127.0.0.1])")
    assert b"\tby mx.example.test (mtaserver) with ESMTP id msg0001" in lines
    assert re.match(rb"\tfor <bob@relay.example>; \w{3}, ", lines[2])
    assert lines[3] == b"Subject: hi"
    assert lines[4] == b"Message-ID: <msg0001@mx.example.test>"
    assert lines[5].startswith(b"Date: ")
    assert rest == b"Hello\r\n"


def test_headers_not_added_when_present_or_disabled() -> None:
    """Existing Message-ID/Date are kept; add-* no adds nothing."""
    s = session()
    transaction(s, body="Message-ID: <x@y>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nb\r\n")
    _, body = s.store.only()
    assert body.count(b"Message-ID:") == 1 and body.count(b"Date:") == 1
    s = session(source("add-received-header no\nadd-message-id-header no\nadd-date-header no"))
    transaction(s)
    assert s.store.only()[1] == b"Subject: hi\r\n\r\nHello\r\n"


def test_message_without_headers_gets_separator() -> None:
    """A first line that is not a header stays body, after an empty line."""
    s = session(source("add-received-header no\nadd-message-id-header no\nadd-date-header no"))
    transaction(s, body="just text\r\nmore\r\n")
    assert s.store.only()[1] == b"\r\njust text\r\nmore\r\n"


def test_x_virtual_mta_and_x_job_processed_and_removed() -> None:
    """process-x-virtual-mta / process-x-job select vmta and job and drop the headers."""
    s = session(source("process-x-virtual-mta yes\nprocess-x-job yes"))
    reply = transaction(
        s, body="X-Virtual-MTA: vm2\r\nX-Job: spring\r\n sale\r\nSubject: s\r\n\r\nx\r\n"
    )
    assert reply.startswith("250 2.0.0")
    envelope, body = s.store.only()
    assert (envelope.vmta, envelope.vmta_pool, envelope.job_id) == ("vm2", None, "spring sale")
    assert b"X-Virtual-MTA" not in body and b"X-Job" not in body and b"sale" not in body


def test_x_virtual_mta_left_alone_when_not_processed() -> None:
    """Without process-x-virtual-mta the header stays and the default vmta applies."""
    s = session(source("default-virtual-mta pool1"))
    transaction(s, body="X-Virtual-MTA: vm2\r\n\r\nx\r\n")
    envelope, body = s.store.only()
    assert (envelope.vmta, envelope.vmta_pool) == (None, "pool1")
    assert b"X-Virtual-MTA: vm2" in body


def test_unknown_x_virtual_mta_refused() -> None:
    """An X-Virtual-MTA naming no vmta or pool refuses the message, aborting the writer."""
    s = session(source("process-x-virtual-mta yes"))
    reply = transaction(s, body="X-Virtual-MTA: nosuch\r\n\r\nx\r\n")
    assert reply.startswith("550 5.7.1")
    assert s.store.messages == {} and s.store.aborted == ["msg0001"]


def test_acct_headers_captured() -> None:
    """Headers named by map-header-to-field are captured into Envelope.acct_headers."""
    s = session()
    transaction(s, body="x-campaign:  summer\r\n  2024\r\nX-Other: 1\r\n\r\nx\r\n")
    envelope, _ = s.store.only()
    assert envelope.acct_headers == {"X-Campaign": "summer  2024"}


RELAY_TABLE = [
    # (source body, authenticate, recipient, expected reply prefix)
    ("", False, "bob@relay.example", "250 2.1.5"),
    ("", False, "bob@RELAY.example", "250 2.1.5"),
    ("", False, "bob@a.wild.example", "250 2.1.5"),
    ("", False, "bob@elsewhere.test", "550 5.7.1"),
    ("", False, "bob%elsewhere.test@relay.example", "550 5.7.1"),
    ("", False, "elsewhere.test!bob@relay.example", "550 5.7.1"),
    ("", False, '"bob@elsewhere.test"@relay.example', "550 5.7.1"),
    ("", False, "@relay.example:bob@elsewhere.test", "550 5.7.1"),
    ("", False, "@elsewhere.test:bob@relay.example", "550 5.7.1"),
    ("", False, "bob@[10.0.0.1]", "550 5.7.1"),
    ("always-allow-relaying yes", False, "bob@elsewhere.test", "250 2.1.5"),
    ("always-allow-relaying yes", False, "bob%x.test@relay.example", "250 2.1.5"),
    ("allow-unencrypted-plain-auth yes", True, "bob@elsewhere.test", "250 2.1.5"),
    ("allow-unencrypted-plain-auth yes", True, "@a.test:bob@elsewhere.test", "250 2.1.5"),
]


@pytest.mark.parametrize(("body", "auth", "rcpt", "expected"), RELAY_TABLE)
def test_relay_policy(body: str, auth: bool, rcpt: str, expected: str) -> None:
    """Relay only from trusted sources, after AUTH, or to relay-domains without routing."""
    s = session(source(body) if body else "")
    s.command("EHLO c")
    if auth:
        token = base64.b64encode(b"\0alice\0wonderland").decode()
        assert s.command(f"AUTH PLAIN {token}").startswith("235 2.7.0")
    s.command("MAIL FROM:<a@b.test>")
    assert s.command(f"RCPT TO:<{rcpt}>").startswith(expected)


def test_other_sources_do_not_apply() -> None:
    """A relaying source for another network does not let this client relay."""
    s = session(source("always-allow-relaying yes", "10.0.0.0/8"), peer="192.0.2.7")
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    assert s.command("RCPT TO:<x@elsewhere.test>").startswith("550 5.7.1")


def test_require_auth() -> None:
    """require-auth refuses MAIL with 530 until AUTH."""
    s = session(source("require-auth yes\nallow-unencrypted-plain-auth yes"))
    s.command("EHLO c")
    assert s.command("MAIL FROM:<a@b.test>").startswith("530 5.7.0")
    token = base64.b64encode(b"\0alice\0wonderland").decode()
    assert s.command(f"AUTH PLAIN {token}").startswith("235")
    assert s.command("MAIL FROM:<a@b.test>").startswith("250")


def test_smtp_service_no() -> None:
    """smtp-service no greets with 554 and hangs up."""
    s = session(source("smtp-service no"))
    assert s.lines() == ["554 5.7.1 No SMTP service for you"]
    assert s.closed


def test_size_parameter_over_limit() -> None:
    """SIZE above max-message-size is refused at MAIL with 552 5.3.4."""
    s = session(source("max-message-size 1K"))
    s.command("EHLO c")
    assert s.command("MAIL FROM:<a@b.test> SIZE=1025").startswith("552 5.3.4")
    assert s.command("MAIL FROM:<a@b.test> SIZE=1024").startswith("250")


def test_message_over_limit_refused_after_data() -> None:
    """A body over max-message-size is read to its end, then refused with 552 5.3.4."""
    s = session(source("max-message-size 1K"))
    reply = transaction(s, body="Subject: big\r\n\r\n" + ("x" * 100 + "\r\n") * 20)
    assert reply.startswith("552 5.3.4")
    assert s.store.messages == {}
    assert s.command("NOOP").startswith("250")


def test_max_rcpt_per_message() -> None:
    """The recipient beyond max-rcpt-per-message gets 452 4.5.3; the others are kept."""
    s = session(source("max-rcpt-per-message 2"))
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    assert s.command("RCPT TO:<a@relay.example>").startswith("250")
    assert s.command("RCPT TO:<b@relay.example>").startswith("250")
    assert s.command("RCPT TO:<c@relay.example>").startswith("452 4.5.3")
    s.command("DATA")
    assert s.send("x\r\n.\r\n")[-1].startswith("250")
    assert len(s.store.only()[0].recipients) == 2


def test_auth_source_settings_apply_after_auth() -> None:
    """After AUTH the {auth} source applies (here max-rcpt-per-message 5) and smtp_user is kept."""
    s = session(source("allow-unencrypted-plain-auth yes\nmax-rcpt-per-message 1"))
    s.command("EHLO c")
    token = base64.b64encode(b"alice\0alice\0wonderland").decode()
    assert s.command(f"AUTH PLAIN {token}") == "235 2.7.0 Authentication successful"
    s.command("MAIL FROM:<a@b.test>")
    for i in range(5):
        assert s.command(f"RCPT TO:<r{i}@x.test>").startswith("250")
    assert s.command("RCPT TO:<r6@x.test>").startswith("452 4.5.3")
    s.command("DATA")
    s.send("x\r\n.\r\n")
    envelope, body = s.store.only()
    assert envelope.smtp_user == "alice"
    assert b"with ESMTPA id" in body


def test_auth_login_exchange() -> None:
    """AUTH LOGIN asks for user and password in base64."""
    s = session(source("allow-unencrypted-plain-auth yes"))
    s.command("EHLO c")
    assert s.command("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert s.command(base64.b64encode(b"alice").decode()) == "334 UGFzc3dvcmQ6"
    assert s.command(base64.b64encode(b"wonderland").decode()).startswith("235 2.7.0")
    assert s.command("AUTH LOGIN").startswith("503 5.5.1")


def test_auth_failures_then_421() -> None:
    """Wrong passwords get 535 5.7.8; the fifth failure in a minute gets 421 and a hang-up."""
    holder = holder_from_text(
        BASE
        + source("allow-unencrypted-plain-auth yes")
        + source("allow-unencrypted-plain-auth yes", "192.0.2.0/24")
    )
    s = Session(holder)
    s.command("EHLO c")
    bad = base64.b64encode(b"\0alice\0wrong").decode()
    for _ in range(4):
        assert s.command(f"AUTH PLAIN {bad}") == "535 5.7.8 Authentication credentials invalid"
    assert s.command(f"AUTH PLAIN {bad}").startswith("421 4.7.0")
    assert s.closed
    again = Session(holder, factory=s.factory, clock=s.clock)
    again.command("EHLO c")
    assert again.command(f"AUTH PLAIN {bad}").startswith("421 4.7.0")
    other_ip = Session(holder, factory=s.factory, clock=s.clock, peer="192.0.2.9")
    other_ip.command("EHLO c")
    good_other = base64.b64encode(b"\0alice\0wonderland").decode()
    assert other_ip.command(f"AUTH PLAIN {good_other}").startswith("235"), "per client IP"
    s.clock.advance(61)
    third = Session(holder, factory=s.factory, clock=s.clock)
    third.command("EHLO c")
    good = base64.b64encode(b"\0alice\0wonderland").decode()
    assert third.command(f"AUTH PLAIN {good}").startswith("235")


def test_auth_requires_encryption_by_default() -> None:
    """Without TLS and without allow-unencrypted-plain-auth, AUTH is 538 5.7.11."""
    s = session()
    s.command("EHLO c")
    assert s.command("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=").startswith("538 5.7.11")
    s = session(source("allow-unencrypted-plain-auth yes\nrequire-starttls-before-auth yes"))
    s.command("EHLO c")
    assert s.command("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=").startswith("538 5.7.11")


def test_auth_cancel_and_bad_base64() -> None:
    """`*` cancels AUTH with 501; undecodable base64 is 501 5.5.2."""
    s = session(source("allow-unencrypted-plain-auth yes"))
    s.command("EHLO c")
    assert s.command("AUTH PLAIN") == "334 "
    assert s.command("*").startswith("501 5.0.0")
    assert s.command("AUTH PLAIN !!!").startswith("501 5.5.2")
    assert s.command("AUTH CRAM-MD5").startswith("504 5.5.4")


def test_command_line_limit_512() -> None:
    """A 512-octet command line is fine; 513 gets 500 5.5.2 and the session goes on."""
    s = session()
    s.command("EHLO c")
    assert s.command("NOOP " + "x" * 505).startswith("250")  # 510 + CRLF = 512
    assert s.command("NOOP " + "x" * 506) == "500 5.5.2 Line too long"
    assert s.send("NOOP " + "y" * 5000) == []
    assert s.send("\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]


def test_endless_command_line_is_bounded() -> None:
    """Megabytes without CRLF never grow the buffer beyond the line limit."""
    s = session()
    for _ in range(50):
        s.send("A" * 20_000)
        assert len(s.protocol._inbox) <= 12288 + 1
    assert s.send("\r\n") == ["500 5.5.2 Line too long"]


def test_bare_lf_in_command_refused() -> None:
    """A command line holding a bare LF or CR is refused, not split."""
    s = session()
    s.command("EHLO c")
    assert s.command("NOOP\nRSET") == "500 5.5.2 Bare CR or LF in command line"
    assert s.send("NOOP\n") == []


def test_ten_errors_close_the_session() -> None:
    """The tenth 5xx reply is followed by 421 and a hang-up."""
    s = session()
    for _ in range(9):
        assert s.command("BOGUS").startswith("500 5.5.1")
    assert s.send("BOGUS\r\n") == ["500 5.5.1 Command unrecognized", TOO_MANY]
    assert s.closed


TOO_MANY = "421 4.7.0 Too many errors, closing connection"


def test_command_timeout() -> None:
    """An idle client is told 421 4.4.2 and disconnected after smtp-command-timeout."""
    s = session(source("smtp-command-timeout 30s"))
    s.command("EHLO c")
    s.clock.advance(29)
    assert not s.closed
    s.command("NOOP")
    s.clock.advance(29)
    assert not s.closed
    s.clock.advance(2)
    assert s.lines() == ["421 4.4.2 Timeout exceeded, closing connection"]
    assert s.closed


def test_data_timeout_aborts_message() -> None:
    """smtp-data-timeout applies during DATA; the half message is aborted, never stored."""
    s = session(source("smtp-command-timeout 10s\nsmtp-data-timeout 60s"))
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    s.command("RCPT TO:<b@relay.example>")
    s.command("DATA")
    s.send("Subject: slow\r\n")
    s.clock.advance(30)
    assert not s.closed
    s.clock.advance(31)
    assert s.closed
    s.protocol.connectionLost()
    assert s.store.messages == {} and s.store.aborted == ["msg0001"]


def test_spool_full_at_mail() -> None:
    """check_space failing gives 452 4.3.1 at MAIL."""
    store = FakeStore()
    store.fail_space = SpoolFullError
    s = session(store=store)
    s.command("EHLO c")
    assert s.command("MAIL FROM:<a@b.test>").startswith("452 4.3.1")
    store.fail_space = SpoolIOError
    assert s.command("MAIL FROM:<a@b.test>").startswith("451 4.3.0")


@pytest.mark.parametrize(
    ("error", "reply"), [(SpoolFullError, "452 4.3.1"), (SpoolIOError, "451 4.3.0")]
)
def test_spool_error_at_commit(error: type[Exception], reply: str) -> None:
    """A failing commit answers 4xx after DATA, never 250 or 5xx, and nothing is enqueued."""
    store = FakeStore()
    store.fail_commit = error  # type: ignore[assignment]
    s = session(store=store)
    assert transaction(s).startswith(reply)
    assert s.accepted == []


def test_250_only_after_commit_and_pipelined_commands_wait() -> None:
    """No reply until the commit fires; commands pipelined after the dot wait for it."""
    store = FakeStore()
    store.hold_commits = True
    s = session(store=store)
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    s.command("RCPT TO:<b@relay.example>")
    s.command("DATA")
    assert s.send("x\r\n.\r\nNOOP\r\nQUIT\r\n") == []
    assert s.accepted == []
    store.release()
    assert s.lines() == ["250 2.0.0 Ok: queued as msg0001", "250 2.0.0 Ok", "221 2.0.0 Bye"]
    assert len(s.accepted) == 1


def test_input_paused_while_waiting_for_commit() -> None:
    """Pipelined input piling up behind a pending commit pauses the transport, then resumes."""
    store = FakeStore()
    store.hold_commits = True
    s = session(source("max-junk-commands 100000"), store=store)
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    s.command("RCPT TO:<b@relay.example>")
    s.command("DATA")
    s.send("x\r\n.\r\n" + "NOOP\r\n" * 20_000)
    assert s.transport.producerState == "paused"
    store.release()
    assert s.transport.producerState == "producing"
    assert s.lines().count("250 2.0.0 Ok") == 20_000


def test_pipelined_transaction() -> None:
    """A whole pipelined transaction in one packet gets its replies in order."""
    s = session()
    s.command("EHLO c")
    replies = s.send(
        "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@relay.example>\r\nRCPT TO:<y@nope.test>\r\n"
        "DATA\r\nSubject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    )
    codes = [r[:3] for r in replies]
    assert codes == ["250", "250", "550", "354", "250", "221"]
    assert [r.address for r in s.store.only()[0].recipients] == ["x@relay.example"]


def test_data_without_valid_recipients() -> None:
    """DATA after only refused recipients gets 554 5.5.1 and no 354."""
    s = session()
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    s.command("RCPT TO:<x@nope.test>")
    assert s.command("DATA").startswith("554 5.5.1")
    assert s.command("NOOP").startswith("250")


def test_helo_required_and_sequence_errors() -> None:
    """MAIL before HELO, RCPT before MAIL and nested MAIL are 503 5.5.1."""
    s = session()
    assert s.command("MAIL FROM:<a@b.test>").startswith("503 5.5.1")
    s.command("HELO c")
    assert s.command("RCPT TO:<a@relay.example>").startswith("503 5.5.1")
    assert s.command("MAIL FROM:<a@b.test> SIZE=10").startswith("555 5.5.4")  # HELO: no params
    assert s.command("MAIL FROM:<a@b.test>").startswith("250")
    assert s.command("MAIL FROM:<a@b.test>").startswith("503 5.5.1")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<j\xc3\xb6rg@b.test>", "553 5.6.7"),
        (b"MAIL FROM:<j\xf6rg@b.test> SMTPUTF8", "501 5.6.7"),
        (b"MAIL FROM:<j\xc3\xb6rg@b.test> SMTPUTF8", "250 2.1.0"),
        (b"MAIL FROM:<not an address>", "501 5.1.7"),
        (b"MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4"),
        (b"MAIL FROM:<a@b.test> BODY=BINARYMIME", "555 5.5.4"),
        (b"MAIL FROM:<a@b.test> SIZE=big", "501 5.5.4"),
        (b"MAIL FROM:<> RET=FULL", "250 2.1.0"),
    ],
)
def test_mail_argument_checks(line: bytes, expected: str) -> None:
    """Addresses and parameters are checked: 8-bit needs SMTPUTF8, UTF-8 must be valid."""
    s = session()
    s.command("EHLO c")
    assert s.send(line + b"\r\n")[-1].startswith(expected)


def test_8bit_rcpt_needs_smtputf8_from_mail() -> None:
    """A UTF-8 recipient is 553 5.6.7 unless MAIL said SMTPUTF8."""
    s = session(source("always-allow-relaying yes"))
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    assert s.send("RCPT TO:<björn@x.test>\r\n")[-1].startswith("553 5.6.7")
    s.command("RSET")
    s.send("MAIL FROM:<a@b.test> SMTPUTF8\r\n")
    assert s.send("RCPT TO:<björn@x.test>\r\n")[-1].startswith("250")
    s.command("DATA")
    s.send("x\r\n.\r\n")
    envelope, body = s.store.only()
    assert envelope.smtputf8 and envelope.recipients[0].address == "björn@x.test"
    assert b"with UTF8SMTP id" in body


def test_8bit_body_without_8bitmime_accepted_and_noted() -> None:
    """8-bit content without BODY=8BITMIME is accepted, marked 8BITMIME and counted."""
    s = session()
    assert transaction(s, body="Subject: \xe9t\xe9\r\n\r\nd\xe9j\xe0\r\n").startswith("250")
    assert s.store.only()[0].body_type == "8BITMIME"
    assert s.factory.stats.eight_bit_undeclared == 1


def test_nul_refuses_message() -> None:
    """NUL in the content refuses the message with 550 5.6.0 after its end."""
    s = session()
    assert transaction(s, body="a\x00b\r\n").startswith("550 5.6.0")
    assert s.store.messages == {}


def test_bare_newline_reject_source_option() -> None:
    """bare-newline reject refuses content with a bare LF: 550 5.5.2."""
    s = session(source("bare-newline reject"))
    assert (
        transaction(s, body="a\nb\r\n")
        == "550 5.5.2 Message refused: bare CR or LF in message content"
    )
    assert s.store.messages == {}


def test_bare_newline_normalised_by_default() -> None:
    """By default bare CR and LF become CRLF in what is stored."""
    s = session(source("add-received-header no\nadd-message-id-header no\nadd-date-header no"))
    transaction(s, body="Subject: a\r\n\r\none\ntwo\rthree\r\n")
    assert s.store.only()[1] == b"Subject: a\r\n\r\none\r\ntwo\r\nthree\r\n"


def test_long_body_line_refused_and_no_command_mode() -> None:
    """A 1001-octet line refuses the message at its end; MAIL inside stays content."""
    s = session()
    s.command("EHLO c")
    s.command("MAIL FROM:<a@b.test>")
    s.command("RCPT TO:<b@relay.example>")
    s.command("DATA")
    assert s.send("x" * 1001 + "\r\nMAIL FROM:<evil@x.test>\r\n") == []
    assert s.send(".\r\n") == ["550 5.5.2 Message refused: line longer than 998 octets"]
    assert s.store.messages == {}


def test_web_request_hangs_up() -> None:
    """An HTTP request on the SMTP port ends the session at once."""
    s = session()
    s.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.closed


def test_sessions_counted() -> None:
    """ReceptionStats counts current and total sessions."""
    s = session()
    stats = s.factory.stats
    assert (stats.sessions_current, stats.sessions_total) == (1, 1)
    s.protocol.connectionLost()
    assert (stats.sessions_current, stats.sessions_total) == (1 - 1, 1)


def test_starttls_unavailable_without_certificate() -> None:
    """STARTTLS without a certificate is 454 4.7.0."""
    s = session()
    s.command("EHLO c")
    assert s.command("STARTTLS").startswith("454 4.7.0")


def test_vrfy_rset_noop_quit() -> None:
    """VRFY 252, RSET/NOOP 250 2.0.0, QUIT 221 and close."""
    s = session()
    s.command("EHLO c")
    assert s.command("VRFY bob").startswith("252 2.5.0")
    assert s.command("RSET") == "250 2.0.0 Ok"
    assert s.command("QUIT") == "221 2.0.0 Bye"
    assert s.closed
