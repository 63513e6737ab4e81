"""Bounces back to the sender: an RFC 3464 DSN, spooled and queued like any message.

Called by the scheduler once `b` outcomes are durable. Never for a null sender, never
for a DSN of ours (no bounce of a bounce), never when the queue's
`deliver-local-dsn` is `no`, and only for recipients whose NOTIFY asks for failures.

Building the report runs in the thread pool: the `email` package walks and
re-encodes the original (up to 100 KB of it with RET=FULL), which is too long a
stretch of Python for the reactor thread that also serves every SMTP session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome
from mtaserver.message.dsn import (
    FailedRecipient,
    build_dsn,
    dsn_envelope,
    should_send_dsn,
    wanted_failures,
)
from mtaserver.queue.routing import recipient_domain
from mtaserver.runtime import RunInThread

log = Logger()


class DsnSender:
    """Builds the DSN for a message's bounced recipients and hands it to reception's path."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: Any,
        enqueue: Callable[[Envelope], None],
        clock: Any,
        run_in_thread: RunInThread,
    ) -> None:
        self.holder = holder
        self.store = store
        self.enqueue = enqueue
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.sent = 0

    async def __call__(
        self, envelope: Envelope, bounced: list[Outcome], body: bytes | None
    ) -> None:
        config = self.holder.config
        first_domain = (
            recipient_domain(envelope.recipients[0].address) if envelope.recipients else ""
        )
        local_dsn = config.domain_settings(first_domain, envelope.vmta).deliver_local_dsn
        if not should_send_dsn(envelope, local_dsn):
            return
        failures = wanted_failures(
            [
                FailedRecipient(
                    recipient,
                    "failed",
                    outcome.dsn_status or "5.0.0",
                    outcome.dsn_diag.removeprefix("smtp;"),
                    outcome.dsn_mta.split(" ")[0] if outcome.dsn_mta else "",
                )
                for outcome in bounced
                for recipient in outcome.envelope.recipients
            ]
        )
        if not failures:
            return
        if body is None:
            body = await self.store.read_body(envelope.msg_id)
        now = self.clock.seconds()
        host_name = config.settings.host_name
        postmaster = config.settings.postmaster or ""
        original = body
        report = await self.run_in_thread(
            lambda: build_dsn(envelope, failures, original, host_name, postmaster, now, host_name)
        )
        writer = self.store.begin()
        writer.write(report)
        bounce = dsn_envelope(envelope, writer.msg_id, now, report)
        await writer.commit(bounce)
        self.sent += 1
        self.enqueue(bounce)
