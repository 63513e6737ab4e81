"""The Transmissions API: `POST /api/v1/transmissions`, PowerMTA's and SparkPost's.

This module is the Klein resource: method, `Authorization` against every `api-key`
(constant time), `Content-Type`, the body read under `max-request-size`, the
`Idempotency-Key` (`mtaserver.http.idempotency`: a retry answers with the first 200
and spools nothing; 422 for the key with another body, 409 while the first request
runs), and the request log. A request then goes through three steps and changes
nothing unless the first two pass, so a refused request leaves no message behind:

1. *check* (`parse`): the JSON and everything in it; bodies over 256 KB are parsed
   and scanned in the thread pool, and so is an `email_rfc822` over 256 KB
   (`check_rfc822`: 998-octet lines, one From, the source's `max-message-hops`,
   `max-header-count`, `max-header-size`, `max-mime-depth`);
2. *plan* (`plan`): which recipients share a message, every header rendered and
   checked, and the virtual MTA each message selects (400 for an unknown one);
3. *spool* (`spool`): built, processed like SMTP's messages, committed and queued
   through `mtaserver.message.intake`.

The answer, 200 with SparkPost's `results`, goes out only once every message is
durable. Errors are `{"errors":[{"message","description"}]}`: 400 bad request, 403
wrong or missing key (also when no `api-key` is configured), 404, 405, 413 body over
`max-request-size` or message over `max-message-size`, 415 not JSON, 503 with
`Retry-After` when the spool is full, 500 for other spool errors.

A recipient on the suppression list (scopes `global`, `domain:<sender's domain>` and
`source:<name>` for each of `{transmissions-api}`'s `suppression-lists`) is not
spooled: it goes to `rcpt_to_errors` (code 1902, SparkPost's "Message generation
rejected") and counts in `total_rejected_recipients`; a transmission whose every
recipient is suppressed is a 400. The SparkPost `suppression-list` API itself is
`mtaserver.http.suppression`, mounted here under `/api/v1/suppression-list`.

`campaign_id` is the job id (else an `X-Job` header, when processed); `description`,
`metadata` and `tags` are checked and not stored; the transmission id is the first
message's spool id. `options` are `options.py`'s (`start_time`, `ip_pool`: a 422 for
a pool the config does not have, `transactional`, `skip_suppression`...). A
`content.template_id` names a stored template (`mtaserver.http.templates`, mounted
here under `/api/v1/templates`): its published version, or its draft with
`use_draft_template`; a 422 when there is no such template or version.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from klein import Klein
from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mtaserver.config.model import SourceSettings
from mtaserver.config.reload import ConfigHolder
from mtaserver.http.access import api_key_error
from mtaserver.http.errors import APIError, handle_errors, json_response, read_body
from mtaserver.http.guard import transmissions_guard
from mtaserver.http.idempotency import (
    IdempotencyStore,
    KeyError422,
    body_digest,
    record_name,
    valid_key,
)
from mtaserver.http.listen import HttpListeners
from mtaserver.http.suppression import SuppressionAPI
from mtaserver.http.templates import TemplatesAPI, TemplateStore
from mtaserver.http.templates.model import version_of
from mtaserver.http.transmissions.parse import (
    TemplateVersion,
    Transmission,
    bad_request,
    check_rfc822_content,
    parse_json,
    parse_transmission,
    template_reference,
)
from mtaserver.http.transmissions.plan import (
    IN_THREAD_ABOVE,
    PlannedMessage,
    Rfc822Preview,
    plan_messages,
    preview_rfc822,
)
from mtaserver.http.transmissions.spool import TransmissionSpooler, client_ip, spool_api_error
from mtaserver.maillog import MailLog
from mtaserver.message.intake import (
    Intake,
    OnAccepted,
    ReceptionStats,
    UnknownVirtualMTA,
    resolve_vmta,
)
from mtaserver.runtime import RunInThread, default_run_in_thread
from mtaserver.spool import MessageStore
from mtaserver.spool.errors import SpoolError
from mtaserver.suppression.model import SuppressionType
from mtaserver.suppression.service import REFUSED_TEXT, SuppressionService, scopes_for
from mtaserver.suppression.store import SuppressionStoreError

log = Logger()

SOURCE_NAME = "{transmissions-api}"


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
        suppression: SuppressionService | None = None,
        maillog: MailLog | None = None,
    ) -> None:
        self.holder = holder
        self.maillog = maillog if maillog is not None else MailLog.service_log()
        self.suppression = suppression
        self.store = store
        self.on_accepted = on_accepted
        self.clock = clock
        self.run_in_thread: RunInThread = run_in_thread or default_run_in_thread(clock)
        self.idempotency = IdempotencyStore(
            os.path.join(store.directory, "idempotency"), self.run_in_thread, clock.seconds
        )
        # Shared with SMTP reception, so the monitoring API's traffic in counts both.
        self.stats = stats if stats is not None else ReceptionStats()
        self.intake = Intake(holder, on_accepted, self.stats)
        self.spooler = TransmissionSpooler(holder, store, self.intake, clock, self.run_in_thread)
        self.transmissions_accepted = 0
        self.suppression_api = (
            SuppressionAPI(holder, suppression) if suppression is not None else None
        )
        self.templates = TemplateStore(
            os.path.join(store.directory, "templates"), self.run_in_thread
        )
        self.templates_api = TemplatesAPI(holder, self.templates, clock)

    @app.route("/api/v1/templates", branch=True, strict_slashes=False)
    def templates_resource(self, request: IRequest) -> Any:
        """SparkPost's templates API (`mtaserver.http.templates`)."""
        return self.templates_api.app.resource()

    @app.route("/api/v1/suppression-list", branch=True, strict_slashes=False)
    def suppression_list(self, request: IRequest) -> Any:
        """The SparkPost suppression-list API (`mtaserver.http.suppression`)."""
        if self.suppression_api is None:
            return self.not_found(request)
        return self.suppression_api.app.resource()

    @app.route("/api/v1/transmissions", strict_slashes=False)
    @handle_errors
    async def transmissions(self, request: IRequest) -> bytes:
        trace = self.maillog.api(self.holder.config.api)
        trace.tls(request)
        trace.body(_loggable(request) if trace.data else b"")
        try:
            result = await self._transmissions(request)
        except APIError as exc:
            trace.request(request, client_ip(request), exc.code, exc.description or exc.message)
            raise
        trace.request(request, client_ip(request), 200, result["results"]["id"])
        return json_response(request, result)

    @app.route("/", branch=True)
    @handle_errors
    def not_found(self, request: IRequest) -> bytes:
        path = request.path.decode("utf-8", "replace")[:200]
        self.maillog.api(self.holder.config.api).request(request, client_ip(request), 404, path)
        raise APIError(404, "Not found", f"no resource at {path}; use /api/v1/transmissions")

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
        if config.settings.deliver_only:
            request.setHeader(b"Retry-After", b"300")
            raise APIError(503, "Not accepting messages", "the spool is deliver-only")
        if len(raw) > IN_THREAD_ABOVE:  # big bodies: scanning them would block
            body = await self.run_in_thread(lambda: parse_json(raw))
        else:
            body = parse_json(raw)
        template = await self._template(body)
        transmission = parse_transmission(body, self.clock.seconds(), template)
        settings = config.named_source(SOURCE_NAME)
        transmission = self._suppress(transmission, settings)
        messages = plan_messages(transmission, settings)
        rfc822 = transmission.rfc822
        if rfc822 is not None:

            def check() -> Rfc822Preview:
                preview = preview_rfc822(rfc822, settings)  # 413 first, then the 400s
                check_rfc822_content(rfc822, settings)
                return preview

            preview = await self.run_in_thread(check) if len(rfc822) > IN_THREAD_ABOVE else check()
            messages = [
                attrs.evolve(m, x_virtual_mta=preview.x_virtual_mta, x_job=preview.x_job)
                for m in messages
            ]
        self._check_pool(transmission)
        for message in messages:
            self._check_target(message, transmission, settings)
        try:
            self.store.check_space()
        except SpoolError as exc:
            raise spool_api_error(request, exc, 0) from None
        result = await self.spooler.spool(request, transmission, messages, settings)
        self.transmissions_accepted += 1
        return result

    async def _template(self, body: Any) -> TemplateVersion | None:
        """The stored template version the body's `content.template_id` names, or 422."""
        reference = template_reference(body)
        if reference is None:
            return None
        template_id, draft = reference
        record = await self.templates.get(template_id)
        version = version_of(record, draft) if record is not None else None
        if version is None:
            shown = template_id[:64].encode("unicode_escape").decode("ascii")
            what = "draft" if draft else "published"
            raise APIError(
                422,
                "Template not found",
                f"content.template_id {shown!r}: no such template with a {what} version",
            )
        return TemplateVersion(template_id, version["content"], version.get("options") or {})

    def _suppress(self, transmission: Transmission, settings: SourceSettings) -> Transmission:
        """The transmission without its suppressed recipients, which join `rejected`.

        `options.skip_suppression` skips the list; with `options.transactional` only
        entries of type `transactional` refuse (SparkPost's rule).
        """
        if self.suppression is None or transmission.options.skip_suppression:
            return transmission
        transactional = transmission.options.transactional is True
        kept = []
        rejected = list(transmission.rejected)
        store = self.suppression.store
        # The scopes depend on the sender alone (usually one per transmission): worked
        # out once, not per recipient (~20 % of a 1,000-recipient request's CPU).
        scopes: dict[str, list[str]] = {}
        for rcpt in transmission.recipients:
            sender = rcpt.return_path
            try:
                checked = scopes.get(sender)
                if checked is None:
                    checked = scopes[sender] = scopes_for(sender, settings.suppression_lists)
                entry = store.lookup(rcpt.address, checked)
            except (SuppressionStoreError, OSError) as exc:  # closed at shutdown, or I/O
                log.error("suppression list unavailable: {error}", error=str(exc))
                raise APIError(
                    503, "Service unavailable", "the suppression list cannot be read"
                ) from None
            if entry is None or (transactional and not entry.type & SuppressionType.TRANSACTIONAL):
                kept.append(rcpt)
                continue
            self.suppression.refused(entry, rcpt.address, rcpt.return_path, "transmissions API")
            rejected.append(
                {
                    "code": "1902",
                    "message": REFUSED_TEXT,
                    "description": f"{rcpt.address}: suppressed ({entry.scope})",
                }
            )
        if not kept:
            raise APIError(
                400,
                "All recipients rejected",
                "; ".join(r["description"] for r in rejected[:10]),
            )
        return attrs.evolve(transmission, recipients=tuple(kept), rejected=tuple(rejected))

    def log_refused(self, head: Any, error: APIError) -> None:
        """A request the guard refused before its body (`log-requests`)."""
        trace = self.maillog.api(self.holder.config.api)
        trace.request(head, head.client_ip, error.code, error.description or error.message)

    def _authorize(self, request: IRequest, keys: tuple[str, ...]) -> None:
        refused = api_key_error(request.getHeader(b"authorization"), keys)
        if refused is not None:
            raise refused

    def _check_pool(self, transmission: Transmission) -> None:
        """422 for an `options.ip_pool` that is not a `<virtual-mta-pool>`."""
        pool = transmission.options.ip_pool
        if pool is not None and pool not in self.holder.config.vmta_pools:
            shown = pool[:64].encode("unicode_escape").decode("ascii")
            raise APIError(
                422, "Unknown ip_pool", f"options.ip_pool {shown!r} is not a <virtual-mta-pool>"
            )

    def _check_target(
        self, message: PlannedMessage, transmission: Transmission, settings: SourceSettings
    ) -> None:
        """400 for a message whose virtual MTA is neither a vmta nor a pool."""
        name = message.vmta_name(transmission, settings)
        try:
            resolve_vmta(self.holder.config, name)
        except UnknownVirtualMTA:
            raise bad_request(f"unknown virtual MTA or pool {name!r} (X-Virtual-MTA)") from None


