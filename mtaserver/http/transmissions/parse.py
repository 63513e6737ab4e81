"""Step 1 of a transmission: the request body checked and parsed, nothing written yet.

`parse_json` refuses what `json.loads` should never see or return (brackets nested
deeper than 64, NUL, lone surrogates); `parse_transmission` checks everything a
SparkPost-style body holds: recipients and their addresses, return paths,
`campaign_id`, `options.smtputf8` and `options.perform_substitutions`, and the
content (`email_rfc822`, or a SparkPost content object through
`mtaserver.http.content`). An invalid recipient address is rejected alone
(`rcpt_to_errors`); when every recipient is, the request is a 400. Everything here
is pure and raises `APIError` (400) naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from mtaserver.config.model import SourceSettings
from mtaserver.http.content import (
    Content,
    ContentError,
    check_address,
    check_header_value,
    format_address,
    to_crlf,
)
from mtaserver.http.errors import APIError
from mtaserver.http.safety import UnsafeInput, check_json_depth, check_json_strings, check_rfc822
from mtaserver.message.limits import ContentLimits

MAX_JOB_ID = 256


def bad_request(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


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
    try:
        check_rfc822(data, ContentLimits.of(settings))
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
