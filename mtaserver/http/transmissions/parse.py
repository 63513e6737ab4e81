"""Step 1 of a transmission: the request body checked and parsed, nothing written yet.

`parse_json` refuses what `json.loads` should never see or return (brackets nested
deeper than 64, NUL, lone surrogates); `parse_transmission` checks everything a
SparkPost-style body holds: recipients and their addresses, return paths,
`campaign_id`, the `options` (`options.py`), and the content (`email_rfc822`, a
SparkPost content object through `mtaserver.http.content`, or a stored template's,
`content.template_id`, which the API has read). An invalid recipient address is
rejected alone (`rcpt_to_errors`); when every recipient is, the request is a 400.

No field is ignored: a field SparkPost does not have is a 422 naming it, and so is
one this server cannot honour (`recipients.list_id`, `content.amp_html`, tracking
options...). `description`, `metadata` and `tags` are checked (their types) and
not stored: SparkPost shows them only in its own events. Everything here is pure
and raises `APIError` (400 malformed, 422 unsupported) naming the field.
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
from mtaserver.http.templates.model import check_unknown, unsupported
from mtaserver.http.transmissions.options import Options, parse_options
from mtaserver.message.limits import ContentLimits

MAX_JOB_ID = 256
MAX_DESCRIPTION = 1024

_TOP_FIELDS = {
    "options",
    "recipients",
    "campaign_id",
    "description",
    "metadata",
    "substitution_data",
    "return_path",
    "content",
}
_TEMPLATE_REFERENCE = {"template_id", "use_draft_template"}
_RECIPIENT_FIELDS = {"address", "return_path", "tags", "metadata", "substitution_data"}
_ADDRESS_FIELDS = {"email", "name", "header_to"}
_CONTENT_FIELDS = {
    "from",
    "subject",
    "text",
    "html",
    "amp_html",
    "reply_to",
    "headers",
    "attachments",
    "inline_images",
    "email_rfc822",
    "template_id",
    "use_draft_template",
}


def bad_request(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


def parse_json(raw: bytes) -> Any:
    """The decoded body, or 400: too deep (checked before parsing), invalid, NUL, surrogates."""
    try:
        check_json_depth(raw)
        body = json.loads(raw)
        check_json_strings(body, raw=raw)
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
    options: Options = Options()

    @property
    def utf8_content(self) -> bool:
        """Does the content itself need SMTPUTF8 (a non-ASCII From or Reply-To address,
        or 8-bit header fields in `email_rfc822`)? Only with `options.smtputf8`."""
        if not self.smtputf8:
            return False
        if self.content is not None:
            addresses = (self.content.from_email, self.content.reply_to or "")
            return not all(a.isascii() for a in addresses)
        assert self.rfc822 is not None
        head = self.rfc822.split(b"\r\n\r\n", 1)[0]
        return not head.isascii()

    def needs_smtputf8(self, sender: str, recipients: tuple[ApiRecipient, ...]) -> bool:
        """SMTPUTF8 for one message: asked for, and an address or the content needs it.

        `options.smtputf8` only allows non-ASCII: an all-ASCII message is sent without
        it, so a receiver that does not offer SMTPUTF8 still takes it.
        """
        if not self.smtputf8:
            return False
        if not sender.isascii() or not all(r.address.isascii() for r in recipients):
            return True
        return self.utf8_content


def _object(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise bad_request(f"{field} must be an object")
    return value


def template_reference(body: Any) -> tuple[str, bool] | None:
    """(`content.template_id`, `content.use_draft_template`) of a body, if it names one."""
    content = body.get("content") if isinstance(body, Mapping) else None
    if not isinstance(content, Mapping) or content.get("template_id") is None:
        return None
    template_id = content["template_id"]
    if not isinstance(template_id, str) or not template_id:
        raise bad_request("content.template_id must be a non-empty string")
    draft = content.get("use_draft_template")
    if draft is not None and not isinstance(draft, bool):
        raise bad_request("content.use_draft_template must be true or false")
    inline = sorted(
        k for k, v in content.items() if v is not None and k not in _TEMPLATE_REFERENCE
    )
    if inline:
        raise bad_request(f"content.template_id cannot be combined with content.{inline[0]}")
    return template_id, bool(draft)


@attrs.frozen
class TemplateVersion:
    """The stored template version a transmission uses (read by the API beforehand)."""

    template_id: str
    content: Mapping[str, Any]
    options: Mapping[str, Any]


def parse_transmission(
    body: Any, now: float = 0.0, template: TemplateVersion | None = None
) -> Transmission:
    """A checked transmission from the decoded JSON body, or APIError (400 or 422).

    `now` is the time `options.start_time` is compared with; `template` is the
    version `content.template_id` names (the API reads it first; None when the body
    names none).
    """
    if not isinstance(body, Mapping):
        raise bad_request("the body must be a JSON object")
    check_unknown(body, _TOP_FIELDS, "")
    options = parse_options(body.get("options"), now)
    smtputf8 = options.smtputf8
    perform_substitutions = options.perform_substitutions
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_DESCRIPTION
    ):
        raise bad_request(f"description must be a string of at most {MAX_DESCRIPTION} chars")
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
    check_unknown(content_obj, _CONTENT_FIELDS, "content.")
    if content_obj.get("amp_html"):
        raise unsupported("content.amp_html", "AMP parts are not built by this server")
    given = {k for k, v in content_obj.items() if v is not None and k != "amp_html"}
    if template is not None:
        template_reference(body)  # nothing inline beside it
        content_obj = template.content
        if options.transactional is None:
            template_transactional = template.options.get("transactional")
            options = attrs.evolve(options, transactional=template_transactional is True)
    elif "template_id" in given:
        raise bad_request("content.template_id: the template was not read")  # API bug guard
    elif "use_draft_template" in given:
        raise bad_request("content.use_draft_template needs content.template_id")
    content: Content | None = None
    rfc822: bytes | None = None
    raw = content_obj.get("email_rfc822")
    if raw is not None:
        others = sorted(k for k, v in content_obj.items() if v is not None and k != "email_rfc822")
        if others:
            raise bad_request(f"content.email_rfc822 cannot be combined with content.{others[0]}")
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
        raise unsupported("recipients.list_id", "this server keeps no stored recipient lists")
    if not isinstance(recipients_in, list) or not recipients_in:
        raise bad_request("recipients must be a non-empty list")
    accepted: list[ApiRecipient] = []
    rejected: list[dict[str, str]] = []
    # Recipients without fields of their own share one copy of the message's data.
    shared_data: Mapping[str, Any] = dict(message_data)
    rcpt: Mapping[str, Any]
    for index, item in enumerate(recipients_in):
        where = f"recipients[{index}]"
        if type(item) is dict and len(item) == 1 and type(item.get("address")) is str:
            # The bulk shape {"address": "..."}: nothing but the address to check.
            email_address, name, header_to, rcpt = item["address"], None, None, item
            own_fields = False
        else:
            email_address, name, header_to, rcpt = _recipient_fields(item, where)
            own_fields = bool(rcpt)
        rp = (
            _return_path(rcpt.get("return_path"), f"{where}.return_path", smtputf8)
            if own_fields
            else None
        )
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
        data = shared_data
        if own_fields:
            own_data = _object(rcpt.get("substitution_data"), f"{where}.substitution_data")
            if own_data:
                data = {**message_data, **own_data}
            _object(rcpt.get("metadata"), f"{where}.metadata")
            tags = rcpt.get("tags")
            if tags is not None and (
                not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)
            ):
                raise bad_request(f"{where}.tags must be a list of strings")
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
        options=options,
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
    check_unknown(item, _RECIPIENT_FIELDS, f"{where}.")
    address = item.get("address")
    name = header_to = None
    if isinstance(address, Mapping):
        check_unknown(address, _ADDRESS_FIELDS, f"{where}.address.")
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
