"""Stored templates as SparkPost keeps them: one id, a draft and a published version.

Pure functions over plain JSON data (no Twisted, no files): a create or update body
checked and turned into the stored record, and the record shown the way SparkPost's
`GET /api/v1/templates[/{id}]` shows it. A record is

    {"id", "name", "description", "shared_with_subaccounts",
     "draft": VERSION | null, "published": VERSION | null}

with VERSION `{"content", "options", "last_update_time"}`. `content` is a SparkPost
content object (`from`, `subject`, `html`, `text`, `reply_to`, `headers`,
`attachments`, `inline_images`, or `email_rfc822`) stored as given and checked with
the transmission's own checks (`Content.parse`), so a template that is stored can be
sent. What this server cannot do is a 422 naming the field, never a silent ignore:
`content.amp_html`, `options.open_tracking` / `options.click_tracking` set to true
(no engagement tracking here), and `shared_with_subaccounts: true` (no subaccounts).
`null` is the same as a missing field (the `sparkpost` client sends every key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from mtaserver.http.content import Content, ContentError, check_header_value
from mtaserver.http.errors import APIError

#: SparkPost's: letters, digits, `-` and `_`, at most 64 bytes (also a safe file name).
TEMPLATE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_NAME = 1024
MAX_DESCRIPTION = 1024

_TOP_FIELDS = {
    "id",
    "name",
    "description",
    "published",
    "options",
    "content",
    "shared_with_subaccounts",
}
_CONTENT_FIELDS = {
    "from",
    "subject",
    "html",
    "text",
    "reply_to",
    "headers",
    "attachments",
    "inline_images",
    "email_rfc822",
    "amp_html",
}
_OPTION_FIELDS = {"open_tracking", "click_tracking", "transactional"}


def bad_request(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


def unsupported(field: str, why: str) -> APIError:
    """422: a SparkPost field this server cannot honour, named."""
    return APIError(422, "Unsupported field", f"{field} is not supported: {why}")


def format_time(seconds: float) -> str:
    """SparkPost's timestamps: `2016-05-02T16:29:56+00:00`."""
    return datetime.fromtimestamp(int(seconds), UTC).isoformat(timespec="seconds")


def valid_id(template_id: str) -> bool:
    return TEMPLATE_ID.fullmatch(template_id) is not None


def id_from_name(name: str) -> str:
    """SparkPost's generated id: the name lower-cased, other characters as `-`."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:64]
    return slug or "template"


def _present(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that carry a value (`null` is absent)."""
    return {key: value for key, value in body.items() if value is not None}


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{field} must be a string")
    if len(value) > limit:
        raise bad_request(f"{field} is longer than {limit} characters")
    try:
        check_header_value(field, value)
    except ContentError as exc:
        raise bad_request(str(exc)) from None
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{field} must be true or false")
    return value


def check_unknown(body: Mapping[str, Any], known: set[str], where: str) -> None:
    """422 for a field SparkPost's API does not have (or this server does not know)."""
    for key in body:
        if key not in known:
            shown = key[:64].encode("unicode_escape").decode("ascii")
            raise APIError(422, "Unknown field", f"{where}{shown} is not a known field")


def check_content(value: Any, field: str = "content") -> dict[str, Any]:
    """A template's content object, checked like a transmission's; returned without nulls."""
    if not isinstance(value, Mapping):
        raise bad_request(f"{field} must be an object")
    check_unknown(value, _CONTENT_FIELDS, f"{field}.")
    content = _present(value)
    if content.get("amp_html"):
        raise unsupported(f"{field}.amp_html", "AMP parts are not built by this server")
    content.pop("amp_html", None)
    if "email_rfc822" in content:
        others = sorted(set(content) - {"email_rfc822"})
        if others:
            raise bad_request(f"{field}.email_rfc822 cannot be combined with {field}.{others[0]}")
        if not isinstance(content["email_rfc822"], str) or not content["email_rfc822"].strip():
            raise bad_request(f"{field}.email_rfc822 must be a non-empty string")
        return content
    if not isinstance(content.get("subject"), str) or not content["subject"]:
        raise bad_request(f"{field}.subject is required")
    try:
        Content.parse(content, smtputf8=True)
    except ContentError as exc:
        raise bad_request(str(exc).replace("content.", f"{field}.", 1)) from None
    return content


def check_options(value: Any, field: str = "options") -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise bad_request(f"{field} must be an object")
    check_unknown(value, _OPTION_FIELDS, f"{field}.")
    options = _present(value)
    for name in ("open_tracking", "click_tracking"):
        if name in options and _bool(options[name], f"{field}.{name}"):
            raise unsupported(f"{field}.{name}", "this server does no engagement tracking")
    if "transactional" in options:
        _bool(options["transactional"], f"{field}.transactional")
    return options


