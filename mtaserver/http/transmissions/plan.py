"""Step 2 of a transmission: which messages to spool, before anything is written.

Recipients whose message comes out identical share one spooled message. SparkPost
content is rendered per recipient (`substitution_data`, message level under
recipient level, and each recipient's own `To:` unless `content.headers` sets one),
so recipients share a message only when everything they see is the same; all header
fields are rendered and checked for injection here. `email_rfc822` content makes one
message per return path, and `preview_rfc822` reads its `X-Virtual-MTA` / `X-Job`
(and checks `max-message-size`) once for all of them. The virtual MTA each message
selects is checked by the API before the first one is spooled.

Building a message's bytes (`PlannedMessage.build`) renders the MIME tree with the
`email` package; `heavy` says when that is worth the thread pool.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from mtaserver.config.model import SourceSettings
from mtaserver.http.content import ContentError, build_message, lookup, personal_headers
from mtaserver.http.errors import APIError
from mtaserver.http.transmissions.parse import ApiRecipient, Transmission, bad_request
from mtaserver.message.builder import MessageBuilder, feed_message
from mtaserver.message.headers import HeaderRules

IN_THREAD_ABOVE = 256 * 1024  # bytes of body parsed, checked or rendered in the thread pool


def heavy(transmission: Transmission) -> bool:
    """Does building (and processing) this transmission's messages belong in a thread?

    Attachments and inline images are base64-encoded by the `email` package, and a
    big body is split into lines and scanned: at up to 20 MiB a request, either
    would hold the reactor thread for tens of milliseconds per message.
    """
    if transmission.rfc822 is not None:
        return len(transmission.rfc822) > IN_THREAD_ABOVE
    content = transmission.content
    if content is None:
        return False
    if content.attachments or content.inline_images:
        return True
    return len(content.text or "") + len(content.html or "") > IN_THREAD_ABOVE


@attrs.frozen
class PlannedMessage:
    """One message to spool: its sender, its recipients and how to build its bytes."""

    sender: str
    recipients: tuple[ApiRecipient, ...]
    headers: tuple[tuple[str, str], ...] = ()  # SparkPost content only
    x_virtual_mta: str | None = None
    x_job: str | None = None

    def vmta_name(self, transmission: Transmission, settings: SourceSettings) -> str | None:
        """`options.ip_pool`, else `X-Virtual-MTA` (when processed), else the default."""
        return transmission.options.ip_pool or self.x_virtual_mta or settings.default_virtual_mta

    def build(self, transmission: Transmission) -> bytes:
        if transmission.rfc822 is not None:
            return transmission.rfc822
        assert transmission.content is not None
        data = self.recipients[0].substitution_data if transmission.perform_substitutions else {}
        utf8 = transmission.needs_smtputf8(self.sender, self.recipients)
        return build_message(transmission.content, self.headers, data, utf8)


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


@attrs.frozen
class Rfc822Preview:
    """What the one `email_rfc822` body says about every message made from it."""

    x_virtual_mta: str | None
    x_job: str | None


def preview_rfc822(data: bytes, settings: SourceSettings) -> Rfc822Preview:
    """Read the X- headers of an `email_rfc822` body (and check its size) before spooling."""
    builder = MessageBuilder(
        lambda _: None,
        HeaderRules(
            process_x_virtual_mta=settings.process_x_virtual_mta,
            process_x_job=settings.process_x_job,
        ),
        settings.max_message_size,
    )
    feed_message(builder, data)
    if builder.problem is not None:
        raise APIError(
            413,
            "Message too large",
            f"email_rfc822 exceeds max-message-size ({settings.max_message_size} bytes)",
        )
    return Rfc822Preview(builder.x_virtual_mta, builder.x_job)
