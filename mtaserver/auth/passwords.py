"""Checking a password against an `<smtp-user>` entry's stored form.

Stored passwords use Dovecot's notation: `{SCHEME}data`, or a bare plain password.
Supported schemes: `PLAIN`, `SHA256` (base64 or hex digest), `SSHA256` and
`SSHA512` (base64 of digest + salt), `SHA256-CRYPT` and `SHA512-CRYPT` (crypt(3)
strings). Every comparison is constant-time. The CRYPT schemes cost milliseconds
each, so `verify_password` is meant to run in a thread.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

from mtaserver.auth.shacrypt import sha_crypt

_SCHEME = re.compile(r"\{([A-Za-z0-9-]+)\}(.*)\Z", re.DOTALL)


def split_scheme(stored: str) -> tuple[str, str]:
    """(`SCHEME`, data) of a stored password; a bare password is `PLAIN`."""
    match = _SCHEME.match(stored)
    if not match:
        return "PLAIN", stored
    return match.group(1).upper(), match.group(2)


def verify_password(stored: str, password: str) -> bool:
    """True if `password` matches the stored form; unknown schemes never match."""
    scheme, data = split_scheme(stored)
    given = password.encode("utf-8")
    if scheme == "PLAIN":
        return hmac.compare_digest(data.encode("utf-8"), given)
    if scheme in ("SHA256-CRYPT", "SHA512-CRYPT"):
        want = "$5$" if scheme == "SHA256-CRYPT" else "$6$"
        if not data.startswith(want):
            return False
        try:
            computed = sha_crypt(given, data)
        except ValueError:
            return False
        return hmac.compare_digest(computed.encode(), data.encode())
    if scheme == "SHA256":
        digest = _decode_digest(data, 32)
        return digest is not None and hmac.compare_digest(hashlib.sha256(given).digest(), digest)
    if scheme in ("SSHA256", "SSHA512"):
        size = 32 if scheme == "SSHA256" else 64
        raw = _b64(data)
        if raw is None or len(raw) <= size:
            return False
        digest, salt = raw[:size], raw[size:]
        salted = hashlib.new("sha256" if size == 32 else "sha512", given + salt).digest()
        return hmac.compare_digest(salted, digest)
    return False


def _decode_digest(data: str, size: int) -> bytes | None:
    """A digest written as hex (Dovecot's `.HEX`) or base64 (its default)."""
    text = data.strip()
    if len(text) == 2 * size and re.fullmatch(r"[0-9a-fA-F]+", text):
        return bytes.fromhex(text)
    raw = _b64(text)
    return raw if raw is not None and len(raw) == size else None


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def hash_password(password: str, scheme: str = "SHA512-CRYPT", salt: str | None = None) -> str:
    """A stored form of `password` (for tests and for operators writing configs)."""
    raw_salt = salt or base64.b64encode(secrets.token_bytes(12), b"./").decode()
    given = password.encode("utf-8")
    if scheme in ("SHA256-CRYPT", "SHA512-CRYPT"):
        prefix = "$5$" if scheme == "SHA256-CRYPT" else "$6$"
        return "{" + scheme + "}" + sha_crypt(given, prefix + raw_salt[:16])
    if scheme == "SHA256":
        return "{SHA256}" + base64.b64encode(hashlib.sha256(given).digest()).decode()
    if scheme in ("SSHA256", "SSHA512"):
        name = "sha256" if scheme == "SSHA256" else "sha512"
        salt_bytes = raw_salt.encode()
        digest = hashlib.new(name, given + salt_bytes).digest()
        return "{" + scheme + "}" + base64.b64encode(digest + salt_bytes).decode()
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    raise ValueError(f"unknown password scheme {scheme!r}")
