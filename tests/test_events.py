"""Journal events survive their JSON form unchanged."""

from __future__ import annotations

import json

import attrs
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.events import Envelope, Outcome, QueueFailure, Received, Recipient, event_from_json

text = st.text(max_size=20)
recipients = st.builds(Recipient, text, st.none() | text, st.none() | text)
envelopes = st.builds(
    Envelope,
    msg_id=text,
    sender=text,
    recipients=st.lists(recipients, max_size=4).map(tuple),
    time_queued=st.floats(min_value=0, max_value=2e9),
    src_type=st.sampled_from(["smtp", "api"]),
    job_id=st.none() | text,
    vmta=st.none() | text,
    size=st.integers(min_value=0, max_value=10**9),
    smtputf8=st.booleans(),
    acct_headers=st.dictionaries(text, text, max_size=3),
    is_dsn=st.booleans(),
)


@given(envelopes)
def test_envelope_json_round_trip_covers_every_field(envelope: Envelope) -> None:
    """to_json names every attrs field and from_json restores the envelope.

    `recipient_priorities` is journaled only when a recipient has one (else its default).
    """
    data = json.loads(json.dumps(envelope.to_json()))
    optional = set() if envelope.recipient_priorities else {"recipient_priorities"}
    assert set(data) == {f.name for f in attrs.fields(Envelope)} - optional
    assert Envelope.from_json(data) == envelope


@given(envelopes, st.sampled_from(["d", "b", "t"]))
def test_events_round_trip(envelope: Envelope, record: str) -> None:
    """Received, Outcome and QueueFailure come back equal from their JSON."""
    indexes = tuple(range(len(envelope.recipients)))
    events = [
        Received(envelope, 1.0),
        Outcome(record, envelope.msg_id, indexes, 2.0, envelope, dsn_status="2.0.0"),
        QueueFailure("a.test/{default}", 3.0, dsn_status="4.4.1"),
    ]
    for event in events:
        assert event_from_json(json.loads(json.dumps(event.to_json()))) == event
