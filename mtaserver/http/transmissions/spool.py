"""Step 3 of a transmission: each planned message built, processed, committed and queued.

Each message goes through the same header processing as SMTP reception
(`mtaserver.message.builder`: `X-Job` / `X-Virtual-MTA` taken out under the
`{transmissions-api}` source's `process-x-job` / `process-x-virtual-mta`,
`Message-ID`, `Date` and `Received` added, `max-message-size`) and the same
`Intake.accept` (virtual MTA, commit, counters, scheduler). A message over
`max-message-size`, or one whose content cannot be built, rejects just its
recipients.

Building and processing a heavy message (attachments, big bodies: `plan.heavy`) runs
in the thread pool on immutable inputs, collecting the stored bytes; the spool
writer is only touched on the reactor thread. Up to `MAX_IN_FLIGHT` commits run at
once. The answer goes out only once every message is durable; if the spool fails
after some were committed, those stay queued (they are durable, a restart would find
them anyway) and the error says how many recipients were accepted: 503 with
`Retry-After` when the spool is full, 500 for other spool errors.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mtaserver.config.model import SourceSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Recipient
from mtaserver.http.content import ContentError
from mtaserver.http.errors import APIError
from mtaserver.http.transmissions.parse import Transmission, bad_request
from mtaserver.http.transmissions.plan import PlannedMessage, heavy
from mtaserver.message.builder import MessageBuilder, feed_message
from mtaserver.message.dsn import default_ret
from mtaserver.message.headers import HeaderRules, Trace, header_rules
from mtaserver.message.intake import Intake, MessageStoreLike
from mtaserver.runtime import RunInThread
from mtaserver.spool.errors import SpoolError, SpoolFullError

log = Logger()

MAX_IN_FLIGHT = 64  # messages being committed at once, per request
RETRY_AFTER_SECONDS = 60


@attrs.frozen
class Stored:
    """One message built and processed like an SMTP one, ready for the spool writer."""

    chunks: tuple[bytes, ...]
    size: int
    eight_bit: bool
    x_job: str | None
    acct_headers: Mapping[str, str]
    too_big: bool


def process(
    message: PlannedMessage, transmission: Transmission, rules: HeaderRules, max_size: int
) -> Stored:
    """Build `message` and run it through the header processing; pure, so thread-safe.

    Raises ContentError when the content cannot be built.
    """
    data = message.build(transmission)
    chunks: list[bytes] = []
    builder = MessageBuilder(chunks.append, rules, max_size)
    feed_message(builder, data)
    too_big = builder.problem is not None
    return Stored(
        tuple(chunks) if not too_big else (),
        builder.size,
        builder.eight_bit,
        builder.x_job,
        builder.acct_headers,
        too_big,
    )


class TransmissionSpooler:
    """Spools the planned messages of one transmission after another."""

    def __init__(
        self,
        holder: ConfigHolder,
        store: MessageStoreLike,
        intake: Intake,
        clock: IReactorTime,
        run_in_thread: RunInThread,
    ) -> None:
        self.holder = holder
        self.store = store
        self.intake = intake
        self.clock = clock
        self.run_in_thread = run_in_thread

    async def spool(
        self,
        request: IRequest,
        transmission: Transmission,
        messages: list[PlannedMessage],
        settings: SourceSettings,
    ) -> dict[str, Any]:
        """SparkPost's `results` once every message is durable, or APIError."""
        rejected = list(transmission.rejected)
        accepted = 0
        first_id: str | None = None
        in_flight: list[Deferred[int]] = []
        too_big = 0
        unbuildable = ""
        client = client_ip(request)
        trace = Trace(client_ip=client, protocol="HTTPS" if request.isSecure() else "HTTP")
        in_thread = heavy(transmission)
        max_size = settings.max_message_size
        try:
            for message in messages:
                writer = self.store.begin()
                rules = header_rules(
                    settings, self.holder.config, writer.msg_id, self.clock.seconds(), trace
                )
                work = functools.partial(process, message, transmission, rules, max_size)
                try:
                    stored = await self.run_in_thread(work) if in_thread else work()
                except ContentError as exc:
                    writer.abort()
                    unbuildable = str(exc)
                    rejected.extend(
                        {"message": "message cannot be built", "description": f"{r.address}: {exc}"}
                        for r in message.recipients
                    )
                    continue
                except BaseException:
                    writer.abort()
                    raise
                if stored.too_big:
                    writer.abort()
                    too_big += 1
                    rejected.extend(
                        {
                            "message": "message too large",
                            "description": f"{rcpt.address}: the message exceeds "
                            f"max-message-size ({max_size} bytes)",
                        }
                        for rcpt in message.recipients
                    )
                    continue
                for chunk in stored.chunks:
                    writer.write(chunk)
                envelope = Envelope(
                    msg_id=writer.msg_id,
                    sender=message.sender,
                    recipients=tuple(Recipient(r.address) for r in message.recipients),
                    time_queued=self.clock.seconds(),
                    src_type="api",
                    src_mta=client,
                    job_id=transmission.job_id or message.x_job or stored.x_job or None,
                    body_type="8BITMIME" if stored.eight_bit else "7BIT",
                    smtputf8=transmission.needs_smtputf8(message.sender, message.recipients),
                    size=stored.size,
                    acct_headers=stored.acct_headers,
                    ret=default_ret(None, settings.dsn_return_default),
                    suppress_local_dsn=settings.suppress_local_dsn,
                    start_time=transmission.options.start_time,
                )
                first_id = first_id or envelope.msg_id
                vmta_name = message.vmta_name(transmission, settings)
                in_flight.append(self._commit(writer, envelope, vmta_name))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    accepted += await _settle(in_flight)
                    in_flight = []
            accepted += await _settle(in_flight)
        except _CommitFailed as failure:
            accepted += failure.accepted
            raise spool_api_error(request, failure.error, accepted) from None
        if not accepted:
            if too_big:
                raise APIError(
                    413,
                    "Message too large",
                    f"every message exceeds max-message-size ({max_size} bytes)",
                )
            raise bad_request(unbuildable or "nothing was spooled")
        results: dict[str, Any] = {
            "total_rejected_recipients": len(rejected),
            "total_accepted_recipients": accepted,
            "id": first_id,
        }
        if rejected:
            results["rcpt_to_errors"] = rejected
        return {"results": results}

    def _commit(self, writer: Any, envelope: Envelope, vmta_name: str | None) -> Deferred[int]:
        """Accept one message; fires with its recipient count once durable and queued."""

        async def commit() -> int:
            queued = await self.intake.accept(writer, envelope, vmta_name)
            return len(queued.recipients)

        return Deferred.fromCoroutine(commit())


class _CommitFailed(Exception):
    def __init__(self, error: Exception, accepted: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.accepted = accepted


async def _settle(commits: list[Deferred[int]]) -> int:
    """Wait for every commit; the recipients now durable, or _CommitFailed."""
    if not commits:
        return 0
    results = await DeferredList(commits, consumeErrors=True)
    accepted = sum(value for ok, value in results if ok)
    failures: list[Any] = [value for ok, value in results if not ok]
    if failures:
        failure: Failure = failures[0]
        error = failure.value
        if not isinstance(error, SpoolError):
            log.failure("committing a transmission failed", failure)
        raise _CommitFailed(error if isinstance(error, Exception) else Exception(error), accepted)
    return accepted


def spool_api_error(request: IRequest, error: Exception, accepted: int) -> APIError:
    """503 (with Retry-After) for a full spool, else 500; says what was already queued."""
    note = f" ({accepted} recipients were already queued)" if accepted else ""
    if isinstance(error, SpoolFullError):
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())
        return APIError(503, "Spool full", f"try again later{note}")
    log.error("spool error in a transmission: {error}", error=str(error))
    return APIError(500, "Spool error", f"the message could not be stored{note}")


def client_ip(request: IRequest) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "") or "")
