"""Acct records: building them from journal events, selecting fields, CSV and JSON lines."""

from __future__ import annotations

import csv
import io
import json

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.accounting.records import (
    FIELDS,
    csv_header,
    csv_line,
    fields_for,
    format_time,
    json_line,
    one_line,
    records_from_event,
)
from mtaserver.events import Envelope, Outcome, QueueFailure, Received, Recipient, Removed

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def envelope(**kw: object) -> Envelope:
    fields: dict[str, object] = dict(
        msg_id="m1",
        sender="from@example.org",
        recipients=(
            Recipient("a@example.com", orcpt="rfc822;A@example.com"),
            Recipient("b@example.com"),
            Recipient("c@example.net"),
        ),
        time_queued=T0,
        src_type="smtp",
        src_mta="client.example.org (192.0.2.1)",
        smtp_user="alice",
        vmta="vmta1",
        vmta_pool="pool1",
        job_id="job-7",
        env_id="env-9",
        size=1234,
        acct_headers={"X-Campaign": "spring", "Subject": 'Hi, "you"'},
    )
    fields.update(kw)
    return Envelope(**fields)  # type: ignore[arg-type]


def test_format_time_is_utc_with_offset() -> None:
    """Times are `YYYY-MM-DD HH:MM:SS+0000` in UTC."""
    assert format_time(T0) == "2023-11-14 22:13:20+0000"
    assert format_time(0) == "1970-01-01 00:00:00+0000"


def test_received_gives_one_r_per_recipient() -> None:
    """A Received event gives one `r` record per recipient, filled from the envelope."""
    records = records_from_event(Received(envelope(), T0 + 1), ["X-Campaign"])
    assert [r["rcpt"] for r in records] == ["a@example.com", "b@example.com", "c@example.net"]
    first = records[0]
    assert first["type"] == "r"
    assert first["timeLogged"] == "2023-11-14 22:13:21+0000"
    assert first["timeQueued"] == "2023-11-14 22:13:20+0000"
    assert first["orig"] == "from@example.org"
    assert first["orcpt"] == "rfc822;A@example.com"
    assert first["dsnAction"] == ""
    assert first["srcType"] == "smtp"
    assert first["srcMta"] == "client.example.org (192.0.2.1)"
    assert first["rcvSmtpUser"] == "alice"
    assert (first["vmta"], first["jobId"], first["envId"]) == ("vmta1", "job-7", "env-9")
    assert first["header_X-Campaign"] == "spring"
    assert records[1]["orcpt"] == ""


def test_header_lookup_is_case_insensitive() -> None:
    """`header_x-campaign` finds the `X-Campaign` header; a missing header is empty."""
    (record, *_) = records_from_event(Received(envelope(), T0), ["header_x-campaign", "X-None"])
    assert record["header_x-campaign"] == "spring"
    assert record["header_X-None"] == ""


def test_outcome_gives_dsn_and_dlv_fields() -> None:
    """An Outcome gives one d/b/t per recipient it carries, with its dsn and dlv fields."""
    env = envelope().only((1, 2))
    outcome = Outcome(
        record="d",
        msg_id="m1",
        rcpt_indexes=(1, 2),
        time=T0 + 65.6,
        envelope=env,
        dsn_status="2.0.0 (success)",
        dsn_diag="smtp;250 2.0.0 OK",
        dsn_mta="mx.example.com (198.51.100.7)",
        dlv_type="smtp",
        dlv_source_ip="192.0.2.10",
        dlv_destination_ip="198.51.100.7",
        dlv_esmtp_available="8BITMIME,SIZE,STARTTLS",
        dlv_size=2048,
        dlv_tls_protocol="TLSv1.3",
        dlv_tls_cipher="TLS_AES_256_GCM_SHA384",
        queue="example.com/vmta2",
        vmta="vmta2",
    )
    records = records_from_event(outcome)
    assert [r["rcpt"] for r in records] == ["b@example.com", "c@example.net"]
    r = records[0]
    assert r["type"] == "d"
    assert r["dsnAction"] == "relayed"
    assert r["dsnStatus"] == "2.0.0 (success)"
    assert r["dsnMta"] == "mx.example.com (198.51.100.7)"
    assert r["bounceCat"] == ""
    assert r["dlvDestinationIp"] == "198.51.100.7"
    assert r["dlvSize"] == "2048"
    assert r["totalSecondsQueued"] == "66"
    assert r["vmta"] == "vmta2"  # the vmta that delivered
    assert r["vmtaPool"] == "pool1"  # from the envelope when the outcome has none
    assert r["dlvTlsProtocol"] == "TLSv1.3"
    assert r["queue"] == "example.com/vmta2"


