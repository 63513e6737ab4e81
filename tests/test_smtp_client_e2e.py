"""Outbound SMTP client against real aiosmtpd receivers on loopback.

The client runs on the session-wide reactor thread (`reactor_thread`), the
receiver in aiosmtpd's own thread; each test checks both what the client
reported and what the receiver actually got.
"""

from __future__ import annotations

import ssl
from typing import Any

import attrs
import pytest
import trustme
from mx_receiver import Receiver
from reactor_thread import run_in_reactor
from server_process import free_port
from twisted.internet import reactor
from twisted.internet.ssl import Certificate

from mtaserver.config.model import DomainSettings
from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import ConnectionInfo, Transaction, TransactionResult
from mtaserver.smtp.client import run_session
from mtaserver.smtp.client_session import SessionFailure


@attrs.frozen
class Target:
    host: str
    ip: str
    port: int


@attrs.define
class Run:
    """What one session did: its result (info or failure), reports, and asks."""

    outcome: ConnectionInfo | SessionFailure
    results: list[TransactionResult]
    asked: int

    @property
    def info(self) -> ConnectionInfo:
        assert isinstance(self.outcome, ConnectionInfo), self.outcome
        return self.outcome

    @property
    def failure(self) -> SessionFailure:
        assert isinstance(self.outcome, SessionFailure), self.outcome
        return self.outcome

    def codes(self, n: int = 0) -> list[tuple[int, str]]:
        return [(r.code, r.status) for r in self.results[n].replies]


def message(
    *addresses: str, body: bytes = b"Subject: test\r\n\r\nHello.\r\n", **kw: Any
) -> Transaction:
    fields: dict[str, Any] = dict(
        msg_id="m1",
        sender="sender@example.org",
        recipients=tuple(Recipient(a) for a in addresses),
        time_queued=0.0,
    )
    fields.update(kw)
    env = Envelope(**fields)
    return Transaction(env, tuple(range(len(addresses))), body)


def deliver(
    port: int,
    transactions: list[Transaction],
    settings: DomainSettings | None = None,
    host: str = "mx.test",
    trust_root: Any = None,
    source_ip: str | None = None,
) -> Run:
    """Run one session to 127.0.0.1:`port` and collect what happened."""
    pending = list(transactions)
    results: list[TransactionResult] = []
    asked = 0
    reported_before_asking: list[bool] = []

    async def next_transaction() -> Transaction | None:
        nonlocal asked
        reported_before_asking.append(len(results) == asked)
        asked += 1
        return pending.pop(0) if pending else None

    async def session() -> ConnectionInfo | SessionFailure:
        try:
            return await run_session(
                reactor,
                Target(host, "127.0.0.1", port),
                helo_name="client.test",
                source_ip=source_ip,
                settings=settings or DomainSettings(connect_timeout=5),
                next_transaction=next_transaction,
                report=results.append,
                trust_root=trust_root,
                timeout=10,
            )
        except SessionFailure as failure:
            return failure

    outcome = run_in_reactor(session, timeout=30)
    # every transaction is reported before the next one is asked for
    assert all(reported_before_asking[: len(results) + 1])
    return Run(outcome, results, asked)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trust_root(ca: trustme.CA) -> Certificate:
    return Certificate.loadPEM(ca.cert_pem.bytes())


@pytest.fixture
def receivers() -> Any:
    started: list[Receiver] = []

    def start(**kw: Any) -> Receiver:
        receiver = Receiver(**kw)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def test_one_transaction(receivers: Any) -> None:
    """One message to one recipient arrives intact and is reported 250."""
    mx = receivers()
    body = b"Subject: one\r\n\r\nline 1\r\nline 2\r\n"
    run = deliver(mx.port, [message("ok@dest.test", body=body)])
    assert run.codes() == [(250, "2.0.0")]
    assert run.info.esmtp and run.info.source_ip == "127.0.0.1"
    assert {"PIPELINING", "SIZE"} <= run.info.extensions
    [got] = mx.messages
    assert got.data == body
    assert (got.mail_from, got.rcpt_tos, got.helo) == (
        "sender@example.org",
        ["ok@dest.test"],
        "client.test",
    )
    assert f"SIZE={len(body)}" in got.mail_options
    assert mx.commands[-1] == "QUIT"


