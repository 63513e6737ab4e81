"""The seam between the scheduler and the ways mail leaves: `IDeliverer` and its job.

The scheduler owns queue state; a deliverer only runs one *session* for one queue: it
pulls transactions with `job.next_transaction()` until that returns None and reports
each result with `job.report()`. A failure of the queue as a whole (no route, no
connection) is raised as `QueueLevelFailure`, which the scheduler turns into a `tq`
record and a queue retry (or bounces, when permanent). `type smtp` lives in
`mtaserver.smtp.deliverer`; `discard` and `file` are here; `http-delivery` plugs in
the same way.

The records that cross the seam live here too: a `Transaction` goes out, a
`TransactionResult` (one `Reply` per recipient, and the `ConnectionInfo` the `d`, `b`
and `t` records describe) comes back. The SMTP client, the webhook deliverer and the
scheduler import them from here, so `queue/` never needs `smtp/`. `Reply` itself is
`mtaserver.smtp_reply.Reply`, the one SMTP reply record of both directions.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs

from mtaserver.config.model import DomainSettings
from mtaserver.config.values import SourceHost
from mtaserver.events import Envelope, Recipient
from mtaserver.fsutil import atomic_write
from mtaserver.runtime import RunInThread
from mtaserver.smtp_reply import Reply


@attrs.frozen
class Transaction:
    """One message to some of its recipients: `rcpt_indexes` index `envelope.recipients`.

    `body` is the message as stored: CRLF line ends, not dot-stuffed.
    """

    envelope: Envelope
    rcpt_indexes: tuple[int, ...]
    body: bytes

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        return tuple(self.envelope.recipients[i] for i in self.rcpt_indexes)


@attrs.frozen
class ConnectionInfo:
    """What a delivery record needs to say about the connection (dlv* acct fields)."""

    source_ip: str
    destination_ip: str
    destination_host: str
    esmtp: bool
    tls_protocol: str
    tls_cipher: str
    extensions: frozenset[str]


@attrs.frozen
class TransactionResult:
    """A transaction's outcome: `replies[i]` is for `transaction.rcpt_indexes[i]`.

    Each reply is a 2xx, 4xx or 5xx `Reply` (`mtaserver.smtp_reply`): the remote MTA's,
    or one a deliverer made up (`discard`, `file`, `http-delivery`, a lost connection).
    """

    transaction: Transaction
    replies: tuple[Reply, ...]
    info: ConnectionInfo


@attrs.frozen
class SessionJob:
    """What a deliverer needs for one session of one queue."""

    queue: str
    domain: str
    vmta: str
    pool: str | None
    settings: DomainSettings
    next_transaction: Callable[[], Awaitable[Transaction | None]]
    report: Callable[[TransactionResult], None]
    #: The `smtp-source-host` the scheduler chose for this session (None: the default).
    source: SourceHost | None = None
    #: `trace`: where the deliverer writes what it does and what is said (one line each).
    transcript: Callable[[str], None] | None = None


class QueueLevelFailure(Exception):
    """The queue as a whole could not be served: no route, no connection, and so on."""

    def __init__(
        self,
        status: str,
        diag: str,
        *,
        permanent: bool = False,
        bounce_cat: str = "",
        dsn_mta: str = "",
        destination_ip: str = "",
    ) -> None:
        super().__init__(diag)
        self.status = status
        self.diag = diag
        self.permanent = permanent
        self.bounce_cat = bounce_cat
        self.dsn_mta = dsn_mta
        self.destination_ip = destination_ip


class IDeliverer(Protocol):
    async def run(self, job: SessionJob) -> None: ...


LOCAL_INFO = ConnectionInfo(
    source_ip="",
    destination_ip="",
    destination_host="localhost",
    esmtp=False,
    tls_protocol="",
    tls_cipher="",
    extensions=frozenset(),
)


class DiscardDeliverer:
    """`type discard`: every recipient counts as delivered, nothing is sent."""

    async def run(self, job: SessionJob) -> None:
        while (transaction := await job.next_transaction()) is not None:
            reply = Reply(250, "2.0.0", "discarded")
            job.report(
                TransactionResult(
                    transaction,
                    (reply,) * len(transaction.rcpt_indexes),
                    attrs.evolve(LOCAL_INFO, destination_host="discard"),
                )
            )


class FileDeliverer:
    """`type file`: each message is written to `file-output-directory` as `<msg_id>.eml`.

    The file is written to a temporary name, fsync'd and renamed (in a thread), so a
    `d` record means the file is complete on disk.
    """

    def __init__(self, run_in_thread: RunInThread) -> None:
        self._run_in_thread = run_in_thread

    async def run(self, job: SessionJob) -> None:
        directory = job.settings.file_output_directory
        if not directory:
            raise QueueLevelFailure(
                "4.3.5", "type file needs file-output-directory", bounce_cat="bad-configuration"
            )
        while (transaction := await job.next_transaction()) is not None:
            path = os.path.join(directory, f"{transaction.envelope.msg_id}.eml")
            try:
                await self._run_in_thread(functools.partial(_write_file, path, transaction))
                reply = Reply(250, "2.0.0", f"written to {path}")
            except OSError as exc:
                reply = Reply(451, "4.3.0", f"cannot write {path}: {exc.strerror}")
            info = attrs.evolve(LOCAL_INFO, destination_host="file")
            job.report(
                TransactionResult(transaction, (reply,) * len(transaction.rcpt_indexes), info)
            )


def _write_file(path: str, transaction: Transaction) -> None:
    envelope = transaction.envelope
    header = f"Return-Path: <{envelope.sender}>\r\n".encode()
    recipients = ", ".join(envelope.recipients[i].address for i in transaction.rcpt_indexes)
    header += f"X-Delivered-To: {recipients}\r\n".encode()
    atomic_write(path, header + transaction.body, temporary=path + ".tmp", make_directory=True)