def test_bounce_and_transient_get_a_category() -> None:
    """`b` and `t` records get a bounce category from the reply when none was given."""
    env = envelope().only((0,))
    bounce = Outcome("b", "m1", (0,), T0, env, dsn_status="5.1.1", dsn_diag="smtp;550 5.1.1 no")
    transient = Outcome("t", "m1", (0,), T0, env, dsn_status="4.2.2", dsn_diag="smtp;452 full")
    (b,) = records_from_event(bounce)
    (t,) = records_from_event(transient)
    assert (b["type"], b["dsnAction"], b["bounceCat"]) == ("b", "failed", "bad-mailbox")
    assert (t["type"], t["dsnAction"], t["bounceCat"]) == ("t", "delayed", "quota-issues")


def test_given_bounce_category_is_kept() -> None:
    """A bounce category chosen by the scheduler wins over classification."""
    env = envelope().only((0,))
    (b,) = records_from_event(Outcome("b", "m1", (0,), T0, env, bounce_cat="other"))
    assert b["bounceCat"] == "other"


def test_queue_failure_gives_one_tq() -> None:
    """A QueueFailure gives one `tq` record with the queue and the reply."""
    event = QueueFailure(
        queue="example.com/vmta1",
        time=T0,
        dsn_status="4.4.1",
        dsn_diag="connection timed out",
        vmta="vmta1",
        dlv_destination_ip="198.51.100.7",
    )
    (tq,) = records_from_event(event, ["X-Campaign"])
    assert tq["type"] == "tq"
    assert tq["queue"] == "example.com/vmta1"
    assert tq["bounceCat"] == "no-answer-from-host"
    assert tq["rcpt"] == "" and tq["timeQueued"] == ""
    assert tq["header_X-Campaign"] == ""


def test_removed_gives_nothing() -> None:
    """Spool bookkeeping writes no record."""
    assert records_from_event(Removed("m1", T0)) == []


def test_fields_for_selection() -> None:
    """record-fields: per type, `*` as the default type, `*` as all fields, headers last."""
    assert fields_for("d") == FIELDS
    sel = {"d": ("type", "rcpt", "*"), "*": ("type", "timeLogged")}
    rest = tuple(f for f in FIELDS if f not in ("type", "rcpt"))
    assert fields_for("d", sel) == ("type", "rcpt", *rest)
    assert fields_for("b", sel) == ("type", "timeLogged")
    assert fields_for("b", sel, ("X-Campaign", "header_X-Campaign")) == (
        "type",
        "timeLogged",
        "header_X-Campaign",
    )
    assert fields_for("t", {"d": ("rcpt",)}) == FIELDS


def test_csv_quotes_per_rfc4180() -> None:
    """Commas and quotes are quoted, quotes doubled, line breaks become a space; CRLF line end."""
    line = csv_line({"a": 'x,"y"', "b": "plain", "c": "l1\r\nl2"}, ["a", "b", "c", "d"])
    assert line == '"x,""y""",plain,l1 l2,\r\n'
    assert csv_header(["type", "rcpt"]) == "type,rcpt\r\n"


def test_json_line_holds_only_selected_fields() -> None:
    """A JSON line is one object with exactly the selected fields."""
    line = json_line({"type": "d", "rcpt": "a@b", "other": "x"}, ["type", "rcpt", "orig"])
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {"type": "d", "rcpt": "a@b", "orig": ""}


values = st.text()
records_st = st.dictionaries(st.sampled_from(FIELDS), values, min_size=1)


@given(records_st)
def test_csv_round_trip(record: dict[str, str]) -> None:
    """A CSV record is one line; parsed, it gives back every value (CR/LF/NUL as spaces)."""
    fields = list(FIELDS)
    line = csv_line(record, fields)
    assert line.endswith("\r\n") and "\r" not in line[:-2] and "\n" not in line[:-2]
    text = csv_header(fields) + line
    (row,) = list(csv.DictReader(io.StringIO(text, newline="")))
    assert row == {f: one_line(record.get(f, "")) for f in fields}


@given(records_st)
def test_json_round_trip(record: dict[str, str]) -> None:
    """A JSON line parsed by json gives back every value, on one line."""
    line = json_line(record, FIELDS)
    assert "\n" not in line[:-1]
    assert json.loads(line) == {f: record.get(f, "") for f in FIELDS}


def test_one_line_removes_every_control_character() -> None:
    """CR/LF, NUL, ESC sequences, DEL and C1 controls never reach an acct field."""
    assert one_line("a\r\nb\x00c\x1b[2Jd\x7fe\x9bf\u2028g") == "a b c [2Jd e f g"
