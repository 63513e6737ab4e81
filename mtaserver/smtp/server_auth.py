"""The SASL side of SMTP AUTH (RFC 4954): the PLAIN and LOGIN exchanges.

A small state machine per AUTH command: it turns the client's base64 lines into
either the next challenge, the credentials to check, or an error reply. Checking
the password is not its business (see `mtaserver.auth`).
"""

from __future__ import annotations

import base64
import binascii

import attrs

from mtaserver.smtp_reply import AUTH_FAILED, Reply

MECHANISMS = ("PLAIN", "LOGIN")
CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode response")
BAD_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")


@attrs.frozen
class Challenge:
    """Send `334 base64(text)` and wait for the next line."""

    text: bytes

    def reply(self) -> Reply:
        return Reply(334, "", base64.b64encode(self.text).decode("ascii"))


@attrs.frozen
class Credentials:
    user: str
    password: str


Step = Challenge | Credentials | Reply


class SaslExchange:
    """One AUTH PLAIN or AUTH LOGIN exchange."""

    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(mechanism)
        self.mechanism = mechanism
        self._user: str | None = None

    def start(self, initial: bytes | None) -> Step:
        """The step after `AUTH MECH [initial-response]`."""
        if initial is None:
            return Challenge(b"" if self.mechanism == "PLAIN" else b"Username:")
        return self.respond(initial)

    def respond(self, line: bytes) -> Step:
        if line.strip() == b"*":
            return CANCELLED
        raw = _decode(line)
        if raw is None:
            return BAD_BASE64
        if self.mechanism == "PLAIN":
            return _plain(raw)
        text = _text(raw)
        if text is None:
            return BAD_BASE64
        if self._user is None:
            self._user = text
            return Challenge(b"Password:")
        return Credentials(self._user, text)


def _decode(line: bytes) -> bytes | None:
    data = line.strip()
    if data == b"=":
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _text(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _plain(raw: bytes) -> Step:
    """`authzid NUL authcid NUL password`; acting as another user is not allowed."""
    parts = raw.split(b"\x00")
    if len(parts) != 3:
        return BAD_BASE64
    authzid, user, password = (_text(p) for p in parts)
    if authzid is None or user is None or password is None:
        return BAD_BASE64
    if authzid and authzid != user:
        return AUTH_FAILED
    return Credentials(user, password)
