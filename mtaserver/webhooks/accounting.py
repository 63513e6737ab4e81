"""The accounting webhooks as a service: one `WebhookBatcher` per `<acct-file>` with a URL.

`batcher_for` turns an `<acct-file>`'s `http-webhook-*` directives into a batcher with
its own HTTP client (its TLS settings are its own); `WebhookService` starts and stops
them with the server and exposes `status()` for the monitoring API. Building reads the
CA, certificate and extra-header files, so it runs at start-up (in `makeService`), and
a bad file is a `ValueError` naming it.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.config.model import AcctFileSettings, Config
from mtaserver.config.targets import TargetPolicy, config_policy
from mtaserver.runtime import RunInThread
from mtaserver.webhooks.batcher import DEFAULT_MAX_BYTES, WebhookBatcher
from mtaserver.webhooks.guard import TargetSource
from mtaserver.webhooks.http import PooledClient, policy_from_files, read_extra_headers

log = Logger()


def batcher_for(
    acct: AcctFileSettings,
    reactor: Any,
    run_in_thread: RunInThread,
    targets: TargetSource = TargetPolicy,
) -> tuple[WebhookBatcher, PooledClient]:
    """The batcher (and its client) for one `<acct-file>` that has `http-webhook-url`."""
    if not acct.http_webhook_url:
        raise ValueError(f"<acct-file {acct.path}> has no http-webhook-url")
    try:
        policy = policy_from_files(acct.http_webhook_ca_file, acct.http_webhook_certificate)
        extra = read_extra_headers(acct.http_webhook_extra_headers)
    except (OSError, ValueError) as e:
        raise ValueError(f"<acct-file {acct.path}> webhook: {e}") from e
    client = PooledClient(
        reactor,
        policy,
        connect_timeout=acct.http_webhook_connect_timeout,
        max_per_host=2,
        targets=targets,
    )
    batcher = WebhookBatcher(
        client,
        reactor,
        acct_path=os.path.abspath(acct.path),
        url=acct.http_webhook_url,
        run_in_thread=run_in_thread,
        max_bytes=acct.http_webhook_max_size or DEFAULT_MAX_BYTES,
        max_delay=acct.http_webhook_max_interval,
        gzip_body=acct.http_webhook_transfer_encoding == "gzip",
        hmac_key=acct.http_webhook_hmac_key,
        extra_headers=extra,
        io_timeout=acct.http_webhook_io_timeout,
    )
    return batcher, client


class WebhookService(Service):
    """Starts and stops the accounting webhook batchers (and closes their connections)."""

    name = "webhooks"

    def __init__(
        self, batchers: list[WebhookBatcher], clients: list[PooledClient] | None = None
    ) -> None:
        self.batchers = batchers
        self.clients = clients or []

    @classmethod
    def from_config(
        cls,
        config: Config,
        reactor: Any,
        run_in_thread: RunInThread,
        targets: TargetSource | None = None,
    ) -> WebhookService:
        """The batchers of `config`; `targets` is the running target policy (by default
        `config`'s own: pass `holder_targets(holder)` so reloads apply)."""
        if targets is None:
            policy = config_policy(config)
            targets = lambda: policy  # noqa: E731
        batchers, clients = [], []
        for acct in config.acct_files:
            if acct.http_webhook_url:
                batcher, client = batcher_for(acct, reactor, run_in_thread, targets)
                batchers.append(batcher)
                clients.append(client)
        return cls(batchers, clients)

    def startService(self) -> None:  # noqa: N802 - Twisted's name
        super().startService()
        for batcher in self.batchers:
            batcher.start().addErrback(self._start_failed, batcher)

    @staticmethod
    def _start_failed(failure: Failure, batcher: WebhookBatcher) -> None:
        log.failure("webhook for {path} did not start", failure, path=batcher.acct_path)

    def stopService(self) -> defer.Deferred[Any]:  # noqa: N802 - Twisted's name
        super().stopService()
        d = defer.gatherResults([b.stop() for b in self.batchers], consumeErrors=True)
        d.addBoth(lambda _: defer.gatherResults([c.close() for c in self.clients]))
        return d

    def status(self) -> list[dict[str, Any]]:
        """One entry per batcher: backlog, failures, last error (the monitoring API's view)."""
        return [b.status() for b in self.batchers]
