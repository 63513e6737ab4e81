"""The SparkPost content object: parsed, checked, rendered per recipient, built into MIME.

Pure functions over plain data (no Twisted): `Content.parse` checks a request's
`content` object once; `personal_headers` renders the header fields one recipient
sees (From, To, Subject, Reply-To and `content.headers`) with that recipient's
`substitution_data`; `build_message` renders `text` and `html` and assembles the
message with the `email` package:

* text and html -> multipart/alternative; one of them -> a single part;
* `inline_images` -> multipart/related around the html part, each image with
  `Content-ID: <name>` (so `<img src="cid:name">` finds it);
* `attachments` -> multipart/mixed around all of it.

Substitution is SparkPost's `{{name}}` (also `{{ name }}` and dotted `{{a.b}}` into
nested objects): a missing key renders empty; in html a `{{x}}` value is HTML-escaped
and `{{{x}}}` is not. Anything else between braces (`{{if ...}}`, `{{each ...}}`) is
left as written (so are `{{end}}` and `{{else}}`): SparkPost's template logic is not
supported.

Header injection is refused, never repaired: a CR, LF or other control character
(TAB aside) in any header name or value (before or after substitution), an RFC 2047
encoded word that decodes to CR, LF or NUL (the `email` package of Python 3.11.7
writes those as raw line breaks, CVE-2024-6923; `mtaserver.http.safety` decodes
them itself), or a header name that is not printable ASCII without `:`, raises
`ContentError`, which the API answers with 400. `content.headers` may not set the
MIME fields, nor `Bcc`, `Return-Path`, `Received` or `DKIM-Signature` (`_REFUSED`
says why). The built header block is checked once more (`check_header_block`: one
From, only fields and continuations, the empty line). Every message comes out with
CRLF line endings.
"""

from __future__ import annotations

import base64
import binascii
import html as html_lib
import json
import re
from collections.abc import Iterable, Mapping
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import attrs

from mtaserver.http.safety import UnsafeInput, check_decoded_header_value, check_header_block
from mtaserver.message.addresses import AddressError, parse_mailbox


class ContentError(ValueError):
    """The content cannot be used as given; the text says why (a 400 to the client)."""


_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*"
_VARIABLE = re.compile(r"\{\{\{\s*(" + _NAME + r")\s*\}\}\}|\{\{\s*(" + _NAME + r")\s*\}\}")
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
_FORBIDDEN_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # controls but TAB
# Fields the builder owns: a request may not set them through `content.headers`.
_STRUCTURAL = {"content-type", "content-transfer-encoding", "mime-version"}
# Fields that make no sense from a client, with the reason the 400 gives.
_REFUSED = {
    "bcc": "recipients go in recipients[] (a Bcc field would show them to every receiver)",
    "return-path": "the final MTA sets it from the envelope; use return_path",
    "received": "trace fields are the MTA's own",
    "dkim-signature": "the server builds the body, so no client signature can match; "
    "send a pre-signed message as content.email_rfc822",
}
_FROM_CONTENT = {
    "from": "content.from",
    "subject": "content.subject",
    "reply-to": "content.reply_to",
}
_MIME_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+\-]*")


# -- substitution -------------------------------------------------------------


_KEYWORDS = {"end", "else"}  # SparkPost template logic, left as written


def variables(template: str) -> set[str]:
    """The names a template refers to (`{{a.b}}` -> `a.b`)."""
    names = {m.group(1) or m.group(2) for m in _VARIABLE.finditer(template)}
    return names - _KEYWORDS