def test_several_transactions_one_connection(receivers: Any) -> None:
    """Three messages go over one connection, each reported before the next is asked for."""
    mx = receivers()
    txs = [
        message(f"ok{i}@dest.test", body=f"Subject: {i}\r\n\r\nx\r\n".encode()) for i in range(3)
    ]
    run = deliver(mx.port, txs)
    assert [r.transaction for r in run.results] == txs
    assert all(r.replies[0].code == 250 for r in run.results)
    assert len(mx.connections) == 1
    assert [m.rcpt_tos for m in mx.messages] == [
        ["ok0@dest.test"],
        ["ok1@dest.test"],
        ["ok2@dest.test"],
    ]
    assert mx.commands.count("EHLO") == 1 and mx.commands.count("MAIL") == 3
    assert run.asked == 4  # three transactions and the None that ends the session


def test_max_msg_per_connection(receivers: Any) -> None:
    """With max-msg-per-connection 2 the session quits after two without asking again."""
    mx = receivers()
    txs = [message(f"ok{i}@dest.test") for i in range(3)]
    run = deliver(mx.port, txs, settings=DomainSettings(max_msg_per_connection=2))
    assert len(run.results) == 2 and run.asked == 2
    assert len(mx.messages) == 2


def test_mixed_recipient_replies(receivers: Any) -> None:
    """Each recipient gets its own reply; only accepted ones get the end-of-data reply."""
    mx = receivers(data_reply="250 2.6.0 queued as X1")
    tx = message("ok1@d.test", "soft@d.test", "hard@d.test", "ok2@d.test")
    run = deliver(mx.port, [tx])
    assert run.codes() == [(250, "2.6.0"), (451, "4.2.0"), (550, "5.1.1"), (250, "2.6.0")]
    assert run.results[0].replies[0].text == "queued as X1"
    assert mx.messages[0].rcpt_tos == ["ok1@d.test", "ok2@d.test"]


def test_subset_of_recipients(receivers: Any) -> None:
    """Only the recipients at rcpt_indexes are sent, and replies follow that order."""
    mx = receivers()
    tx = message("ok0@d.test", "ok1@d.test", "hard2@d.test")
    tx = attrs.evolve(tx, rcpt_indexes=(2, 0))
    run = deliver(mx.port, [tx])
    assert run.codes() == [(550, "5.1.1"), (250, "2.0.0")]
    assert mx.messages[0].rcpt_tos == ["ok0@d.test"]


def test_pipelining_observed(receivers: Any) -> None:
    """With PIPELINING offered, RCPT and DATA are already waiting when MAIL is handled."""
    mx = receivers()
    deliver(mx.port, [message("ok1@d.test", "ok2@d.test")])
    assert mx.mail_pipelined == [True]
    assert len(mx.messages) == 1


def test_no_pipelining_when_not_offered(receivers: Any) -> None:
    """Without PIPELINING the client waits for each reply: nothing waits behind MAIL."""
    mx = receivers(pipelining=False)
    run = deliver(mx.port, [message("ok1@d.test", "ok2@d.test")])
    assert mx.mail_pipelined == [False]
    assert "PIPELINING" not in run.info.extensions
    assert len(mx.messages) == 1


@pytest.mark.parametrize("pipelining", [True, False])
def test_mail_from_rejected(receivers: Any, pipelining: bool) -> None:
    """A refused MAIL FROM answers every recipient; RSET follows and the next message goes."""
    mx = receivers(pipelining=pipelining)
    refused = message("ok1@d.test", "ok2@d.test", sender="hard@example.org")
    run = deliver(mx.port, [refused, message("ok3@d.test")])
    assert run.codes(0) == [(550, "5.1.8"), (550, "5.1.8")]
    assert run.codes(1) == [(250, "2.0.0")]
    assert "RSET" in mx.commands
    assert [m.rcpt_tos for m in mx.messages] == [["ok3@d.test"]]


