"""`smtp-pattern-list` actions and backoff mode: how a queue reacts to what it hears.

A reply line that matches a pattern of the queue's `smtp-pattern-list` can put the
queue into backoff (`mode=backoff`) or back to normal (`mode=normal`), bounce the
recipient (`bounce-rcpt`, read by `outcomes.decide`), or act on the whole queue
(`defer-queue`, `bounce-queue`, which the scheduler carries out). In backoff a queue
uses one connection at `backoff-max-msg-rate` and retries on `backoff-retry-after`;
it returns to normal by itself after `backoff-to-normal-after`, or by a
`set queue --mode=normal`.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from mtaserver.config.model import DomainSettings
from mtaserver.queue.model import Queue

log = Logger()

#: Actions that act on the whole queue, in the order they win when both match.
QUEUE_ACTIONS = ("bounce-queue", "defer-queue")


def apply_actions(queue: Queue, actions: tuple[str, ...], now: float) -> str:
    """Apply the mode actions to `queue`; return its queue action ("" when none)."""
    for action in actions:
        if action == "mode=backoff":
            if queue.mode != "backoff":
                log.info("queue {queue} enters backoff mode", queue=queue.name)
            queue.mode, queue.backoff_since = "backoff", now
        elif action == "mode=normal":
            queue.mode = "normal"
    return next((action for action in QUEUE_ACTIONS if action in actions), "")


def leave_backoff_if_due(queue: Queue, settings: DomainSettings, now: float) -> None:
    """Back to normal once the queue has been in backoff for `backoff-to-normal-after`."""
    if queue.mode == "backoff" and now - queue.backoff_since >= settings.backoff_to_normal_after:
        log.info("queue {queue} returns to normal mode", queue=queue.name)
        queue.mode = "normal"


def effective_settings(queue: Queue, settings: DomainSettings) -> DomainSettings:
    """The queue's settings in its current mode: backoff has its own rates and retries."""
    if queue.mode != "backoff":
        return settings
    return attrs.evolve(
        settings,
        max_msg_rate=settings.backoff_max_msg_rate or settings.max_msg_rate,
        max_connect_rate=settings.backoff_max_connect_rate or settings.max_connect_rate,
        retry_after=settings.backoff_retry_after,
    )
