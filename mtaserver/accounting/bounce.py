"""Bounce categories: PowerMTA's 17 `bounceCat` values from a reply's status and text.

Senders act on the category (remove a bad mailbox, slow down on a policy block), so it
must be stable and explainable. The decision is three tables, tried in order:

1. `DEFINITE_STATUS`: enhanced status codes (RFC 3463) that say exactly what happened
   (`X.1.1` bad mailbox, `X.2.2` quota, `X.4.7` expired). They win over the text.
2. `TEXT_RULES`: well-known phrases in the reply ("spam", "blocklist", "mailbox full",
   "user unknown"...), most specific first. They refine a generic status such as
   `5.7.1` or `5.0.0`, which servers use for almost anything.
3. `GENERIC_STATUS`: what a generic status means when no phrase matched, by
   `subject.detail` and then by subject alone; a bare 3-digit reply code last.

Everything is data, so a new provider's wording is a one-line change with a test row.
"""

from __future__ import annotations

import re

from mtaserver.config.registry import BOUNCE_CATEGORIES

#: PowerMTA's 17 bounce categories. The config layer owns the list (it validates
#: `suppress-on-bounce-categories` and `<bounce-category-patterns>` against it, and config
#: imports no accounting); the classifier below names only these.
CATEGORIES: frozenset[str] = BOUNCE_CATEGORIES

# Keyed by "subject.detail" (the class digit, 4 or 5, does not change the meaning).
DEFINITE_STATUS: dict[str, str] = {
    "1.1": "bad-mailbox",  # bad destination mailbox address
    "1.3": "bad-mailbox",  # bad destination mailbox address syntax
    "1.6": "bad-mailbox",  # destination mailbox has moved
    "1.2": "bad-domain",  # bad destination system address
    "1.10": "bad-domain",  # null MX (RFC 7505)
    "1.7": "invalid-sender",  # bad sender's mailbox address syntax
    "1.8": "invalid-sender",  # bad sender's system address
    "2.2": "quota-issues",  # mailbox full
    "2.3": "content-related",  # message length exceeds administrative limit
    "3.4": "content-related",  # message too big for system
    "4.1": "no-answer-from-host",  # no answer from host
    "4.2": "bad-connection",  # bad connection
    "4.4": "routing-errors",  # unable to route
    "4.6": "routing-errors",  # routing loop detected
    "4.7": "message-expired",  # delivery time expired
    "7.13": "inactive-mailbox",  # user account disabled (RFC 3463 registry)
}

_T = re.IGNORECASE
TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, _T), category)
    for pattern, category in (
        (r"virus|malware|infected|trojan|worm\b", "virus-related"),
        (
            r"spam|junk|unsolicited|\bbulk mail|black ?list|block ?list|\bdnsbl|\brbl\b"
            r"|spamhaus|spamcop|barracuda|blocked using|listed (?:at|on|in|by)|reputation",
            "spam-related",
        ),
        (
            r"relay(?:ing)? (?:access )?(?:is )?(?:denied|not (?:permitted|allowed|authori[sz]ed)"
            r"|prohibited|refused)|(?:unable|not permitted|not allowed|refuse|denied|permission)"
            r" to relay|(?:we do not|does not|cannot|can't) relay|no relaying",
            "relaying-issues",
        ),
        (
            r"sender (?:address )?(?:rejected|invalid|unknown|denied|verify failed|not allowed"
            r"|does not exist)"
            r"|(?:invalid|unknown|bad) sender|sender verification|sender domain"
            r"|(?:mail from|return.?path|reverse.?path) (?:address )?(?:rejected|invalid)",
            "invalid-sender",
        ),
        (
            r"quota|mailbox (?:is )?full|storage (?:space|allocation)|insufficient (?:disk )?space"
            r"|mailbox size limit|exceeded storage|out of storage|full mailbox",
            "quota-issues",
        ),
        (
            r"(?:account|mailbox|user)(?: has been| is)? (?:currently )?(?:disabled"
            r"|inactive|deactivated|suspended|expired|locked|closed|frozen)"
            r"|(?:inactive|disabled|dormant|suspended) (?:user|account|mailbox)"
            r"|no longer (?:active|in use|available|valid)",
            "inactive-mailbox",
        ),
        (
            r"domain (?:not found|does not exist|unknown|is invalid)|(?:unknown|no such|invalid)"
            r" domain|host (?:or domain name )?not found|nxdomain|null mx|no mx"
            r"|unrouteable domain|does not accept (?:e-?)?mail",
            "bad-domain",
        ),
        (
            r"user unknown|unknown user|no such (?:user|mailbox|recipient|account|address)"
            r"|does not exist|doesn't exist|invalid (?:recipient|mailbox|user|address)"
            r"|unknown (?:recipient|mailbox|local.?part|address)|mailbox (?:not found|unavailable)"
            r"|not a valid (?:mailbox|recipient|user)|user not found|recipient not found"
            r"|unrouteable address|no mailbox",
            "bad-mailbox",
        ),
        (
            r"expired|too long in (?:the )?queue|maximum queue time|delivery time",
            "message-expired",
        ),
        (
            r"loops? back to myself|misconfigur|configuration error|authentication required"
            r"|must (?:issue a )?(?:starttls|authenticate)|certificate|encryption required",
            "bad-configuration",
        ),
        (
            r"no answer|timed? ?out|connection refused|no route to host|host unreachable"
            r"|network is unreachable|(?:unable|could not|failed) to connect",
            "no-answer-from-host",
        ),
        (
            r"connection (?:lost|dropped|reset|closed)|lost connection|broken pipe"
            r"|tls (?:handshake )?(?:failed|error)",
            "bad-connection",
        ),
        (r"mail loop|too many hops|hop count|unable to route|routing", "routing-errors"),
        (
            r"message (?:size )?(?:is )?(?:too (?:big|large|long)|exceeds)|size limit"
            r"|message content|content (?:rejected|filter)|attachment|\bmime\b",
            "content-related",
        ),
        (
            r"syntax error|command unrecognized|unrecognized command|bad sequence"
            r"|protocol error|command not implemented|line too long",
            "protocol-errors",
        ),
        (
            r"policy|blocked|denied|not allowed|prohibited|refused|rate limit|throttl"
            r"|too many (?:messages|connections|recipients)|dmarc|\bspf\b|dkim|reverse dns",
            "policy-related",
        ),
    )
)

