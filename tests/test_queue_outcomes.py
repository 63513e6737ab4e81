"""From a reply to a record: the pure outcome functions of `queue/outcomes.py`, as tables."""

from __future__ import annotations

import pytest

from mtaserver.events import Envelope, Recipient
from mtaserver.queue.delivery import ConnectionInfo
from mtaserver.queue.outcomes import (
    decide,
    delivery_fields,
    failure_reply,
    file_unreadable,
    outcome,
    reply_line,
)
from mtaserver.smtp_reply import Reply
from mtaserver.spool.errors import CorruptMessageError

ENVELOPE = Envelope(
    "m1", "s@src.test", (Recipient("a@x.test"), Recipient("b@x.test"), Recipient("c@x.test")), 0.0
)


@pytest.mark.parametrize(
    ("reply", "actions", "expired", "kind"),
    [
        (Reply(250, "2.0.0", "ok"), (), False, "d"),
        (Reply(250, "2.0.0", "ok"), ("bounce-rcpt",), True, "d"),
        (Reply(550, "5.1.1", "no such user"), (), False, "b"),
        (Reply(550, "5.1.1", "no such user"), (), True, "b"),
        (Reply(451, "4.2.0", "try later"), (), False, "t"),
        (Reply(451, "4.2.0", "try later"), (), True, "x"),
        (Reply(451, "4.2.0", "try later"), ("bounce-rcpt",), False, "b"),
        (Reply(451, "4.2.0", "try later"), ("mode=backoff",), False, "t"),
        (Reply(421, "4.4.2", "closing"), ("defer-queue",), True, "x"),
    ],
)
def test_decide(reply: Reply, actions: tuple[str, ...], expired: bool, kind: str) -> None:
    """2xx is d, 5xx or bounce-rcpt is b, 4xx is t until bounce-after, then x."""
    assert decide(reply, actions, expired) == kind


@pytest.mark.parametrize(
    ("status", "code"),
    [("4.4.7", 450), ("5.0.0", 550), ("5.3.0", 550), ("4.3.5", 450), ("", 550), ("x.y", 550)],
)
def test_failure_reply_code_follows_the_status_class(status: str, code: int) -> None:
    """A failure without an SMTP reply gets the code of its status class (550 by default)."""
    reply = failure_reply(status, "why")
    assert (reply.code, reply.status, reply.text) == (code, status, "why")


@pytest.mark.parametrize(
    ("kind", "reply", "record", "action", "status", "category", "diag"),
    [
        ("d", Reply(250, "2.0.0", "ok"), "d", "relayed", "2.0.0", "", "smtp;250 2.0.0 ok"),
        (
            "t",
            Reply(452, "4.2.2", "mailbox full"),
            "t",
            "delayed",
            "4.2.2",
            "quota-issues",
            "smtp;452 4.2.2 mailbox full",
        ),
        (
            "b",
            Reply(550, "5.1.1", "no such user"),
            "b",
            "failed",
            "5.1.1",
            "bad-mailbox",
            "smtp;550 5.1.1 no such user",
        ),
        (
            "x",
            Reply(451, "4.2.0", "try later"),
            "b",
            "failed",
            "4.4.7",
            "message-expired",
            "smtp;451 4.2.0 try later (expired after bounce-after)",
        ),
    ],
)
def test_outcome_fields(
    kind: str, reply: Reply, record: str, action: str, status: str, category: str, diag: str
) -> None:
    """Each kind gives its record, DSN action, status, bounce category and smtp; diag."""
    result = outcome(kind, reply, ENVELOPE, (0, 2), 9.0, "x.test/v1", "v1", None)
    assert (result.record, result.dsn_action, result.dsn_status) == (record, action, status)
    assert (result.bounce_cat, result.dsn_diag) == (category, diag)
    assert [r.address for r in result.envelope.recipients] == ["a@x.test", "c@x.test"]
    assert (result.rcpt_indexes, result.time, result.queue) == ((0, 2), 9.0, "x.test/v1")
    assert (result.vmta, result.vmta_pool) == ("v1", "")


def test_outcome_category_override_and_pool() -> None:
    """A given bounce_cat wins over the reply's own category; the pool name is kept."""
    result = outcome(
        "b", Reply(550, "5.1.1", "no"), ENVELOPE, (1,), 1.0, "q", "v", "p", bounce_cat="other"
    )
    assert (result.bounce_cat, result.vmta_pool) == ("other", "p")


def test_reply_line_without_status() -> None:
    """A reply line drops an empty status instead of leaving a double space."""
    assert reply_line(Reply(250, "", "")) == "250"
    assert reply_line(Reply(550, "5.1.1", "no such user")) == "550 5.1.1 no such user"


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        (
            ConnectionInfo(
                "10.0.0.1",
                "192.0.2.7",
                "mx.x.test",
                True,
                "TLSv1.3",
                "AES",
                frozenset({"SIZE", "PIPELINING"}),
            ),  # fmt: skip
            {
                "dsn_mta": "mx.x.test (192.0.2.7)",
                "dlv_type": "smtp",
                "dlv_source_ip": "10.0.0.1",
                "dlv_destination_ip": "192.0.2.7",
                "dlv_esmtp_available": "PIPELINING,SIZE",
                "dlv_size": 42,
                "dlv_tls_protocol": "TLSv1.3",
                "dlv_tls_cipher": "AES",
            },
        ),
        (
            ConnectionInfo("", "", "file", False, "", "", frozenset()),
            {
                "dsn_mta": "file",
                "dlv_type": "file",
                "dlv_source_ip": "",
                "dlv_destination_ip": "",
                "dlv_esmtp_available": "",
                "dlv_size": 42,
                "dlv_tls_protocol": "",
                "dlv_tls_cipher": "",
            },
        ),
    ],
)
def test_delivery_fields(info: ConnectionInfo, expected: dict[str, object]) -> None:
    """SMTP delivery names host and IP; a local deliverer names itself as the type."""
    assert delivery_fields(info, 42) == expected


def _caused_by(cause: BaseException) -> OSError:
    try:
        raise OSError("read failed") from cause
    except OSError as exc:
        return exc


@pytest.mark.parametrize(
    ("error", "unreadable"),
    [
        (CorruptMessageError("torn"), True),
        (FileNotFoundError("gone"), True),
        (_caused_by(FileNotFoundError("gone")), True),
        (OSError(5, "EIO"), False),
        (_caused_by(PermissionError("denied")), False),
    ],
)
def test_file_unreadable(error: BaseException, unreadable: bool) -> None:
    """Corrupt or missing files bounce at once; other read errors are retried."""
    assert file_unreadable(error) is unreadable
