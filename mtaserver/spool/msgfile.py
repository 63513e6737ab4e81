"""The message file format: how a body and its envelope sit in one spool file.

Layout (integers big-endian):

    header    b"MTAMSG1\\n"                                    8 bytes
    body      the message as received, raw                     body_size bytes
    envelope  b"ENV1" | u32 length | u32 crc32 | JSON          12 + length bytes
    trailer   b"MTAEND1\\n" | u64 envelope_offset | u64 body_size
              | u32 crc32(body) | u32 crc32(trailer so far)     32 bytes

The body goes first because it is streamed to disk as it arrives, before the
envelope is final. The fixed trailer at the very end says where the envelope is,
so recovery reads 8 + 32 bytes and the envelope, never the body: restart time does
not grow with message sizes. A file cut anywhere lacks a valid trailer in its last
32 bytes (or its offsets do not add up), so a torn file is told from a complete one;
the body's checksum is checked whenever the body is read. The body is raw (not
chunked) so it can later be sent with sendfile or mmap.

Pure functions over bytes and file descriptors; nothing here knows Twisted.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

from mtaserver.events import Envelope
from mtaserver.spool.errors import CorruptMessageError

HEADER = b"MTAMSG1\n"
ENVELOPE_MAGIC = b"ENV1"
TRAILER_MAGIC = b"MTAEND1\n"
_RECORD = struct.Struct(">4sII")
_TRAILER = struct.Struct(">8sQQII")
TRAILER_SIZE = _TRAILER.size


def encode_tail(envelope: Envelope, body_size: int, body_crc: int) -> bytes:
    """The envelope record and trailer that close a file whose body is written."""
    payload = json.dumps(envelope.to_json(), separators=(",", ":")).encode("ascii")
    record = _RECORD.pack(ENVELOPE_MAGIC, len(payload), zlib.crc32(payload)) + payload
    envelope_offset = len(HEADER) + body_size
    trailer = _TRAILER.pack(TRAILER_MAGIC, envelope_offset, body_size, body_crc, 0)[:-4]
    return record + trailer + struct.pack(">I", zlib.crc32(trailer))


def encode(envelope: Envelope, body: bytes) -> bytes:
    """A whole message file in memory (for tests and tools)."""
    return HEADER + body + encode_tail(envelope, len(body), zlib.crc32(body))


def read_layout(fd: int, name: str) -> tuple[int, int]:
    """(body_size, body_crc) of a complete file, or CorruptMessageError.

    Checks the header, the trailer and that the envelope record ends where the
    trailer begins; reads 40 bytes.
    """
    size = os.fstat(fd).st_size
    if size < len(HEADER) + _RECORD.size + TRAILER_SIZE:
        raise CorruptMessageError(f"{name}: too short ({size} bytes)")
    if os.pread(fd, len(HEADER), 0) != HEADER:
        raise CorruptMessageError(f"{name}: bad header")
    raw = os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE)
    magic, envelope_offset, body_size, body_crc, crc = _TRAILER.unpack(raw)
    if magic != TRAILER_MAGIC or zlib.crc32(raw[:-4]) != crc:
        raise CorruptMessageError(f"{name}: no valid trailer (torn?)")
    if envelope_offset != len(HEADER) + body_size or envelope_offset > size - TRAILER_SIZE:
        raise CorruptMessageError(f"{name}: trailer offsets do not match the file")
    return body_size, body_crc


def read_envelope(fd: int, name: str) -> Envelope:
    """The envelope of a complete file, checked; CorruptMessageError otherwise."""
    body_size, _ = read_layout(fd, name)
    offset = len(HEADER) + body_size
    end = os.fstat(fd).st_size - TRAILER_SIZE
    magic, length, crc = _RECORD.unpack(os.pread(fd, _RECORD.size, offset))
    if magic != ENVELOPE_MAGIC or offset + _RECORD.size + length != end:
        raise CorruptMessageError(f"{name}: bad envelope record")
    payload = os.pread(fd, length, offset + _RECORD.size)
    if zlib.crc32(payload) != crc:
        raise CorruptMessageError(f"{name}: envelope checksum mismatch")
    try:
        return Envelope.from_json(json.loads(payload))
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptMessageError(f"{name}: undecodable envelope: {e}") from e


class BodyReader(io.RawIOBase):
    """Reads the body of a message file and checks its crc32 when it reaches the end.

    The last read raises CorruptMessageError on a mismatch, so a sender streaming
    the body learns of it before it ends the DATA and can abort the transaction.
    """

    def __init__(self, fd: int, name: str) -> None:
        super().__init__()
        self._fd = fd
        self._name = name
        self._size, self._expected_crc = read_layout(fd, name)
        self._offset = len(HEADER)
        self._end = len(HEADER) + self._size
        self._crc = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._end - self._offset)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._offset)
        if not data:
            raise CorruptMessageError(f"{self._name}: body shorter than its trailer says")
        buffer[: len(data)] = data
        self._offset += len(data)
        self._crc = zlib.crc32(data, self._crc)
        if self._offset == self._end and self._crc != self._expected_crc:
            raise CorruptMessageError(f"{self._name}: body checksum mismatch")
        return len(data)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
