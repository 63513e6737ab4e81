"""WebhookBatcher in-process: `treq.testing.StubTreq` over a twisted.web resource, `task.Clock`.

The same behaviours as `test_webhook_batcher.py` (which keeps the real-socket smoke
tests: real receivers, HTTPS, client certificates), driven without a socket or a
thread: the endpoint is a twisted.web resource served by `StubTreq`, time is a
`task.Clock` (so back-off, `max_delay` and `io_timeout` take no wall-clock time) and
thread work runs at the clock's next step (`ClockThreads`), asynchronous as in a pool
but with no thread.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet import task
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mtaserver.webhooks.batcher import WebhookBatcher

URL = "http://hook.example/acct"


def json_records(start: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"type": "d", "rcpt": f"user{i}@example.com", "n": str(i)}).encode() + b"\n"
        for i in range(start, start + count)
    )


@attrs.define
class Post:
    headers: dict[str, str]
    body: bytes

    @property
    def batch_id(self) -> str:
        return self.headers["x-mtaserver-batch-id"]


class Endpoint(Resource):
    """A webhook receiver: records every POST; fails the first `fail_first`, or hangs."""

    isLeaf = True

    def __init__(self, fail_first: int = 0, hang_first: int = 0) -> None:
        super().__init__()
        self.fail_first = fail_first
        self.hang_first = hang_first
        self.posts: list[Post] = []
        self.accepted: list[Post] = []

    def render_POST(self, request: Request) -> Any:  # noqa: N802 - twisted.web's name
        assert request.content is not None
        headers = {
            name.decode().lower(): values[0].decode()
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        post = Post(headers, request.content.read())
        self.posts.append(post)
        if len(self.posts) <= self.hang_first:
            return NOT_DONE_YET  # never answers
        if len(self.posts) <= self.fail_first:
            request.setResponseCode(503)
            return b"busy"
        self.accepted.append(post)
        return b"ok"

    def records(self) -> bytes:
        """What arrived, as records: gzip undone, CSV header rows dropped after the first."""
        out = b""
        for post in self.accepted:
            body = post.body
            if post.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            out += body
        return out


class ClockThreads:
    """`run_in_thread` for a `task.Clock`: the work runs at the clock's next advance.

    (Inline work, like `run_now`, would make a whole send loop finish inside the call
    that starts it, which the batcher's thread pool never does.)
    """

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    def __call__(self, work: Any) -> Any:
        return task.deferLater(self.clock, 0, work)


class World:
    """One batcher on `acct`, its endpoint and its clock."""

    def __init__(self, acct: Path, endpoint: Endpoint | None = None, **kw: Any) -> None:
        kw.setdefault("max_delay", 5.0)
        kw.setdefault("poll_interval", 1.0)
        kw.setdefault("rand", lambda: 0.5)  # no jitter: retry delays are exact
        self.clock = task.Clock()
        self.endpoint = endpoint or Endpoint()
        self.batcher = WebhookBatcher(
            StubTreq(self.endpoint),
            self.clock,
            acct_path=str(acct),
            url=URL,
            run_in_thread=ClockThreads(self.clock),
            **kw,
        )
        self.batcher.start()

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let `seconds` of fake time pass, in steps."""
        for _ in range(int(seconds / step)):
            self.clock.advance(step)


def test_json_lines_are_posted_as_ndjson_with_a_batch_id(tmp_path: Path) -> None:
    """JSON-lines records arrive once, in order, as application/x-ndjson with a batch id."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 100))
    world = World(acct)
    world.run(10)
    assert world.endpoint.records() == json_records(0, 100)
    post = world.endpoint.accepted[0]
    assert post.headers["content-type"] == "application/x-ndjson"
    assert post.batch_id.endswith("-1")
    assert "content-encoding" not in post.headers
    assert world.batcher.backlog == 0


def test_records_wait_for_max_delay_unless_a_batch_is_full(tmp_path: Path) -> None:
    """A part batch waits max_delay; a full max_bytes batch goes at the next poll."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 2))
    world = World(acct, max_delay=30.0, max_bytes=10_000)
    world.run(25)
    assert world.endpoint.posts == []
    world.run(10)
    assert world.endpoint.records() == json_records(0, 2)
    with open(acct, "ab") as stream:
        stream.write(json_records(2, 300))  # well over 10 000 bytes
    world.run(2)
    assert len(world.endpoint.accepted) >= 2, "the full batches did not wait"


def test_records_written_later_follow_in_new_batches(tmp_path: Path) -> None:
    """Records appended after start are sent in later batches with increasing ids."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    world = World(acct)
    world.run(10)
    with open(acct, "ab") as stream:
        stream.write(json_records(10, 10))
    world.run(10)
    assert world.endpoint.records() == json_records(0, 20)
    ids = [int(p.batch_id.rsplit("-", 1)[1]) for p in world.endpoint.accepted]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) >= 2


def test_a_partial_last_line_waits_until_it_is_complete(tmp_path: Path) -> None:
    """A line the writer has not finished is not shipped until its newline is written."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 3) + b'{"type": "d", "n": "hal')
    world = World(acct)
    world.run(10)
    assert world.endpoint.records() == json_records(0, 3)
    with open(acct, "ab") as stream:
        stream.write(b'f"}\n')
    world.run(10)
    assert world.endpoint.records() == json_records(0, 3) + b'{"type": "d", "n": "half"}\n'


def test_csv_batches_start_with_the_header_row(tmp_path: Path) -> None:
    """CSV is sent as text/csv, each batch with the file's header row, quoted newlines kept."""
    acct = tmp_path / "acct.csv"
    header = b"type,rcpt,text\r\n"
    rows = [f'd,u{i}@x.test,"two\r\nlines {i}"\r\n'.encode() for i in range(40)]
    acct.write_bytes(header + b"".join(rows))
    world = World(acct, max_bytes=400)
    world.run(20)
    posts = world.endpoint.accepted
    assert len(posts) >= 2
    assert all(p.headers["content-type"] == "text/csv" for p in posts)
    assert all(p.body.startswith(header) for p in posts)
    assert b"".join(p.body[len(header) :] for p in posts) == b"".join(rows)


def test_gzip_and_hmac_signature_of_the_body_as_sent(tmp_path: Path) -> None:
    """gzip: Content-Encoding and a compressed body; the signature is HMAC-SHA256 of it."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 50))
    world = World(acct, gzip_body=True, hmac_key="k3y")
    world.run(10)
    (post,) = world.endpoint.accepted
    assert post.headers["content-encoding"] == "gzip"
    assert gzip.decompress(post.body) == json_records(0, 50)
    expected = hmac.new(b"k3y", post.body, hashlib.sha256).hexdigest()
    assert post.headers["x-mtaserver-signature"] == f"sha256={expected}"


def test_extra_headers_are_added_and_may_replace_content_type(tmp_path: Path) -> None:
    """Extra headers are sent; one named Content-Type replaces the default."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 2))
    extra = [("X-Tenant", "blue"), ("Content-Type", "application/json")]
    world = World(acct, extra_headers=extra)
    world.run(10)
    (post,) = world.endpoint.accepted
    assert post.headers["x-tenant"] == "blue"
    assert post.headers["content-type"] == "application/json"


def test_failed_posts_are_retried_with_the_same_batch_id_after_backing_off(
    tmp_path: Path,
) -> None:
    """3 failures: retries after 1, 2 and 4 s (no jitter), the same batch id each time."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 5))
    world = World(acct, endpoint=Endpoint(fail_first=3))
    attempts_at = []
    while len(world.endpoint.posts) < 4 and world.clock.seconds() < 60:
        before = len(world.endpoint.posts)
        world.clock.advance(0.25)
        if len(world.endpoint.posts) > before:
            attempts_at.append(world.clock.seconds())
    gaps = [b - a for a, b in zip(attempts_at, attempts_at[1:], strict=False)]
    assert [round(g) for g in gaps] == [1, 2, 4]
    assert len({p.batch_id for p in world.endpoint.posts}) == 1
    assert world.endpoint.records() == json_records(0, 5)
    assert world.batcher.failures == 0


def test_batches_go_out_strictly_in_order_across_failures(tmp_path: Path) -> None:
    """With small batches and failures, records still arrive once and in file order."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 60))
    world = World(acct, endpoint=Endpoint(fail_first=4), max_bytes=500)
    world.run(120)
    assert world.endpoint.records() == json_records(0, 60)
    ids = [int(p.batch_id.rsplit("-", 1)[1]) for p in world.endpoint.posts]
    assert ids == sorted(ids)


def test_a_silent_receiver_times_out_and_the_batch_is_resent(tmp_path: Path) -> None:
    """A reply slower than io_timeout counts as a failure; the batch is sent again."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 5))
    world = World(acct, endpoint=Endpoint(hang_first=1), io_timeout=20.0)
    world.run(15)
    assert len(world.endpoint.posts) == 1 and world.endpoint.accepted == []
    assert world.batcher.failures == 0, "still waiting, not yet timed out"
    world.run(30)
    assert world.endpoint.records() == json_records(0, 5)
    assert len({p.batch_id for p in world.endpoint.posts}) == 1


def test_stop_and_start_resumes_without_resending(tmp_path: Path) -> None:
    """After stop and a new batcher on the same file, only records written since are sent."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    endpoint = Endpoint()
    first = World(acct, endpoint=endpoint)
    first.run(10)
    assert first.batcher.stop().called
    with open(acct, "ab") as stream:
        stream.write(json_records(10, 5))
    second = World(acct, endpoint=endpoint)
    second.run(10)
    assert endpoint.records() == json_records(0, 15)


def test_a_send_loop_that_finishes_at_once_does_not_stall(tmp_path: Path, run_now: Any) -> None:
    """With thread work and the endpoint answering synchronously, later batches still go."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    clock = task.Clock()
    endpoint = Endpoint()
    batcher = WebhookBatcher(
        StubTreq(endpoint),
        clock,
        acct_path=str(acct),
        url=URL,
        run_in_thread=run_now,
        max_delay=5.0,
        poll_interval=1.0,
        rand=lambda: 0.5,
    )
    batcher.start()
    for _ in range(20):
        clock.advance(0.5)
    with open(acct, "ab") as stream:
        stream.write(json_records(10, 10))
    for _ in range(20):
        clock.advance(0.5)
    assert endpoint.records() == json_records(0, 20)
    batcher.stop()
