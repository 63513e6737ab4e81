"""VERP return paths: PowerMTA's `verp-default` format, encoded and decoded.

With VERP the MAIL FROM of each delivery carries its recipient, so a bounce that comes
back to it names the failed recipient even when the bounce body is unreadable.
PowerMTA's format is fixed (User's Guide, `verp-default`):

    MAIL FROM jsmith@example.com + RCPT TO jdoe@yahoo.com -> jsmith-jdoe=yahoo.com@example.com

i.e. `bounce-prefix` + `-` + the recipient with its `@` replaced by `=`, at the sender's
domain. Decoding is ambiguous when the prefix itself contains `-` (`news-2024-a=b.c@x`):
without a known prefix we split at the first `-`, as PowerMTA's own prefixes
(`bounce`, `jsmith`) are the common case; callers that know their prefixes pass them.
The recipient's domain is everything after the last `=` (a domain cannot contain `=`,
a local part can).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.frozen
class VerpAddress:
    """A decoded VERP return path: the original sender and the recipient it encodes."""

    orig: str
    rcpt: str


def encode_verp(orig: str, rcpt: str) -> str:
    """The VERP return path PowerMTA builds for sender `orig` and recipient `rcpt`."""
    prefix, _, domain = orig.rpartition("@")
    return f"{prefix}-{rcpt.replace('@', '=', 1)}@{domain}" if domain else orig


def decode_verp(address: str, prefixes: Iterable[str] = ()) -> VerpAddress | None:
    """The sender and recipient encoded in VERP `address`, or None if it is not VERP.

    `prefixes` are known bounce prefixes (local parts of the unVERPed sender), tried
    longest first; without one the split is at the first `-`.
    """
    address = address.strip().strip("<>").strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "=" not in local or "-" not in local:
        return None
    head, _, rcpt_domain = local.rpartition("=")
    if not rcpt_domain or ("." not in rcpt_domain and rcpt_domain.lower() != "localhost"):
        return None
    for prefix in sorted(prefixes, key=len, reverse=True):
        if prefix and head.lower().startswith(prefix.lower() + "-"):
            sender, rcpt_local = head[: len(prefix)], head[len(prefix) + 1 :]
            break
    else:
        sender, _, rcpt_local = head.partition("-")
    if not sender or not rcpt_local:
        return None
    return VerpAddress(orig=f"{sender}@{domain}", rcpt=f"{rcpt_local}@{rcpt_domain}")