def test_all_rcpt_rejected_no_data(receivers: Any) -> None:
    """When no RCPT is accepted, DATA is not sent (RSET instead) and nothing is delivered."""
    mx = receivers(pipelining=False)
    run = deliver(mx.port, [message("hard1@d.test", "soft2@d.test")])
    assert run.codes() == [(550, "5.1.1"), (451, "4.2.0")]
    assert "DATA" not in mx.commands and "RSET" in mx.commands
    assert mx.messages == []


def test_all_rcpt_rejected_pipelined(receivers: Any) -> None:
    """Pipelined, the refused DATA does not replace the RCPT rejections."""
    mx = receivers()
    run = deliver(mx.port, [message("hard1@d.test", "soft2@d.test"), message("ok@d.test")])
    assert run.codes(0) == [(550, "5.1.1"), (451, "4.2.0")]
    assert run.codes(1) == [(250, "2.0.0")]
    assert [m.rcpt_tos for m in mx.messages] == [["ok@d.test"]]


def test_dot_stuffing(receivers: Any) -> None:
    """Body lines starting with '.' (including a lone '.') arrive exactly as stored."""
    mx = receivers()
    body = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmid.dle\r\n. \r\nend\r\n"
    deliver(mx.port, [message("ok@d.test", body=body)])
    assert mx.messages[0].data == body


def test_bare_line_ends_normalised(receivers: Any) -> None:
    """A lone LF or CR in the body reaches the receiver as CRLF."""
    mx = receivers()
    body = b"Subject: lf\n\nline1\nline2\rline3\r\n.dot\n"
    deliver(mx.port, [message("ok@d.test", body=body)])
    assert mx.messages[0].data == b"Subject: lf\r\n\r\nline1\r\nline2\r\nline3\r\n.dot\r\n"


def test_8bitmime(receivers: Any) -> None:
    """An 8BITMIME body is declared BODY=8BITMIME and its 8-bit bytes arrive unchanged."""
    mx = receivers()
    body = "Subject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()
    deliver(mx.port, [message("ok@d.test", body=body, body_type="8BITMIME")])
    assert "BODY=8BITMIME" in mx.messages[0].mail_options
    assert mx.messages[0].data == body


def test_8bitmime_not_offered(receivers: Any) -> None:
    """A server without 8BITMIME gets the 8-bit body anyway, without BODY=."""
    mx = receivers(hide=("8BITMIME",))
    body = "Subject: x\r\n\r\n\u00e9\r\n".encode()
    run = deliver(mx.port, [message("ok@d.test", body=body, body_type="8BITMIME")])
    assert run.codes() == [(250, "2.0.0")]
    assert not any(o.startswith("BODY") for o in mx.messages[0].mail_options)
    assert mx.messages[0].data == body


def test_smtputf8(receivers: Any) -> None:
    """A UTF-8 address goes with SMTPUTF8 to a server that offers it."""
    mx = receivers()
    run = deliver(mx.port, [message("ok.j\u00f6rg@d\u00e9.test", smtputf8=True)])
    assert run.codes() == [(250, "2.0.0")]
    assert "SMTPUTF8" in mx.messages[0].mail_options
    assert mx.messages[0].rcpt_tos == ["ok.j\u00f6rg@d\u00e9.test"]


def test_smtputf8_not_offered(receivers: Any) -> None:
    """Without SMTPUTF8 at the server every recipient gets 550 5.6.7 and nothing is sent."""
    mx = receivers(smtputf8=False)
    run = deliver(
        mx.port, [message("ok@d.test", "ok2@d.test", smtputf8=True), message("ok3@d.test")]
    )
    assert run.codes(0) == [(550, "5.6.7"), (550, "5.6.7")]
    assert run.codes(1) == [(250, "2.0.0")]
    assert mx.commands.count("MAIL") == 1
    assert [m.rcpt_tos for m in mx.messages] == [["ok3@d.test"]]


