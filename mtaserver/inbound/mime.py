"""Reading hostile report messages: MIME parsing that never raises, CR/LF-free field
values, report field blocks and the embedded original message.

Bounces and complaints come from anyone on the Internet, so every step here tolerates
broken MIME: the stdlib parser runs with `email.policy.compat32` (the policy that keeps
going on defects instead of raising when a header is read), values go through
`clean()` (no CR, LF or NUL, whitespace folded, undecodable bytes replaced, length
capped) before they can reach a CSV acct line, and walking the tree is bounded in depth
and in part count.
"""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import quopri
import re
from collections.abc import Iterator
from email.message import Message

MAX_VALUE = 1000
"""Longest value kept from a report field; diagnostics beyond it are cut."""

MAX_DEPTH = 20
MAX_PARTS = 500

_WS = re.compile(r"\s+")
_ADDR = re.compile(r"[^\s<>()\[\]\"',;:]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")


def parse_message(raw: bytes) -> Message | None:
    """`raw` as a `Message` (compat32), or None if the parser itself gives up."""
    try:
        return email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:
        return None


def parse_text(text: str) -> Message | None:
    """A message (or header block) given as text, or None."""
    try:
        return email.parser.Parser(policy=email.policy.compat32).parsestr(text)
    except Exception:
        return None


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(value: object, limit: int = MAX_VALUE) -> str:
    """`value` as one line: whitespace folded, no control character, no surrogates."""
    try:
        text = str(value)
    except Exception:
        return ""
    text = text[: limit * 8].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = _WS.sub(" ", _CONTROLS.sub(" ", text)).strip()
    return text[:limit]


def header(msg: Message | None, name: str) -> str:
    """The first `name` header of `msg`, cleaned; "" when absent."""
    if msg is None:
        return ""
    wanted = name.lower()
    for key, value in _raw_items(msg):
        if key.lower() == wanted:
            return clean(value)
    return ""


def _raw_items(msg: Message) -> list[tuple[str, str]]:
    """The headers as parsed, before the policy turns 8-bit values into `Header` objects
    (whose `str()` loses them to U+FFFD); `clean()` then decodes them as UTF-8."""
    try:
        return [(str(k), str(v)) for k, v in msg.raw_items()]
    except Exception:
        return []


def header_map(msg: Message | None) -> dict[str, str]:
    """Every header of `msg`, keyed by lower-cased name; the first occurrence wins."""
    out: dict[str, str] = {}
    if msg is None:
        return out
    for name, value in _raw_items(msg)[:MAX_PARTS]:
        key = clean(name, 200).lower()
        if key and key not in out:
            out[key] = clean(value)
    return out


def address(value: str) -> str:
    """The mailbox in a field value: `rfc822; <a@b.c>` -> `a@b.c`; "" if none."""
    if ";" in value:
        value = value.split(";", 1)[1]
    value = value.strip()
    if value in ("", "<>"):
        return ""
    m = _ADDR.search(value)
    return m.group(0).rstrip(".") if m else ""


def typed_value(value: str) -> tuple[str, str]:
    """An RFC 3464 typed field (`dns; mx.example.com`) split into (type, value)."""
    kind, sep, rest = value.partition(";")
    if not sep:
        return "", value.strip()
    return kind.strip().lower(), rest.strip()


def parts(msg: Message) -> Iterator[Message]:
    """`msg` and its MIME descendants, not descending into attached messages."""
    count = 0

    def walk(part: Message, depth: int) -> Iterator[Message]:
        nonlocal count
        count += 1
        if count > MAX_PARTS:
            return
        yield part
        if depth >= MAX_DEPTH or not part.is_multipart():
            return
        if part.get_content_maintype() == "message":
            return
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    yield from walk(sub, depth + 1)

    yield from walk(msg, 0)


