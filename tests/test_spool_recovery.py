"""Recovery: torn and corrupt files, journal replay, adopted and lost messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.logger import LogLevel, globalLogPublisher

from mtaserver.events import Envelope, Outcome, Received, Removed
from mtaserver.spool.journal import Journal, JournalPosition, list_segments, read_events
from mtaserver.spool.msgfile import TRAILER_SIZE, encode
from mtaserver.spool.recovery import PendingRecipient, open_spool, recover
from mtaserver.spool.testing import make_envelope, result_of, run_now


def msg_id(n: int) -> str:
    return f"{n:026x}"


def put_file(spool: Path, envelope: Envelope, body: bytes = b"Subject: x\r\n\r\nhi\r\n") -> Path:
    """A message file written straight to msg/, as the store would leave it."""
    path = spool / "msg" / envelope.msg_id[:8] / envelope.msg_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(envelope, body))
    return path


def journal(spool: Path, *events: object) -> None:
    j = Journal(str(spool / "journal"), run_now)
    result_of(j.append(list(events)))  # type: ignore[arg-type]
    j.close()


def outcome(record: str, env: Envelope, indexes: tuple[int, ...], time: float) -> Outcome:
    return Outcome(record, env.msg_id, indexes, time, env.only(indexes))


@pytest.fixture
def errors():
    """The error-level log events emitted during the test."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_pending_recipients_after_outcomes(tmp_path):
    """After d, b and t outcomes only the non-final recipients are pending, with attempts."""
    env = make_envelope(msg_id(1), 4)
    put_file(tmp_path, env)
    journal(
        tmp_path,
        Received(env, 1.0),
        outcome("d", env, (0,), 2.0),
        outcome("t", env, (1, 2), 3.0),
        outcome("b", env, (2,), 4.0),
        outcome("t", env, (1,), 5.0),
    )
    recovered = recover(str(tmp_path))
    message = recovered.messages[env.msg_id]
    assert message.envelope == env
    assert message.pending == (PendingRecipient(1, 2, 5.0), PendingRecipient(3, 0, None))
    assert recovered.adopted == () and recovered.lost == () and recovered.corrupt == ()


def test_all_final_or_removed_messages_are_removed(tmp_path):
    """A message whose recipients are all final, or that was Removed, loses its file."""
    done = make_envelope(msg_id(1), 2)
    removed = make_envelope(msg_id(2), 1)
    paths = [put_file(tmp_path, done), put_file(tmp_path, removed)]
    journal(
        tmp_path,
        Received(done, 1.0),
        Received(removed, 1.0),
        outcome("d", done, (0,), 2.0),
        outcome("b", done, (1,), 2.0),
        Removed(removed.msg_id, 3.0),
    )
    assert recover(str(tmp_path)).messages == {}
    assert not any(p.exists() for p in paths)


def test_file_without_received_is_adopted_once(tmp_path):
    """A file with no Received record is kept and journaled, so the next start knows it."""
    env = make_envelope(msg_id(7), 2)
    put_file(tmp_path, env)
    first = recover(str(tmp_path))
    assert first.adopted == (env.msg_id,)
    assert [p.index for p in first.messages[env.msg_id].pending] == [0, 1]
    events = [e for _, e in read_events(str(tmp_path / "journal"), JournalPosition(0, 0))]
    assert events == [Received(env, env.time_queued)]
    second = recover(str(tmp_path))
    assert second.adopted == () and env.msg_id in second.messages
    assert second.journal_end == first.journal_end


def test_received_without_file_is_reported_lost(tmp_path, errors):
    """A journaled message with no file is reported as lost and logged, not ignored."""
    env = make_envelope(msg_id(3), 2)
    journal(tmp_path, Received(env, 1.0), outcome("d", env, (0,), 2.0))
    recovered = recover(str(tmp_path))
    assert [(m.msg_id, [p.index for p in m.pending]) for m in recovered.lost] == [(env.msg_id, [1])]
    assert any(e.get("msg_id") == env.msg_id for e in errors)


