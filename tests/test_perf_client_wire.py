"""encode_data's shortcut for CRLF-only bodies gives what the two rewrites would."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.smtp.client_wire import encode_data


def reference(body: bytes) -> bytes:
    """CRLF normalisation and dot-stuffing by regex alone (the behaviour before the shortcut)."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    data = re.sub(rb"^\.", b"..", data, flags=re.MULTILINE)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


@given(
    st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"x" * 50]), max_size=40)
)
def test_encode_data_equals_the_regex_rewrite(parts: list[bytes]) -> None:
    """Any body, plain CRLF or not, is encoded exactly as the regex rewrite does."""
    body = b"".join(parts)
    assert encode_data(body) == reference(body)


def test_plain_body_is_passed_through_with_the_end_marker() -> None:
    """A CRLF body without leading dots is sent unchanged, then `.`."""
    body = b"Subject: x\r\n\r\n" + b"text line\r\n" * 100
    assert encode_data(body) == body + b".\r\n"


def test_leading_dots_are_stuffed_in_a_crlf_body() -> None:
    """Lines starting with a dot get a second one, the first line included."""
    assert encode_data(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
