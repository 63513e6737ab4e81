"""Reports back to the sender: an RFC 3464 DSN, spooled and queued like any message.

The scheduler calls a `DsnSender` with a message's final outcomes once they are about
to be durable: `b` recipients get a `failed` report, `d` recipients that asked
NOTIFY=SUCCESS a `relayed` one (the next hop did not offer DSN, so it will not report)
or a `delivered` one (a local delivery: file, HTTP, discard). A `d` to a server that
offered DSN gets none from us: the NOTIFY went on with the message (RFC 3461 5.2.2),
and that server reports. `DelayNotices` (`delay_notices.py`) uses `send` for the
`delayed` reports of NOTIFY=DELAY recipients.

Never for a null sender, never for a DSN of ours (no bounce of a bounce), never for
mail from a `<source>` with `suppress-local-dsn`, never to a sender whose domain has
`deliver-local-dsn no`, and only for recipients whose NOTIFY asks for that kind.
`dsn-format`, `dsn-text-file` (+) and `custom-dsn-from-header` shape it
(`mtaserver.message.dsn`); the settings of the sender's domain apply (it is the DSN's
destination), with the original's virtual MTA.

Building the report runs in the thread pool: the `email` package walks and
re-encodes the original (up to 100 KB of it with RET=FULL), which is too long a
stretch of Python for the reactor thread that also serves every SMTP session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger

from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Outcome
from mtaserver.message.dsn import (
    FailedRecipient,
    build_dsn,
    dsn_envelope,
    notify_wants,
    should_send_dsn,
    wanted_failures,
)
from mtaserver.queue.routing import recipient_domain
from mtaserver.runtime import RunInThread

log = Logger()


def _remote_host(outcome: Outcome) -> str:
    """`mx.example.com (10.0.0.1)` -> `mx.example.com`: Remote-MTA is a host name."""
    return outcome.dsn_mta.split(" ")[0] if outcome.dsn_mta else ""


def reports_for(outcomes: Sequence[Outcome]) -> list[FailedRecipient]:
    """What a DSN says of final outcomes: failed `b`s, delivered/relayed `d`s that ask.

    A `d` is reported only for NOTIFY=SUCCESS, and not when the next hop offered DSN
    (`dlvEsmtpAvailable` has it): that hop got the NOTIFY and reports itself.
    """
    reports = []
    for outcome in outcomes:
        if outcome.record == "b":
            reports += [
                FailedRecipient(
                    recipient,
                    "failed",
                    outcome.dsn_status or "5.0.0",
                    outcome.dsn_diag.removeprefix("smtp;"),
                    _remote_host(outcome),
                )
                for recipient in outcome.envelope.recipients
            ]
        elif outcome.record == "d":
            smtp = outcome.dlv_type == "smtp"
            if smtp and "DSN" in outcome.dlv_esmtp_available.split(","):
                continue
            reports += [
                FailedRecipient(
                    recipient,
                    "relayed" if smtp else "delivered",
                    outcome.dsn_status or "2.0.0",
                    outcome.dsn_diag.removeprefix("smtp;"),
                    _remote_host(outcome) if smtp else "",
                )
                for recipient in outcome.envelope.recipients
                if notify_wants(recipient, "delivered")
            ]
    return reports


class DsnSender:
    """Builds the DSN for a message's reported recipients and hands it to reception's path."""

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
        self, envelope: Envelope, outcomes: list[Outcome], body: bytes | None
    ) -> None:
        """The scheduler's final outcomes of one message (`b`, and `d` that may ask)."""
        await self.send(envelope, reports_for(outcomes), body)

    def may_send(self, envelope: Envelope) -> bool:
        """May `envelope` cause a DSN at all (sender, source and sender's domain agree)?"""
        if envelope.suppress_local_dsn or not envelope.sender:
            return False
        settings = self.holder.config.domain_settings(
            recipient_domain(envelope.sender), envelope.vmta, envelope.vmta_pool
        )
        return should_send_dsn(envelope, settings.deliver_local_dsn)

    async def send(
        self, envelope: Envelope, reports: Sequence[FailedRecipient], body: bytes | None
    ) -> bool:
        """Spool and queue one DSN of the `reports` whose NOTIFY asks; True if one was."""
        if not reports or not self.may_send(envelope):
            return False
        wanted = wanted_failures(reports)
        if not wanted:
            return False
        config = self.holder.config
        settings = config.domain_settings(
            recipient_domain(envelope.sender), envelope.vmta, envelope.vmta_pool
        )
        if body is None:
            body = await self.store.read_body(envelope.msg_id)
        now = self.clock.seconds()
        host_name = config.settings.host_name
        postmaster = config.settings.postmaster or ""
        from_header = config.settings.custom_dsn_from_header
        plain_text = settings.dsn_format == "plain-text"
        template = settings.dsn_text_file.text if settings.dsn_text_file else None
        original = body
        report = await self.run_in_thread(
            lambda: build_dsn(
                envelope,
                wanted,
                original,
                host_name,
                postmaster,
                now,
                host_name,
                from_header=from_header,
                plain_text=plain_text,
                text_template=template,
            )
        )
        writer = self.store.begin()
        writer.write(report)
        notice = dsn_envelope(envelope, writer.msg_id, now, report)
        await writer.commit(notice)
        self.sent += 1
        self.enqueue(notice)
        return True
