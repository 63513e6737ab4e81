"""Outbound hardening at the protocol level: `run_session` over StringTransport.

The test speaks for the server byte by byte, so it can put two replies in one chunk
or in two, and see exactly what the client wrote (or refused to write).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_smtp_client import FakeServer
from twisted.internet import defer

from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import Transaction
from mtaserver.smtp.client_protocol import make_reply
from mtaserver.smtp.client_wire import mail_command, orcpt_param, rcpt_command, safe_command


class Server(FakeServer):
    """test_smtp_client's FakeServer that greets every connection with PIPELINING and DSN."""

    def __init__(
        self,
        transactions: list[Transaction],
        hold: defer.Deferred[Transaction | None] | None = None,
    ) -> None:
        super().__init__(transactions, hold=hold)

    def connect(self) -> None:
        super().connect()
        self.greet_ehlo("PIPELINING", "DSN")

    def lost(self) -> None:
        """The transport was aborted (StringTransport only records it): deliver the loss."""
        assert self.transport.disconnecting or self.transport.disconnected
        self.close()


def envelope(*addresses: str, **kw: Any) -> Envelope:
    return Envelope("m1", "from@example.org", tuple(Recipient(a) for a in addresses), 0.0, **kw)


def tx(*addresses: str, body: bytes = b"Subject: x\r\n\r\nhi\r\n", **kw: Any) -> Transaction:
    env = envelope(*addresses, **kw)
    return Transaction(env, tuple(range(len(env.recipients))), body)


@pytest.fixture
def servers() -> Any:
    started: list[Server] = []
    yield started
    for server in started:
        server.finish()


def test_orcpt_is_always_xtext_on_the_wire() -> None:
    """ORCPT's address is xtext-encoded whatever it holds; the type is kept."""
    assert orcpt_param("rfc822;a+b@x.test") == "rfc822;a+2Bb@x.test"
    assert orcpt_param("rfc822;x\r\nRCPT TO:<v@x>") == "rfc822;x+0D+0ARCPT+20TO:<v@x>"
    assert orcpt_param("bare@x.test") == "rfc822;bare@x.test"
    assert orcpt_param("bad type;a@x") == "rfc822;bad+20type;a@x"
    rcpt = Recipient("a@x.test", orcpt="rfc822;a\r\nb", notify="FAILURE")
    assert safe_command(rcpt_command(rcpt, {"DSN": ""}))
    env = envelope("a@x.test", env_id="id\r\nRSET")
    assert "ENVID=id+0D+0ARSET" in mail_command(env, {"DSN": ""}, 10)


def test_unsafe_command_is_never_written(servers: list[Server]) -> None:
    """A recipient whose RCPT would hold CR/LF fails 550 5.6.0 locally; the others go on."""
    bad = Recipient("b@x.test", notify="FAILURE\r\nRSET")
    env = Envelope("m1", "from@example.org", (Recipient("a@x.test"), bad), 0.0)
    server = Server([Transaction(env, (0, 1), b"hi\r\n")])
    servers.append(server)
    sent = server.heard()
    assert b"RSET" not in sent and sent.count(b"RCPT") == 1
    server.say(b"250 ok\r\n250 ok\r\n354 go\r\n")
    server.heard()
    server.say(b"250 queued\r\n")
    (result,) = server.results
    assert [(r.code, r.status) for r in result.replies] == [(250, "2.0.0"), (550, "5.6.0")]


def test_data_answered_250_sends_no_body(servers: list[Server]) -> None:
    """A 250 to DATA is a desync: t 4.5.0 for everyone, no body, a fresh connection next."""
    server = Server([tx("a@x.test", "b@x.test"), tx("c@x.test")])
    servers.append(server)
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n")
    assert server.heard() == b""  # no body, no QUIT
    (result,) = server.results
    assert [(r.code, r.status) for r in result.replies] == [(421, "4.5.0"), (421, "4.5.0")]
    server.lost()
    server.connect()  # the session goes on over a new connection
    assert b"RCPT TO:<c@x.test>" in server.heard()


def test_extra_reply_after_the_dot_in_the_same_chunk(servers: list[Server]) -> None:
    """Two replies after the dot in one chunk: that transaction is t; the next waits a new link."""
    server = Server([tx("a@x.test"), tx("b@x.test")])
    servers.append(server)
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert server.heard().endswith(b"\r\n.\r\n")
    server.say(b"250 queued\r\n250 queued again\r\n")
    assert server.heard() == b""  # no MAIL for b@ on this connection
    (result,) = server.results
    assert result.replies[0].status == "4.5.0" and result.replies[0].is_transient
    server.lost()
    server.connect()
    assert b"RCPT TO:<b@x.test>" in server.heard()


def test_unsolicited_reply_while_idle(servers: list[Server]) -> None:
    """A reply when none is due, between transactions, drops the connection at once."""
    server = Server([tx("a@x.test")])
    servers.append(server)
    server.hold = defer.Deferred()
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n354 go\r\n")
    server.heard()
    server.say(b"250 queued\r\n")
    assert server.results[0].replies[0].code == 250
    server.say(b"250 nobody asked\r\n")
    assert server.transport.disconnecting
    server.lost()
    server.hold.callback(tx("b@x.test"))
    assert server.heard() == b""  # nothing more on the dropped connection
    server.connect()  # the next transaction goes out over a fresh connection
    assert b"RCPT TO:<b@x.test>" in server.heard()


def test_3xx_after_the_dot_is_not_a_delivery(servers: list[Server]) -> None:
    """Only 2xx after the body is a delivery; a 354 there is a desync (t)."""
    server = Server([tx("a@x.test")])
    servers.append(server)
    server.heard()
    server.say(b"250 ok\r\n250 ok\r\n354 go\r\n")
    server.heard()
    server.say(b"354 again\r\n")
    (result,) = server.results
    assert result.replies[0].status == "4.5.0"


def test_reply_text_loses_control_characters() -> None:
    """A bare CR or other control in a reply line becomes a space in the reply text."""
    reply = make_reply(550, ["5.1.1 no\rsuch\x00user", "5.1.1 second"])
    assert reply.text == "no such user second"
