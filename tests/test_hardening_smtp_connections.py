"""SMTP connection lifecycle under abuse, over StringTransport with a task.Clock.

Connection caps (`max-smtp-in`, `total-max-smtp-in`, the descriptor reserve), the
whole-command and whole-DATA deadlines against slowloris, the junk-command limit,
421 on shutdown and early talkers. `test_hardening_smtp_connections_e2e.py` checks
the same against the real server process.
"""

from __future__ import annotations

from smtp_helpers import FakeStore, Session, holder_from_text, server_factory
from twisted.internet import task

from mtaserver.smtp.connections import InboundConnections, fd_reserve
from mtaserver.smtp.server import SmtpServerFactory

BASE = """
host-name mx.example.test
relay-domain relay.example
"""


def config(source: str = "", extra: str = "") -> str:
    return f"{BASE}{extra}\n<source 0/0>\n{source}\n</source>\n"


def factory(
    text: str, clock: task.Clock, store: FakeStore, connections: InboundConnections | None = None
) -> SmtpServerFactory:
    return server_factory(holder_from_text(text), store, clock, connections=connections)


class Server:
    """One factory and its clock; `connect()` opens a session from an IP."""

    def __init__(
        self, source: str = "", extra: str = "", connections: InboundConnections | None = None
    ) -> None:
        self.clock = task.Clock()
        self.store = FakeStore()
        self.factory = factory(config(source, extra), self.clock, self.store, connections)

    def connect(self, peer: str = "192.0.2.1") -> Session:
        return Session(
            self.factory.holder, self.store, peer=peer, factory=self.factory, clock=self.clock
        )


def hang_up(s: Session) -> None:
    s.protocol.connectionLost()


def start_data(s: Session) -> None:
    assert s.command("EHLO client.test").startswith("250 ")
    assert s.command("MAIL FROM:<a@sender.test>").startswith("250 ")
    assert s.command("RCPT TO:<b@relay.example>").startswith("250 ")
    assert s.command("DATA").startswith("354")


# -- 5. connection caps ----------------------------------------------------------


def test_max_smtp_in_per_client_ip() -> None:
    """The (max-smtp-in + 1)th session of one IP gets 421 4.7.0; other IPs still get in."""
    server = Server("max-smtp-in 3")
    sessions = [server.connect("192.0.2.1") for _ in range(3)]
    assert all(s.lines() == ["220 mx.example.test ESMTP mtaserver"] for s in sessions)
    extra = server.connect("192.0.2.1")
    assert extra.lines() == ["421 4.7.0 Too many connections from your IP address, try again later"]
    assert extra.closed
    other = server.connect("192.0.2.2")
    assert other.lines()[0].startswith("220 ")
    hang_up(extra)
    hang_up(sessions[0])
    again = server.connect("192.0.2.1")
    assert again.lines()[0].startswith("220 "), "a freed slot is usable again"


def test_quit_frees_the_slot_before_the_connection_is_gone() -> None:
    """A client that connects again as soon as it hears 221 (smtp-source at exactly
    max-smtp-in sessions) is greeted, though its old connection has not closed yet."""
    server = Server("max-smtp-in 2")
    first, second = server.connect(), server.connect()
    assert first.lines()[0].startswith("220 ") and second.lines()[0].startswith("220 ")
    assert first.command("QUIT").startswith("221 ")
    assert server.factory.connections.per_ip == {"192.0.2.1": 1}
    assert server.connect().lines()[0].startswith("220 ")
    hang_up(first)  # its connectionLost comes later and frees nothing twice
    assert server.factory.connections.per_ip == {"192.0.2.1": 2}


def test_max_smtp_in_applies_to_trusted_sources() -> None:
    """A relaying source is capped too, unless the operator raises max-smtp-in."""
    server = Server("always-allow-relaying yes\nmax-smtp-in 2")
    for _ in range(2):
        assert server.connect().lines()[0].startswith("220 ")
    assert server.connect().lines()[0].startswith("421 4.7.0")


def test_total_max_smtp_in_across_ips() -> None:
    """total-max-smtp-in caps all sessions together: the excess gets 421 4.7.0."""
    server = Server(extra="total-max-smtp-in 3")
    for i in range(3):
        assert server.connect(f"192.0.2.{i + 1}").lines()[0].startswith("220 ")
    refused = server.connect("192.0.2.9")
    assert refused.lines() == ["421 4.7.0 Too many connections, try again later"]
    assert refused.closed
    assert server.factory.connections.total == 3


def test_total_shared_by_listeners() -> None:
    """Two listeners sharing one InboundConnections count against one total."""
    connections = InboundConnections()
    first = Server(extra="total-max-smtp-in 2", connections=connections)
    second = Server(extra="total-max-smtp-in 2", connections=connections)
    assert first.connect("192.0.2.1").lines()[0].startswith("220 ")
    assert second.connect("192.0.2.2").lines()[0].startswith("220 ")
    assert second.connect("192.0.2.3").lines()[0].startswith("421 4.7.0")