GENERIC_STATUS: dict[str, str] = {
    "2.1": "inactive-mailbox",  # mailbox disabled, not accepting messages
    "3.1": "quota-issues",  # mail system full
    "3.5": "bad-configuration",  # system incorrectly configured
    "4.3": "routing-errors",  # directory server failure
    "7.1": "policy-related",  # delivery not authorized, message refused
    "7.8": "bad-configuration",  # authentication credentials invalid
    "7.9": "bad-configuration",  # authentication mechanism too weak
    "7.10": "bad-configuration",  # encryption needed
    "1": "bad-mailbox",
    "2": "bad-mailbox",
    "3": "other",
    "4": "bad-connection",
    "5": "protocol-errors",
    "6": "content-related",
    "7": "policy-related",
}

# A reply with no enhanced status code at all: a few basic codes are unambiguous.
BASIC_CODE: dict[str, str] = {
    "500": "protocol-errors",
    "501": "protocol-errors",
    "502": "protocol-errors",
    "503": "protocol-errors",
    "504": "protocol-errors",
    "553": "bad-mailbox",
}

# Not inside a dotted number such as an IP address ("192.5.1.1" is no status).
_ENHANCED = re.compile(r"(?<![\d.])[245]\.\d{1,3}\.\d{1,3}(?!\.?\d)")
_BASIC = re.compile(r"(?<![\d.])([245]\d\d)(?!\.?\d)")


def enhanced_code(text: str) -> str | None:
    """The first RFC 3463 code (`5.1.1`) in `text`, or None."""
    m = _ENHANCED.search(text)
    return m.group(0) if m else None


def classify(status: str, diag: str = "") -> str:
    """The bounce category of a reply with dsnStatus `status` and dsnDiag `diag`."""
    code = enhanced_code(status) or enhanced_code(diag)
    key = code.split(".", 1)[1] if code else None
    if key in DEFINITE_STATUS:
        return DEFINITE_STATUS[key]
    text = f"{status} {diag}"
    for pattern, category in TEXT_RULES:
        if pattern.search(text):
            return category
    if key is not None:
        subject = key.split(".", 1)[0]
        return GENERIC_STATUS.get(key) or GENERIC_STATUS.get(subject) or "other"
    basic = _BASIC.search(diag) or _BASIC.search(status)
    return BASIC_CODE.get(basic.group(1), "other") if basic else "other"


def is_permanent(code: str) -> bool:
    """True for a 5xx reply or a 5.x.x status: retrying will not help."""
    code = code.strip()
    return code.startswith("5")


def is_transient(code: str) -> bool:
    """True for a 4xx reply or a 4.x.x status: the message stays queued."""
    return code.strip().startswith("4")
