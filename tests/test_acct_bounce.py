"""Bounce classification: real-world replies mapped to PowerMTA's 17 categories."""

from __future__ import annotations

import pytest

from mtaserver.accounting.bounce import CATEGORIES, classify, enhanced_code, is_permanent

# (dsnStatus, dsnDiag, expected category)
TABLE: list[tuple[str, str, str]] = [
    # bad-mailbox
    (
        "5.1.1",
        "smtp;550 5.1.1 The email account that you tried to reach does not exist",
        "bad-mailbox",
    ),
    ("5.0.0", "smtp;550 <a@b.c>: Recipient address rejected: User unknown", "bad-mailbox"),
    ("", "smtp;550 No such user here", "bad-mailbox"),
    ("5.1.3", "smtp;501 5.1.3 Bad recipient address syntax", "bad-mailbox"),
    ("5.5.0", "smtp;550 5.5.0 Requested action not taken: mailbox unavailable", "bad-mailbox"),
    ("", "smtp;553 sorry, that domain isn't in my list of allowed rcpthosts", "bad-mailbox"),
    # bad-domain
    ("5.1.2", "smtp;550 5.1.2 Host unknown", "bad-domain"),
    ("5.1.10", "smtp;556 5.1.10 Recipient address has null MX", "bad-domain"),
    ("5.4.4", "Domain does not exist", "routing-errors"),
    ("5.0.0", "Domain not found", "bad-domain"),
    ("", "Host or domain name not found. Name service error", "bad-domain"),
    # quota-issues
    (
        "4.2.2",
        "smtp;452 4.2.2 The email account that you tried to reach is over quota",
        "quota-issues",
    ),
    ("5.2.2", "smtp;552 5.2.2 Mailbox full", "quota-issues"),
    (
        "5.0.0",
        "smtp;552 Requested mail action aborted: exceeded storage allocation",
        "quota-issues",
    ),
    ("4.3.1", "smtp;452 4.3.1 Insufficient system storage", "quota-issues"),
    # inactive-mailbox
    (
        "5.2.1",
        "smtp;550 5.2.1 The email account that you tried to reach is disabled",
        "inactive-mailbox",
    ),
    ("5.2.1", "smtp;550 5.2.1 Mailbox unavailable", "bad-mailbox"),
    ("5.2.1", "smtp;550 5.2.1 <a@b.c>... Mailbox is inactive", "inactive-mailbox"),
    ("5.7.13", "smtp;525 5.7.13 User account disabled", "inactive-mailbox"),
    ("5.0.0", "smtp;550 This account has been suspended", "inactive-mailbox"),
    ("5.2.1", "smtp;550 5.2.1", "inactive-mailbox"),
    # policy-related
    ("5.2.1", "smtp;550 5.2.1 Message rejected for policy reasons", "policy-related"),
    ("5.7.1", "smtp;550 5.7.1 Message rejected due to local policy", "policy-related"),
    ("5.7.1", "smtp;550 5.7.1 Unauthenticated email is not accepted (DMARC)", "policy-related"),
    (
        "4.7.0",
        "smtp;421 4.7.0 Try again later, closing connection. Too many connections",
        "policy-related",
    ),
    (
        "5.7.26",
        "smtp;550 5.7.26 This message does not pass authentication checks",
        "policy-related",
    ),
    ("5.7.1", "smtp;554 5.7.1 Access denied", "policy-related"),
    # spam-related
    ("5.7.1", "smtp;550 5.7.1 Message rejected as spam", "spam-related"),
    (
        "5.7.1",
        "smtp;554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
        "spam-related",
    ),
    ("5.0.0", "smtp;554 Your IP is on our blacklist", "spam-related"),
    ("5.7.1", "smtp;550 5.7.1 IP listed on a blocklist", "spam-related"),
    ("4.7.0", "smtp;421 4.7.0 IP not in whitelist, poor reputation", "spam-related"),
    ("5.7.1", "smtp;550 5.7.1 Unsolicited mail refused", "spam-related"),
    # virus-related
    ("5.7.1", "smtp;554 5.7.1 Virus found in message", "virus-related"),
    ("5.0.0", "smtp;550 Message contains malware", "virus-related"),
    # relaying-issues
    ("5.7.1", "smtp;554 5.7.1 <a@b.c>: Relay access denied", "relaying-issues"),
    ("5.7.1", "smtp;550 5.7.1 Unable to relay", "relaying-issues"),
    ("5.0.0", "smtp;550 we do not relay for non-local domains", "relaying-issues"),
    # invalid-sender
    ("5.1.8", "smtp;553 5.1.8 <x@y>... Domain of sender address does not exist", "invalid-sender"),
    ("5.1.7", "smtp;501 5.1.7 Bad sender address syntax", "invalid-sender"),
    ("5.7.1", "smtp;550 5.7.1 <x@y>: Sender address rejected: Access denied", "invalid-sender"),
    ("5.0.0", "smtp;550 Sender verify failed", "invalid-sender"),
    # message-expired
    ("4.4.7", "delivery time expired", "message-expired"),
    ("5.4.7", "message expired after 4 days in queue", "message-expired"),
    ("", "Message too long in queue", "message-expired"),
    # no-answer-from-host
    ("4.4.1", "No answer from host", "no-answer-from-host"),
    ("4.0.0", "Connection timed out", "no-answer-from-host"),
    ("", "Connection refused by 198.51.100.7", "no-answer-from-host"),
    # bad-connection
    ("4.4.2", "smtp;421 4.4.2 Connection dropped", "bad-connection"),
    ("4.0.0", "Lost connection with 198.51.100.7 while sending DATA", "bad-connection"),
    ("4.4.0", "smtp;421 4.4.0 Temporary problem", "bad-connection"),
    # routing-errors
    ("5.4.4", "Unable to route", "routing-errors"),
    ("5.4.6", "smtp;554 5.4.6 Hop count exceeded - possible mail loop", "routing-errors"),
    ("5.0.0", "smtp;554 Too many hops", "routing-errors"),
    ("4.4.3", "smtp;451 4.4.3 Directory server failure", "routing-errors"),
    # content-related
    ("5.3.4", "smtp;552 5.3.4 Message too big for system", "content-related"),
    ("5.2.3", "smtp;552 5.2.3 Message size exceeds fixed maximum message size", "content-related"),
    ("5.6.0", "smtp;550 5.6.0 Corrupt message", "content-related"),
    ("5.0.0", "smtp;554 Message content rejected, attachment not allowed", "content-related"),
    # protocol-errors
    ("5.5.1", "smtp;500 5.5.1 Command unrecognized", "protocol-errors"),
    ("5.5.2", "smtp;501 5.5.2 Syntax error in parameters", "protocol-errors"),
    ("", "smtp;503 Bad sequence of commands", "protocol-errors"),
    ("5.5.0", "smtp;554 5.5.0 Unspecified", "protocol-errors"),
    # bad-configuration
    ("5.3.5", "smtp;554 5.3.5 System incorrectly configured", "bad-configuration"),
    ("5.4.6", "config error: mail for example.com loops back to myself", "routing-errors"),
    ("5.0.0", "config error: mail for example.com loops back to myself", "bad-configuration"),
    ("5.7.8", "smtp;535 5.7.8 Error: authentication failed", "bad-configuration"),
    ("5.7.0", "smtp;530 5.7.0 Must issue a STARTTLS command first", "bad-configuration"),
    # other
    ("5.0.0", "smtp;554 Transaction failed", "other"),
    ("", "", "other"),
    ("4.3.2", "smtp;421 4.3.2 System not accepting network messages", "other"),
    # an IP address is not a status code
    ("", "smtp;554 Transaction failed on 192.5.1.1", "other"),
]


@pytest.mark.parametrize(("status", "diag", "expected"), TABLE)
def test_classify(status: str, diag: str, expected: str) -> None:
    """Each known reply falls into its PowerMTA bounce category."""
    assert classify(status, diag) == expected


def test_table_covers_every_category() -> None:
    """The table exercises all 17 categories and only those."""
    seen = {row[2] for row in TABLE}
    assert seen == CATEGORIES
    assert len(CATEGORIES) == 17


def test_enhanced_code_and_permanence() -> None:
    """Status codes are found in diag text; 5xx is permanent, 4xx is not."""
    assert enhanced_code("smtp;550-5.1.1 no") == "5.1.1"
    assert enhanced_code("via 10.4.4.7") is None
    assert is_permanent("550") and is_permanent("5.1.1")
    assert not is_permanent("451") and not is_permanent("4.4.7")