def test_descriptor_reserve_refuses_smtp() -> None:
    """With fewer free descriptors than the reserve, new sessions get 421 4.7.0."""
    used = [0]
    connections = InboundConnections(
        count_descriptors=lambda: used[0], descriptor_limit=lambda: 1000
    )
    server = Server(connections=connections)
    used[0] = 1000 - fd_reserve(1000)  # exactly the reserve left: still admitted
    assert server.connect().lines()[0].startswith("220 ")
    used[0] += 1
    refused = server.connect("192.0.2.7")
    assert refused.lines() == ["421 4.7.0 Server busy, try again later"]
    assert refused.closed


def test_reserve_bounds() -> None:
    """The reserve is a tenth of the limit, at least 32 and at most 256."""
    assert (fd_reserve(100), fd_reserve(1000), fd_reserve(1 << 20)) == (32, 100, 256)


def test_refused_sessions_release_nothing() -> None:
    """A refused connection does not take or free a slot when it goes."""
    server = Server("max-smtp-in 1")
    kept = server.connect()
    refused = server.connect()
    hang_up(refused)
    assert server.factory.connections.per_ip == {"192.0.2.1": 1}
    hang_up(kept)
    assert server.factory.connections.per_ip == {}
    assert server.factory.connections.total == 0


# -- 6. deadlines ----------------------------------------------------------------


def test_command_deadline_against_trickled_command() -> None:
    """A byte every 5 s restarts the idle timer; the line must end within smtp-command-deadline."""
    server = Server("smtp-command-deadline 60s")
    s = server.connect()
    s.lines()
    replies: list[str] = []
    for byte in "EHLO slow.example.test":
        replies += s.send(byte)
        server.clock.advance(5)
        replies += s.lines()
        if s.closed:
            break
    assert replies == ["421 4.4.2 Command deadline exceeded, closing connection"]
    assert s.closed
    assert server.clock.seconds() <= 65


def test_command_deadline_is_per_line() -> None:
    """Lines that each end in time keep the session; idle time between lines does not count."""
    server = Server("smtp-command-deadline 10s")
    s = server.connect()
    s.lines()
    for _ in range(5):
        s.send("NO")
        server.clock.advance(8)
        assert s.send("OP\r\n") == ["250 2.0.0 Ok"]
        server.clock.advance(60)  # idle between commands: smtp-command-timeout's business
    assert not s.closed


def test_command_deadline_restarts_for_pipelined_partial_line() -> None:
    """A chunk ending one line and starting the next starts the next line's deadline afresh."""
    server = Server("smtp-command-deadline 10s")
    s = server.connect()
    s.lines()
    s.send("NO")
    server.clock.advance(9)
    assert s.send("OP\r\nNO") == ["250 2.0.0 Ok"]
    server.clock.advance(9)
    assert s.send("OP\r\n") == ["250 2.0.0 Ok"]
    assert not s.closed


def test_data_deadline_against_trickled_body() -> None:
    """A byte every 5 s in DATA: 421 4.4.2 at smtp-data-deadline, and the message is dropped."""
    server = Server("smtp-data-deadline 15m")
    s = server.connect()
    s.lines()
    start_data(s)
    started = server.clock.seconds()
    replies: list[str] = []
    while not s.closed and server.clock.seconds() - started < 3600:
        replies += s.send("x")
        server.clock.advance(5)
        replies += s.lines()
    assert replies == ["421 4.4.2 DATA deadline exceeded, closing connection"]
    assert server.clock.seconds() - started <= 905
    hang_up(s)
    assert server.store.aborted == ["msg0001"]
    assert server.store.messages == {}


def test_data_deadline_stops_when_data_ends() -> None:
    """A message finished in time is accepted and the DATA deadline no longer runs."""
    server = Server("smtp-data-deadline 30s")
    s = server.connect()
    s.lines()
    start_data(s)
    server.clock.advance(20)
    assert s.send("Subject: t\r\n\r\nbody\r\n.\r\n")[-1].startswith("250 2.0.0")
    server.clock.advance(60)
    assert not s.closed
    assert s.command("NOOP") == "250 2.0.0 Ok"


# -- 15. junk commands -----------------------------------------------------------


def test_junk_commands_limit() -> None:
    """After max-junk-commands NOOP/RSET/VRFY/HELP..., the next one gets 421 4.7.0 and close."""
    server = Server("max-junk-commands 6")
    s = server.connect()
    s.lines()
    assert s.command("EHLO c").startswith("250 ")  # the first EHLO is progress
    for command in ("NOOP", "RSET", "VRFY x", "HELP", "EXPN x", "EHLO again"):
        assert not s.command(command).startswith("421"), command
    assert s.command("NOOP") == "421 4.7.0 Too many junk commands, closing connection"
    assert s.closed


