"""The SparkPost content builder: substitution, header checks, and MIME parsed back with `email`."""

from __future__ import annotations

import base64
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.http.content import (
    Content,
    ContentError,
    build_message,
    personal_headers,
    render,
    to_crlf,
    variables,
)

PNG = b"\x89PNG\r\n\x1a\nfake-image"
PDF = b"%PDF-1.4 \x00\x01\x02 binary"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def built(
    content: dict[str, Any], data: dict[str, Any] | None = None, to: str = "rcpt@dest.example"
) -> EmailMessage:
    parsed = Content.parse(content)
    headers = personal_headers(parsed, data or {}, to)
    raw = build_message(parsed, headers, data or {})
    assert b"\n" not in raw.replace(b"\r\n", b""), "every line ends in CRLF"
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.parametrize(
    ("template", "data", "expected"),
    [
        ("Hi {{name}}", {"name": "Ann"}, "Hi Ann"),
        ("Hi {{ name }}!", {"name": "Ann"}, "Hi Ann!"),
        ("[{{missing}}]", {}, "[]"),
        ("{{a.b.c}}", {"a": {"b": {"c": 3}}}, "3"),
        ("{{a.x}}", {"a": {"b": 1}}, ""),
        ("{{a.b}}", {"a": "not a dict"}, ""),
        ("{{flag}} {{none}}", {"flag": True, "none": None}, "true "),
        ("{{if x}}kept{{end}}", {"x": 1}, "{{if x}}kept{{end}}"),
        ("{{ first-name }}", {"first-name": "Bo"}, "Bo"),
    ],
)
def test_render_table(template: str, data: dict[str, Any], expected: str) -> None:
    """{{name}}, spaces, dotted keys, missing keys, non-strings and unsupported logic."""
    assert render(template, data) == expected


def test_render_escapes_html_unless_triple_braces() -> None:
    """In html, {{x}} is escaped and {{{x}}} is inserted raw."""
    data = {"x": "<b>&</b>"}
    assert render("{{x}}|{{{x}}}", data, escape_html=True) == "&lt;b&gt;&amp;&lt;/b&gt;|<b>&</b>"
    assert render("{{x}}", data) == "<b>&</b>"


def test_variables_lists_names() -> None:
    """variables() finds plain, spaced, triple-brace and dotted names."""
    assert variables("{{a}} {{ b.c }} {{{d}}} {{if e}}") == {"a", "b.c", "d"}


@given(st.text())
def test_render_without_braces_is_identity(text: str) -> None:
    """Text with no {{ }} comes out unchanged."""
    if "{{" not in text:
        assert render(text, {"a": "b"}) == text


@given(st.binary())
def test_to_crlf_leaves_no_bare_line_ends(data: bytes) -> None:
    """After to_crlf every CR and LF is part of a CRLF, and the data ends in CRLF."""
    out = to_crlf(data)
    assert b"\r" not in out.replace(b"\r\n", b"")
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert not out or out.endswith(b"\r\n")


def test_text_only_is_a_single_part() -> None:
    """Only text: one text/plain part, with From, To, Subject."""
    message = built({"from": "s@a.example", "subject": "S", "text": "body"})
    assert message.get_content_type() == "text/plain"
    assert not message.is_multipart()
    assert message["From"] == "s@a.example"
    assert message["To"] == "rcpt@dest.example"
    assert message["Subject"] == "S"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content().rstrip() == "body"


def test_text_and_html_are_alternative() -> None:
    """Text and html: multipart/alternative with plain first."""
    message = built({"from": "s@a.example", "text": "t", "html": "<p>h</p>"})
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_attachments_make_mixed_and_decode() -> None:
    """Attachments: multipart/mixed; each decodes to the bytes sent, with its filename."""
    message = built(
        {
            "from": {"email": "s@a.example", "name": "Shop"},
            "text": "t",
            "html": "<p>h</p>",
            "attachments": [
                {"name": "doc.pdf", "type": "application/pdf", "data": b64(PDF)},
                {"name": "notes.txt", "type": "text/plain", "data": b64(b"plain notes")},
            ],
        }
    )
    assert message.get_content_type() == "multipart/mixed"
    assert message["From"] == "Shop <s@a.example>"
    body, *attachments = list(message.iter_parts())
    assert body.get_content_type() == "multipart/alternative"
    got = {
        a.get_filename(): (a.get_content_type(), a.get_payload(decode=True)) for a in attachments
    }
    assert got == {"doc.pdf": ("application/pdf", PDF), "notes.txt": ("text/plain", b"plain notes")}
    assert all(a.get_content_disposition() == "attachment" for a in attachments)


