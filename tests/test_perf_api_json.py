"""The fast paths of the Transmissions API's JSON checks refuse exactly what the walks do."""

from __future__ import annotations

import json

import pytest

from mtaserver.http.safety import UnsafeInput, check_json_depth, check_json_strings


def _refusal(raw: bytes, use_raw: bool) -> str | None:
    try:
        check_json_depth(raw)
        document = json.loads(raw)
        check_json_strings(document, raw=raw if use_raw else None)
    except UnsafeInput as exc:
        return str(exc)
    return None


BODIES = [
    b'{"a": "\\u0000"}',
    b'{"\\u0000": 1}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\uDFFF"}',
    b'{"a": "\\ud83d\\ude00"}',  # a pair is one character: accepted
    '{"a": "\ud800"}'.encode("utf-8", "surrogatepass"),
    '{"a": "\ud800"}'.encode("utf-16-le", "surrogatepass"),
    '{"a": "\\u0000"}'.encode("utf-16"),
    b'{"a": "\\\\u0000"}',  # a backslash, then text: accepted
    '{"a": "caf\u00e9 \U0001f600"}'.encode(),
    b'{"recipients": [' + b",".join(b'{"address": "r%d@x.test"}' % n for n in range(300)) + b"]}",
]


@pytest.mark.parametrize("raw", BODIES)
def test_raw_fast_path_refuses_what_the_walk_refuses(raw: bytes) -> None:
    """With the raw text the string check gives the same answer (and text) as the full walk."""
    assert _refusal(raw, use_raw=True) == _refusal(raw, use_raw=False)


def test_nul_and_lone_surrogates_are_still_refused_with_raw() -> None:
    """NUL and a lone surrogate in any string are 400 material with the fast path on."""
    assert "NUL" in (_refusal(b'{"a": ["x", "\\u0000"]}', use_raw=True) or "")
    assert "surrogate" in (_refusal(b'{"a": "\\udc00"}', use_raw=True) or "")
    raw = '{"a": "\udc00"}'.encode("utf-8", "surrogatepass")
    assert "surrogate" in (_refusal(raw, use_raw=True) or "")


def test_depth_limit_many_shallow_objects_pass() -> None:
    """A thousand sibling objects are depth 2, however many brackets the body holds."""
    raw = json.dumps({"r": [{"address": f"r{n}@x.test"} for n in range(1000)]}).encode()
    check_json_depth(raw)


def test_depth_limit_counts_nesting_and_names_the_byte() -> None:
    """65 nested arrays are refused at the byte of the 65th bracket; 64 pass."""
    check_json_depth(b"[" * 64 + b"]" * 64)
    with pytest.raises(UnsafeInput, match=r"deeper than 64 levels \(at byte 64\)"):
        check_json_depth(b"[" * 65 + b"]" * 65)
    padded = b'{"k": [' + b'{"x": 1},' * 100 + b"[" * 64 + b"]" * 64 + b"]}"
    with pytest.raises(UnsafeInput, match="deeper than 64"):
        check_json_depth(padded)


def test_depth_ignores_brackets_inside_strings_after_escapes() -> None:
    """Brackets in strings never count, also after \\n, \\" and \\\\ escapes."""
    for inner in (b"\\n", b'\\"', b"\\\\", b"\\r\\n"):
        raw = b'{"a": "' + inner + b"[" * 100 + b'", "b": [' + b"{}," * 70 + b"{}]}"
        json.loads(raw)
        check_json_depth(raw)
    deep = b'{"a": "x\\ny", "b": ' + b"[" * 65 + b"]" * 65 + b"}"
    with pytest.raises(UnsafeInput, match="deeper than 64"):
        check_json_depth(deep)
