"""The messages between the master and its reception workers, and their framing.

Each message is a JSON object framed as `u32 length | payload` (big-endian), on a
pipe: the master writes to a worker's stdin, a worker writes to its descriptor 3
(`HANDOFF_FD`). Plain functions over bytes, no reactor, so both ends and the tests
share them.

Worker to master:

* `{"op": "append", "id": N, "events": [...]}`: journal these events (the `Received`
  of a message whose file the worker has made durable, or the `b` records of dropped
  suppressed recipients). The master answers with
  `{"op": "appended", "id": N, "segment": S, "offset": O}` once they are fsync'd in
  its journal, or `{"op": "failed", "id": N, "error": "..."}`. (A worker may answer
  `250` as soon as its request is in the pipe: see `mtaserver.workers.handoff`.)
* `{"op": "stats", "delta": {"sessions_current": 2, ...}, "suppression": {...}}` about
  once a second while the worker's session counters (`STATS_FIELDS`) or suppression
  counters (`SUPPRESSION_FIELDS`) change, added to the master's; `"top"` is the
  worker's own most sessions at once (an absolute value, not a change).

Master to worker, besides those answers: `{"op": "reload"}` after the master's own
reload succeeded, so the worker reads the same file again; `{"op": "retire"}` when the
master restarts the workers on a new set of listening sockets: stop accepting, finish
the sessions in progress, exit.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

_LENGTH = struct.Struct(">I")
#: A frame larger than this is a broken peer, not a message (a 1,000-recipient
#: envelope is about 100 kB; the message body never crosses the pipe).
MAX_FRAME = 64 * 2**20
#: The worker's end of its pipe to the master.
HANDOFF_FD = 3


#: The reception counters only a worker sees (the master counts received messages itself).
STATS_FIELDS = (
    "sessions_current",
    "sessions_total",
    "messages_rejected",
    "auth_failures",
    "eight_bit_undeclared",
)

#: The suppression counters a worker's RCPT checks move (`show suppression`).
SUPPRESSION_FIELDS = ("refused", "dropped")


class WireError(ValueError):
    """The peer sent something that is not a frame of ours: the pipe is unusable."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a frame."""
    payload = json.dumps(message, separators=(",", ":")).encode("ascii")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in as they arrive, whole messages out."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """The messages completed by `data`; WireError on a malformed frame."""
        self._buffer += data
        while len(self._buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > MAX_FRAME:
                raise WireError(f"frame of {length} bytes")
            end = _LENGTH.size + length
            if len(self._buffer) < end:
                return
            payload = bytes(self._buffer[_LENGTH.size : end])
            del self._buffer[:end]
            try:
                message = json.loads(payload)
            except ValueError as exc:
                raise WireError(f"frame is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("op"), str):
                raise WireError("frame is not a message object")
            yield message
