"""The Transmissions API: `POST /api/v1/transmissions`, PowerMTA's and SparkPost's.

A request goes through three steps, and changes nothing unless all of the first two
pass (DESIGN.md invariant 4):

1. *check* (`parse_transmission`, pure): method, `Authorization` against every
   `api-key` (constant time), Content-Type, size, JSON, recipients, return paths,
   `campaign_id`, `options.smtputf8`, the content. An invalid recipient address is
   rejected alone (`rcpt_to_errors`); when every recipient is, the request is a 400.
2. *plan* (`plan_messages`): recipients whose message comes out identical share one
   spooled message. `email_rfc822` content makes one message per return path.
   SparkPost content is rendered per recipient (`substitution_data`, message level
   under recipient level, and each recipient's own `To:` unless `content.headers`
   sets one), so recipients share a message only when everything they see is the
   same; all header fields are rendered and checked for injection here, before
   anything is written, and the `X-Virtual-MTA` each message selects is checked.
3. *spool*: each message goes through the same header processing as SMTP reception
   (`MessageBuilder`: `X-Job` / `X-Virtual-MTA` taken out under the
   `{transmissions-api}` source's `process-x-job` / `process-x-virtual-mta`,
   `Message-ID`, `Date` and `Received` added, `max-message-size`), is committed, and
   handed to `on_accepted` (the scheduler). A message over `max-message-size`
   rejects just its recipients.

The answer, 200 with SparkPost's `results`, goes out only once every message is
durable. Errors are `{"errors":[{"message","description"}]}`: 400 bad request, 403
wrong or missing key (also when no `api-key` is configured), 404, 405, 413 body over
`max-request-size` or message over `max-message-size`, 415 not JSON, 503 with
`Retry-After` when the spool is full, 500 for other spool errors. If the spool fails
after some messages of a transmission were committed, those stay queued (they are
durable; a restart would find them anyway) and the error says how many recipients
were accepted.

Before parsing, the body's bracket depth is checked (64), and after it every string
must be free of NUL and lone surrogates; `email_rfc822` must pass `check_rfc822`
(998-octet lines, one From, the source's `max-message-hops`, `max-header-count`,
`max-header-size`, `max-mime-depth`): all 400 naming the field
(`mtaserver.http.safety`). Bodies over 256 KB are checked in the thread pool. An
`Idempotency-Key` header makes a retry answer with the first 200 and spool nothing
(`mtaserver.http.idempotency`; 422 for the key with another body, 409 while the
first request runs).

`campaign_id` is the job id (else an `X-Job` header, when processed); `metadata` and
`tags` are accepted and not stored; the transmission id is the first message's
spool id.
"""

from __future__ import annotations

import datetime
import email.utils
import hmac
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from mtaserver.config.model import SourceSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Recipient
from mtaserver.http.content import (
    Content,
    ContentError,
    build_message,
    check_address,
    check_header_value,
    format_address,
    lookup,
    personal_headers,
    to_crlf,
)
from mtaserver.http.errors import APIError, handle_errors, json_response, read_body
from mtaserver.http.guard import transmissions_guard
from mtaserver.http.idempotency import (
    IdempotencyStore,
    KeyError422,
    RunInThread,
    body_digest,
    record_name,
    valid_key,
)
from mtaserver.http.listen import http_service
from mtaserver.http.safety import (
    Rfc822Limits,
    UnsafeInput,
    check_json_depth,
    check_json_strings,
    check_rfc822,
)
from mtaserver.smtp.reception import ReceptionStats
from mtaserver.smtp.server_message import HeaderRules, MessageBuilder, header_rules
from mtaserver.spool import MessageStore
from mtaserver.spool.errors import SpoolError, SpoolFullError

log = Logger()

SOURCE_NAME = "{transmissions-api}"
MAX_IN_FLIGHT = 64  # messages being committed at once, per request
MAX_JOB_ID = 256
RETRY_AFTER_SECONDS = 60
CHECK_IN_THREAD_ABOVE = 256 * 1024  # bytes of body parsed/scanned in the thread pool
OnAccepted = Callable[[Envelope], None]


