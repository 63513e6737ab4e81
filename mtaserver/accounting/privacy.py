"""Per-acct-file record policy: `user-string` and `privacy-policy`.

An `<acct-file>` may carry a constant `user-string` (PowerMTA writes it in the
`userstring` field, which a file shows only when its `record-fields` name it), and a
`privacy-policy` that keeps recipients' local parts out of the file: the local part
(lower-cased first) of `rcpt` and `orcpt`, and the recipient's address wherever it
appears in `dsnDiag` (the remote server's reply), becomes the redaction string
(`redact`, default `...`) or the hex hash of the local part: `siphash` (SipHash-2-4,
64 bits, 16 hex digits; the key padded with NULs to 16 bytes) or `hmac-sha256`
(64 hex digits); the `-hexkey` forms take the key in hex. VERPed originator addresses
(`orig`) are written as they are.

Both are applied by the writer as it formats records, so the journal keeps the real
addresses and each acct file shows what its own policy allows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable

Record = dict[str, str]
Policy = Callable[[Record], Record]

USER_STRING_FIELD = "userstring"
_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 of `data` under a 16-byte `key` (Aumasson & Bernstein), as an int."""
    if len(key) != 16:
        raise ValueError("a SipHash key is 16 bytes")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D, k0 ^ 0x6C7967656E657261]
    v.append(k1 ^ 0x7465646279746573)

    def rounds(n: int) -> None:
        for _ in range(n):
            v[0] = (v[0] + v[1]) & _MASK
            v[1] = _rotl(v[1], 13) ^ v[0]
            v[0] = _rotl(v[0], 32)
            v[2] = (v[2] + v[3]) & _MASK
            v[3] = _rotl(v[3], 16) ^ v[2]
            v[0] = (v[0] + v[3]) & _MASK
            v[3] = _rotl(v[3], 21) ^ v[0]
            v[2] = (v[2] + v[1]) & _MASK
            v[1] = _rotl(v[1], 17) ^ v[2]
            v[2] = _rotl(v[2], 32)

    tail = len(data) % 8
    for start in range(0, len(data) - tail, 8):
        m = int.from_bytes(data[start : start + 8], "little")
        v[3] ^= m
        rounds(2)
        v[0] ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[len(data) - tail :], "little")
    v[3] ^= last
    rounds(2)
    v[0] ^= last
    v[2] ^= 0xFF
    rounds(4)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def local_part_rewriter(policy: str) -> Callable[[str], str] | None:
    """What `privacy-policy KIND [STRING]` does to a local part; None for `retain`.

    Raises ValueError for a key that cannot be used (bad hex, a SipHash key over 16 bytes).
    """
    kind, _, arg = policy.strip().partition(" ")
    kind = kind.lower()
    arg = _unquote(arg)
    if kind in ("", "retain"):
        return None
    if kind == "redact":
        text = arg or "..."
        return lambda local: text
    if kind in ("siphash-hexkey", "hmac-sha256-hexkey"):
        try:
            key = bytes.fromhex(arg)
        except ValueError:
            raise ValueError(f"privacy-policy {kind}: the key is not hex: {arg!r}") from None
    else:
        key = arg.encode("utf-8")
    if not key:
        raise ValueError(f"privacy-policy {kind} needs a key")
    if kind.startswith("siphash"):
        if len(key) > 16:
            raise ValueError("privacy-policy siphash: the key is at most 16 bytes")
        padded = key.ljust(16, b"\0")
        return lambda local: f"{siphash24(padded, local.lower().encode('utf-8')):016x}"
    if kind.startswith("hmac-sha256"):
        return lambda local: hmac.new(
            key, local.lower().encode("utf-8"), hashlib.sha256
        ).hexdigest()
    raise ValueError(f"unknown privacy-policy {kind!r}")


def _hide(address: str, rewrite: Callable[[str], str]) -> str:
    local, at, domain = address.rpartition("@")
    return f"{rewrite(local)}@{domain}" if at else address


def record_policy(user_string: str, privacy_policy: str) -> Policy | None:
    """The transform an acct file applies to each record, or None when it needs none."""
    rewrite = local_part_rewriter(privacy_policy)
    if rewrite is None and not user_string:
        return None

    def apply(record: Record) -> Record:
        record = dict(record)
        record[USER_STRING_FIELD] = user_string
        if rewrite is None:
            return record
        rcpt = record.get("rcpt", "")
        if rcpt:
            hidden = _hide(rcpt, rewrite)
            record["rcpt"] = hidden
            diag = record.get("dsnDiag", "")
            if diag:
                record["dsnDiag"] = re.sub(re.escape(rcpt), hidden, diag, flags=re.IGNORECASE)
        orcpt = record.get("orcpt", "")
        if orcpt:
            kind, semi, address = orcpt.rpartition(";")
            record["orcpt"] = f"{kind}{semi}{_hide(address, rewrite)}"
        return record

    return apply