def test_inline_images_are_related_with_content_id() -> None:
    """Inline images: the html part becomes multipart/related with Content-ID <name>."""
    message = built(
        {
            "from": "s@a.example",
            "text": "t",
            "html": '<img src="cid:logo">',
            "inline_images": [{"name": "logo", "type": "image/png", "data": b64(PNG)}],
        }
    )
    assert message.get_content_type() == "multipart/alternative"
    plain, related = list(message.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    html, image = list(related.iter_parts())
    assert html.get_content_type() == "text/html"
    assert image["Content-ID"] == "<logo>"
    assert image.get_content_disposition() == "inline"
    assert image.get_payload(decode=True) == PNG


def test_all_parts_nest_mixed_alternative_related() -> None:
    """html only, an inline image and an attachment: mixed[related[html, image], attachment]."""
    message = built(
        {
            "from": "s@a.example",
            "html": '<img src="cid:i1">',
            "inline_images": [{"name": "i1", "type": "image/gif", "data": b64(b"GIF89a")}],
            "attachments": [
                {"name": "a.bin", "type": "application/octet-stream", "data": b64(b"\x00\xff")}
            ],
        }
    )
    assert message.get_content_type() == "multipart/mixed"
    related, attachment = list(message.iter_parts())
    assert related.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in related.iter_parts()] == ["text/html", "image/gif"]
    assert attachment.get_payload(decode=True) == b"\x00\xff"


def test_non_ascii_subject_and_name_are_encoded_words() -> None:
    """Non-ASCII header text is RFC 2047 encoded and reads back the same."""
    message = built(
        {"from": {"email": "s@a.example", "name": "Zoë"}, "subject": "Grüße", "text": "ä"}
    )
    assert message["Subject"] == "Grüße"
    assert message["From"].addresses[0].display_name == "Zoë"
    assert message.get_content().rstrip() == "ä"


def test_custom_headers_and_reply_to_are_rendered() -> None:
    """content.headers and reply_to come through with substitution."""
    message = built(
        {
            "from": "s@a.example",
            "text": "t",
            "reply_to": "{{who}}@a.example",
            "headers": {"X-Campaign": "c-{{who}}", "CC": "cc@dest.example"},
        },
        {"who": "desk"},
    )
    assert message["Reply-To"] == "desk@a.example"
    assert message["X-Campaign"] == "c-desk"
    assert message["CC"] == "cc@dest.example"


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ({"from": "s@a.example", "text": "t", "subject": "a\r\nBcc: e@x"}, "CR, LF"),
        ({"from": "s@a.example", "text": "t", "headers": {"A:B": "v"}}, "header name"),
        ({"from": "s@a.example", "text": "t", "headers": {"A B": "v"}}, "header name"),
        ({"from": "s@a.example", "text": "t", "headers": {"": "v"}}, "header name"),
        ({"from": "s@a.example", "text": "t", "headers": {"X": "a\x00b"}}, "control"),
        ({"from": "s@a.example", "text": "t", "headers": {"X": 5}}, "string"),
        ({"from": "s@a.example", "text": "t", "headers": {"MIME-Version": "2"}}, "MIME builder"),
        (
            {"from": "s@a.example", "text": "t", "subject": "s", "headers": {"Subject": "x"}},
            "conflicts",
        ),
        ({"from": "s@a.example", "text": "t", "headers": {"From": "x@y.example"}}, "conflicts"),
        ({"from": "not-an-address", "text": "t"}, "not a valid address"),
        ({"from": {"name": "x"}, "text": "t"}, "email"),
        ({"from": "s@a.example"}, "text, html"),
        ({"from": "s@a.example", "text": 5}, "string"),
        (
            {
                "from": "s@a.example",
                "text": "t",
                "attachments": [{"name": "a", "type": "bad", "data": "aGk="}],
            },
            "MIME type",
        ),
        ({"from": "s@a.example", "text": "t", "attachments": {"name": "a"}}, "list"),
        (
            {
                "from": "s@a.example",
                "text": "t",
                "attachments": [{"name": "a\r\nX: y", "type": "text/plain", "data": "aGk="}],
            },
            "CR, LF",
        ),
        ({"from": "s@a.example", "text": "t", "amp_html": "<p>"}, "amp_html"),
    ],
)
def test_bad_content_is_refused(content: dict[str, Any], text: str) -> None:
    """Each bad content object raises ContentError naming the problem."""
    with pytest.raises(ContentError, match=text.replace("(", r"\(")):
        Content.parse(content)


def test_substituted_crlf_in_a_header_is_refused() -> None:
    """A substitution value that would add a header line is refused, not folded in."""
    parsed = Content.parse({"from": {"email": "s@a.example", "name": "{{n}}"}, "text": "t"})
    with pytest.raises(ContentError, match="from.name"):
        personal_headers(parsed, {"n": "x\nBcc: e@evil.example"}, "r@d.example")
    parsed = Content.parse({"from": "s@a.example", "text": "t", "headers": {"X-A": "{{v}}"}})
    with pytest.raises(ContentError, match="X-A"):
        personal_headers(parsed, {"v": "1\r\nBcc: e@evil.example"}, "r@d.example")


def test_crlf_in_a_body_substitution_is_just_text() -> None:
    """CR/LF from substitution in the body is content, normalised to CRLF, not an error."""
    message = built({"from": "s@a.example", "text": "A{{v}}B"}, {"v": "\r\nBcc: x\n"})
    assert message["Bcc"] is None
    assert "Bcc: x" in message.get_content()


def test_headers_to_replaces_the_recipient_to() -> None:
    """A To in content.headers is the To every recipient sees."""
    parsed = Content.parse(
        {"from": "s@a.example", "text": "t", "headers": {"To": "list@d.example"}}
    )
    headers = personal_headers(parsed, {}, "someone@d.example")
    assert [v for n, v in headers if n.lower() == "to"] == ["list@d.example"]
