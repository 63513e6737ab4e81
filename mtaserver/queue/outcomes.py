"""From a reply to a journal record: pure functions, no clock, no I/O.

A delivery attempt ends in one reply per recipient. `decide` turns a reply into the
record kind PowerMTA writes (`d` delivered, `b` bounced, `t` deferred, and `x`, an
expiry: a `b` with 4.4.7 `message-expired`); `outcome` builds the journal `Outcome`
with its DSN fields and bounce category; `delivery_fields` gives the `dlv*` acct
fields of the connection that carried the attempt. The scheduler owns *when* these
run and makes the result durable; this module only says *what* the record is, so it
can be read and tested as a table.
"""

from __future__ import annotations

from typing import Any

from mtaserver.accounting.bounce import classify
from mtaserver.events import Envelope, Outcome
from mtaserver.queue.delivery import ConnectionInfo, Reply
from mtaserver.spool.errors import CorruptMessageError


def reply_line(reply: Reply) -> str:
    """The reply as one line, `550 5.1.1 text`: what patterns match and DSNs quote."""
    return f"{reply.code} {reply.status} {reply.text}".strip()


def decide(reply: Reply, actions: tuple[str, ...] = (), expired: bool = False) -> str:
    """The record kind of one recipient's reply: `d`, `b`, `x` (expired) or `t`.

    A `bounce-rcpt` pattern action bounces a transient reply; a transient reply of a
    recipient past `bounce-after` expires instead of waiting again.
    """
    if reply.is_success:
        return "d"
    if reply.is_permanent or "bounce-rcpt" in actions:
        return "b"
    return "x" if expired else "t"


def failure_reply(status: str, diag: str) -> Reply:
    """The reply standing for a failure with no SMTP reply of its own (a DSN status).

    The code follows the status class (`4.4.7` -> 450, `5.0.0` -> 550); a status
    that is not a number is a 550.
    """
    code = int(status[0]) * 100 + 50 if status[:1].isdigit() else 550
    return Reply(code, status, diag)


def delivery_fields(info: ConnectionInfo, body_size: int) -> dict[str, Any]:
    """The `dsnMta` and `dlv*` acct fields of the connection a transaction went over."""
    host, ip = info.destination_host, info.destination_ip
    return {
        "dsn_mta": f"{host} ({ip})" if ip else host,
        "dlv_type": "smtp" if ip else host,
        "dlv_source_ip": info.source_ip,
        "dlv_destination_ip": ip,
        "dlv_esmtp_available": ",".join(sorted(info.extensions)),
        "dlv_size": body_size,
        "dlv_tls_protocol": info.tls_protocol,
        "dlv_tls_cipher": info.tls_cipher,
    }


def outcome(
    kind: str,
    reply: Reply,
    envelope: Envelope,
    indexes: tuple[int, ...],
    now: float,
    queue: str,
    vmta: str,
    pool: str | None,
    bounce_cat: str = "",
    **delivery: Any,
) -> Outcome:
    """One journal `Outcome` for `indexes` of `envelope`.

    Kind `x` is written as a `b` with status 4.4.7 and category `message-expired`;
    `bounce_cat` overrides the category the reply's text gives (routing knows best,
    an administrative delete is `other`). The diagnostic always carries its `smtp;`
    type, as DSNs (RFC 3464) and PowerMTA's acct files write it.
    """
    status, diag = reply.status, reply_line(reply)
    record, action, category = kind, "", ""
    if kind == "d":
        action = "relayed"
    elif kind == "t":
        action = "delayed"
        category = classify(status, diag)
    else:
        record, action = "b", "failed"
        if kind == "x":
            status, category = "4.4.7", "message-expired"
            diag = f"smtp;{diag} (expired after bounce-after)"
        else:
            category = classify(status, diag)
    if not diag.startswith("smtp;"):
        diag = f"smtp;{diag}"
    return Outcome(
        record=record,
        msg_id=envelope.msg_id,
        rcpt_indexes=indexes,
        time=now,
        envelope=envelope.only(indexes),
        dsn_action=action,
        dsn_status=status,
        dsn_diag=diag,
        bounce_cat=bounce_cat or category,
        queue=queue,
        vmta=vmta,
        vmta_pool=pool or "",
        **delivery,
    )


def file_unreadable(error: BaseException) -> bool:
    """A read failure that retrying cannot cure: the message file is corrupt or gone.

    Other I/O errors (EIO, EMFILE...) may pass, so those are retried.
    """
    if isinstance(error, CorruptMessageError):
        return True
    cause = error.__cause__
    return isinstance(error, FileNotFoundError) or isinstance(cause, FileNotFoundError)
