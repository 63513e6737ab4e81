"""The received session's mail log lines over a StringTransport: what the hooks write."""

from __future__ import annotations

import base64

from smtp_helpers import FakeStore, Session, holder_from_text, server_factory
from twisted.internet import task

from mtaserver.maillog import MailLog

CONFIG = """
host-name mx.test
<smtp-user alice>
  password s3cret-pass
</smtp-user>
<source 127.0.0.1/32>
  always-allow-relaying yes
  allow-unencrypted-plain-auth yes
  log-connections yes
  log-commands yes
  log-data yes
</source>
<domain *>
  type discard
</domain>
"""


class Lines(MailLog):
    """A mail log that keeps its lines (tag, text) for the test."""

    def __init__(self) -> None:
        super().__init__(task.Clock())
        self.lines: list[tuple[str, str]] = []

    def emit(self, tag: str, text: str) -> None:
        self.lines.append((tag, text))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]


def session(config: str = CONFIG) -> tuple[Session, Lines]:
    holder = holder_from_text(config)
    lines = Lines()
    clock = task.Clock()
    store = FakeStore()
    factory = server_factory(holder, store, clock, maillog=lines)
    return Session(holder, store, factory=factory, clock=clock), lines


def test_an_overlong_auth_line_is_not_shown() -> None:
    """Only the tail of a line over the limit is left; it may be a secret: never shown."""
    smtp, lines = session()
    smtp.command("EHLO client")
    secret = base64.b64encode(b"\0alice\0" + b"p" * 13000).decode()
    smtp.send(f"AUTH PLAIN {secret}\r\n")
    assert ">>> [line too long, not shown]" in lines.texts()
    assert not any(secret[-40:] in text for text in lines.texts())


def test_a_wrong_password_is_masked_and_failure_shown() -> None:
    """A failed AUTH PLAIN: the response is masked, the 535 reply is there."""
    smtp, lines = session()
    smtp.command("EHLO client")
    wrong = base64.b64encode(b"\0alice\0not-the-password").decode()
    assert smtp.command(f"AUTH PLAIN {wrong}").startswith("535")
    assert smtp.command("AUTH PLAIN").startswith("334")
    assert smtp.command(wrong).startswith("535")
    texts = lines.texts()
    assert ">>> AUTH PLAIN ********" in texts
    assert texts.count(">>> ********") == 1
    assert not any(wrong in text or "not-the-password" in text for text in texts)
    assert any(text.startswith("<<< 535 ") for text in texts)


def test_header_block_shown_until_the_blank_line_and_bounded() -> None:
    """log-data shows each header line, not the body; a huge header block is cut."""
    smtp, lines = session()
    smtp.command("EHLO client")
    smtp.command("MAIL FROM:<a@src.test>")
    smtp.command("RCPT TO:<r@dst.test>")
    smtp.command("DATA")
    big = "".join(f"X-Filler-{n}: {'v' * 900}\r\n" for n in range(30))
    smtp.send(f"Subject: one\r\n{big}\r\nbody line\r\n.\r\n")
    data = [text for text in lines.texts() if text.startswith("data >>> ")]
    assert data[0] == "data >>> Subject: one"
    assert data[-1] == "data >>> ...(cut)"
    assert 10 < len(data) < 25
    assert not any("body line" in text for text in lines.texts())


def test_connection_lines_and_one_tag_per_session() -> None:
    """log-connections: connection and close lines; each session has its own tag."""
    first, lines = session()
    first.command("QUIT")
    first.protocol.connectionLost()
    texts = lines.texts()
    assert texts[0].startswith("connection from 127.0.0.1:40000 to ")
    assert texts[-1] == "closed"
    assert {tag for tag, _ in lines.lines} == {"in 1"}