def test_size_limit_known_in_advance(receivers: Any) -> None:
    """A message larger than the server's SIZE gets 552 5.3.4 without being sent."""
    mx = receivers(data_size_limit=100)
    run = deliver(mx.port, [message("ok@d.test", body=b"x" * 200 + b"\r\n")])
    assert run.codes() == [(552, "5.3.4")]
    assert "MAIL" not in mx.commands


def test_starttls_verified(receivers: Any, ca: trustme.CA, trust_root: Certificate) -> None:
    """Under require-starttls a certificate for the MX name verifies and mail goes over TLS."""
    mx = receivers(tls_cert=ca.issue_cert("mx.test", "localhost"), require_tls=True)
    settings = DomainSettings(require_starttls=True)
    run = deliver(mx.port, [message("ok@d.test")], settings=settings, trust_root=trust_root)
    assert run.codes() == [(250, "2.0.0")]
    assert mx.messages[0].tls
    assert run.info.tls_protocol in ("TLSv1.2", "TLSv1.3") and run.info.tls_cipher
    assert run.results[0].info.tls_protocol == run.info.tls_protocol
    assert "STARTTLS" not in run.info.extensions  # the post-TLS EHLO replaced the first
    assert mx.commands.count("EHLO") == 2


def test_starttls_wrong_name(receivers: Any, ca: trustme.CA, trust_root: Certificate) -> None:
    """Under require-starttls a certificate for another name fails 4.7.5 and sends nothing."""
    mx = receivers(tls_cert=ca.issue_cert("other.example"))
    settings = DomainSettings(require_starttls=True)
    run = deliver(mx.port, [message("ok@d.test")], settings=settings, trust_root=trust_root)
    assert run.failure.reply.status == "4.7.5" and run.failure.reply.is_transient
    assert run.asked == 0 and run.results == []
    assert "MAIL" not in mx.commands and mx.messages == []


def test_starttls_untrusted_ca(receivers: Any, trust_root: Certificate) -> None:
    """Under require-starttls a certificate from an unknown CA fails 4.7.5."""
    mx = receivers(tls_cert=trustme.CA().issue_cert("mx.test"))
    settings = DomainSettings(require_starttls=True)
    run = deliver(mx.port, [message("ok@d.test")], settings=settings, trust_root=trust_root)
    assert run.failure.reply.status == "4.7.5"
    assert mx.messages == []


def test_opportunistic_tls_unverified(receivers: Any, ca: trustme.CA) -> None:
    """Without require-starttls, TLS is used even with a certificate for another name."""
    mx = receivers(tls_cert=ca.issue_cert("other.example"))
    run = deliver(mx.port, [message("ok@d.test")])
    assert run.codes() == [(250, "2.0.0")]
    assert mx.messages[0].tls and run.info.tls_protocol


