"""The chunk-wise DATA scanner: the same lines, problems and rest as the careful path."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.smtp.server_data import LONG_LINE, NUL_BYTE, DataReader


class CarefulReader(DataReader):
    """The line-by-line path alone: the reference the chunk scanner must agree with."""

    def _plain_lines(self, buf: bytes) -> tuple[list[bytes], bytes | None] | None:
        return None


class ChunkOnlyReader(DataReader):
    """Fails if any line takes the careful per-line path."""

    def _content(self, line: bytes, out: list[bytes], complete: bool) -> None:
        raise AssertionError(f"careful path taken for {line!r}")


def read_all(reader: DataReader, chunks: list[bytes]) -> tuple[list[bytes], bytes | None]:
    out: list[bytes] = []
    for i, chunk in enumerate(chunks):
        lines, rest = reader.feed(chunk)
        out += lines
        if rest is not None:
            return out, rest + b"".join(chunks[i + 1 :])
    return out, None


def both(chunks: list[bytes], reject: bool = False) -> tuple[DataReader, object]:
    fast, careful = DataReader(reject), CarefulReader(reject)
    got = read_all(fast, chunks)
    assert got == read_all(careful, chunks)
    assert fast.problem == careful.problem
    assert fast.bare_newlines == careful.bare_newlines
    return fast, got


MESSAGE = (
    b"From: a@example.test\r\nSubject: hi\r\n\r\n"
    + b"La de da de da 1.\r\n" * 200
    + b"..stuffed\r\n\r\n..\r\nafter\r\n.\r\nQUIT\r\n"
)


def test_a_whole_message_in_one_chunk_never_goes_line_by_line() -> None:
    """A plain message, stuffed dots and final dot included, is scanned chunk-wise."""
    lines, rest = read_all(ChunkOnlyReader(), [MESSAGE])
    assert rest == b"QUIT\r\n"
    assert lines[-4:] == [b".stuffed", b"", b".", b"after"]
    assert len(lines) == 3 + 200 + 4


@pytest.mark.parametrize("cut", range(1, 12))
def test_end_of_data_split_across_chunks(cut: int) -> None:
    """CRLF.CRLF cut anywhere across two chunks ends DATA at the same place."""
    data = b"one\r\ntwo\r\n.\r\nNOOP\r\n"
    _, got = both([data[:cut], data[cut:]])
    assert got == ([b"one", b"two"], b"NOOP\r\n")


def test_end_of_data_byte_by_byte() -> None:
    """Fed one byte at a time, the end and the rest are found the same way."""
    _, got = both([MESSAGE[i : i + 1] for i in range(len(MESSAGE))])
    assert got[1] == b"QUIT\r\n"


@pytest.mark.parametrize(
    "sequence",
    [
        b"\n.\n",
        b"\n.\r",
        b"\r.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\r\r\n.\r\r\n",
    ],
)
def test_smuggling_sequences_stay_content(sequence: bytes) -> None:
    """A bare-newline end-of-data look-alike in a chunk never ends DATA."""
    reader, got = both([b"x\r\nfirst" + sequence + b"MAIL FROM:<e@x>\r\n"])
    assert got[1] is None
    lines, rest = reader.feed(b".\r\n")
    assert rest == b""


def test_nul_after_the_end_does_not_touch_the_message() -> None:
    """A NUL in what follows the end is the next command's business, not the message's."""
    reader, got = both([b"body\r\n.\r\nNO\x00OP\r\n"])
    assert got == ([b"body"], b"NO\x00OP\r\n")
    assert reader.problem is None


def test_nul_and_long_lines_before_the_end() -> None:
    """NUL and overlong lines are still refused, chunk scanner or not."""
    reader, _ = both([b"a\x00b\r\n.\r\n"])
    assert reader.problem == NUL_BYTE
    reader, _ = both([b"y" * 999 + b"\r\n.\r\n"])
    assert reader.problem == LONG_LINE
    reader, got = both([b"y" * 998 + b"\r\n.\r\n"])
    assert reader.problem is None and got[0] == [b"y" * 998]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [b"a", b"line", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\x00"]
            + [b"z" * 400]
        ),
        max_size=50,
    ),
    st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=8),
    st.booleans(),
)
def test_any_content_any_chunking_same_as_careful(
    parts: list[bytes], sizes: list[int], reject: bool
) -> None:
    """Lines, problem, bare-newline count and rest equal the careful path's for any cut."""
    data = b"".join(parts) + b"\r\n.\r\nQUIT\r\n"
    chunks, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[at : at + size])
        at += size
        i += 1
    both(chunks, reject)
