"""DataReader: the end of DATA, dot-unstuffing, bare newlines, long lines, NUL."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.smtp.server_data import BARE_NEWLINE, LONG_LINE, NUL_BYTE, DataReader

SMUGGLING = [
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
]


def read_all(reader: DataReader, chunks: list[bytes]) -> tuple[bytes, bytes | None]:
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        lines, rest = reader.feed(chunk)
        out += lines
        if rest is not None:
            return b"".join(line + b"\r\n" for line in out), rest + b"".join(chunks[i + 1 :])
    return b"".join(line + b"\r\n" for line in out), None


def test_plain_message_and_rest() -> None:
    """Lines come out without CRLF; what follows CRLF.CRLF is returned as the rest."""
    stored, rest = read_all(DataReader(), [b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n"])
    assert stored == b"Subject: x\r\n\r\nbody\r\n"
    assert rest == b"QUIT\r\n"


def test_dot_unstuffing_at_line_start_only() -> None:
    """A leading dot is removed from CRLF lines; other dots stay."""
    stored, rest = read_all(DataReader(), [b"..one\r\na.b\r\n...\r\n.\r\n"])
    assert stored == b".one\r\na.b\r\n..\r\n"
    assert rest == b""


def test_empty_message() -> None:
    """A DATA that ends at once is an empty message."""
    assert read_all(DataReader(), [b".\r\n"]) == (b"", b"")


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_smuggling_sequence_does_not_end_data(sequence: bytes) -> None:
    """None of the nine smuggling sequences ends DATA; the real end does."""
    payload = b"Subject: a\r\n\r\nfirst" + sequence + b"MAIL FROM:<evil@x>\r\n"
    reader = DataReader()
    stored, rest = read_all(reader, [payload])
    assert rest is None
    stored, rest = read_all(reader, [b"tail\r\n.\r\n"])
    assert rest == b""
    if b"\x00" in sequence:
        assert reader.problem == NUL_BYTE
    else:
        assert reader.problem is None


@pytest.mark.parametrize("sequence", SMUGGLING)
def test_smuggling_sequence_stored_with_crlf_only(sequence: bytes) -> None:
    """What is stored around a smuggling sequence has no bare CR or LF."""
    if b"\x00" in sequence:
        pytest.skip("NUL refuses the message")
    reader = DataReader()
    stored, rest = read_all(reader, [b"first" + sequence + b"MAIL FROM:<e@x>\r\n.\r\n"])
    assert rest == b""
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", stored) is None
    assert b"MAIL FROM:<e@x>\r\n" in stored


def test_bare_newline_reject() -> None:
    """With bare-newline reject, a bare LF refuses the message, still at the real end."""
    reader = DataReader(reject_bare_newline=True)
    stored, rest = read_all(reader, [b"a\nb\r\n.\r\nNOOP\r\n"])
    assert reader.problem == BARE_NEWLINE
    assert rest == b"NOOP\r\n"


def test_long_line_refused_without_leaving_data_mode() -> None:
    """A 999-octet line refuses the message; MAIL after it is still content."""
    reader = DataReader()
    stored, rest = read_all(reader, [b"x" * 999 + b"\r\nMAIL FROM:<a@b>\r\n"])
    assert rest is None
    assert reader.problem == LONG_LINE
    stored, rest = read_all(reader, [b".\r\n"])
    assert rest == b""


def test_998_octets_is_fine() -> None:
    """A line of exactly 998 octets (and a stuffed one of 999) is allowed."""
    reader = DataReader()
    stored, rest = read_all(reader, [b"x" * 998 + b"\r\n", b"." + b"y" * 998 + b"\r\n.\r\n"])
    assert reader.problem is None
    assert stored == b"x" * 998 + b"\r\n" + b"y" * 998 + b"\r\n"


def test_endless_line_holds_bounded_memory() -> None:
    """Megabytes without CRLF keep at most about one line buffered."""
    reader = DataReader()
    for _ in range(100):
        lines, rest = reader.feed(b"z" * 10_000)
        assert rest is None
        assert len(reader._partial) <= 1002
    lines, rest = reader.feed(b"\r\n.\r\n")
    assert rest == b""
    assert reader.problem == LONG_LINE


def test_long_run_of_lf_lines_is_normalised_not_refused() -> None:
    """A client using bare LF line ends for 100 kB gets CRLF lines, not a long-line refusal."""
    reader = DataReader()
    body = b"".join(b"line %d\n" % i for i in range(10_000))
    stored, rest = read_all(reader, [body[i : i + 1500] for i in range(0, len(body), 1500)])
    assert rest is None
    tail, rest = read_all(reader, [b"\r\n.\r\n"])
    assert rest == b""
    assert reader.problem is None
    assert (stored + tail).startswith(b"line 0\r\nline 1\r\n")
    assert (stored + tail).count(b"\r\n") == 10_001


def test_end_split_across_chunks() -> None:
    """CRLF.CRLF split over several reads still ends DATA exactly once."""
    reader = DataReader()
    stored, rest = read_all(reader, [b"a\r", b"\n", b".", b"\r", b"\nRSET\r\n"])
    assert stored == b"a\r\n"
    assert rest == b"RSET\r\n"


@given(
    st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"\x80"]), max_size=60),
    st.integers(min_value=1, max_value=7),
)
def test_chunking_never_matters_and_output_is_crlf_only(parts: list[bytes], size: int) -> None:
    """Any content, fed in any chunk size, gives the same CRLF-only result."""
    content = b"".join(parts)
    data = b"\r\n" + content + b"\r\n.\r\n"
    whole = read_all(DataReader(), [data])
    pieces = read_all(DataReader(), [data[i : i + size] for i in range(0, len(data), size)])
    assert whole == pieces
    stored, rest = whole
    assert rest is not None
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", stored) is None


class CarefulReader(DataReader):
    """The line-by-line path alone: the reference the fast path must agree with."""

    def _plain_lines(self, buf: bytes) -> list[bytes] | None:
        return None


@given(
    st.lists(
        st.sampled_from(
            [b"a", b"text line", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\x00", b"x" * 500]
        ),
        max_size=40,
    ),
    st.integers(min_value=1, max_value=600),
    st.booleans(),
)
def test_fast_path_agrees_with_the_line_by_line_path(
    parts: list[bytes], size: int, reject: bool
) -> None:
    """Lines, problems and the rest after the end are the same with or without the fast path."""
    data = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    fast, careful = DataReader(reject), CarefulReader(reject)
    assert read_all(fast, chunks) == read_all(careful, chunks)
    assert fast.problem == careful.problem
    assert fast.bare_newlines == careful.bare_newlines