def decoded_text(part: Message) -> str:
    """The body of a non-multipart `part` as text (transfer encoding undone), LF line ends.

    Mail arrives over SMTP with CRLF line ends; the text rules (`$` in a MULTILINE
    pattern, blank-line paragraphs) are written for LF, so CRLF becomes LF here, once.
    """
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = payload.decode(charset, "replace")
    except LookupError:
        text = payload.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def field_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a report part (`message/delivery-status`, `.../feedback-report`).

    compat32 parses `message/delivery-status` into one pseudo-message per block, and
    other `message/*` types (`global-delivery-status`, `feedback-report`) into a single
    message whose body holds the later blocks; a part kept as text, or one with a
    transfer encoding (which the parser does not undo for `message/*`), is split on
    blank lines and each block read as headers. Keys are lower-cased; the first
    occurrence of a field in a block wins.
    """
    cte = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    payload = part.get_payload()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        blocks: list[dict[str, str]] = []
        for sub in payload[:MAX_PARTS]:
            if not isinstance(sub, Message):
                continue
            blocks.append(header_map(sub))
            if not sub.is_multipart():
                rest = decoded_text(sub)
                if rest.strip():
                    blocks.extend(_text_blocks(rest))
        return [b for b in blocks if b]
    if isinstance(payload, list):
        return _text_blocks(_decode_body(_body_of(part), cte))
    return _text_blocks(decoded_text(part))


def _text_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text)[:MAX_PARTS]:
        block = header_map(parse_text(chunk.strip("\r\n") + "\n"))
        if block:
            blocks.append(block)
    return blocks


def _body_of(part: Message) -> str:
    """The body of `part` as the generator writes it back (for a parsed `message/*`)."""
    try:
        text = part.as_string()
    except Exception:
        return ""
    text = text.replace("\r\n", "\n")
    return text.split("\n\n", 1)[1] if "\n\n" in text else ""


def _decode_body(body: str, cte: str) -> str:
    """`body` with its transfer encoding undone, as UTF-8 text."""
    data = body.encode("utf-8", "surrogateescape")
    try:
        if cte == "base64":
            data = base64.b64decode(data, validate=False)
        elif cte == "quoted-printable":
            data = quopri.decodestring(data)
    except Exception:
        return ""
    return data.decode("utf-8", "replace")


# The lines that separate a plain-text notice from the copy of the original it returns.
# Possessive quantifiers and a bounded gap: a line of a million dashes must not
# backtrack quadratically.
SEPARATOR = re.compile(
    r"^[ \t]*+-{2,}+[^\n]{0,200}?(?:copy of (?:the|your) message|original message"
    r"|message (?:headers )?follows?|returned message|header of the original)",
    re.IGNORECASE | re.MULTILINE,
)


def embedded_original(msg: Message) -> Message | None:
    """The original message (or its headers) a report carries, or None.

    Looked for as a `message/rfc822` (or RFC 6532 `message/global`) part, a
    `text/rfc822-headers` part, and, in a plain-text notice, the text after a
    "--- Below this line is a copy of the message." style separator.
    """
    for part in parts(msg):
        ctype = part.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            found = parse_text(decoded_text(part))
            if found is not None and found.keys():
                return found
        elif ctype in ("text/rfc822-headers", "message/global-headers"):
            found = parse_text(decoded_text(part).lstrip("\r\n"))
            if found is not None and found.keys():
                return found
    for part in parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        text = decoded_text(part)
        m = SEPARATOR.search(text)
        if m is None:
            continue
        rest = text[m.end() :].split("\n", 1)[1] if "\n" in text[m.end() :] else ""
        found = parse_text(rest.lstrip("\r\n"))
        if found is not None and found.keys():
            return found
    return None


def notice_text(msg: Message) -> str:
    """The human-readable part of a notice: its text/plain bodies, cut at the separator."""
    texts: list[str] = []
    for part in parts(msg):
        if part.get_content_type() == "text/plain" and part is not None:
            text = decoded_text(part)
            m = SEPARATOR.search(text)
            texts.append(text[: m.start()] if m else text)
            if m:
                break
    return "\n\n".join(texts)