def bad_request(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


# -- step 1: check ------------------------------------------------------------------


def parse_json(raw: bytes) -> Any:
    """The decoded body, or 400: too deep (checked before parsing), invalid, NUL, surrogates."""
    try:
        check_json_depth(raw)
        body = json.loads(raw)
        check_json_strings(body)
    except UnsafeInput as exc:
        raise bad_request(str(exc)) from None
    except RecursionError:  # cannot happen after check_json_depth; never a 500 anyway
        raise bad_request("the JSON body is nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not valid JSON: {exc}") from None
    return body


def check_rfc822_content(data: bytes, settings: SourceSettings) -> None:
    """400 for an `email_rfc822` over the source's limits (hops, header, MIME, lines)."""
    limits = Rfc822Limits(
        max_message_hops=settings.max_message_hops,
        max_header_count=settings.max_header_count,
        max_header_size=settings.max_header_size,
        max_mime_depth=settings.max_mime_depth,
    )
    try:
        check_rfc822(data, limits)
    except UnsafeInput as exc:
        raise bad_request(str(exc)) from None


@attrs.frozen
class ApiRecipient:
    """One accepted recipient of a transmission."""

    address: str
    to: str  # the To: this recipient sees (header_to, or its name and address)
    return_path: str
    substitution_data: Mapping[str, Any]


@attrs.frozen
class Transmission:
    recipients: tuple[ApiRecipient, ...]
    rejected: tuple[dict[str, str], ...]  # SparkPost's rcpt_to_errors
    job_id: str | None
    smtputf8: bool
    content: Content | None  # None: rfc822 is set
    rfc822: bytes | None
    perform_substitutions: bool = True


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad_request(f"{field} must be an object")
    return value


def parse_transmission(body: Any) -> Transmission:
    """A checked transmission from the decoded JSON body, or APIError(400)."""
    if not isinstance(body, Mapping):
        raise bad_request("the body must be a JSON object")
    options = _object(body.get("options"), "options")
    smtputf8 = options.get("smtputf8", False)
    if not isinstance(smtputf8, bool):
        raise bad_request("options.smtputf8 must be true or false")
    perform_substitutions = options.get("perform_substitutions", True) is not False
    job_id = body.get("campaign_id")
    if job_id is not None:
        if not isinstance(job_id, str):
            raise bad_request("campaign_id must be a string")
        if len(job_id) > MAX_JOB_ID or not job_id.isprintable():
            raise bad_request(f"campaign_id must be printable and at most {MAX_JOB_ID} chars")
        job_id = job_id or None
    message_data = _object(body.get("substitution_data"), "substitution_data")
    _object(body.get("metadata"), "metadata")
    message_rp = _return_path(body.get("return_path"), "return_path", smtputf8)
    content_obj = body.get("content")
    if not isinstance(content_obj, Mapping):
        raise bad_request("content is required: an object with email_rfc822 or from/text/html")
    content: Content | None = None
    rfc822: bytes | None = None
    raw = content_obj.get("email_rfc822")
    if raw is not None:
        if not isinstance(raw, str) or not raw.strip():
            raise bad_request("content.email_rfc822 must be a non-empty string")
        rfc822 = to_crlf(raw.encode("utf-8"))
    else:
        try:
            content = Content.parse(content_obj, smtputf8)
        except ContentError as exc:
            raise bad_request(str(exc)) from None
    recipients_in = body.get("recipients")
    if isinstance(recipients_in, Mapping):
        raise bad_request("stored recipient lists (recipients.list_id) are not supported")
    if not isinstance(recipients_in, list) or not recipients_in:
        raise bad_request("recipients must be a non-empty list")
    accepted: list[ApiRecipient] = []
    rejected: list[dict[str, str]] = []
    for index, item in enumerate(recipients_in):
        where = f"recipients[{index}]"
        email_address, name, header_to, rcpt = _recipient_fields(item, where)
        rp = _return_path(rcpt.get("return_path"), f"{where}.return_path", smtputf8)
        sender = rp or message_rp
        if sender is None:
            if content is None:
                raise bad_request(f"return_path is required (message level or in {where})")
            sender = content.from_email  # SparkPost's default: the From address
        if not email_address.isascii() and not smtputf8:
            raise bad_request(
                f"{where}: non-ASCII address {email_address!r} needs options.smtputf8"
            )
        try:
            address = check_address(email_address, f"{where}.address", smtputf8)
        except ContentError as exc:
            rejected.append({"message": "invalid recipient address", "description": str(exc)})
            continue
        data = dict(message_data)
        data.update(_object(rcpt.get("substitution_data"), f"{where}.substitution_data"))
        _object(rcpt.get("metadata"), f"{where}.metadata")
        to = header_to if header_to is not None else _display(address, name)
        accepted.append(ApiRecipient(address, to, sender, data))
    if not accepted:
        raise APIError(
            400,
            "All recipients rejected",
            "; ".join(r["description"] for r in rejected[:10]),
        )
    return Transmission(
        recipients=tuple(accepted),
        rejected=tuple(rejected),
        job_id=job_id,
        smtputf8=smtputf8,
        content=content,
        rfc822=rfc822,
        perform_substitutions=perform_substitutions,
    )


def _display(address: str, name: str | None) -> str:
    try:
        return format_address(address, name)
    except (ValueError, IndexError):
        raise bad_request(f"cannot build a To header for {address!r}") from None


def _return_path(value: Any, field: str, smtputf8: bool) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    if not value.isascii() and not smtputf8:
        raise bad_request(f"{field} is not ASCII: set options.smtputf8")
    try:
        return check_address(value, field, smtputf8)
    except ContentError as exc:
        raise bad_request(str(exc)) from None


def _recipient_fields(
    item: Any, where: str
) -> tuple[str, str | None, str | None, Mapping[str, Any]]:
    """(email, name, header_to, the recipient object) of one `recipients[]` entry."""
    if isinstance(item, str):
        return item, None, None, {}
    if not isinstance(item, Mapping):
        raise bad_request(f"{where} must be an object with an address")
    address = item.get("address")
    name = header_to = None
    if isinstance(address, Mapping):
        name, header_to = address.get("name"), address.get("header_to")
        address = address.get("email")
    if not isinstance(address, str):
        raise bad_request(f"{where}.address must be a string or {{email, name, header_to}}")
    for field, value in (("name", name), ("header_to", header_to)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise bad_request(f"{where}.address.{field} must be a string")
        try:
            check_header_value(f"{where}.address.{field}", value)
        except ContentError as exc:
            raise bad_request(str(exc)) from None
    return address, name or None, header_to, item


# -- step 2: plan ----------------------------------------------------------------------


@attrs.frozen
class PlannedMessage:
    """One message to spool: its sender, its recipients and how to build its bytes."""

    sender: str
    recipients: tuple[ApiRecipient, ...]
    headers: tuple[tuple[str, str], ...] = ()  # SparkPost content only
    x_virtual_mta: str | None = None
    x_job: str | None = None

    def build(self, transmission: Transmission) -> bytes:
        if transmission.rfc822 is not None:
            return transmission.rfc822
        assert transmission.content is not None
        data = self.recipients[0].substitution_data if transmission.perform_substitutions else {}
        return build_message(transmission.content, self.headers, data, transmission.smtputf8)


def plan_messages(transmission: Transmission, settings: SourceSettings) -> list[PlannedMessage]:
    """Group recipients into messages; every header field is rendered and checked here."""
    groups: dict[Any, list[ApiRecipient]] = {}
    planned: dict[Any, PlannedMessage] = {}
    content = transmission.content
    body_names = sorted(content.body_variables()) if content is not None else []
    for rcpt in transmission.recipients:
        if content is None:
            key: Any = rcpt.return_path
            headers: tuple[tuple[str, str], ...] = ()
        else:
            data = rcpt.substitution_data if transmission.perform_substitutions else {}
            try:
                headers = personal_headers(content, data, rcpt.to)
            except ContentError as exc:
                raise bad_request(str(exc)) from None
            body_values = json.dumps([lookup(data, n) for n in body_names], sort_keys=True)
            key = (rcpt.return_path, headers, body_values)
        if key not in groups:
            groups[key] = []
            planned[key] = PlannedMessage(
                rcpt.return_path,
                (),
                headers,
                _header(headers, "x-virtual-mta") if settings.process_x_virtual_mta else None,
                _header(headers, "x-job") if settings.process_x_job else None,
            )
        groups[key].append(rcpt)
    return [attrs.evolve(planned[k], recipients=tuple(v)) for k, v in groups.items()]


def _header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    for field, value in headers:
        if field.lower() == name:
            return value.strip() or None
    return None


# -- the Klein app -----------------------------------------------------------------------


class TransmissionsAPI:
    """The HTTP side; one instance serves every `<transmissions-api-listener>`."""

    app = Klein()

    def __init__(
        self,
        holder: ConfigHolder,
        store: MessageStore,
        on_accepted: OnAccepted,
        clock: IReactorTime,
        stats: ReceptionStats | None = None,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.holder = holder
        self.store = store
        self.on_accepted = on_accepted
        self.clock = clock
        if run_in_thread is None:
            from twisted.internet.threads import deferToThreadPool

            pool = clock.getThreadPool()  # type: ignore[attr-defined]

            def run_in_thread(work: Callable[[], Any]) -> Deferred[Any]:
                return deferToThreadPool(clock, pool, work)  # type: ignore[arg-type]

        self.run_in_thread: RunInThread = run_in_thread
        self.idempotency = IdempotencyStore(
            os.path.join(store.directory, "idempotency"), run_in_thread, clock.seconds
        )
        # Shared with SMTP reception, so the monitoring API's traffic in counts both.
        self.stats = stats if stats is not None else ReceptionStats()
        self.transmissions_accepted = 0

    @app.route("/api/v1/transmissions", strict_slashes=False)
    @handle_errors
    async def transmissions(self, request: IRequest) -> bytes:
        if self.holder.config.api.log_data:
            log.info("transmissions API data: {data}", data=_loggable(request))
        try:
            result = await self._transmissions(request)
        except APIError as exc:
            self._log_request(request, exc.code, exc.description or exc.message)
            raise
        self._log_request(request, 200, result["results"]["id"])
        return json_response(request, result)

    @app.route("/", branch=True)
    @handle_errors
    def not_found(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")[:200]
        self._log_request(request, 404, path)
        raise APIError(404, "Not found", f"no resource at {path}; use /api/v1/transmissions")

    def _log_request(self, request: IRequest, code: int, detail: str) -> None:
        if self.holder.config.api.log_requests:
            log.info(
                "transmissions API {method} {path} from {client}: {code} {detail}",
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("utf-8", "replace")[:200],
                client=_client_ip(request),
                code=code,
                detail=detail,
            )

    async def _transmissions(self, request: IRequest) -> dict[str, Any]:
        config = self.holder.config
        if request.method != b"POST":
            request.setHeader(b"Allow", b"POST")
            raise APIError(405, "Method not allowed", "use POST /api/v1/transmissions")
        self._authorize(request, config.api.api_key)
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            raise APIError(415, "Unsupported media type", "send Content-Type: application/json")
        raw = read_body(request, config.api.max_request_size)
        header = request.getHeader(b"idempotency-key")
        if header is None:
            return await self._accept(request, raw)
        key = valid_key(header)
        if key is None:
            raise bad_request("the Idempotency-Key header must be 1-255 printable ASCII characters")
        api_key = (request.getHeader(b"authorization") or b"").strip()
        name = record_name(api_key, key)
        if name in self.idempotency.in_flight:
            raise APIError(
                409, "Conflict", "a request with this Idempotency-Key is still being processed"
            )
        self.idempotency.in_flight.add(name)
        try:
            return await self._idempotent(request, raw, name)
        finally:
            self.idempotency.in_flight.discard(name)

    async def _idempotent(self, request: IRequest, raw: bytes, name: str) -> dict[str, Any]:
        """The recorded answer of an earlier request with this key, or a new, recorded one."""
        digest = body_digest(raw)
        try:
            stored = await self.idempotency.lookup(name, digest)
        except KeyError422:
            raise APIError(
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was used with a different request body",
            ) from None
        if stored is not None:
            request.setHeader(b"Idempotent-Replayed", b"true")
            return stored
        result = await self._accept(request, raw)
        try:
            await self.idempotency.record(name, digest, result)
        except Exception:
            # The messages are queued: a 500 now would invite a duplicate retry.
            log.failure("recording an Idempotency-Key answer failed")
        return result

    async def _accept(self, request: IRequest, raw: bytes) -> dict[str, Any]:
        """Check, plan and spool one transmission body."""
        config = self.holder.config
        if len(raw) > CHECK_IN_THREAD_ABOVE:  # big bodies: scanning them would block
            body = await self.run_in_thread(lambda: parse_json(raw))
        else:
            body = parse_json(raw)
        transmission = parse_transmission(body)
        settings = config.named_source(SOURCE_NAME)
        messages = plan_messages(transmission, settings)
        if transmission.rfc822 is not None:
            messages = self._preview_rfc822(transmission.rfc822, messages, settings)
            rfc822 = transmission.rfc822  # checked after the 413 for size
            if len(rfc822) > CHECK_IN_THREAD_ABOVE:
                await self.run_in_thread(lambda: check_rfc822_content(rfc822, settings))
            else:
                check_rfc822_content(rfc822, settings)
        targets = [self._target(m, settings) for m in messages]
        try:
            self.store.check_space()
        except SpoolError as exc:
            raise _spool_api_error(request, exc, 0) from None
        return await self._spool(request, transmission, messages, targets, settings)

    def _preview_rfc822(
        self, data: bytes, messages: list[PlannedMessage], settings: SourceSettings
    ) -> list[PlannedMessage]:
        """Read the X- headers of the one rfc822 body (and check its size) before spooling."""
        builder = MessageBuilder(
            lambda _: None,
            HeaderRules(
                process_x_virtual_mta=settings.process_x_virtual_mta,
                process_x_job=settings.process_x_job,
            ),
            settings.max_message_size,
        )
        _feed(builder, data)
        if builder.problem is not None:
            raise APIError(
                413,
                "Message too large",
                f"email_rfc822 exceeds max-message-size ({settings.max_message_size} bytes)",
            )
        return [
            attrs.evolve(m, x_virtual_mta=builder.x_virtual_mta, x_job=builder.x_job)
            for m in messages
        ]

    def _authorize(self, request: IRequest, keys: tuple[str, ...]) -> None:
        given = (request.getHeader(b"authorization") or b"").strip()
        matched = False
        for key in keys:  # every key, so the time does not tell which one came close
            matched |= hmac.compare_digest(given, key.encode())
        if not matched:
            raise APIError(403, "Forbidden", "a valid api-key is required in Authorization")

    def _target(
        self, message: PlannedMessage, settings: SourceSettings
    ) -> tuple[str | None, str | None]:
        """(vmta, pool) for a message, or 400 for a name that is neither."""
        name = message.x_virtual_mta or settings.default_virtual_mta
        if not name:
            return None, None
        config = self.holder.config
        if name in config.vmtas:
            return name, None
        if name in config.vmta_pools:
            return None, name
        raise bad_request(f"unknown virtual MTA or pool {name!r} (X-Virtual-MTA)")

    async def _spool(
        self,
        request: IRequest,
        transmission: Transmission,
        messages: list[PlannedMessage],
        targets: list[tuple[str | None, str | None]],
        settings: SourceSettings,
    ) -> dict[str, Any]:
        rejected = list(transmission.rejected)
        accepted = 0
        first_id: str | None = None
        in_flight: list[Deferred[int]] = []
        too_big = 0
        unbuildable = ""
        client = _client_ip(request)
        secure = request.isSecure()
        try:
            for message, (vmta, pool) in zip(messages, targets, strict=True):
                try:
                    data = message.build(transmission)
                except ContentError as exc:
                    unbuildable = str(exc)
                    rejected.extend(
                        {"message": "message cannot be built", "description": f"{r.address}: {exc}"}
                        for r in message.recipients
                    )
                    continue
                writer = self.store.begin()
                builder = MessageBuilder(
                    writer.write,
                    self._header_rules(settings, writer.msg_id, client, secure),
                    settings.max_message_size,
                )
                _feed(builder, data)
                if builder.problem is not None:
                    writer.abort()
                    too_big += 1
                    for rcpt in message.recipients:
                        rejected.append(
                            {
                                "message": "message too large",
                                "description": f"{rcpt.address}: the message exceeds "
                                f"max-message-size ({settings.max_message_size} bytes)",
                            }
                        )
                    continue
                envelope = Envelope(
                    msg_id=writer.msg_id,
                    sender=message.sender,
                    recipients=tuple(Recipient(r.address) for r in message.recipients),
                    time_queued=self.clock.seconds(),
                    src_type="api",
                    src_mta=client,
                    vmta=vmta,
                    vmta_pool=pool,
                    job_id=transmission.job_id or message.x_job or builder.x_job or None,
                    body_type="8BITMIME" if builder.eight_bit else "7BIT",
                    smtputf8=transmission.smtputf8,
                    size=builder.size,
                    acct_headers=builder.acct_headers,
                )
                first_id = first_id or envelope.msg_id
                in_flight.append(self._commit(writer, envelope))
                if len(in_flight) >= MAX_IN_FLIGHT:
                    accepted += await _settle(in_flight)
                    in_flight = []
            accepted += await _settle(in_flight)
        except _CommitFailed as failure:
            accepted += failure.accepted
            raise _spool_api_error(request, failure.error, accepted) from None
        if not accepted:
            if too_big:
                raise APIError(
                    413,
                    "Message too large",
                    f"every message exceeds max-message-size ({settings.max_message_size} bytes)",
                )
            raise bad_request(unbuildable or "nothing was spooled")
        self.transmissions_accepted += 1
        results: dict[str, Any] = {
            "total_rejected_recipients": len(rejected),
            "total_accepted_recipients": accepted,
            "id": first_id,
        }
        if rejected:
            results["rcpt_to_errors"] = rejected
        return {"results": results}

    def _header_rules(
        self, settings: SourceSettings, msg_id: str, client: str, secure: bool
    ) -> HeaderRules:
        host_name = self.holder.config.settings.host_name
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        date = email.utils.format_datetime(now)
        received = b""
        if settings.add_received_header:
            literal = f"IPv6:{client}" if ":" in client else client
            protocol = "HTTPS" if secure else "HTTP"
            received = (
                f"Received: from [{literal}]\r\n\tby {host_name} (mtaserver) with {protocol}"
                f" id {msg_id};\r\n\t{date}\r\n"
            ).encode()
        return header_rules(settings, self.holder.config, msg_id, host_name, date, received)

    def _commit(self, writer: Any, envelope: Envelope) -> Deferred[int]:
        """Commit one message; fires with its recipient count once durable and queued."""

        async def commit() -> int:
            await writer.commit(envelope)
            self.stats.messages_received += 1
            self.stats.recipients_received += len(envelope.recipients)
            self.stats.bytes_received += envelope.size
            try:
                self.on_accepted(envelope)
            except Exception:
                log.failure("on_accepted failed for {msg_id}", msg_id=envelope.msg_id)
            return len(envelope.recipients)

        return Deferred.fromCoroutine(commit())


def _feed(builder: MessageBuilder, data: bytes) -> None:
    """A CRLF message through the SMTP header processing, as lines without CRLF."""
    lines = data.split(b"\r\n")
    builder.add(lines[:-1] if lines and lines[-1] == b"" else lines)
    builder.finish()


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


def _spool_api_error(request: IRequest, error: Exception, accepted: int) -> APIError:
    note = f" ({accepted} recipients were already queued)" if accepted else ""
    if isinstance(error, SpoolFullError):
        request.setHeader(b"Retry-After", str(RETRY_AFTER_SECONDS).encode())
        return APIError(503, "Spool full", f"try again later{note}")
    log.error("spool error in a transmission: {error}", error=str(error))
    return APIError(500, "Spool error", f"the message could not be stored{note}")


def _client_ip(request: IRequest) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", "") or "")


def _loggable(request: IRequest, limit: int = 64 * 1024) -> str:
    content = request.content
    content.seek(0)
    data: bytes = content.read(limit)
    return data.decode("utf-8", "replace")


def make_transmissions_services(
    holder: ConfigHolder,
    store: MessageStore,
    on_accepted: OnAccepted,
    reactor: Any,
    stats: ReceptionStats | None = None,
    run_in_thread: RunInThread | None = None,
) -> list[IService]:
    """One HTTP(S) service per `<transmissions-api-listener>`, sharing one API object.

    Raises `InsecureListenerError` for a plain-HTTP listener off loopback.
    """
    listeners = holder.config.api_listeners
    if not listeners:
        return []
    api = TransmissionsAPI(holder, store, on_accepted, reactor, stats, run_in_thread)
    resource = api.app.resource()
    guard = transmissions_guard(holder, reactor)  # deadlines, rate, key and size before the body
    return [
        http_service(listener, resource, reactor, "transmissions-api-listener", guard)
        for listener in listeners
    ]
