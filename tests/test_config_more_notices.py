"""Queue notices end to end: `backoff-notify`, `disabled-source-ip-notify` and
`backoff-upon-all-sources-disabled`, with the real server and an aiosmtpd MX.

The MX answers `soft...` recipients `451 4.2.0 mailbox busy`; an `smtp-pattern-list`
turns that into backoff or a disabled source. The notices go out through the queues
to the same MX, so the test reads them there.
"""

from __future__ import annotations

import email
from collections.abc import Iterator
from pathlib import Path

import pytest
from mgmt_client import MgmtServer
from mx_receiver import Receiver
from server_process import wait_until
from test_hardening_catalog import errors, load


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def notices(receiver: Receiver, to: str) -> list[str]:
    """The subjects of the messages `to` received."""
    parsed = (email.message_from_bytes(m.data) for m in receiver.messages if to in m.rcpt_tos)
    return [str(message["Subject"]) for message in parsed]


def queue_mode(server: MgmtServer, domain: str) -> str:
    status, body = server.call("GET", "/queues", {"format": "mtaserver"})
    rows = [q for q in body["data"] if q["domain"] == domain] if status == 200 else []
    return str(rows[0]["mode"]) if rows else ""


def test_backoff_notify_mails_on_entering_and_leaving_backoff(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A queue going into backoff (a pattern) and out of it (a command) mails backoff-notify."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin")
    (tmp_path / "conf.d" / "patterns.conf").write_text(
        "<smtp-pattern-list busy>\n    reply /mailbox busy/ mode=backoff\n</smtp-pattern-list>\n"
        "<domain dst.test>\n    smtp-pattern-list busy\n"
        "    backoff-notify ops@watch.test, oncall@watch.test\n</domain>\n"
    )
    server.start()
    try:
        server.send(["soft@dst.test"])
        assert wait_until(lambda: queue_mode(server, "dst.test") == "backoff")
        entered = "dst.test/{default} entered backoff mode"
        assert wait_until(lambda: notices(receiver, "ops@watch.test") == [entered], timeout=60)
        assert notices(receiver, "oncall@watch.test") == [entered]
        status, _ = server.command("set queue --mode=normal dst.test")
        assert status == 200
        left = "dst.test/{default} left backoff mode"
        assert wait_until(lambda: left in notices(receiver, "ops@watch.test"), timeout=60)
    finally:
        server.stop()
    senders = {m.mail_from for m in receiver.messages if "ops@watch.test" in m.rcpt_tos}
    assert senders == {"<>"}  # a null reverse path: a notice never bounces


def test_all_sources_disabled_backs_off_and_notifies(tmp_path: Path, receiver: Receiver) -> None:
    """disable-source-ip on the only source: backoff (backoff-upon-...) and a source notice."""
    server = MgmtServer(tmp_path, receiver.port, access="127.0.0.1/32 admin")
    (tmp_path / "conf.d" / "patterns.conf").write_text(
        "<smtp-pattern-list busy>\n    reply /mailbox busy/ disable-source-ip\n"
        "</smtp-pattern-list>\n"
        "<domain dst.test>\n    smtp-pattern-list busy\n"
        "    disabled-source-ip-notify ops@watch.test\n"
        "    backoff-upon-all-sources-disabled yes\n</domain>\n"
    )
    server.start()
    try:
        server.send(["soft@dst.test"])
        assert wait_until(lambda: queue_mode(server, "dst.test") == "backoff", timeout=60)
        disabled = "source default disabled for dst.test/{default}"
        assert wait_until(lambda: notices(receiver, "ops@watch.test") == [disabled], timeout=60)
        assert server.command("delete --queue=dst.test")[0] == 200  # nothing left to retry
        status, _ = server.command("enable source dst.test")
        assert status == 200
        enabled = "source default enabled again for dst.test/{default}"
        assert wait_until(lambda: enabled in notices(receiver, "ops@watch.test"), timeout=60)
    finally:
        server.stop()


def test_notify_lists_parse_and_clear(tmp_path: Path) -> None:
    """`backoff-notify a,b` is a list; `""` clears an inherited one; a bad address is an error."""
    config = load(
        tmp_path,
        "<domain *>\n backoff-notify a@x.test,b@x.test\n</domain>\n"
        '<domain quiet.test>\n backoff-notify ""\n</domain>\n',
    )
    assert config.domain_settings("other.test").backoff_notify == ("a@x.test", "b@x.test")
    assert config.domain_settings("quiet.test").backoff_notify == ()
    assert config.warnings == ()
    [message] = errors(tmp_path, "<domain *>\n backoff-notify not an address\n</domain>\n")
    assert message.startswith("backoff-notify: ")
