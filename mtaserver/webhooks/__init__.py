"""Webhooks: acct records pushed in durable batches, and `type http-delivery`."""

from mtaserver.webhooks.accounting import WebhookService, batcher_for
from mtaserver.webhooks.batcher import WebhookBatcher, retry_delay
from mtaserver.webhooks.delivery import HttpDeliverer
from mtaserver.webhooks.guard import RefusedTarget, holder_targets
from mtaserver.webhooks.http import PooledClient

__all__ = [
    "HttpDeliverer",
    "PooledClient",
    "RefusedTarget",
    "WebhookBatcher",
    "WebhookService",
    "batcher_for",
    "holder_targets",
    "retry_delay",
]