def test_junk_count_reset_by_accepted_message() -> None:
    """An accepted message resets the junk count."""
    server = Server("max-junk-commands 3")
    s = server.connect()
    s.lines()
    for _ in range(3):
        assert s.command("NOOP") == "250 2.0.0 Ok"
    start_data(s)
    assert s.send("Subject: t\r\n\r\nbody\r\n.\r\n")[-1].startswith("250 2.0.0")
    for _ in range(3):
        assert s.command("RSET") == "250 2.0.0 Ok"
    assert s.command("NOOP").startswith("421 4.7.0")


def test_junk_default_limit_is_100() -> None:
    """The issue's 200 NOOPs: the 101st gets 421 by default."""
    server = Server()
    s = server.connect()
    s.lines()
    replies = s.send("NOOP\r\n" * 200)
    assert replies.count("250 2.0.0 Ok") == 100
    assert replies[-1] == "421 4.7.0 Too many junk commands, closing connection"


# -- 18. shutdown ----------------------------------------------------------------


def test_shutdown_says_421_to_every_session() -> None:
    """close_all: 421 4.3.2 to an idle session and one in DATA, whose message is dropped."""
    server = Server()
    idle = server.connect()
    idle.lines()
    in_data = server.connect("192.0.2.2")
    in_data.lines()
    start_data(in_data)
    in_data.send("Subject: t\r\n\r\npartial")
    done = server.factory.live.close_all(grace=10)
    assert idle.lines() == ["421 4.3.2 Service shutting down"]
    assert in_data.lines() == ["421 4.3.2 Service shutting down"]
    assert idle.closed and in_data.closed
    assert not done.called
    hang_up(idle)
    hang_up(in_data)
    assert done.called
    assert server.store.aborted == ["msg0001"]
    assert server.store.messages == {}


def test_shutdown_waits_for_pending_commit() -> None:
    """A message being committed gets its 250 before the 421, never a 421 alone."""
    server = Server()
    server.store.hold_commits = True
    s = server.connect()
    s.lines()
    start_data(s)
    assert s.send("Subject: t\r\n\r\nbody\r\n.\r\n") == []
    server.factory.live.close_all(grace=10)
    assert s.lines() == [] and not s.closed
    server.store.release()
    lines = s.lines()
    assert lines[0].startswith("250 2.0.0 Ok: queued as")
    assert lines[1:] == ["421 4.3.2 Service shutting down"]
    assert s.closed


def test_shutdown_aborts_stragglers_after_grace() -> None:
    """A session that never goes away is aborted after the grace period, and close_all fires."""
    server = Server()
    s = server.connect()
    s.lines()
    done = server.factory.live.close_all(grace=10)
    server.clock.advance(10)
    assert s.transport.disconnected  # abortConnection on a StringTransport
    hang_up(s)
    assert done.called


def test_connection_during_shutdown_refused() -> None:
    """A connection arriving while the listener shuts down gets 421 4.3.2 at once."""
    server = Server()
    server.factory.live.close_all(grace=10)
    s = server.connect()
    assert s.lines() == ["421 4.3.2 Service shutting down"]
    assert s.closed


# -- 19. early talkers -----------------------------------------------------------


def test_early_talker_rejected() -> None:
    """Bytes before the delayed 220: 554 5.5.1 and close; no greeting is ever sent."""
    server = Server("smtp-greeting-delay 5s")
    s = server.connect()
    assert s.lines() == []
    assert s.send("EHLO eager.test\r\n") == [
        "554 5.5.1 Protocol error: client sent data before the greeting"
    ]
    assert s.closed
    server.clock.advance(10)
    assert s.lines() == []


def test_patient_client_greeted_after_delay() -> None:
    """A client that waits gets the 220 after smtp-greeting-delay and talks normally."""
    server = Server("smtp-greeting-delay 5s")
    s = server.connect()
    server.clock.advance(4.9)
    assert s.lines() == []
    server.clock.advance(0.1)
    assert s.lines() == ["220 mx.example.test ESMTP mtaserver"]
    assert s.command("NOOP") == "250 2.0.0 Ok"


def test_early_talk_allowed_when_not_rejected() -> None:
    """reject-early-talkers no: early commands are held and answered after the 220."""
    server = Server("smtp-greeting-delay 5s\nreject-early-talkers no")
    s = server.connect()
    assert s.send("NOOP\r\n") == []
    assert s.transport.producerState == "paused"
    server.clock.advance(5)
    assert s.lines() == ["220 mx.example.test ESMTP mtaserver", "250 2.0.0 Ok"]
    assert s.transport.producerState == "producing"


def test_no_delay_greets_at_once() -> None:
    """The default smtp-greeting-delay 0s greets at connect."""
    server = Server()
    assert server.connect().lines() == ["220 mx.example.test ESMTP mtaserver"]
