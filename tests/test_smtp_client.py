"""Outbound SMTP client: pure parts as tables, the conversation over StringTransport.

The conversation tests drive `run_session` on a MemoryReactorClock: the test plays
the server byte by byte, so it can check exactly what went on the wire (one write
for a pipelined batch), inject what real servers rarely do (421 mid-transaction,
data after a STARTTLS reply), and move the clock for timeouts.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from mtaserver.config.model import DomainSettings
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import Transaction, TransactionResult
from mtaserver.smtp.client import run_session
from mtaserver.smtp.client_protocol import (
    ReplyAssembler,
    ReplyError,
    make_reply,
    parse_ehlo,
    parse_reply_line,
)
from mtaserver.smtp.client_session import SessionFailure
from mtaserver.smtp.client_wire import (
    auth_plain,
    encode_data,
    is_loopback,
    mail_command,
    needs_smtputf8,
    rcpt_command,
    valid_address,
    xtext,
)
from mtaserver.smtp_reply import Reply


def envelope(*addresses: str, **kw: Any) -> Envelope:
    fields: dict[str, Any] = dict(
        msg_id="m1",
        sender="from@example.org",
        recipients=tuple(Recipient(a) for a in addresses or ("ok@example.com",)),
        time_queued=0.0,
    )
    fields.update(kw)
    return Envelope(**fields)


# ------------------------------------------------------------------ reply lines


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"250 OK", (250, True, "OK")),
        (b"250-SIZE 1000", (250, False, "SIZE 1000")),
        (b"250", (250, True, "")),
        (b"250-", (250, False, "")),
        (b"550 5.1.1 <a@b> unknown", (550, True, "5.1.1 <a@b> unknown")),
        (b"220 h\xc3\xa9llo", (220, True, "h\u00e9llo")),
        (b"421 \xff", (421, True, "\ufffd")),
    ],
)
def test_parse_reply_line(line: bytes, expected: tuple[int, bool, str]) -> None:
    """A reply line splits into code, whether it is the last line, and text."""
    assert parse_reply_line(line) == expected


@pytest.mark.parametrize("line", [b"", b"25", b"OK", b"250OK", b"2500 x", b"650 x", b"abc def"])
def test_parse_reply_line_rejects_garbage(line: bytes) -> None:
    """A line that is not an SMTP reply line is a ReplyError, never a guess."""
    with pytest.raises(ReplyError):
        parse_reply_line(line)


@pytest.mark.parametrize(
    ("lines", "replies"),
    [
        ([b"250 OK"], [(250, ("OK",))]),
        ([b"250-a", b"250-b", b"250 c"], [None, None, (250, ("a", "b", "c"))]),
        ([b"250 x", b"354 go"], [(250, ("x",)), (354, ("go",))]),
        (
            [b"550-5.1.1 a", b"550 5.1.1 b", b"250 ok"],
            [None, (550, ("5.1.1 a", "5.1.1 b")), (250, ("ok",))],
        ),
    ],
)
def test_reply_assembler(lines: list[bytes], replies: list[Any]) -> None:
    """Lines are collected until the line with a space after the code ends the reply."""
    assembler = ReplyAssembler()
    assert [assembler.feed(line) for line in lines] == replies
    assert not assembler.pending


@pytest.mark.parametrize(
    ("code", "lines", "expected"),
    [
        (250, ["2.1.5 OK"], Reply(250, "2.1.5", "OK")),
        (250, ["OK"], Reply(250, "2.0.0", "OK")),
        (451, ["try later"], Reply(451, "4.0.0", "try later")),
        (550, ["no"], Reply(550, "5.0.0", "no")),
        (550, ["5.1.1 a", "5.1.1 b"], Reply(550, "5.1.1", "a b")),
        (550, ["4.1.1 class mismatch"], Reply(550, "5.0.0", "4.1.1 class mismatch")),
        (550, ["5.7.1"], Reply(550, "5.7.1", "")),
        (552, ["5.3.4is not a status"], Reply(552, "5.0.0", "5.3.4is not a status")),
        (354, ["go ahead"], Reply(354, "", "go ahead")),
        (250, ["2.0.0 first", "2.0.1 other"], Reply(250, "2.0.0", "first 2.0.1 other")),
        (250, [], Reply(250, "2.0.0", "")),
    ],
)
def test_make_reply(code: int, lines: list[str], expected: Reply) -> None:
    """The enhanced status comes from the text when its class fits, else from the code."""
    assert make_reply(code, lines) == expected


@pytest.mark.parametrize(
    ("code", "success", "transient", "permanent"),
    [
        (250, True, False, False),
        (354, True, False, False),
        (451, False, True, False),
        (554, False, False, True),
    ],
)
def test_reply_classes(code: int, success: bool, transient: bool, permanent: bool) -> None:
    """is_success / is_transient / is_permanent follow the first digit of the code."""
    reply = Reply(code, "", "")
    assert (reply.is_success, reply.is_transient, reply.is_permanent) == (
        success,
        transient,
        permanent,
    )


def test_reply_str() -> None:
    """A reply prints the way a dsnDiag quotes it."""
    assert str(Reply(550, "5.1.1", "no such user")) == "550 5.1.1 no such user"


def test_parse_ehlo() -> None:
    """EHLO lines after the first are extensions: upper-case keyword -> parameters."""
    lines = ["mx.test greets you", "SIZE 1000", "8bitmime", "AUTH PLAIN LOGIN", "PIPELINING", "  "]
    assert parse_ehlo(lines) == {
        "SIZE": "1000",
        "8BITMIME": "",
        "AUTH": "PLAIN LOGIN",
        "PIPELINING": "",
    }


# ------------------------------------------------------------------ commands


@pytest.mark.parametrize(
    ("value", "encoded"),
    [("abc", "abc"), ("a+b=c", "a+2Bb+3Dc"), ("a b", "a+20b"), ("\u00e9", "+C3+A9"), ("", "")],
)
def test_xtext(value: str, encoded: str) -> None:
    """xtext keeps printable ASCII and encodes +, = and everything else as +XX."""
    assert xtext(value) == encoded


EXT_ALL = {"SIZE": "", "8BITMIME": "", "SMTPUTF8": "", "DSN": ""}


@pytest.mark.parametrize(
    ("env", "extensions", "utf8", "expected"),
    [
        (envelope(), {}, False, "MAIL FROM:<from@example.org>"),
        (envelope(sender=""), {}, False, "MAIL FROM:<>"),
        (envelope(), {"SIZE": "100"}, False, "MAIL FROM:<from@example.org> SIZE=42"),
        (envelope(body_type="8BITMIME"), {}, False, "MAIL FROM:<from@example.org>"),
        (
            envelope(body_type="8BITMIME"),
            {"8BITMIME": ""},
            False,
            "MAIL FROM:<from@example.org> BODY=8BITMIME",
        ),
        (envelope(), {"SMTPUTF8": ""}, True, "MAIL FROM:<from@example.org> SMTPUTF8"),
        (envelope(env_id="id 1", ret="hdrs"), {}, False, "MAIL FROM:<from@example.org>"),
        (
            envelope(env_id="id 1", ret="hdrs", body_type="8BITMIME"),
            EXT_ALL,
            True,
            "MAIL FROM:<from@example.org> SIZE=42 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+201",
        ),
    ],
)
def test_mail_command(env: Envelope, extensions: dict[str, str], utf8: bool, expected: str) -> None:
    """MAIL FROM carries only the parameters the server offers (and SMTPUTF8 when needed)."""
    assert mail_command(env, extensions, 42, utf8) == expected


@pytest.mark.parametrize(
    ("recipient", "extensions", "expected"),
    [
        (Recipient("a@b.test"), {}, "RCPT TO:<a@b.test>"),
        (
            Recipient("a@b.test", orcpt="rfc822;a@b.test", notify="FAILURE"),
            {},
            "RCPT TO:<a@b.test>",
        ),
        (
            Recipient("a@b.test", orcpt="rfc822;a@b.test", notify="success, failure"),
            {"DSN": ""},
            "RCPT TO:<a@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@b.test",
        ),
        (
            Recipient("a@b.test", orcpt="x+y@b.test"),
            {"DSN": ""},
            "RCPT TO:<a@b.test> ORCPT=rfc822;x+2By@b.test",
        ),
        (Recipient("a@b.test", notify="NEVER"), {"DSN": ""}, "RCPT TO:<a@b.test> NOTIFY=NEVER"),
    ],
)
def test_rcpt_command(recipient: Recipient, extensions: dict[str, str], expected: str) -> None:
    """RCPT TO carries NOTIFY and ORCPT only when the server offers DSN."""
    assert rcpt_command(recipient, extensions) == expected


@pytest.mark.parametrize(
    ("body", "wire"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n..c\r\n", b"a\r\n..b\r\n...c\r\n.\r\n"),
        (b".first\r\n", b"..first\r\n.\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\rb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"no end", b"no end\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"x.y\r\n", b"x.y\r\n.\r\n"),
    ],
)
def test_encode_data(body: bytes, wire: bytes) -> None:
    """DATA is CRLF-only, dot-stuffed and ends with CRLF.CRLF."""
    assert encode_data(body) == wire


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("a@b.test", True),
        ("", True),
        ("\u00e9@b.test", True),
        ("a@b\r\nRCPT TO:<x@y>", False),
        ("a>b", False),
        ("a b@c", False),
    ],
)
def test_valid_address(address: str, ok: bool) -> None:
    """Addresses with control characters, spaces or angle brackets never reach the wire."""
    assert valid_address(address) is ok


def test_needs_smtputf8() -> None:
    """SMTPUTF8 is needed when the envelope asks for it or an address is not ASCII."""
    assert not needs_smtputf8(envelope(), [Recipient("a@b.test")])
    assert needs_smtputf8(envelope(smtputf8=True), [Recipient("a@b.test")])
    assert needs_smtputf8(envelope(), [Recipient("j\u00f6rg@b.test")])
    assert needs_smtputf8(envelope(sender="\u00e9@a.test"), [Recipient("a@b.test")])


def test_auth_plain_and_loopback() -> None:
    """AUTH PLAIN is base64 of NUL user NUL password; loopback covers 127/8 and ::1."""
    assert auth_plain("user", "pass") == "AHVzZXIAcGFzcw=="
    assert is_loopback("127.0.0.2") and is_loopback("::1")
    assert not is_loopback("192.0.2.1") and not is_loopback("mx.test")


# ------------------------------------------------------- conversation on a fake wire


@attrs.frozen
class Target:
    host: str
    ip: str
    port: int


class CountingTransport(StringTransport):
    """A StringTransport that also keeps each write, to tell one write from several."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class FakeServer:
    """Runs `run_session` against a MemoryReactorClock; the test speaks for the server.

    `connect()` accepts the session's next connection (the first is accepted at once);
    once `pending` is empty the session waits for `hold`, when there is one.
    """

    started: list[FakeServer] = []

    def __init__(
        self,
        transactions: list[Transaction],
        settings: DomainSettings | None = None,
        ip: str = "127.0.0.1",
        timeout: float = 300,
        hold: defer.Deferred[Transaction | None] | None = None,
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.ip = ip
        self.pending = list(transactions)
        self.hold = hold
        self.results: list[TransactionResult] = []
        self.transports: list[CountingTransport] = []
        self.done = defer.Deferred.fromCoroutine(
            run_session(
                self.reactor,
                Target("mx.test", ip, 25),
                helo_name="client.test",
                source_ip=None,
                settings=settings or DomainSettings(),
                next_transaction=self.next_transaction,
                report=self.results.append,
                timeout=timeout,
            )
        )
        self.proto: Any = None
        self.connect()
        FakeServer.started.append(self)

    async def next_transaction(self) -> Transaction | None:
        if self.pending:
            return self.pending.pop(0)
        if self.hold is not None:
            return await self.hold
        return None

    def connect(self) -> None:
        """Accept the session's next connection attempt."""
        factory = self.reactor.tcpClients[len(self.transports)][2]
        self.proto = factory.buildProtocol(IPv4Address("TCP", self.ip, 25))
        transport = CountingTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", self.ip, 25),
        )
        self.transports.append(transport)
        self.proto.makeConnection(transport)

    @property
    def transport(self) -> CountingTransport:
        """The current connection's transport."""
        return self.transports[-1]

    def say(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def heard(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def close(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))

    def greet_ehlo(self, *extensions: str) -> None:
        self.say(b"220 mx.test ESMTP\r\n")
        assert self.heard() == b"EHLO client.test\r\n"
        lines = [b"mx.test", *(e.encode() for e in extensions)]
        self.say(
            b"".join(b"250-" + line + b"\r\n" for line in lines[:-1])
            + b"250 "
            + lines[-1]
            + b"\r\n"
        )

    def finish(self) -> None:
        """End an unfinished session (the coroutine must not be left suspended)."""
        if not self.done.called:
            self.close()
        self.done.addErrback(lambda _: None)

    def outcome(self) -> Any:
        results: list[Any] = []
        self.done.addBoth(results.append)
        assert results, "session still running"
        return results[0]


@pytest.fixture(autouse=True)
def _finish_fake_servers() -> Any:
    yield
    while FakeServer.started:
        FakeServer.started.pop().finish()


def failure_of(server: FakeServer) -> SessionFailure:
    outcome = server.outcome()
    assert isinstance(outcome, Failure), outcome
    assert isinstance(outcome.value, SessionFailure)
    return outcome.value


def tx(*addresses: str, body: bytes = b"Subject: x\r\n\r\nhi\r\n", **kw: Any) -> Transaction:
    env = envelope(*addresses, **kw)
    return Transaction(env, tuple(range(len(env.recipients))), body)


def test_pipelined_batch_is_one_write() -> None:
    """With PIPELINING, MAIL, every RCPT and DATA leave in one write before any reply."""
    server = FakeServer([tx("a@x.test", "b@x.test")])
    server.greet_ehlo("PIPELINING", "SIZE 1000")
    assert server.transport.writes[-1] == server.transport.value()
    assert server.heard() == (
        b"MAIL FROM:<from@example.org> SIZE=18\r\n"
        b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    )
    server.say(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    assert server.heard() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    server.say(b"250 2.0.0 queued\r\n")
    assert server.heard() == b"QUIT\r\n"
    server.say(b"221 bye\r\n")
    server.close()
    assert [r.code for r in server.results[0].replies] == [250, 550]
    assert server.outcome().esmtp


def test_without_pipelining_waits_for_each_reply() -> None:
    """Without PIPELINING each command waits for the previous reply."""
    server = FakeServer([tx("a@x.test")])
    server.greet_ehlo("8BITMIME")
    assert server.heard() == b"MAIL FROM:<from@example.org>\r\n"
    server.say(b"250 ok\r\n")
    assert server.heard() == b"RCPT TO:<a@x.test>\r\n"
    server.say(b"250 ok\r\n")
    assert server.heard() == b"DATA\r\n"


def test_dsn_parameters_on_the_wire() -> None:
    """A server offering DSN gets RET/ENVID on MAIL and NOTIFY/ORCPT on RCPT."""
    env = envelope(
        env_id="job-1",
        ret="FULL",
        recipients=(Recipient("a@x.test", orcpt="rfc822;a@x.test", notify="FAILURE,DELAY"),),
    )
    server = FakeServer([Transaction(env, (0,), b"x\r\n")])
    server.greet_ehlo("DSN", "PIPELINING")
    assert server.heard() == (
        b"MAIL FROM:<from@example.org> RET=FULL ENVID=job-1\r\n"
        b"RCPT TO:<a@x.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@x.test\r\nDATA\r\n"
    )


def test_helo_fallback() -> None:
    """A server that refuses EHLO with 5xx gets HELO, and MAIL without parameters."""
    server = FakeServer([tx("a@x.test", body_type="8BITMIME")])
    server.say(b"220 old server\r\n")
    assert server.heard() == b"EHLO client.test\r\n"
    server.say(b"502 what?\r\n")
    assert server.heard() == b"HELO client.test\r\n"
    server.say(b"250 hello\r\n")
    assert server.heard() == b"MAIL FROM:<from@example.org>\r\n"
    server.say(b"250 ok\r\n250 ok\r\n354 go\r\n250 done\r\n221 bye\r\n")
    server.close()
    assert server.outcome().esmtp is False
    assert server.results[0].info.esmtp is False


def test_greeting_refused() -> None:
    """A 554 greeting is a SessionFailure carrying the server's reply, after a QUIT."""
    server = FakeServer([tx("a@x.test")])
    server.say(b"554 5.7.1 go away\r\n")
    assert server.heard() == b"QUIT\r\n"
    server.say(b"221 bye\r\n")
    server.close()
    failure = failure_of(server)
    assert failure.reply == Reply(554, "5.7.1", "go away")
    assert server.results == []


def test_read_timeout() -> None:
    """A server that stops answering is dropped after `timeout` with 4.4.2 for the recipients."""
    server = FakeServer([tx("a@x.test")], timeout=30)
    server.greet_ehlo("PIPELINING")
    server.heard()
    server.reactor.advance(29)
    assert not server.transport.disconnecting
    server.reactor.advance(2)
    assert server.transport.disconnecting  # aborted
    server.close()
    failure = failure_of(server)
    assert failure.reply.status == "4.4.2" and "timeout" in failure.reply.text
    assert [r.status for r in server.results[0].replies] == ["4.4.2"]


def test_421_mid_transaction() -> None:
    """A 421 to a RCPT answers every recipient (an accepted RCPT is no delivery), ends it."""
    server = FakeServer([tx("a@x.test", "b@x.test", "c@x.test")])
    server.greet_ehlo("PIPELINING")
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n")
    server.close()
    failure = failure_of(server)
    assert failure.reply.code == 421
    replies = server.results[0].replies
    assert [r.code for r in replies] == [421, 421, 421]
    assert b"QUIT" not in server.heard()


def test_starttls_injection_refused() -> None:
    """Data pipelined after the STARTTLS 220 ends the session (4.7.5), never read as EHLO reply."""
    server = FakeServer([tx("a@x.test")], settings=DomainSettings(require_starttls=True))
    server.greet_ehlo("STARTTLS")
    assert server.heard() == b"STARTTLS\r\n"
    server.say(b"220 go ahead\r\n250-mx.test\r\n250 AUTH PLAIN\r\n")
    server.close()
    failure = failure_of(server)
    assert failure.reply.status == "4.7.5"
    assert server.results == []


def test_auth_not_sent_in_clear_off_loopback() -> None:
    """Credentials are never sent without TLS to a host that is not loopback (4.7.0)."""
    settings = DomainSettings(auth_username="u", auth_password="p", use_starttls=False)
    server = FakeServer([tx("a@x.test")], settings=settings, ip="192.0.2.1")
    server.greet_ehlo("AUTH PLAIN LOGIN")
    sent = server.heard()
    assert b"AUTH" not in sent and sent == b"QUIT\r\n"
    server.say(b"221 bye\r\n")
    server.close()
    assert failure_of(server).reply.status == "4.7.0"


def test_auth_login_on_loopback() -> None:
    """AUTH LOGIN (when PLAIN is not offered) sends user then password, base64."""
    settings = DomainSettings(auth_username="u", auth_password="p")
    server = FakeServer([], settings=settings)
    server.greet_ehlo("AUTH LOGIN")
    assert server.heard() == b"AUTH LOGIN\r\n"
    server.say(b"334 VXNlcm5hbWU6\r\n")
    assert server.heard() == b"dQ==\r\n"
    server.say(b"334 UGFzc3dvcmQ6\r\n")
    assert server.heard() == b"cA==\r\n"
    server.say(b"235 2.7.0 ok\r\n")
    assert server.heard() == b"QUIT\r\n"


def test_connection_lost_before_greeting() -> None:
    """A connection lost before the greeting fails with 4.4.2 and asks for no transaction."""
    server = FakeServer([tx("a@x.test")])
    server.proto.connectionLost(Failure(ConnectionLost()))
    failure = failure_of(server)
    assert failure.reply.status == "4.4.2" and "greeting" in failure.reply.text
    assert len(server.pending) == 1 and server.results == []


def test_connection_lost_after_data() -> None:
    """Lost after the body: accepted recipients get 4.4.2, rejected ones keep their reply."""
    server = FakeServer([tx("a@x.test", "b@x.test")])
    server.greet_ehlo("PIPELINING")
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
    server.proto.connectionLost(Failure(ConnectionLost()))
    failure = failure_of(server)
    assert failure.reply.status == "4.4.2"
    assert [(r.code, r.status) for r in server.results[0].replies] == [
        (421, "4.4.2"),
        (550, "5.1.1"),
    ]


def test_cancel_aborts_connection() -> None:
    """Cancelling a session (shutdown) aborts its connection and fails with CancelledError."""
    server = FakeServer([tx("a@x.test")])
    server.greet_ehlo("PIPELINING")
    server.done.cancel()
    assert server.transport.disconnecting
    server.close()
    outcome = server.outcome()
    assert isinstance(outcome, Failure) and outcome.check(defer.CancelledError)
