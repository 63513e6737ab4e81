"""What a Transmissions API request must not smuggle in: pure checks over bytes and text.

The API builds messages from client-supplied JSON, so everything a client sends ends
up in a header block or a body this server signs its name under (`Received`). These
checks run before anything is spooled and raise `UnsafeInput` naming the field; the
API answers 400. They import nothing from Twisted and do not rely on the `email`
package to be safe (CVE-2024-6923: up to Python 3.11.9 it writes a decoded RFC 2047
encoded word holding CR or LF as a raw line break, i.e. a new header or the body).

* JSON: `check_json_depth` scans the raw bytes for bracket depth *before*
  `json.loads` (whose recursion a 100000-deep array blows into a RecursionError);
  `check_json_strings` refuses lone surrogates (`"\\udfff"`, not encodable as UTF-8)
  and NUL anywhere in the decoded document, naming the JSON path.
* Header values: `check_decoded_header_value` decodes every RFC 2047 encoded word
  itself (and also asks the `email` package how *it* reads the value) and refuses
  CR, LF or NUL in the result.
* The built header block: `check_header_block` (one `From`, only `Name: value`
  lines and continuations, the empty line before the body).
* `email_rfc822`: `check_rfc822` (line length 998, no NUL, at most one `From`, and
  the source's `max-message-hops`, `max-header-count`, `max-header-size` and
  `max-mime-depth`, checked by the same `ContentChecker` SMTP reception uses).
"""

from __future__ import annotations

import array
import base64
import binascii
import itertools
import json
import re
from collections.abc import Iterator
from email import policy as email_policy
from typing import Any

from mtaserver.message.limits import ContentChecker, ContentLimits

MAX_JSON_DEPTH = 64
MAX_LINE_OCTETS = 998  # RFC 5322 2.1.1, without the CRLF


class UnsafeInput(ValueError):
    """The request would put something unsafe into a message; the text names the field."""


# -- JSON ---------------------------------------------------------------------------


def check_json_depth(raw: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse a JSON text nested deeper than `limit` arrays/objects, without parsing it.

    Brackets inside strings do not count (a backslash escapes the next byte), so this
    is exact for valid JSON and harmless for invalid JSON (json.loads refuses it next).
    Fewer brackets than `limit` cannot nest deeper (a single-recipient transmission
    costs two `count` calls); otherwise the strings are cut out with one regular
    expression and the running depth summed in C (`accumulate` over signed bytes):
    a Python loop per bracket cost ~2 ms of the reactor's time per 1,000-recipient
    body. Only a body that is too deep is walked again, to name the byte.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return
    brackets = _JSON_STRING.sub(b"", raw).translate(_DEPTH_STEP, _NOT_A_BRACKET)
    if max(itertools.accumulate(array.array("b", brackets)), default=0) <= limit:
        return
    depth = 0
    for match in _JSON_STRING_OR_BRACKET.finditer(raw):
        char = match.group()
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise UnsafeInput(
                    f"the JSON body is nested deeper than {limit} levels (at byte {match.start()})"
                )
        elif char in (b"]", b"}"):
            depth -= 1


# A JSON string, "unrolled" so that the engine does not backtrack per character; an
# unterminated one is not matched and its brackets count (harmless: invalid JSON).
_JSON_STRING_TEXT = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_JSON_STRING = re.compile(_JSON_STRING_TEXT, re.DOTALL)
_JSON_STRING_OR_BRACKET = re.compile(_JSON_STRING_TEXT + rb"|[\[\]{}]", re.DOTALL)
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1, +1, -1, -1 as signed
_NOT_A_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
_UNSAFE_IN_JSON = re.compile("[\x00\ud800-\udfff]")
# What can decode to NUL or a lone surrogate in UTF-8 JSON: a \u escape of one (a
# raw NUL or control byte is invalid JSON), or UTF-8 bytes of a surrogate (0xED 0xA0-
# 0xBF, so any 0xED is walked), which json.loads decodes with "surrogatepass".
_MAY_DECODE_UNSAFE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def check_json_strings(document: Any, root: str = "", raw: bytes | None = None) -> None:
    """Refuse NUL or a lone surrogate in any string (key or value) of a decoded document.

    The error names the JSON path (`content.subject`, `recipients[2].address.name`).
    With `raw`, the UTF-8 text `document` was decoded from, the walk is skipped when
    nothing in `raw` can decode to either (`_MAY_DECODE_UNSAFE`): walking every key
    and value of a 1,000-recipient body cost ~3 ms of the reactor's time.
    """
    if (
        raw is not None
        and json.detect_encoding(raw) in ("utf-8", "utf-8-sig")
        and b"\xed" not in raw
        and (b"\\u" not in raw or _MAY_DECODE_UNSAFE.search(raw) is None)
    ):
        return
    stack: list[tuple[str, Any]] = [(root, document)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            _check_json_string(path or "the body", value)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                _check_json_string(f"a key in {path or 'the body'}", key)
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))


def _check_json_string(field: str, text: str) -> None:
    found = _UNSAFE_IN_JSON.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise UnsafeInput(f"{field} contains NUL (\\u0000)")
    raise UnsafeInput(f"{field} contains a lone surrogate ({found.group()!r}): not valid Unicode")


# -- header values -----------------------------------------------------------------

# Lenient on purpose (any charset token, RFC 2231 language, either case of Q/B, no
# whitespace required around it): whatever a reader might take for an encoded word.
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([QqBb])\?([^?]*)\?=")
_BREAKS = re.compile("[\r\n\x00]")


