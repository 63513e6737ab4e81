"""The accounting webhooks as a service: one `WebhookBatcher` per `<acct-file>` with a URL.

`batcher_for` turns an `<acct-file>`'s `http-webhook-*` directives into a batcher with
its own HTTP client (its TLS settings are its own); `WebhookService` starts and stops
them with the server and exposes `status()` for the monitoring API. Building reads the
CA, certificate and extra-header files (`webhook_files`): at start-up in `makeService`,
where a bad file is a `ValueError` naming it and the server does not start; at a
reload in the loading thread (`check_webhook_files`), where a bad file refuses the
reload.

The service follows reloads: a webhook added to an `<acct-file>` starts, one removed
stops, and one whose `http-webhook-*` settings changed is stopped and started again
with them. Its staged batches and its acct-file position are on disk, so the new
batcher sends what the old one had not.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import attrs
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.model import AcctFileSettings, Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.targets import TargetPolicy
from mtaserver.runtime import RunInThread
from mtaserver.webhooks.batcher import DEFAULT_MAX_BYTES, WebhookBatcher
from mtaserver.webhooks.guard import TargetSource
from mtaserver.webhooks.http import (
    PooledClient,
    VerifyingPolicy,
    policy_from_files,
    read_extra_headers,
)

log = Logger()


WebhookFiles = tuple[VerifyingPolicy, list[tuple[str, str]]]


def webhook_files(acct: AcctFileSettings) -> WebhookFiles:
    """The TLS policy and extra headers an `<acct-file>`'s webhook reads from files.

    Blocking: at start-up, or in a thread. A missing or bad file is a ValueError.
    """
    try:
        policy = policy_from_files(acct.http_webhook_ca_file, acct.http_webhook_certificate)
        extra = read_extra_headers(acct.http_webhook_extra_headers)
    except (OSError, ValueError, crypto.Error, SSL.Error) as e:  # OpenSSL: a bad PEM
        raise ValueError(f"<acct-file {acct.path}> webhook: {e}") from e
    return policy, extra


def check_webhook_files(config: Config) -> list[ConfigProblem]:
    """Every webhook's files load (a reload check: runs in the loading thread)."""
    problems = []
    for acct in config.acct_files:
        if acct.http_webhook_url:
            try:
                webhook_files(acct)
            except ValueError as exc:
                problems.append(ConfigProblem(config.path, 0, str(exc)))
    return problems


def webhook_settings(acct: AcctFileSettings) -> tuple[Any, ...]:
    """Every `http-webhook-*` value of `acct`: a batcher is rebuilt when one changes."""
    return tuple(
        getattr(acct, field.name)
        for field in attrs.fields(AcctFileSettings)
        if field.name.startswith("http_webhook_")
    )


def batcher_for(
    acct: AcctFileSettings,
    reactor: Any,
    run_in_thread: RunInThread,
    targets: TargetSource = TargetPolicy,
    files: WebhookFiles | None = None,
) -> tuple[WebhookBatcher, PooledClient]:
    """The batcher (and its client) for one `<acct-file>` that has `http-webhook-url`.

    `files` is `webhook_files(acct)` when the caller has read them already (in a thread).
    """
    if not acct.http_webhook_url:
        raise ValueError(f"<acct-file {acct.path}> has no http-webhook-url")
    policy, extra = files if files is not None else webhook_files(acct)
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
        log_verbose=acct.http_webhook_log_verbose,
    )
    return batcher, client


@attrs.frozen
class _Webhook:
    """One running webhook: the settings it was built from, its batcher and client."""

    acct: AcctFileSettings
    batcher: WebhookBatcher
    client: PooledClient


class WebhookService(Service):
    """Starts and stops the accounting webhook batchers (and closes their connections)."""

    name = "webhooks"

    def __init__(
        self,
        holder: ConfigHolder,
        reactor: Any,
        run_in_thread: RunInThread,
        targets: TargetSource,
        shared_clients: tuple[PooledClient, ...] = (),
    ) -> None:
        """The webhooks of `holder.config`, kept in step with reloads.

        `targets` is the running target policy (`holder_targets(holder)`);
        `shared_clients` are other clients (http-delivery's) closed at stop with these.
        """
        self.reactor = reactor
        self.run_in_thread = run_in_thread
        self.targets = targets
        self.shared_clients = list(shared_clients)
        self._webhooks: dict[str, _Webhook] = {}
        for acct in holder.config.acct_files:
            if acct.http_webhook_url:
                self._add(acct, webhook_files(acct))
        self._changing: defer.Deferred[Any] = defer.succeed(None)
        holder.check_before_reload(check_webhook_files)
        holder.on_reload(self.reloaded)

    @property
    def batchers(self) -> list[WebhookBatcher]:
        return [webhook.batcher for webhook in self._webhooks.values()]

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: start, stop or rebuild webhooks to match the new config."""
        self.apply(new.acct_files)

    def apply(self, accts: tuple[AcctFileSettings, ...]) -> defer.Deferred[Any]:
        """Queue one change after another: never two batchers for one acct file."""
        self._changing = self._changing.addBoth(
            lambda _: defer.Deferred.fromCoroutine(self._apply(accts))
        )
        return self._changing

    async def _apply(self, accts: tuple[AcctFileSettings, ...]) -> None:
        wanted = {os.path.abspath(a.path): a for a in accts if a.http_webhook_url}
        for path, webhook in list(self._webhooks.items()):
            new = wanted.get(path)
            if new is not None and webhook_settings(new) == webhook_settings(webhook.acct):
                del wanted[path]
                continue
            del self._webhooks[path]
            log.info("webhook for {path}: stopping (config reloaded)", path=path)
            try:
                if self.running:
                    await webhook.batcher.stop()
                await webhook.client.close()
            except Exception:
                log.failure("webhook for {path} did not stop cleanly", path=path)
        for acct in wanted.values():
            try:
                files = await self.run_in_thread(partial(webhook_files, acct))
            except ValueError as exc:
                log.error("webhook not started: {error}", error=str(exc))
                continue
            batcher = self._add(acct, files)
            log.info("webhook for {path}: started (config reloaded)", path=batcher.acct_path)
            if self.running:
                batcher.start().addErrback(self._start_failed, batcher)

    def _add(self, acct: AcctFileSettings, files: WebhookFiles) -> WebhookBatcher:
        batcher, client = batcher_for(acct, self.reactor, self.run_in_thread, self.targets, files)
        self._webhooks[batcher.acct_path] = _Webhook(acct, batcher, client)
        return batcher

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
        clients = [w.client for w in self._webhooks.values()] + self.shared_clients
        d.addBoth(lambda _: defer.gatherResults([c.close() for c in clients]))
        return d

    def status(self) -> list[dict[str, Any]]:
        """One entry per batcher: backlog, failures, last error (the monitoring API's view)."""
        return [b.status() for b in self.batchers]
