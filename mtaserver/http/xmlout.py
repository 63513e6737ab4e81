"""PowerMTA's XML form of a reply: `<rsp><data>...</data><succ/></rsp>`, written safely.

The monitoring endpoints and the Command API answer `format=xml` with the same data
they give as JSON, turned into elements the way PowerMTA's web monitor does it
(`/status?format=xml` in the User's Guide, 5.3): a mapping becomes child elements
named by its keys, a list under a key becomes that element repeated (`<queue>` once
per queue), `true`/`false` become `1`/`0`, `None` an empty element.

Values come from peers (queue names, error texts, recipient addresses), so the tree
is built with `xml.etree.ElementTree`, which escapes `<`, `&` and quotes, and every
character XML 1.0 cannot carry (C0 controls but TAB, DEL and C1 controls, lone
surrogates, U+FFFE/U+FFFF) is written as a visible `\\xNN` escape instead: the
output is always well-formed, and a CR or LF from a peer never reaches a line of
it. A key that is not a plain XML name (a command's data may be keyed by a queue
name such as `{default}`) becomes `<item name="KEY">`, its name an escaped attribute;
a list at the top of `data` becomes `<item>`s.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

#: Characters written as `\xNN` (or `\uNNNN`): not allowed in XML 1.0, or controls.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")
CONTENT_TYPE = b"application/xml; charset=utf-8"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text_of(value: Any) -> str:
    """The element text for a scalar value."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.1f}" if value == round(value, 1) else repr(value)
    return _UNSAFE.sub(_escape, str(value))


def _add(parent: ET.Element, name: str, value: Any) -> None:
    if isinstance(value, (list, tuple)):
        for item in value:
            _add(parent, name, item)
        return
    if _NAME.match(name) and not name.lower().startswith("xml"):
        element = ET.SubElement(parent, name)
    else:
        element = ET.SubElement(parent, "item", {"name": text_of(name)})
    if isinstance(value, Mapping):
        for key, item in value.items():
            _add(element, str(key), item)
    else:
        element.text = text_of(value)


def document(data: Any, message: str = "") -> bytes:
    """A success reply: `<rsp><data>...</data>[<message>...</message>]<succ/></rsp>`."""
    root = ET.Element("rsp")
    _add(root, "data", {"item": list(data)} if isinstance(data, (list, tuple)) else data)
    if message:
        _add(root, "message", message)
    ET.SubElement(root, "succ")
    return _serialize(root)


def reply(request: Any, data: Any, message: str = "") -> bytes:
    """`document` as the HTTP reply to `request`."""
    request.setHeader(b"Content-Type", CONTENT_TYPE)
    return document(data, message)


def error_reply(request: Any, code: int, message: str, description: str = "") -> bytes:
    """`error_document` as the HTTP reply to `request`, with status `code`."""
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", CONTENT_TYPE)
    return error_document(message, description)


def error_document(message: str, description: str = "") -> bytes:
    """An error reply: `<rsp><error><message/><description/></error><fail/></rsp>`."""
    root = ET.Element("rsp")
    _add(root, "error", {"message": message, "description": description})
    ET.SubElement(root, "fail")
    return _serialize(root)


def _serialize(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
