"""The scheduler as a service: restore what recovery found, stop cleanly.

On start, every live message from the spool is queued again with its recipients'
retry state, and recipients whose message file was lost get a final `b` record. On
stop, no new session starts and running ones finish the transaction in hand.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger

from mtaserver.queue.scheduler import Scheduler
from mtaserver.spool.recovery import RecoveredSpool

log = Logger()


class SchedulerService(Service):
    def __init__(self, scheduler: Scheduler, recovered: RecoveredSpool | None) -> None:
        self.scheduler = scheduler
        self.recovered = recovered

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        recovered, self.recovered = self.recovered, None
        if recovered is None:
            return
        for message in recovered.messages.values():
            self.scheduler.restore(
                message.envelope, [(p.index, p.attempts, p.last_attempt) for p in message.pending]
            )
        for lost in recovered.lost:
            d = defer.ensureDeferred(
                self.scheduler.bounce_lost(lost.envelope, [p.index for p in lost.pending])
            )
            d.addErrback(lambda f: log.failure("bouncing a lost message failed", f))
        log.info(
            "spool recovered: {count} messages queued, {corrupt} set aside, {lost} lost",
            count=len(recovered.messages),
            corrupt=len(recovered.corrupt),
            lost=len(recovered.lost),
        )

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted's name
        super().stopService()
        return defer.ensureDeferred(self.scheduler.stop())
