"""`WebhookBatcher`: ships one acct file to its `http-webhook-url`, batch by batch, in order.

The reactor side of the accounting webhook. Every `poll_interval` seconds it asks its
`BatchStager` (in a thread) to stage what the acct file has gained: full batches of
`max_bytes` at once, and whatever is left once records have waited `max_delay`
(`http-webhook-max-interval`). One sender loop POSTs the staged batches strictly in
order, one at a time; a batch leaves the staging directory only after a 2xx. Any other
answer, a timeout or a connection/TLS error is retried after `retry_delay(attempt)`:
1 s doubling to a 5 min cap, with jitter, for as long as it takes. Nothing is dropped;
a warning per failure and `status()` (read by the monitoring API) show the backlog.

Body: the records in the acct file's format (JSON lines as `application/x-ndjson`,
CSV with its header row as `text/csv`), optionally gzip'd (`Content-Encoding: gzip`),
with `X-Mtaserver-Batch-Id` (the same on every retry, also after a restart) and, given
an HMAC key, `X-Mtaserver-Signature: sha256=<hex HMAC-SHA256 of the body as sent>`.
Extra headers (`http-webhook-extra-headers`) replace defaults of the same name.

The HTTP client, clock, thread runner and random source are injected:
`WebhookBatcher(client, clock, ...)`.
"""

from __future__ import annotations

import collections
import functools
import gzip
import hashlib
import hmac
import random
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from mtaserver.runtime import Clock, RunInThread
from mtaserver.webhooks.http import (
    HttpClient,
    PostResult,
    build_headers,
    describe_error,
    post,
)
from mtaserver.webhooks.staging import BatchContent, BatchStager, StagedBatch

T = TypeVar("T")

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
RETRY_BASE = 1.0
RETRY_CAP = 300.0


def retry_delay(
    attempt: int, rand: float, base: float = RETRY_BASE, cap: float = RETRY_CAP
) -> float:
    """Seconds before retry number `attempt` (1, 2, ...): `base * 2**(attempt-1)`, capped,
    times a jitter factor in [0.75, 1.25) from `rand` in [0, 1), and never above `cap`."""
    raw = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 62))
    return min(cap, raw * (0.75 + 0.5 * rand))


@attrs.frozen
class PreparedBody:
    """A batch ready to POST: the body as sent and its headers' values."""

    batch_id: str
    body: bytes
    lines: int


def prepare_body(
    content: BatchContent, *, gzip_body: bool, hmac_key: bytes | None
) -> tuple[bytes, str | None]:
    """The body as sent (header row + records, maybe gzip'd) and its signature header."""
    body = content.header + content.records
    if gzip_body:
        body = gzip.compress(body, compresslevel=6, mtime=0)
    signature = None
    if hmac_key is not None:
        signature = "sha256=" + hmac.new(hmac_key, body, hashlib.sha256).hexdigest()
    return body, signature


