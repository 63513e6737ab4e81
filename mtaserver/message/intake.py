"""The one way a received message enters the queue, for SMTP and the Transmissions API.

Both intake paths end the same way: the message's virtual MTA is resolved
(`X-Virtual-MTA` when processed, else the source's `default-virtual-mta`; a name
that is neither a `<virtual-mta>` nor a `<virtual-mta-pool>` is refused), the spool
writer makes it durable (`acknowledge`: file and directory fsync'd, its `Received`
taken by the journal's writer), the counters the monitoring API reads go up, the
scheduler gets the envelope (`on_accepted`), and the client hears `250` or `200`:
nothing acknowledged is lost. In the process that owns the journal, `acknowledge`
fires once the `Received` is fsync'd, so nothing is queued before its record exists;
in a reception worker `on_accepted` does nothing, and the master queues the message
once it has journaled it.

`Intake.accept` does that; the callers only say what they refuse and how their
protocol answers spool errors (SMTP: always 4xx; the API: 503 or 500).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope

log = Logger()

OnAccepted = Callable[[Envelope], None]


class MessageWriterLike(Protocol):
    """What intake needs of `mtaserver.spool.MessageWriter`."""

    msg_id: str

    def write(self, data: bytes) -> None: ...

    def acknowledge(self, envelope: Envelope) -> Deferred[None]: ...

    def abort(self) -> None: ...


class MessageStoreLike(Protocol):
    """What intake needs of `mtaserver.spool.MessageStore`."""

    def begin(self) -> MessageWriterLike: ...

    def check_space(self, needed: int = 0) -> None: ...


@attrs.define
class ReceptionStats:
    """Counters the monitoring API reads; one instance, shared by SMTP and the API."""

    sessions_current: int = 0
    sessions_total: int = 0
    sessions_top: int = 0  # the most sessions open at once since start
    messages_received: int = 0
    recipients_received: int = 0
    bytes_received: int = 0
    messages_rejected: int = 0
    auth_failures: int = 0
    eight_bit_undeclared: int = 0


class UnknownVirtualMTA(ValueError):
    """The message asks for a virtual MTA or pool the configuration does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def resolve_vmta(config: Config, name: str | None) -> tuple[str | None, str | None]:
    """(vmta, pool) for a name; (None, None) for no name; UnknownVirtualMTA otherwise."""
    if not name:
        return None, None
    if name in config.vmtas:
        return name, None
    if name in config.vmta_pools:
        return None, name
    raise UnknownVirtualMTA(name)


class Intake:
    """Commits, counts and enqueues accepted messages; one per server, shared by both paths."""

    def __init__(self, holder: ConfigHolder, on_accepted: OnAccepted, stats: ReceptionStats):
        self.holder = holder
        self.on_accepted = on_accepted
        self.stats = stats

    async def accept(
        self, writer: MessageWriterLike, envelope: Envelope, vmta_name: str | None
    ) -> Envelope:
        """Resolve `vmta_name`, make durable, count and enqueue; the envelope as queued.

        Raises UnknownVirtualMTA (the writer is aborted) or the spool's errors
        (`SpoolFullError`, `SpoolError`: the writer leaves nothing behind).
        """
        try:
            vmta, pool = resolve_vmta(self.holder.config, vmta_name)
        except UnknownVirtualMTA:
            writer.abort()
            raise
        envelope = attrs.evolve(envelope, vmta=vmta, vmta_pool=pool)
        await writer.acknowledge(envelope)
        self.stats.messages_received += 1
        self.stats.recipients_received += len(envelope.recipients)
        self.stats.bytes_received += envelope.size
        try:
            self.on_accepted(envelope)
        except Exception:
            log.failure("on_accepted failed for {msg_id}", msg_id=envelope.msg_id)
        return envelope
