"""Mailbox syntax: `local@domain` (RFC 5321 4.1.2, RFC 6531 for UTF-8), and control characters.

Both intake paths take addresses from clients: SMTP in MAIL FROM / RCPT TO, the
Transmissions API in JSON. The same rules apply to both, so they live here and raise
`AddressError` with the reason; SMTP answers it with 501 and the status its command
calls for, the API with 400 naming the field.

Addresses with a source route (`@a,@b:user@c`), or a local part holding `%`, `!` or
`@` (the old routing tricks), are marked `routed`: reception lets only clients allowed
to relay use them, so they never open a relay through a relay-domain.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import attrs

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_controls(text: str) -> bool:
    """True if `text` holds a C0/C1 control, DEL or a Unicode line/paragraph separator."""
    return _CONTROLS.search(text) is not None


def without_controls(text: str) -> str:
    """`text` with every control character (CR and LF included) taken out."""
    return _CONTROLS.sub("", text)


class AddressError(ValueError):
    """Not a usable mailbox; the text says why ("Bad address syntax", "Address too long")."""


@attrs.frozen
class Mailbox:
    """A parsed path: `address` is `local@domain` ("" for the null sender)."""

    address: str
    routed: bool = False

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


# UTF-8 in addresses (RFC 6531) excludes the C1 controls and the line separators.
_U = "\u00a0-\u2027\u202a-\U0010ffff"
_ATEXT = re.compile(rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.\-{_U}]+")
_QUOTED = re.compile(rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_U}]|\\[\x20-\x7e])*"')
_LABEL = re.compile(rf"[A-Za-z0-9_{_U}]([A-Za-z0-9_\-{_U}]*)")


def parse_mailbox(text: str, allow_null: bool = False) -> Mailbox:
    """`[@route:]local@domain` -> Mailbox, or AddressError."""
    if text == "":
        if allow_null:
            return Mailbox("")
        raise AddressError("Bad address syntax")
    routed = False
    if text.startswith("@"):
        route, sep, text = text.partition(":")
        if not sep or not all(h.startswith("@") and _domain_ok(h[1:]) for h in route.split(",")):
            raise AddressError("Bad address syntax")
        routed = True
    local, at, domain = text.rpartition("@")
    if not at or not local or not _domain_ok(domain):
        raise AddressError("Bad address syntax")
    if not (_ATEXT.fullmatch(local) or _QUOTED.fullmatch(local)):
        raise AddressError("Bad address syntax")
    if local.startswith(".") or local.endswith("."):
        raise AddressError("Bad address syntax")
    if len(local.encode()) > 64 or len(text.encode()) > 254:
        raise AddressError("Address too long")
    routed = routed or "%" in local or "!" in local or "@" in local  # no generator: hot
    return Mailbox(f"{local}@{domain}", routed)


def _domain_ok(domain: str) -> bool:
    """Is `domain` a host name or an address literal?

    Cached: a 1,000-recipient transmission (or a busy SMTP listener) checks the same
    few domains over and over. Nothing over 255 characters is either (or cached).
    """
    return len(domain) <= 255 and _short_domain_ok(domain)


@functools.lru_cache(maxsize=4096)
def _short_domain_ok(domain: str) -> bool:
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        if literal[:5].lower() == "ipv6:":
            literal = literal[5:]
            if ":" not in literal:
                return False
        elif ":" in literal:
            return False
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    labels = domain.rstrip(".").split(".")
    return 0 < len(domain) <= 253 and all(len(lb) <= 63 and _LABEL.fullmatch(lb) for lb in labels)
