"""The header fields intake adds to a message, the same for SMTP and the API.

A `<source>` (a client's, or `{transmissions-api}`) says which fields this server
adds: `Received` first (`add-received-header`), `Message-ID` and `Date` at the end of
the header block when the message has none (`add-message-id-header`,
`add-date-header`). It also says which `X-Virtual-MTA` / `X-Job` fields are taken
out for the envelope, and the acct files name the headers captured for records.
`header_rules` turns all of that into one `HeaderRules` for `MessageBuilder`.

`Received` follows RFC 5321 4.4 with the RFC 3848 / 6531 `with` keyword: SMTP names
the client's EHLO and its address; the API has no EHLO and says `HTTP` or `HTTPS`.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Callable

import attrs

from mtaserver.config.model import Config, SourceSettings

_UNSAFE = re.compile(r"[^\x21-\x7e]")


def printable(text: str, limit: int = 255) -> str:
    """Client-supplied text made safe for a header or a reply: visible ASCII only."""
    return _UNSAFE.sub("?", text)[:limit]


@attrs.frozen
class Trace:
    """Where a message came from, as its `Received` field tells it."""

    client_ip: str
    protocol: str  # the `with` keyword: ESMTP, ESMTPSA, UTF8SMTPS, HTTP, HTTPS ...
    helo: str | None = None  # None: the protocol has no greeting (the API)
    recipients: tuple[str, ...] = ()  # one recipient is named in `for <...>`


@attrs.frozen
class HeaderRules:
    """What to do with the header block of one message."""

    received: bytes = b""  # a complete Received field, CRLF-terminated lines
    message_id: bytes | None = None  # the field to add when the message has none
    date: bytes | None = None
    process_x_virtual_mta: bool = False
    process_x_job: bool = False
    capture: tuple[str, ...] = ()  # header names for acct records
    job_header: bytes = b"x-job"  # `jobid-header`, lower case
    retain_x_job: bool = False
    retain_x_virtual_mta: bool = False
    process_x_envid: bool = False
    process_x_dkim_options: bool = False  # X-DKIM-Options: per-message signing options
    retain_x_dkim_options: bool = False  # ... left in the message (else removed)
    remove_received_headers: bool = False
    remove: frozenset[bytes] = frozenset()  # `remove-header` names, lower case
    #: Fields the source's `<pattern-list>` header lines match (lower case): captured whole.
    routing: frozenset[bytes] = frozenset()
    #: `<rewrite-list>` from-domain lines: the From header's domains, rewritten.
    from_domain: Callable[[str], str] | None = None


def rfc5322_date(now: float) -> str:
    """`now` (seconds since the epoch) as a `Date` value, in UTC."""
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))


def received_field(
    trace: Trace, msg_id: str, host_name: str, date: str, hide_source: bool = False
) -> str:
    """`Received:` per RFC 5321 4.4, CRLF-terminated lines; `hide_source` names no client."""
    ip = trace.client_ip
    literal = f"IPv6:{ip}" if ":" in ip else ip
    origin = f"[{literal}]" if trace.helo is None else f"{printable(trace.helo)} ([{literal}])"
    lines = [
        f"Received: from {origin}",
        f"\tby {host_name} (mtaserver) with {trace.protocol} id {msg_id}",
    ]
    if hide_source:  # `hide-message-source`: the client's name and address stay private
        lines = [f"Received: by {host_name} (mtaserver) with {trace.protocol} id {msg_id}"]
    if len(trace.recipients) == 1:
        lines.append(f"\tfor <{trace.recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return "\r\n".join(lines) + "\r\n"


def header_rules(
    settings: SourceSettings, config: Config, msg_id: str, now: float, trace: Trace
) -> HeaderRules:
    """The header rules of a `<source>` (SMTP or `{transmissions-api}`) for one message.

    The headers named by any acct file's `map-header-to-field` are captured for records.
    """
    host_name = config.settings.host_name
    date = rfc5322_date(now)
    capture = tuple(
        sorted({m.header for acct in config.acct_files for m in acct.map_header_to_field})
    )
    received = b""
    if settings.add_received_header:
        received = received_field(
            trace, msg_id, host_name, date, settings.hide_message_source
        ).encode("utf-8")
    return HeaderRules(
        received=received,
        message_id=(
            f"Message-ID: <{msg_id}@{host_name}>\r\n".encode()
            if settings.add_message_id_header
            else None
        ),
        date=f"Date: {date}\r\n".encode() if settings.add_date_header else None,
        process_x_virtual_mta=settings.process_x_virtual_mta,
        process_x_job=settings.process_x_job,
        capture=capture,
        job_header=settings.jobid_header.lower().encode("ascii", "replace"),
        retain_x_job=settings.retain_x_job,
        retain_x_virtual_mta=settings.retain_x_virtual_mta,
        process_x_envid=settings.process_x_envid,
        process_x_dkim_options=settings.process_x_dkim_options,
        retain_x_dkim_options=settings.retain_x_dkim_options,
        remove_received_headers=settings.remove_received_headers,
        remove=frozenset(
            name.lower().encode("ascii", "replace")
            for names in settings.remove_header
            for name in names
        ),
        routing=frozenset(name.encode("ascii", "replace") for name in routing.header_names)
        if (routing := config.routing_patterns.get(settings.pattern_list or ""))
        else frozenset(),
        from_domain=rewrites.rewrite_from_domain
        if (rewrites := config.rewrite_lists.get(settings.rewrite_list or ""))
        and rewrites.from_domain
        else None,
    )
