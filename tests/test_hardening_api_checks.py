"""The Transmissions API's pure safety checks and its Idempotency-Key store, without a server.

`mtaserver.http.safety` (JSON depth and strings, RFC 2047 decoding, the built header
block, `email_rfc822` limits) as table and Hypothesis tests; the content builder on
the inputs that injected headers through this interpreter's `email` package; the
idempotency store on real files with a synchronous thread runner and a fake clock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred

from mtaserver.http.content import Content, ContentError, build_message, personal_headers
from mtaserver.http.idempotency import (
    KEEP_FOR,
    IdempotencyStore,
    KeyError422,
    record_name,
    valid_key,
)
from mtaserver.http.safety import (
    UnsafeInput,
    check_decoded_header_value,
    check_header_block,
    check_json_depth,
    check_json_strings,
    check_rfc822,
    decode_encoded_words,
)
from mtaserver.message.limits import ContentLimits, mime_depth

# -- JSON ---------------------------------------------------------------------------


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\k'), children, max_size=3)
    ),
    max_leaves=30,
)


@given(json_values, st.integers(min_value=1, max_value=8))
def test_json_depth_scan_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    """The byte scan refuses exactly the documents nested deeper than the limit."""
    raw = json.dumps(value).encode()
    if depth_of(value) > limit:
        with pytest.raises(UnsafeInput):
            check_json_depth(raw, limit)
    else:
        check_json_depth(raw, limit)


def test_json_depth_100000_is_refused_without_recursion() -> None:
    """A 100000-deep array is refused by the scan (json.loads would raise RecursionError)."""
    with pytest.raises(UnsafeInput, match="deeper than 64"):
        check_json_depth(b"[" * 100000 + b"]" * 100000)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"content": {"text": "a\x00b"}}, "content.text contains NUL"),
        ({"content": {"subject": "\udfff"}}, "content.subject contains a lone surrogate"),
        ({"recipients": [{"address": {"name": "\ud800x"}}]}, "recipients[0].address.name"),
        ({"substitution_data": {"k\x00": 1}}, "a key in substitution_data"),
        ("\x00", "the body"),
    ],
)
def test_json_strings_name_the_field(document: Any, field: str) -> None:
    """NUL or a lone surrogate anywhere is refused with its JSON path."""
    with pytest.raises(UnsafeInput) as info:
        check_json_strings(document)
    assert field in str(info.value)


def test_json_strings_accept_ordinary_text() -> None:
    """Tabs, newlines in bodies and astral characters (a surrogate pair in JSON) are fine."""
    check_json_strings(json.loads('{"text": "a\\tb\\nc \\ud83d\\ude00", "n": [1, null]}'))


# -- RFC 2047 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "x=?UTF-8?Q?=0A?=From: ceo@bank.example",
        "x=?utf-8?q?=0D=0A=0D=0A?=body",
        "=?UTF-8?B?Cg==?=Bcc: a@b",
        "=?UTF-8?b?DQo?=Bcc: a@b",  # base64 without padding
        "=?UTF-8*en?Q?a=0Ab?=",  # RFC 2231 language tag
        "=?x-unknown?Q?a=0Ab?=",
        "=?utf-16-be?B?AAo=?=",  # LF in UTF-16
        "=?iso-8859-1?Q?a=00b?=",  # NUL
        "a=?UTF-8?Q?=0A?=b",  # no whitespace around the word
    ],
)
def test_encoded_words_with_line_breaks_are_refused(value: str) -> None:
    """Every encoded word that decodes to CR, LF or NUL is refused, whatever its charset."""
    with pytest.raises(UnsafeInput, match="content.subject"):
        check_decoded_header_value("content.subject", value, "Subject")


@pytest.mark.parametrize(
    "value", ["=?UTF-8?Q?Caf=C3=A9?= menu", "plain text", "=?utf-8?b?w6k=?=", "a =? b ?= c"]
)
def test_harmless_header_values_pass(value: str) -> None:
    """Encoded words without line breaks, and text that only looks like one, pass."""
    check_decoded_header_value("content.subject", value, "Subject")


def test_decode_encoded_words_reads_q_and_b() -> None:
    """Q (underscore is a space) and B words decode to bytes and text."""
    words = list(decode_encoded_words("=?utf-8?q?a_b=3D?= =?utf-8?b?w6k=?="))
    assert words == [(b"a b=", "a b="), (b"\xc3\xa9", "\xe9")]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ({"subject": "x=?UTF-8?Q?=0A?=From: ceo@bank.example"}, "content.subject"),
        ({"headers": {"X-A": "=?UTF-8?Q?=0D=0A=0D=0A?=body"}}, "content.headers.X-A"),
        ({"reply_to": "=?UTF-8?Q?=0A?=Bcc: a@b"}, "content.reply_to"),
        ({"from": {"email": "s@a.example", "name": "=?utf-8?q?=0A?=x"}}, "content.from.name"),
        (
            {"attachments": [{"name": "=?utf-8?q?=0A?=", "type": "text/plain", "data": ""}]},
            "content.attachments[0].name",
        ),
        ({"headers": {"Bcc": "x@y.example"}}, "Bcc"),
        ({"headers": {"Return-Path": "x@y.example"}}, "Return-Path"),
        ({"headers": {"Received": "from x"}}, "Received"),
        ({"headers": {"DKIM-Signature": "v=1"}}, "DKIM-Signature"),
    ],
)
def test_content_refuses_injection_and_server_owned_fields(
    content: dict[str, Any], field: str
) -> None:
    """Content.parse refuses what used to put a second From or a new body in the message."""
    base: dict[str, Any] = {"from": "s@a.example", "text": "hi"}
    with pytest.raises(ContentError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Content.parse({**base, **content})


def test_substituted_subject_is_checked_after_rendering() -> None:
    """A substitution value that decodes to LF is refused when the subject is rendered."""
    content = Content.parse({"from": "s@a.example", "subject": "Hi {{n}}", "text": "hi"})
    with pytest.raises(ContentError, match="after substitution"):
        personal_headers(content, {"n": "=?utf-8?q?=0A?=From: ceo@bank.example"}, "r@d.example")


def test_a_built_message_has_one_from_and_a_clean_header_block() -> None:
    """An ordinary build passes the header block check: one From, fields, the empty line."""
    content = Content.parse(
        {"from": "s@a.example", "subject": "=?utf-8?q?Caf=C3=A9?=", "text": "x"}
    )
    data = build_message(content, personal_headers(content, {}, "r@d.example"), {})
    check_header_block(data)
    assert data.count(b"\r\nFrom: ") + data.startswith(b"From: ") == 1


# -- the header block --------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (b"From: a\r\nFrom: b\r\n\r\nx\r\n", "2 From"),
        (b"Subject: a\r\n\r\nx\r\n", "0 From"),
        (b"From: a\r\nSubject: x\nBcc: y\r\n\r\nbody\r\n", "CR, LF or NUL"),
        (b"From: a\r\nnot a field\r\n\r\nx\r\n", "not Name: value"),
        (b" cont\r\nFrom: a\r\n\r\nx\r\n", "continuation"),
        (b"From: a\r\nSubject: x\r\n", "no empty line"),
        (b"From: " + b"a" * 999 + b"\r\n\r\nx\r\n", "998"),
    ],
)
def test_header_block_check_refuses(message: bytes, problem: str) -> None:
    """The serialised header block must be exactly what the API meant to write."""
    with pytest.raises(UnsafeInput, match=problem):
        check_header_block(message)


# -- email_rfc822 ------------------------------------------------------------------


def rfc822(header: str, body: str = "body\r\n") -> bytes:
    return (header + "\r\n" + body).encode()


@pytest.mark.parametrize(
    ("message", "limits", "problem"),
    [
        (rfc822("Received: x\r\n" * 4), ContentLimits(max_message_hops=3), "4 Received"),
        (rfc822("X: y\r\n" * 11), ContentLimits(max_header_count=10), "11 header fields"),
        (rfc822("X: " + "y" * 90 + "\r\n"), ContentLimits(max_header_size=50), "max-header-size"),
        (rfc822("From: a\r\nFrom: b\r\n"), ContentLimits(), "2 From"),
        (rfc822("S: x\r\n", "ok\r\n" + "z" * 999 + "\r\n"), ContentLimits(), "line 4 is 999"),
        (rfc822("S: x\r\n", "a\x00b\r\n"), ContentLimits(), "NUL"),
    ],
)
def test_rfc822_limits_refuse(message: bytes, limits: ContentLimits, problem: str) -> None:
    """Each limit of the {transmissions-api} source refuses with the field and the number."""
    with pytest.raises(UnsafeInput, match=problem):
        check_rfc822(message, limits)


def test_rfc822_limits_of_zero_are_off() -> None:
    """0 turns a limit off, as on the SMTP side."""
    message = rfc822("Received: x\r\n" * 5 + "X: y\r\n" * 5)
    check_rfc822(message, ContentLimits(0, 0, 0, 0))
    check_rfc822(rfc822("S: x\r\n", "z" * 998 + "\r\n"), ContentLimits())  # 998 is allowed


def nested(depth: int) -> list[bytes]:
    lines = [b'Content-Type: multipart/mixed; boundary="b0"', b""]
    for level in range(1, depth):
        lines += [
            f"--b{level - 1}".encode(),
            f"Content-Type: multipart/alternative; boundary=b{level}".encode(),
            b"",
        ]
    lines += [f"--b{depth - 1}".encode(), b"", b"leaf"]
    lines += [f"--b{level}--".encode() for level in range(depth - 1, -1, -1)]
    return lines


@pytest.mark.parametrize("depth", [1, 2, 5, 30])
def test_mime_depth_counts_nested_multiparts(depth: int) -> None:
    """A leaf inside `depth` nested multiparts is at depth `depth`."""
    assert mime_depth(nested(depth), 1000) == depth


def test_mime_depth_siblings_and_enclosed_messages() -> None:
    """Siblings do not add depth; a message/rfc822 part adds one level for its own header."""
    lines = [
        b"Content-Type: multipart/mixed; boundary=o",
        b"",
        b"--o",
        b"",
        b"one",
        b"--o",
        b"Content-Type: message/rfc822",
        b"",
        b"Content-Type: multipart/mixed; boundary=i",
        b"",
        b"--i",
        b"",
        b"inner",
        b"--i--",
        b"--o",
        b"",
        b"three",
        b"--o--",
    ]
    assert mime_depth(lines, 100) == 3
    with pytest.raises(UnsafeInput, match="max-mime-depth"):
        check_rfc822(b"\r\n".join(lines) + b"\r\n", ContentLimits(max_mime_depth=2))


def test_mime_depth_stops_counting_past_the_limit() -> None:
    """The scan returns as soon as the limit is passed (a 100000-deep message costs little)."""
    assert mime_depth(nested(5000), 10) == 11


# -- Idempotency-Key store ------------------------------------------------------------


def sync_thread(work: Callable[[], Any]) -> Deferred[Any]:
    return maybeDeferred(work)


def run(coroutine: Any) -> Any:
    results: list[Any] = []
    ensureDeferred(coroutine).addBoth(results.append)
    (result,) = results
    if isinstance(result, Exception):
        raise result
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_idempotency_record_is_found_by_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    """A recorded answer is a file: a store made after a restart finds it."""
    clock = Clock()
    directory = str(tmp_path / "idempotency")
    name = record_name(b"api-key", "order-1")
    run(
        IdempotencyStore(directory, sync_thread, clock).record(name, "d1", {"results": {"id": "x"}})
    )
    again = IdempotencyStore(directory, sync_thread, clock)
    assert run(again.lookup(name, "d1")) == {"results": {"id": "x"}}
    assert [n for n in os.listdir(directory) if n.endswith(".tmp")] == []


def test_idempotency_other_body_is_422_and_expired_record_is_gone(tmp_path: Path) -> None:
    """Another body with the key raises KeyError422; after 24 h the key is free again."""
    clock = Clock()
    store = IdempotencyStore(str(tmp_path), sync_thread, clock)
    name = record_name(b"api-key", "order-2")
    run(store.record(name, "d1", {"results": {"id": "x"}}))
    with pytest.raises(KeyError422):
        run(store.lookup(name, "d2"))
    clock.now += KEEP_FOR + 1
    assert run(store.lookup(name, "d2")) is None


def test_idempotency_keys_are_per_api_key() -> None:
    """The same Idempotency-Key under two API keys names two records."""
    assert record_name(b"key-a", "k") != record_name(b"key-b", "k")


def test_idempotency_prune_removes_old_records(tmp_path: Path) -> None:
    """Writing a record an hour after the last prune removes files older than 24 h."""
    clock = Clock()
    store = IdempotencyStore(str(tmp_path), sync_thread, clock)
    run(store.record("old", "d", {}))
    old = tmp_path / "old"
    os.utime(old, (clock.now - KEEP_FOR - 10, clock.now - KEEP_FOR - 10))
    clock.now += 3600
    run(store.record("new", "d", {}))
    assert sorted(os.listdir(tmp_path)) == ["new"]


@pytest.mark.parametrize(
    ("raw", "key"),
    [(b"abc-123", "abc-123"), (b" k ", "k"), (b"has space", None), (b"", None), (b"k" * 256, None)],
)
def test_valid_key(raw: bytes, key: str | None) -> None:
    """Keys are 1-255 printable ASCII characters."""
    assert valid_key(raw) == key