def decode_encoded_words(value: str) -> Iterator[tuple[bytes, str]]:
    """(raw decoded bytes, text in its charset) of every RFC 2047 encoded word in `value`."""
    for match in _ENCODED_WORD.finditer(value):
        charset, encoding, text = match.groups()
        charset = charset.split("*", 1)[0] or "us-ascii"
        if encoding in "Qq":
            raw = _decode_q(text)
        else:
            try:
                raw = base64.b64decode(text + "=" * (-len(text) % 4))
            except (binascii.Error, ValueError):
                raw = b""
        try:
            decoded = raw.decode(charset, "replace")
        except LookupError:
            decoded = raw.decode("latin-1")
        yield raw, decoded


def _decode_q(text: str) -> bytes:
    data = text.replace("_", " ").encode("ascii", "replace")
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


def check_decoded_header_value(field: str, value: str, header_name: str = "X-Check") -> None:
    """Refuse a header value whose RFC 2047 encoded words decode to CR, LF or NUL.

    Checked twice: with our own decoder (any charset, the raw bytes too) and as the
    `email` package of this interpreter reads the field (`header_name` chooses its
    parser: address fields are parsed differently from unstructured ones).
    """
    for raw, decoded in decode_encoded_words(value):
        if _BREAKS.search(decoded) or any(byte in raw for byte in b"\r\n\x00"):
            raise UnsafeInput(
                f"{field} has an encoded word that decodes to CR, LF or NUL "
                "(header injection refused)"
            )
    if "=?" not in value:
        return
    try:
        parsed = str(email_policy.default.header_factory(header_name, value))
    except Exception:  # noqa: BLE001 - any failure of the parser: our own check stands
        return
    if _BREAKS.search(parsed):
        raise UnsafeInput(f"{field} decodes to CR, LF or NUL (header injection refused)")


# -- the serialised header block ---------------------------------------------------

_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")


def header_block(message: bytes) -> tuple[list[bytes], bool]:
    """(the header lines, whether an empty line ends them) of a CRLF message."""
    lines: list[bytes] = []
    start = 0
    while True:
        end = message.find(b"\r\n", start)
        if end < 0:
            if start < len(message):
                lines.append(message[start:])
            return lines, False
        line = message[start:end]
        if line == b"":
            return lines, True
        lines.append(line)
        start = end + 2


def check_header_block(message: bytes) -> None:
    """The built message's header block is what the API meant to write, or UnsafeInput.

    Exactly one `From`; every line a `Name: value` field or a continuation; no bare
    CR, LF or NUL; no line over 998 octets; an empty line before the body.
    """
    lines, separated = header_block(message)
    if not separated:
        raise UnsafeInput("the built message has no empty line between header and body")
    froms = 0
    for number, line in enumerate(lines, 1):
        if b"\r" in line or b"\n" in line or b"\x00" in line:
            raise UnsafeInput(f"header line {number} of the built message has CR, LF or NUL")
        if len(line) > MAX_LINE_OCTETS:
            raise UnsafeInput(f"header line {number} of the built message is over 998 octets")
        if line[:1] in (b" ", b"\t"):
            if number == 1:
                raise UnsafeInput("the built message starts with a continuation line")
            continue
        match = _FIELD.match(line)
        if match is None:
            raise UnsafeInput(f"header line {number} of the built message is not Name: value")
        if match.group(1).lower() == b"from":
            froms += 1
    if froms != 1:
        raise UnsafeInput(f"the built message has {froms} From fields (exactly one is allowed)")


# -- email_rfc822 --------------------------------------------------------------------


def check_rfc822(
    message: bytes, limits: ContentLimits, field: str = "content.email_rfc822"
) -> None:
    """Refuse a CRLF message the relay should not pass on (names `field` and the line).

    Lines over 998 octets are refused, not re-encoded: re-encoding would break a DKIM
    signature the client made.
    """
    if b"\x00" in message:
        raise UnsafeInput(f"{field} contains NUL")
    lines = message.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_OCTETS:
            raise UnsafeInput(
                f"{field} line {number} is {len(line)} octets long "
                f"(RFC 5322 allows {MAX_LINE_OCTETS} without CRLF)"
            )
    froms = 0
    for line in lines:
        if line == b"":
            break
        if line[:1] not in (b" ", b"\t"):
            match = _FIELD.match(line)
            if match is None:
                break  # the body starts here (the builder adds the empty line)
            froms += match.group(1).lower() == b"from"
    if froms > 1:
        raise UnsafeInput(f"{field} has {froms} From fields (at most one is allowed)")
    checker = ContentChecker(limits)
    checker.feed(lines)
    if checker.exceeded is not None:
        raise UnsafeInput(_over_limit(field, checker))


def _over_limit(field: str, checker: ContentChecker) -> str:
    """The 400's words for the limit `checker` found exceeded."""
    limits = checker.limits
    if checker.exceeded == "max-header-count":
        return (
            f"{field} has {checker.header_count} header fields "
            f"(max-header-count is {limits.max_header_count})"
        )
    if checker.exceeded == "max-header-size":
        return (
            f"{field} has a header over {limits.max_header_size} octets "
            f"(max-header-size is {limits.max_header_size})"
        )
    if checker.exceeded == "max-message-hops":
        return (
            f"{field} has {checker.hops} Received fields: a mail loop? "
            f"(max-message-hops is {limits.max_message_hops})"
        )
    return f"{field} nests MIME parts deeper than {limits.max_mime_depth} (max-mime-depth)"