class WebhookBatcher:
    """Stages and sends the batches of one acct file."""

    log = Logger()
    retry_base = RETRY_BASE  # seconds before the first retry (tests make it shorter)
    retry_cap = RETRY_CAP
    stage_ahead = 4  # batches cut per staging step, so sending overlaps a long catch-up

    def __init__(
        self,
        client: HttpClient,
        clock: Clock,
        *,
        acct_path: str,
        url: str,
        run_in_thread: RunInThread,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_delay: float = 300.0,
        gzip_body: bool = False,
        hmac_key: str | None = None,
        extra_headers: Iterable[tuple[str, str]] = (),
        io_timeout: float = 60.0,
        poll_interval: float = 1.0,
        rand: Callable[[], float] = random.random,
        log_verbose: bool = False,
    ) -> None:
        self.client = client
        self.clock = clock
        self.url = url
        self.acct_path = acct_path
        self.stager = BatchStager(acct_path, max_bytes)
        self.max_delay = max_delay
        self.gzip_body = gzip_body
        self.hmac_key = hmac_key.encode("utf-8") if hmac_key is not None else None
        self.extra_headers = list(extra_headers)
        self.io_timeout = io_timeout
        self.log_verbose = log_verbose  # `http-webhook-log-verbose`: a line per POST
        self.poll_interval = min(poll_interval, max_delay)
        self.content_type = "text/csv" if self.stager.csv else "application/x-ndjson"
        self._rand = rand
        self._run_in_thread = run_in_thread
        self._lock = defer.DeferredLock()
        # What monitoring reads.
        self.staged: collections.deque[StagedBatch] = collections.deque()
        self.pending_bytes = 0  # in the acct file, not yet staged
        self.sent_batches = 0
        self.sent_lines = 0
        self.failures = 0  # consecutive failed attempts of the batch at the head
        self.last_error = ""
        self.next_retry_at: float | None = None
        # Loop state.
        self._running = False
        self._sending: defer.Deferred[None] | None = None
        self._poll_call: Any = None
        self._polling = False
        self._more = False
        self._first_pending: float | None = None
        self._wait: defer.Deferred[Any] | None = None
        self._idle_waiters: list[defer.Deferred[None]] = []

    # -- monitoring -----------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Staged batches not yet accepted by the endpoint."""
        return len(self.staged)

    def status(self) -> dict[str, Any]:
        return {
            "acct_file": self.acct_path,
            "url": self.url,
            "backlog_batches": len(self.staged),
            "backlog_bytes": sum(b.size for b in self.staged) + self.pending_bytes,
            "pending_bytes": self.pending_bytes,
            "sent_batches": self.sent_batches,
            "sent_lines": self.sent_lines,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "next_retry_at": self.next_retry_at,
        }

    # -- life cycle -----------------------------------------------------------------

    def start(self) -> defer.Deferred[None]:
        """Recover the staging directory, then poll the acct file and send."""
        self._running = True
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        batches = await self._locked(self.stager.recover)
        self.staged.extend(batches)
        if batches:
            self.log.info("webhook {url}: {n} staged batch(es) to send from {path}",
                          url=self.url, n=len(batches), path=self.acct_path)  # fmt: skip
        self._kick()
        self._schedule_poll(0)

    def stop(self) -> defer.Deferred[None]:
        """Stop polling and sending; a batch in flight stays staged and is sent next time."""
        self._running = False
        if self._poll_call is not None and self._poll_call.active():
            self._poll_call.cancel()
        if self._wait is not None:
            self._wait.cancel()
        sending = self._sending
        d = self._lock.run(defer.succeed, None)
        if sending is not None:
            return defer.gatherResults([d, sending], consumeErrors=True).addCallback(lambda _: None)
        return d.addCallback(lambda _: None)

    def _locked(self, f: Callable[[], T]) -> defer.Deferred[T]:
        return self._lock.run(self._run_in_thread, f)

    # -- staging --------------------------------------------------------------------

    def _schedule_poll(self, delay: float) -> None:
        if self._running:
            self._poll_call = self.clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        d = self.poll()
        d.addBoth(lambda _: self._schedule_poll(0 if self._more else self.poll_interval))

    def poll(self) -> defer.Deferred[None]:
        """Stage what the acct file has gained (never fails: errors are logged)."""
        if self._polling:
            return defer.succeed(None)
        self._polling = True
        d = defer.Deferred.fromCoroutine(self._stage())
        d.addErrback(lambda f: self.log.failure("webhook {url}: staging from {path} failed",
                                                f, url=self.url, path=self.acct_path))  # fmt: skip

        def done(_: object) -> None:
            self._polling = False

        return d.addBoth(done)

    async def _stage(self) -> None:
        now = self.clock.seconds()
        flush = self._first_pending is not None and now - self._first_pending >= self.max_delay
        batches, pending = await self._locked(
            functools.partial(self.stager.stage, flush, self.stage_ahead)
        )
        if pending < 0:  # stopped at `stage_ahead` batches: send them, then come back
            if batches:
                self.staged.extend(batches)
                self._kick()
            self._more = True
            return
        self._more = False
        self.pending_bytes = pending
        if not pending:
            self._first_pending = None
        elif self._first_pending is None or flush:
            self._first_pending = now
        if batches:
            self.staged.extend(batches)
            self._kick()

    # -- sending --------------------------------------------------------------------

    def _kick(self) -> None:
        if self._running and self._sending is None and self.staged:
            sending = defer.Deferred.fromCoroutine(self._send_loop())
            # A loop that finished synchronously (every step already answered) has
            # cleared `_sending` in its `finally` before this line: keep it cleared,
            # or the batcher would believe a send is in flight and never send again.
            if not sending.called:
                self._sending = sending

    def when_idle(self) -> defer.Deferred[None]:
        """Fires when nothing staged is left to send (for tests and benchmarks)."""
        if not self.staged:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle_waiters.append(d)
        return d

    async def _send_loop(self) -> None:
        try:
            while self._running and self.staged:
                batch = self.staged[0]
                try:
                    prepared = await self._prepare(batch)
                    while self._running:
                        if await self._send_once(batch, prepared):
                            break
                        if not self._running:
                            return
                        await self._back_off(batch)
                    if not self._running:
                        return
                    await self._locked(functools.partial(self.stager.remove, batch))
                except defer.CancelledError:
                    return
                except Exception as exc:
                    self.log.failure("webhook {url}: batch {batch_id} could not be handled",
                                     url=self.url, batch_id=batch.batch_id)  # fmt: skip
                    self.last_error = describe_error(exc)
                    try:
                        await self._back_off(batch)
                    except defer.CancelledError:
                        return
                    continue
                self.staged.popleft()
                self.failures = 0
                self.next_retry_at = None
                self.sent_batches += 1
                self.sent_lines += prepared[0].lines
        finally:
            self._sending = None
            if not self.staged:
                waiters, self._idle_waiters = self._idle_waiters, []
                for d in waiters:
                    d.callback(None)

    async def _prepare(self, batch: StagedBatch) -> tuple[PreparedBody, Headers]:
        def work() -> tuple[BatchContent, bytes, str | None]:
            content = self.stager.read(batch)
            body, signature = prepare_body(
                content, gzip_body=self.gzip_body, hmac_key=self.hmac_key
            )
            return content, body, signature

        content, body, signature = await self._run_in_thread(work)
        defaults = [
            ("Content-Type", self.content_type),
            ("User-Agent", "mtaserver"),
            ("X-Mtaserver-Batch-Id", content.batch_id),
        ]
        if self.gzip_body:
            defaults.append(("Content-Encoding", "gzip"))
        if signature is not None:
            defaults.append(("X-Mtaserver-Signature", signature))
        headers = build_headers(defaults, self.extra_headers)
        return PreparedBody(content.batch_id, body, batch.lines), headers

    async def _send_once(self, batch: StagedBatch, prepared: tuple[PreparedBody, Headers]) -> bool:
        started = self.clock.seconds()
        ok = await self._post(batch, prepared)
        if self.log_verbose:
            body = prepared[0]
            self.log.info(
                "webhook {url}: batch {batch_id} ({lines} records, {size} bytes) "
                "{outcome} in {seconds:.3f}s",
                url=self.url, batch_id=body.batch_id, lines=body.lines, size=len(body.body),
                outcome="accepted" if ok else f"not accepted ({self.last_error})",
                seconds=self.clock.seconds() - started,
            )  # fmt: skip
        return ok

    async def _post(self, batch: StagedBatch, prepared: tuple[PreparedBody, Headers]) -> bool:
        body, headers = prepared
        try:
            d = defer.Deferred.fromCoroutine(
                post(self.client, self.clock, self.url, body.body, headers, self.io_timeout)
            )
            self._wait = d
            result: PostResult = await d
        except defer.CancelledError:
            raise
        except Exception as exc:
            self.last_error = describe_error(exc)
            return False
        finally:
            self._wait = None
        if result.ok:
            return True
        self.last_error = f"HTTP {result.code} {result.phrase}".strip()
        return False

    async def _back_off(self, batch: StagedBatch) -> None:
        self.failures += 1
        delay = retry_delay(self.failures, self._rand(), self.retry_base, self.retry_cap)
        self.next_retry_at = self.clock.seconds() + delay
        self.log.warn(
            "webhook {url}: batch {batch_id} not accepted ({error}); retry {attempt} in "
            "{delay:.1f}s; backlog {backlog} batch(es), {backlog_bytes} bytes",
            url=self.url, batch_id=batch.batch_id, error=self.last_error,
            attempt=self.failures, delay=delay, backlog=len(self.staged),
            backlog_bytes=sum(b.size for b in self.staged) + self.pending_bytes,
        )  # fmt: skip
        d = task.deferLater(self.clock, delay, lambda: None)  # type: ignore[arg-type]
        self._wait = d
        try:
            await d
        finally:
            self._wait = None
