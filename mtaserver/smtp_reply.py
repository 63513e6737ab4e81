"""SMTP replies as values: code, enhanced status code (RFC 3463) and text.

One record for both directions: the replies our SMTP server sends to its clients, and
the replies a remote MTA sends to our SMTP client (or that the client makes up when
no server said anything). Both sides classify and print replies the same way, and the
delivery seam (`mtaserver.queue.delivery`) carries them per recipient into the
scheduler, the accounting records and DSNs. It is a top-level module of its own, not
part of `smtp/` nor of `queue/`, because every layer needs the word: the intake path
(`message/`, used by the HTTP API as well) answers with replies, `queue/` and
`webhooks/` must not import `smtp/`, and the inbound server should not import the
delivery seam. It imports nothing of mtaserver.

Policy code returns a `Reply` and the server protocol sends it with `lines()`;
nothing else formats reply lines, so every reply carries an enhanced status code
and multi-line replies come out right. The canned replies below are the server's.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Reply:
    """`code status text`, e.g. `Reply(250, "2.1.0", "Ok")`; `status` may be empty.

    `is_success` covers 2xx and the intermediate 3xx (354, 334); a transaction's
    per-recipient replies only ever hold 2xx, 4xx or 5xx.
    """

    code: int
    status: str
    text: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def lines(self) -> list[bytes]:
        """The reply on the wire: one line per text line, `code-` on all but the last."""
        texts = self.text.split("\n") or [""]
        prefix = f"{self.status} " if self.status else ""
        out = []
        for i, text in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            out.append(f"{self.code}{sep}{prefix}{text}".encode("utf-8", "replace") + b"\r\n")
        return out

    def __str__(self) -> str:
        """`code status text` on one line, without the parts that are empty."""
        return " ".join(part for part in (str(self.code), self.status, self.text) if part)


OK = Reply(250, "2.0.0", "Ok")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
HELO_FIRST = Reply(503, "5.5.1", "Send HELO or EHLO first")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_NEWLINE_COMMAND = Reply(500, "5.5.2", "Bare CR or LF in command line")
UNKNOWN_COMMAND = Reply(500, "5.5.1", "Command unrecognized")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout exceeded, closing connection")
RELAY_DENIED = Reply(550, "5.7.1", "Relaying denied")
#: `relay-debug yes`: the same refusal, transient, while the relaying rules are checked.
RELAY_DEBUG = Reply(450, "4.7.1", "Relaying denied (relay-debug: temporary)")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
ENCRYPTION_REQUIRED = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_TOO_MANY = Reply(421, "4.7.0", "Too many authentication failures, closing connection")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_RCPTS = Reply(452, "4.5.3", "Too many recipients")
SPOOL_FULL = Reply(452, "4.3.1", "Insufficient system storage")
SPOOL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
#: `<spool DIR> deliver-only yes`: the one spool only delivers what it holds.
DELIVER_ONLY = Reply(451, "4.3.2", "Not accepting new messages: the spool is deliver-only")
#: PowerMTA's mailmerge extension (XMRG FROM, XDFN, XPRT): never offered here, and
#: refused by name so that a submission client using it stops with a clear reason.
MAILMERGE_REFUSED = Reply(
    502, "5.5.1", "XMRG mailmerge is not supported here: send one message per recipient"
)
# Connection-level limits: all end the session after the reply.
TOO_MANY_CONNECTIONS_FROM_IP = Reply(
    421, "4.7.0", "Too many connections from your IP address, try again later"
)
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
NO_DESCRIPTORS = Reply(421, "4.7.0", "Server busy, try again later")
COMMAND_DEADLINE = Reply(421, "4.4.2", "Command deadline exceeded, closing connection")
DATA_DEADLINE = Reply(421, "4.4.2", "DATA deadline exceeded, closing connection")
TOO_MANY_JUNK_COMMANDS = Reply(421, "4.7.0", "Too many junk commands, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
EARLY_TALKER = Reply(554, "5.5.1", "Protocol error: client sent data before the greeting")
