"""The message file format: pure round trips of envelope and body."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.events import Envelope, Recipient
from mtaserver.spool.msgfile import BodyReader, encode, read_envelope

recipients = st.builds(
    Recipient,
    address=st.text(min_size=1, max_size=40),
    orcpt=st.none() | st.text(max_size=40),
    notify=st.sampled_from([None, "NEVER", "SUCCESS,FAILURE"]),
)
envelopes = st.builds(
    Envelope,
    msg_id=st.just("0" * 26),
    sender=st.text(max_size=40),
    recipients=st.lists(recipients, min_size=1, max_size=5).map(tuple),
    time_queued=st.floats(min_value=0, max_value=2e9),
    job_id=st.none() | st.text(max_size=20),
    smtputf8=st.booleans(),
    acct_headers=st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=3),
)


@given(envelope=envelopes, body=st.binary(max_size=5000))
def test_file_round_trip(tmp_path_factory, envelope, body):
    """Any envelope (unicode included) and any body bytes read back unchanged."""
    path = tmp_path_factory.mktemp("m") / "f"
    path.write_bytes(encode(envelope, body))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_envelope(fd, "f") == envelope
        with BodyReader(os.dup(fd), "f") as reader:
            assert reader.readall() == body
    finally:
        os.close(fd)
