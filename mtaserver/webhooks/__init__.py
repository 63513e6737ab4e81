"""Webhooks: acct records pushed in durable batches, and `type http-delivery`."""

from mtaserver.webhooks.accounting import WebhookService, batcher_for
from mtaserver.webhooks.batcher import WebhookBatcher, retry_delay
from mtaserver.webhooks.delivery import HttpDeliverer
from mtaserver.webhooks.http import PooledClient

__all__ = [
    "HttpDeliverer",
    "PooledClient",
    "WebhookBatcher",
    "WebhookService",
    "batcher_for",
    "retry_delay",
]