def lookup(data: Mapping[str, Any], name: str) -> Any:
    """`data[a][b]` for `a.b`; None when any step is missing."""
    value: Any = data
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def as_text(value: Any) -> str:
    """A substitution value as it appears in a message."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def render(template: str, data: Mapping[str, Any], escape_html: bool = False) -> str:
    """`template` with every `{{name}}` replaced from `data` (missing -> empty)."""

    def replace(match: re.Match[str]) -> str:
        raw = match.group(1) is not None
        name = match.group(1) or match.group(2)
        if name in _KEYWORDS:
            return match.group(0)
        text = as_text(lookup(data, name))
        return html_lib.escape(text) if escape_html and not raw else text

    return _VARIABLE.sub(replace, template)


# -- header checks ---------------------------------------------------------------


def check_header_name(name: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise ContentError(
            f"header name {name!r} is not allowed (printable ASCII, no spaces or ':')"
        )


def check_header_value(field: str, value: str, header_name: str = "X-Check") -> None:
    """Refuse controls (TAB aside) in `value`, also inside its RFC 2047 encoded words."""
    if _FORBIDDEN_IN_HEADER.search(value):
        raise ContentError(
            f"{field} contains CR, LF or another control character (header injection refused)"
        )
    try:
        check_decoded_header_value(field, value, header_name)
    except UnsafeInput as exc:
        raise ContentError(str(exc)) from None


# -- the content object ------------------------------------------------------------


@attrs.frozen
class Part:
    """An attachment or inline image, decoded."""

    name: str
    maintype: str
    subtype: str
    data: bytes


@attrs.frozen
class Content:
    """A checked SparkPost content object (everything but substitution done)."""

    from_email: str
    from_name: str | None = None
    subject: str = ""
    text: str | None = None
    html: str | None = None
    reply_to: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Part, ...] = ()
    inline_images: tuple[Part, ...] = ()

    @classmethod
    def parse(cls, content: Mapping[str, Any], smtputf8: bool = False) -> Content:
        """Check `content`; raise ContentError with the first problem found."""
        for unsupported in ("template_id", "amp_html"):
            if content.get(unsupported):
                raise ContentError(f"content.{unsupported} is not supported")
        from_email, from_name = _parse_from(content.get("from"), smtputf8)
        subject = _optional_string(content, "subject") or ""
        text = _optional_string(content, "text")
        html = _optional_string(content, "html")
        if text is None and html is None:
            raise ContentError("content needs text, html or email_rfc822")
        reply_to = _optional_string(content, "reply_to")
        for field, value in (("content.subject", subject), ("content.reply_to", reply_to)):
            if value is not None:
                check_header_value(field, value)
        headers = _parse_headers(content.get("headers"), subject, reply_to)
        inline_images = _parse_parts(content.get("inline_images"), "content.inline_images")
        if inline_images and html is None:
            raise ContentError("content.inline_images need content.html")
        return cls(
            from_email=from_email,
            from_name=from_name,
            subject=subject,
            text=text,
            html=html,
            reply_to=reply_to,
            headers=headers,
            attachments=_parse_parts(content.get("attachments"), "content.attachments"),
            inline_images=inline_images,
        )

    def header_templates(self) -> list[str]:
        templates = [self.subject, self.from_name or "", self.reply_to or ""]
        return templates + [value for _, value in self.headers]

    def header_variables(self) -> set[str]:
        return set().union(*(variables(t) for t in self.header_templates()))

    def body_variables(self) -> set[str]:
        return variables(self.text or "") | variables(self.html or "")

    @property
    def sets_to(self) -> bool:
        """`content.headers` has its own To (then every recipient sees that one)."""
        return any(name.lower() == "to" for name, _ in self.headers)


def _optional_string(content: Mapping[str, Any], key: str) -> str | None:
    value = content.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContentError(f"content.{key} must be a string")
    return value


def _parse_from(value: Any, smtputf8: bool) -> tuple[str, str | None]:
    email: Any
    name: Any
    if isinstance(value, str):
        email, name = value, None
        if "<" in value:
            check_header_value("content.from", value)
            name, email = parseaddr(value)
            name = name or None
    elif isinstance(value, Mapping):
        email, name = value.get("email"), value.get("name")
        if not isinstance(email, str) or not (name is None or isinstance(name, str)):
            raise ContentError("content.from needs an email (and optionally a name) string")
    else:
        raise ContentError("content.from is required: an address or {email, name}")
    check_header_value("content.from", email)
    if name is not None:
        check_header_value("content.from.name", name)
    check_address(email, "content.from", smtputf8)
    return email, name


def check_address(address: str, field: str, smtputf8: bool) -> str:
    """A mailbox `local@domain` or ContentError; non-ASCII only with smtputf8."""
    if not address.isascii() and not smtputf8:
        raise ContentError(f"{field} is not ASCII: set options.smtputf8")
    try:
        mailbox = parse_mailbox(address)
    except AddressError:
        raise ContentError(f"{field} is not a valid address: {address!r}") from None
    if mailbox.routed:
        raise ContentError(f"{field} may not be a routed address: {address!r}")
    return mailbox.address


def _parse_headers(
    value: Any, subject: str | None, reply_to: str | None
) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ContentError("content.headers must be an object of name: value")
    headers = []
    for name, field_value in value.items():
        check_header_name(name)
        if not isinstance(field_value, str):
            raise ContentError(f"content.headers.{name} must be a string")
        check_header_value(f"content.headers.{name}", field_value, name)
        lower = name.lower()
        if lower in _STRUCTURAL:
            raise ContentError(f"content.headers may not set {name}: the MIME builder does")
        if lower in _REFUSED:
            raise ContentError(f"content.headers may not set {name}: {_REFUSED[lower]}")
        set_by_content = {"from": True, "subject": bool(subject), "reply-to": bool(reply_to)}
        if set_by_content.get(lower):
            raise ContentError(f"content.headers.{name} conflicts with {_FROM_CONTENT[lower]}")
        headers.append((name, field_value))
    return tuple(headers)


def _parse_parts(value: Any, field: str) -> tuple[Part, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ContentError(f"{field} must be a list")
    parts = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise ContentError(f"{where} must be an object {{name, type, data}}")
        name, mime_type, data = item.get("name"), item.get("type"), item.get("data")
        if not (isinstance(name, str) and name and isinstance(data, str)):
            raise ContentError(f"{where} needs name and data (base64) strings")
        check_header_value(f"{where}.name", name)
        if not isinstance(mime_type, str) or not _MIME_TYPE.fullmatch(mime_type):
            raise ContentError(f"{where}.type must be a MIME type such as image/png")
        try:
            decoded = base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ContentError(f"{where}.data is not valid base64") from None
        maintype, _, subtype = mime_type.lower().partition("/")
        parts.append(Part(name, maintype, subtype, decoded))
    return tuple(parts)


# -- per recipient -------------------------------------------------------------------


def format_address(email: str, name: str | None) -> str:
    """`"Name" <email>` (quoted as needed) or the bare address."""
    if not name:
        return email
    local, _, domain = email.rpartition("@")
    return str(Address(display_name=name, username=local, domain=domain))


def personal_headers(
    content: Content, data: Mapping[str, Any], to: str | None
) -> tuple[tuple[str, str], ...]:
    """The header fields one recipient sees, rendered and checked; `to` None: none added."""
    from_name = render(content.from_name, data) if content.from_name else None
    if from_name is not None:
        check_header_value("content.from.name (after substitution)", from_name, "From")
    fields = [("From", format_address(content.from_email, from_name))]
    if to is not None and not content.sets_to:
        check_header_value("header_to", to, "To")
        fields.append(("To", to))
    subject = render(content.subject, data)
    check_header_value("content.subject (after substitution)", subject, "Subject")
    fields.append(("Subject", subject))
    if content.reply_to is not None:
        reply_to = render(content.reply_to, data)
        check_header_value("content.reply_to (after substitution)", reply_to, "Reply-To")
        fields.append(("Reply-To", reply_to))
    for name, template in content.headers:
        value = render(template, data)
        check_header_value(f"content.headers.{name} (after substitution)", value, name)
        fields.append((name, value))
    for name, value in fields:  # what the email package will be given, as it reads it
        check_header_value(f"the {name} field", value, name)
    return tuple(fields)


def build_message(
    content: Content,
    headers: Iterable[tuple[str, str]],
    data: Mapping[str, Any],
    smtputf8: bool = False,
) -> bytes:
    """The whole message for `headers` (from `personal_headers`), bodies rendered, CRLF."""
    policy = email_policy.SMTPUTF8 if smtputf8 else email_policy.SMTP
    message = EmailMessage(policy=policy)
    try:
        for name, value in headers:
            message[name] = value
    except (ValueError, TypeError, IndexError) as exc:
        raise ContentError(f"header {name} cannot be used: {exc}") from None
    text = render(content.text, data) if content.text is not None else None
    html = render(content.html, data, escape_html=True) if content.html is not None else None
    html_part: EmailMessage | None = None
    if text is not None and html is not None:
        message.set_content(text)
        message.add_alternative(html, subtype="html")
        payload = message.get_payload()
        assert isinstance(payload, list) and isinstance(payload[1], EmailMessage)
        html_part = payload[1]
    elif html is not None:
        message.set_content(html, subtype="html")
        html_part = message
    else:
        message.set_content(text or "")
    for image in content.inline_images:
        assert html_part is not None  # Content.parse requires html with images
        html_part.add_related(
            image.data,
            image.maintype,
            image.subtype,
            cid=f"<{image.name}>",
            disposition="inline",
            filename=image.name,
        )
    for attachment in content.attachments:
        message.add_attachment(
            attachment.data, attachment.maintype, attachment.subtype, filename=attachment.name
        )
    try:
        built = message.as_bytes(policy=policy)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ContentError(f"the message cannot be built: {exc}") from None
    # Bare LF here would be a line break the email package wrote from a value: refuse
    # before to_crlf could turn it into a header or body line of its own.
    try:
        check_header_block(built)
    except UnsafeInput as exc:
        raise ContentError(str(exc)) from None
    return to_crlf(built)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def to_crlf(data: bytes) -> bytes:
    """Every line ending (CRLF, bare CR, bare LF) as CRLF, and a final CRLF.

    Two `bytes.replace` when there is no bare CR (the usual case): a regular
    expression substitution per line ending cost several times as much."""
    lf_only = data.replace(b"\r\n", b"\n")
    bare_cr = b"\r" in lf_only
    data = _LINE_END.sub(b"\r\n", data) if bare_cr else lf_only.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data
