"""Webhook batches: record cutting, back-off, staging crash safety, and a long outage.

Pure parts are table tests; the stager runs on real files in `tmp_path`; the long
outage drives a real `WebhookBatcher` with `task.Clock` (hours of back-off in no time),
`treq.testing.StubTreq` over a twisted.web resource, and thread work run inline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import Request

from mtaserver.spool.testing import run_now
from mtaserver.webhooks.batcher import WebhookBatcher, prepare_body, retry_delay
from mtaserver.webhooks.http import build_headers, parse_extra_headers
from mtaserver.webhooks.staging import (
    BatchContent,
    BatchStager,
    complete_prefix,
    first_record_end,
    staging_directory,
)


def json_records(start: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"type": "d", "n": str(i)}).encode() + b"\n" for i in range(start, start + count)
    )


@pytest.mark.parametrize(
    ("data", "csv", "expected"),
    [
        (b"", False, 0),
        (b"abc", False, 0),
        (b"a\nb\nc", False, 4),
        (b"a\nb\n", False, 4),
        (b'a,"x\ny"\nb', True, 8),
        (b'a,"x\ny', True, 0),
        (b'a,"x""\n"\n', True, 9),
        (b'a,"x\n', True, 0),
        (b'a,b\nc,"d\n', True, 4),
        (b'a,"x\ny"\n', False, 8),
    ],
)
def test_complete_prefix_ends_on_a_record_boundary(data: bytes, csv: bool, expected: int) -> None:
    """Only whole records count; a CSV line break inside quotes does not end a record."""
    assert complete_prefix(data, csv) == expected


def test_first_record_end_skips_quoted_line_breaks() -> None:
    """The first CSV record may span lines inside quotes."""
    assert first_record_end(b'a,"1\n2"\nb\n', True) == 8
    assert first_record_end(b"no newline", True) == 0


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 0.5, 1.0), (2, 0.5, 2.0), (3, 0.0, 3.0), (9, 0.5, 256.0), (10, 0.5, 300.0),
     (50, 0.99, 300.0), (2000, 0.0, 225.0), (1, 0.0, 0.75), (1, 0.999, 1.2495)],
)  # fmt: skip
def test_retry_delay_doubles_from_one_second_to_a_five_minute_cap(
    attempt: int, rand: float, expected: float
) -> None:
    """Back-off is 1 s doubling, jittered by ±25 %, never above 300 s."""
    assert retry_delay(attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    ["no colon here", ": empty name", "Bad Name: x", "Name(x): y"],
)
def test_bad_extra_header_lines_are_rejected_with_their_line(text: str) -> None:
    """A line that is not `Name: value` raises with FILE:LINE."""
    with pytest.raises(ValueError, match=r"^hdrs:2: "):
        parse_extra_headers("X-Ok: 1\n" + text, "hdrs")


def test_extra_headers_parse_and_override_defaults() -> None:
    """Comments and blanks are skipped; an extra header replaces a default of its name."""
    extra = parse_extra_headers("# c\n\nAuthorization: Bearer x\ncontent-type: a/b\n")
    headers = build_headers([("Content-Type", "text/csv"), ("X-A", "1")], extra)
    assert headers.getRawHeaders("Content-Type") == ["a/b"]
    assert headers.getRawHeaders("Authorization") == ["Bearer x"]
    assert headers.getRawHeaders("X-A") == ["1"]


def test_prepare_body_is_deterministic_for_retries() -> None:
    """The same batch gives the same gzip'd body and signature each time."""
    content = BatchContent("s-1", b"h\n", b"r1\nr2\n")
    first = prepare_body(content, gzip_body=True, hmac_key=b"k")
    assert first == prepare_body(content, gzip_body=True, hmac_key=b"k")
    assert first[1] is not None and first[1].startswith("sha256=")


# -- the stager on real files ---------------------------------------------------------


def test_crash_between_staging_and_cursor_save_stages_nothing_twice(tmp_path: Path) -> None:
    """A batch written but not recorded in the cursor is adopted, not cut again."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    stager = BatchStager(str(acct), 10**6)
    stager.recover()
    cursor_path = os.path.join(staging_directory(str(acct)), "cursor.json")
    with open(cursor_path, "rb") as f:
        before = f.read()
    batches, pending = stager.stage(flush=True)
    assert len(batches) == 1 and pending == 0
    with open(cursor_path, "wb") as f:  # as if killed before the cursor was saved
        f.write(before)
    with open(acct, "ab") as f:
        f.write(json_records(10, 5))
    again = BatchStager(str(acct), 10**6)
    recovered = again.recover()
    assert [b.seq for b in recovered] == [1]
    more, _ = again.stage(flush=True)
    assert [b.seq for b in more] == [2]
    assert again.read(recovered[0]).records == json_records(0, 10)
    assert again.read(more[0]).records == json_records(10, 5)


def test_torn_temporary_batch_is_discarded_on_recovery(tmp_path: Path) -> None:
    """A batch file still under its temporary name (killed mid-write) is removed."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 3))
    stager = BatchStager(str(acct), 10**6)
    stager.recover()
    torn = os.path.join(stager.staging, "000000000001.batch.tmp")
    with open(torn, "wb") as f:
        f.write(b'{"id": "x"')
    again = BatchStager(str(acct), 10**6)
    assert again.recover() == []
    assert not os.path.exists(torn)
    batches, _ = again.stage(flush=True)
    assert again.read(batches[0]).records == json_records(0, 3)


