"""Remote bounces (`rb`) and complaints (`f`) suppress their recipient automatically.

The real server with a `<bounce-processor>` and a `<feedback-loop-processor>`: a
Postfix "user unknown" DSN (tests/data/bounces) sent to the bounce address becomes an
`rb` record of category `bad-mailbox`, a Yahoo ARF abuse report an `f` record; the
suppression list follows the journal, so both recipients are then refused at RCPT. A
mailbox-full DSN (`quota-issues`, not a hard category) suppresses nothing.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from server_process import ServerProcess, free_port, read_acct, wait_until

from mtaserver.events import RemoteReport
from mtaserver.suppression import SuppressionSource
from mtaserver.suppression.service import automatic_entries

CORPUS = Path(__file__).resolve().parent / "data" / "bounces"
USER_UNKNOWN = ("001-postfix-userunknown.eml", "kijitora@example.co.jp")
MAILBOX_FULL = ("002-postfix-mailboxfull.eml", "neko@nyaaan.example.org")
ABUSE = ("034-arf-yahoo-abuse.eml", "this-local-part-does-not-exist-on-yahoo@yahoo.com")

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {tmp}/spool
smtp-listener 127.0.0.1:{port}
<source 127.0.0.1>
    always-allow-relaying yes
</source>
<bounce-processor>
    <address-list>
        domain bounces.mta.test
    </address-list>
</bounce-processor>
<feedback-loop-processor>
    <address-list>
        address fbl@fbl.mta.test
    </address-list>
</feedback-loop-processor>
<acct-file {tmp}/acct.csv>
    records b,rb,f
</acct-file>
<domain *>
    type discard
</domain>
"""


def send(port: int, to: str, name: str) -> None:
    raw = (CORPUS / name).read_bytes()
    if raw.startswith(b"From "):  # an mbox separator line, not mail
        raw = raw.split(b"\n", 1)[1]
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("", [to], raw)


def rcpt(port: int, recipient: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("s@src.test")
        return int(client.rcpt(recipient)[0])


def test_rb_and_f_records_suppress_their_recipients(tmp_path: Path) -> None:
    """A hard rb and an f suppress the original recipient; a quota rb does not."""
    port = free_port()
    with ServerProcess(tmp_path, CONFIG.format(tmp=tmp_path, port=port), wait_ports=(port,)) as p:
        assert rcpt(port, USER_UNKNOWN[1]) == 250
        send(port, "bounce@bounces.mta.test", USER_UNKNOWN[0])
        send(port, "bounce@bounces.mta.test", MAILBOX_FULL[0])
        send(port, "fbl@fbl.mta.test", ABUSE[0])
        acct = tmp_path / "acct.csv"
        assert wait_until(lambda: len(read_acct(acct, ["rb", "f"])) >= 3, timeout=60)
        assert wait_until(lambda: rcpt(port, USER_UNKNOWN[1]) == 550)
        assert wait_until(lambda: rcpt(port, ABUSE[1]) == 550)
        assert rcpt(port, MAILBOX_FULL[1]) == 250
        assert p.wait_for_log(f"suppressed {USER_UNKNOWN[1]} after a rb record (bad-mailbox)")
        assert p.wait_for_log(f"suppressed {ABUSE[1]} after a f record")


def test_automatic_entries_of_remote_reports() -> None:
    """rb of a hard category gives Bounce Rule, f gives Spam Complaint, rs and soft rb nothing."""
    events = [
        RemoteReport("rb", 1000.0, "m1", "gone@x.test", bounce_cat="bad-mailbox", hard=True),
        RemoteReport("rb", 1000.0, "m1", "full@x.test", bounce_cat="quota-issues"),
        RemoteReport("rs", 1000.0, "m1", "later@x.test", bounce_cat="bad-mailbox"),
        RemoteReport("f", 1000.0, "m2", "angry@x.test", feedback_type="abuse"),
    ]
    found = automatic_entries(events, frozenset({"bad-mailbox"}), complaints=True)
    assert [(e.recipient, e.source, kind) for e, kind, _ in found] == [
        ("gone@x.test", SuppressionSource.BOUNCE_RULE, "rb"),
        ("angry@x.test", SuppressionSource.SPAM_COMPLAINT, "f"),
    ]
    assert automatic_entries(events[3:], frozenset(), complaints=False) == []