def test_temp_files_removed(tmp_path):
    """Leftover temporary files (never committed) are removed."""
    path = put_file(tmp_path, make_envelope(msg_id(4)))
    tmp = path.with_name(path.name + ".tmp")
    path.rename(tmp)
    assert recover(str(tmp_path)).messages == {}
    assert not tmp.exists()


def test_torn_file_at_every_offset_goes_to_corrupt(tmp_path, errors):
    """A file cut at any byte offset is moved to corrupt/ and logged, never delivered."""
    env = make_envelope(msg_id(5), 1)
    whole = encode(env, b"Subject: s\r\n\r\nbody\r\n")
    for cut in range(len(whole)):
        path = put_file(tmp_path, env)
        path.write_bytes(whole[:cut])
        recovered = recover(str(tmp_path))
        assert recovered.corrupt == (env.msg_id,), cut
        assert recovered.messages == {}
        assert (tmp_path / "corrupt" / env.msg_id).read_bytes() == whole[:cut]
    assert len([e for e in errors if e.get("msg_id") == env.msg_id]) == len(whole)


def test_flipped_byte_goes_to_corrupt(tmp_path):
    """A flipped byte anywhere is caught: in the envelope or trailer always, in the body
    when bodies are verified."""
    env = make_envelope(msg_id(6), 1)
    body = b"Subject: s\r\n\r\nbody\r\n"
    whole = encode(env, body)
    for at in range(len(whole)):
        data = bytearray(whole)
        data[at] ^= 0x01
        put_file(tmp_path, env).write_bytes(bytes(data))
        in_body = 8 <= at < 8 + len(body)
        recovered = recover(str(tmp_path), verify_bodies=in_body)
        assert recovered.corrupt == (env.msg_id,), at


def test_corrupt_file_leaves_recipients_lost_not_half_delivered(tmp_path):
    """A journaled message whose file is corrupt is reported lost with its pending recipients."""
    env = make_envelope(msg_id(8), 2)
    path = put_file(tmp_path, env)
    journal(tmp_path, Received(env, 1.0))
    path.write_bytes(path.read_bytes()[:-TRAILER_SIZE])
    recovered = recover(str(tmp_path))
    assert recovered.corrupt == (env.msg_id,)
    assert [m.msg_id for m in recovered.lost] == [env.msg_id]


def test_torn_journal_tail_cut_by_recovery(tmp_path):
    """Recovery cuts a torn journal tail and ignores the half-written record."""
    env = make_envelope(msg_id(9), 2)
    put_file(tmp_path, env)
    journal(tmp_path, Received(env, 1.0), outcome("d", env, (0,), 2.0))
    segment = tmp_path / "journal" / "0000000000000000.jnl"
    with segment.open("ab") as f:
        f.write(b"MJR1\x00\x00\x01\x00garbage")
    recovered = recover(str(tmp_path))
    assert [p.index for p in recovered.messages[env.msg_id].pending] == [1]
    assert recovered.journal_end.offset == segment.stat().st_size


def test_live_messages_pin_segments_until_removed(tmp_path):
    """After a restart the live messages' journal segments stay until they are removed."""
    env = make_envelope(msg_id(10), 1)
    put_file(tmp_path, env)
    journal(tmp_path, Received(env, 1.0))
    recovered, j, store = open_spool(str(tmp_path), run_now, segment_bytes=100)
    result_of(j.append([Received(make_envelope(msg_id(11)), 2.0)]))
    result_of(j.append([Received(make_envelope(msg_id(12)), 2.0)]))
    j.set_consumer_position("acct", j.end())
    assert list_segments(str(tmp_path / "journal"))[0] == 0
    result_of(store.remove(env.msg_id))
    j.set_consumer_position("acct", j.end())
    assert list_segments(str(tmp_path / "journal")) == [j.end().segment]
    assert not os.listdir(tmp_path / "msg" / env.msg_id[:8])
    assert recovered.messages.keys() == {env.msg_id}