def test_unreadable_cursor_is_an_error_not_a_restart(tmp_path: Path) -> None:
    """A damaged cursor raises instead of silently re-sending or skipping records."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(b"")
    os.makedirs(staging_directory(str(acct)))
    with open(os.path.join(staging_directory(str(acct)), "cursor.json"), "w") as f:
        f.write("{broken")
    with pytest.raises(ValueError, match="unreadable webhook cursor"):
        BatchStager(str(acct), 1000).recover()


def test_a_record_longer_than_max_bytes_is_sent_whole(tmp_path: Path) -> None:
    """A single record above the batch limit becomes a batch of its own, not cut."""
    acct = tmp_path / "acct.json"
    big = b'{"x":"' + b"y" * 500 + b'"}\n'
    acct.write_bytes(big + b'{"a":"1"}\n')
    stager = BatchStager(str(acct), 100)
    stager.recover()
    batches, _ = stager.stage(flush=True)
    assert [stager.read(b).records for b in batches] == [big, b'{"a":"1"}\n']


def test_rotated_file_deleted_before_sending_is_logged_and_skipped(tmp_path: Path) -> None:
    """If a rotated file vanished unsent, the stager moves on to the live file."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 3))
    stager = BatchStager(str(acct), 10**6)
    stager.recover()
    assert stager.stage(flush=False) == ([], len(json_records(0, 3)))
    os.rename(acct, tmp_path / "acct-20250101000000.json")
    os.remove(tmp_path / "acct-20250101000000.json")
    acct.write_bytes(json_records(3, 2))
    batches, _ = stager.stage(flush=True)
    assert [stager.read(b).records for b in batches] == [json_records(3, 2)]


# -- a long outage on a fake clock ------------------------------------------------------


class Endpoint(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.attempts: list[str] = []
        self.accepted: list[bytes] = []

    def render_POST(self, request: Request) -> bytes:  # noqa: N802 - twisted.web's name
        assert request.content is not None
        self.attempts.append(request.getHeader("X-Mtaserver-Batch-Id") or "")
        if self.down:
            request.setResponseCode(503)
            return b"down"
        self.accepted.append(request.content.read())
        return b"ok"


def test_endpoint_down_for_hours_gets_everything_in_order_when_it_returns(
    tmp_path: Path,
) -> None:
    """Back-off grows to the 5 min cap during a 6 h outage; then every batch, in order."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    clock = task.Clock()
    endpoint = Endpoint()
    batcher = WebhookBatcher(
        StubTreq(endpoint), clock, acct_path=str(acct), url="http://hook.example/x",
        run_in_thread=run_now, max_bytes=300, max_delay=60.0, rand=lambda: 0.5,
    )  # fmt: skip
    batcher.start()
    delays: list[float] = []
    hours = 6
    for second in range(hours * 3600):
        if second == 3600:
            with open(acct, "ab") as f:
                f.write(json_records(10, 10))
        clock.advance(1)
        if batcher.next_retry_at is not None and (
            not delays or batcher.next_retry_at - clock.seconds() > delays[-1]
        ):
            delays.append(batcher.next_retry_at - clock.seconds())
    assert endpoint.accepted == []
    assert batcher.backlog > 1
    assert batcher.status()["consecutive_failures"] >= 70
    assert max(delays) <= 300.0
    assert delays[:4] == pytest.approx([1.0, 2.0, 4.0, 8.0], abs=1.0)
    assert len(set(endpoint.attempts[:5])) == 1  # the head batch is retried, not skipped
    endpoint.down = False
    clock.advance(301)
    for _ in range(100):
        clock.advance(1)
    assert b"".join(endpoint.accepted) == json_records(0, 20)
    assert batcher.backlog == 0
    ids = [int(a.rsplit("-", 1)[1]) for a in endpoint.attempts if not endpoint.down]
    assert ids == sorted(ids)


def test_stop_during_back_off_keeps_the_batch_for_the_next_start(tmp_path: Path) -> None:
    """Stopping while waiting to retry leaves the batch staged; a new batcher sends it."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 4))
    clock = task.Clock()
    endpoint = Endpoint()
    kw: dict[str, Any] = dict(acct_path=str(acct), url="http://h/x", run_in_thread=run_now,
                              max_delay=1.0)  # fmt: skip
    batcher = WebhookBatcher(StubTreq(endpoint), clock, **kw)
    batcher.start()
    clock.pump([1] * 5)
    assert batcher.failures >= 1
    stopped = batcher.stop()
    assert stopped.called
    endpoint.down = False
    second = WebhookBatcher(StubTreq(endpoint), clock, **kw)
    second.start()
    clock.pump([1] * 5)
    assert endpoint.accepted == [json_records(0, 4)]
    assert len(set(endpoint.attempts)) == 1