def _common(body: Mapping[str, Any], record: dict[str, Any]) -> None:
    """name, description and shared_with_subaccounts of a create or update body."""
    if "name" in body:
        record["name"] = _text(body["name"], "name", MAX_NAME)
    if "description" in body:
        record["description"] = _text(body["description"], "description", MAX_DESCRIPTION)
    if "shared_with_subaccounts" in body and _bool(
        body["shared_with_subaccounts"], "shared_with_subaccounts"
    ):
        raise unsupported("shared_with_subaccounts", "this server has no subaccounts")


def new_record(raw: Any, now: float) -> dict[str, Any]:
    """The stored record for a `POST /api/v1/templates` body, or APIError."""
    if not isinstance(raw, Mapping):
        raise bad_request("the body must be a JSON object")
    check_unknown(raw, _TOP_FIELDS, "")
    body = _present(raw)
    record: dict[str, Any] = {
        "name": "",
        "description": "",
        "shared_with_subaccounts": False,
        "draft": None,
        "published": None,
    }
    _common(body, record)
    template_id = body.get("id")
    if template_id is not None:
        if not isinstance(template_id, str) or not valid_id(template_id):
            raise bad_request("id must be 1-64 letters, digits, '-' or '_'")
    elif record["name"]:
        template_id = id_from_name(record["name"])
    else:
        raise bad_request("id or name is required")
    record["id"] = template_id
    record["name"] = record["name"] or template_id
    if "content" not in body:
        raise bad_request("content is required")
    version = {
        "content": check_content(body["content"]),
        "options": check_options(body.get("options", {})),
        "last_update_time": format_time(now),
    }
    published = _bool(body.get("published", False), "published")
    record["published" if published else "draft"] = version
    return record


def updated_record(
    record: Mapping[str, Any], raw: Any, update_published: bool, now: float
) -> dict[str, Any]:
    """`record` after a `PUT /api/v1/templates/{id}` body, or APIError.

    SparkPost's rules: by default the draft is changed (a new draft is made from the
    published version when there is none); `published: true` then publishes it (the
    draft is gone); `?update_published=true` changes the published version in place.
    The content fields given replace those of that version, the others stay (the
    `sparkpost` client sends every field, null when not set).
    """
    if not isinstance(raw, Mapping):
        raise bad_request("the body must be a JSON object")
    check_unknown(raw, _TOP_FIELDS - {"id"}, "")
    body = _present(raw)
    new = dict(record)
    _common(body, new)
    publish = _bool(body.get("published", False), "published")
    if update_published:
        base = record.get("published")
        if base is None:
            raise APIError(
                422, "No published version", "update_published needs a published version"
            )
    else:
        base = record.get("draft") or record.get("published")
    assert base is not None  # a stored record has a draft or a published version
    version = dict(base)
    if "content" in body:
        if not isinstance(body["content"], Mapping):
            raise bad_request("content must be an object")
        check_unknown(body["content"], _CONTENT_FIELDS, "content.")
        merged = dict(version["content"])
        merged.update(_present(body["content"]))
        version["content"] = check_content(merged)
    if "options" in body:
        version["options"] = check_options(body["options"])
    changed = "content" in body or "options" in body or publish
    if changed:
        version["last_update_time"] = format_time(now)
    if update_published or publish:
        new["published"] = version
        if publish and not update_published:
            new["draft"] = None
    elif changed:
        new["draft"] = version
    return new


def version_of(record: Mapping[str, Any], draft: bool | None) -> dict[str, Any] | None:
    """The draft (`True`), published (`False`) or latest (`None`) version, if any."""
    if draft is True:
        return record.get("draft")
    if draft is False:
        return record.get("published")
    return record.get("draft") or record.get("published")


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """One template as `GET /api/v1/templates` lists it."""
    latest = version_of(record, None) or {}
    return {
        "id": record["id"],
        "name": record["name"],
        "description": record["description"],
        "published": record.get("published") is not None,
        "has_draft": record.get("draft") is not None,
        "has_published": record.get("published") is not None,
        "last_update_time": latest.get("last_update_time"),
        "shared_with_subaccounts": False,
    }


def detail(record: Mapping[str, Any], draft: bool | None) -> dict[str, Any] | None:
    """One template as `GET /api/v1/templates/{id}` shows it; None: no such version."""
    version = version_of(record, draft)
    if version is None:
        return None
    shown = summary(record)
    shown.update(
        published=version is record.get("published"),
        options=version["options"],
        content=version["content"],
        last_update_time=version["last_update_time"],
    )
    return shown