def _loggable(request: IRequest, limit: int = 64 * 1024 + 1) -> bytes:
    """The body's first `limit` bytes for `log-data` (the body is read again after)."""
    content = request.content
    content.seek(0)
    data: bytes = content.read(limit)
    content.seek(0)
    return data


def make_transmissions_services(
    holder: ConfigHolder,
    store: MessageStore,
    on_accepted: OnAccepted,
    reactor: Any,
    stats: ReceptionStats | None = None,
    run_in_thread: RunInThread | None = None,
    suppression: SuppressionService | None = None,
    maillog: MailLog | None = None,
) -> list[IService]:
    """The `<transmissions-api-listener>`s, sharing one API object, following reloads.

    Raises `InsecureListenerError` for a plain-HTTP listener off loopback.
    """
    api = TransmissionsAPI(
        holder, store, on_accepted, reactor, stats, run_in_thread, suppression, maillog
    )
    resource = api.app.resource()
    # deadlines, rate, key and size before the body; refusals go to the mail log too
    guard = transmissions_guard(holder, reactor, api.log_refused)
    return [
        HttpListeners(
            holder,
            lambda config: config.api_listeners,
            resource,
            reactor,
            "transmissions-api-listener",
            guard,
            api.run_in_thread,
            json_api=True,
        )
    ]