def test_opportunistic_tls_handshake_failure_falls_back(receivers: Any, ca: trustme.CA) -> None:
    """If the opportunistic handshake fails, the session reconnects and delivers in plaintext."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.test").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED  # we present no client certificate
    mx = receivers(tls_context=context)
    run = deliver(mx.port, [message("ok@d.test")])
    assert run.codes() == [(250, "2.0.0")]
    assert run.info.tls_protocol == "" and not mx.messages[0].tls
    assert len(mx.connections) == 2


def test_starttls_not_offered_but_required(receivers: Any) -> None:
    """require-starttls to a server without STARTTLS fails 4.7.5 before any MAIL."""
    mx = receivers()
    run = deliver(mx.port, [message("ok@d.test")], settings=DomainSettings(require_starttls=True))
    assert run.failure.reply.status == "4.7.5"
    assert run.failure.info is not None and run.failure.info.tls_protocol == ""
    assert "MAIL" not in mx.commands and run.asked == 0


def test_starttls_disabled(receivers: Any, ca: trustme.CA) -> None:
    """use-starttls no keeps the session in plaintext even when STARTTLS is offered."""
    mx = receivers(tls_cert=ca.issue_cert("mx.test"))
    run = deliver(mx.port, [message("ok@d.test")], settings=DomainSettings(use_starttls=False))
    assert "STARTTLS" not in mx.commands
    assert run.info.tls_protocol == "" and not mx.messages[0].tls


def test_connection_refused() -> None:
    """Nobody listening: SessionFailure 4.4.1 without connection info, nothing asked."""
    run = deliver(free_port(), [message("ok@d.test")])
    assert run.failure.reply.status == "4.4.1" and run.failure.reply.is_transient
    assert run.failure.info is None and run.asked == 0


def test_connection_dropped_after_data(receivers: Any) -> None:
    """A server that drops after the body: accepted recipients get 4.4.2, then SessionFailure."""
    mx = receivers(drop_after_data=True)
    run = deliver(
        mx.port, [message("ok1@d.test", "hard@d.test", "ok2@d.test"), message("ok3@d.test")]
    )
    assert run.codes() == [(421, "4.4.2"), (550, "5.1.1"), (421, "4.4.2")]
    assert all(r.is_transient for r in run.results[0].replies[::2])
    assert run.failure.reply.status == "4.4.2"
    assert run.asked == 1


def test_source_ip_binding(receivers: Any) -> None:
    """The connection is bound to source_ip: the MX sees 127.0.0.1; an address this host
    does not have (192.0.2.1) cannot be bound, so that session fails without connecting."""
    mx = receivers()
    run = deliver(mx.port, [message("ok@d.test")], source_ip="127.0.0.1")
    assert mx.connections[0][0] == "127.0.0.1"
    assert mx.messages[0].peer[0] == "127.0.0.1"
    assert run.info.source_ip == "127.0.0.1"
    unbindable = deliver(mx.port, [message("no@d.test")], source_ip="192.0.2.1")
    assert unbindable.failure.reply.is_transient
    assert len(mx.connections) == 1 and len(mx.messages) == 1


def test_auth_plain_loopback(receivers: Any) -> None:
    """AUTH to a loopback smarthost works without TLS; the receiver sees the user."""
    mx = receivers(auth={"relay": "s3cret"}, auth_require_tls=False)
    settings = DomainSettings(auth_username="relay", auth_password="s3cret")
    run = deliver(mx.port, [message("ok@d.test")], settings=settings)
    assert run.codes() == [(250, "2.0.0")]
    assert "AUTH" in mx.commands and mx.messages[0].auth_user == "relay"


def test_auth_over_tls(receivers: Any, ca: trustme.CA, trust_root: Certificate) -> None:
    """AUTH offered only after STARTTLS is used after STARTTLS."""
    mx = receivers(tls_cert=ca.issue_cert("mx.test"), auth={"relay": "pw"})
    settings = DomainSettings(auth_username="relay", auth_password="pw", require_starttls=True)
    run = deliver(mx.port, [message("ok@d.test")], settings=settings, trust_root=trust_root)
    assert run.codes() == [(250, "2.0.0")]
    assert mx.messages[0].auth_user == "relay" and mx.messages[0].tls


def test_auth_refused(receivers: Any) -> None:
    """Wrong credentials: SessionFailure with the server's 535 and no mail sent."""
    mx = receivers(auth={"relay": "right"}, auth_require_tls=False)
    settings = DomainSettings(auth_username="relay", auth_password="wrong")
    run = deliver(mx.port, [message("ok@d.test")], settings=settings)
    assert run.failure.reply.code == 535
    assert "MAIL" not in mx.commands and run.asked == 0


def test_auth_configured_not_offered(receivers: Any) -> None:
    """Credentials configured but no AUTH offered: 4.7.0, nothing sent unauthenticated."""
    mx = receivers()
    settings = DomainSettings(auth_username="relay", auth_password="pw")
    run = deliver(mx.port, [message("ok@d.test")], settings=settings)
    assert run.failure.reply.status == "4.7.0"
    assert "MAIL" not in mx.commands
