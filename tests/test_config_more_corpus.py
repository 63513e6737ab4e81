"""The last PowerMTA directives of the three corpus configs, end to end.

* `allow-mailmerge` / `always-allow-api-submission`: no effect, and XMRG is refused by
  name (a mailmerge client learns why, it is not silently let down);
* `<spool DIR> deliver-only yes`: the spool's mail is delivered, new mail refused;
* `assume-delivery-upon-data-termination-timeout` with `smtp-data-termination-timeout`:
  no reply to the final dot in time is a delivery (yes) or a retry (no);
* the corpus configs start with no "not yet" warning outside the `log-*` directives.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from scripted_mx import ScriptedMx
from server_configs import DISCARD, acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_catalog import corpus_text, load


def test_xmrg_is_refused_by_name(tmp_path: Path) -> None:
    """XMRG/XDFN/XPRT get 502 5.5.1 naming mailmerge, with allow-mailmerge yes or not."""
    port = free_port()
    config = relay_config(tmp_path, port, DISCARD, source="allow-mailmerge yes")
    server = ServerProcess(tmp_path, config, wait_ports=(port,))
    with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        code, lines = client.ehlo()
        assert code == 250 and b"XMRG" not in lines
        for command in ("XMRG FROM:<s@src.test>", "XDFN *parts=1", "XPRT 1 LAST"):
            code, text = client.docmd(command)
            assert code == 502 and b"5.5.1 XMRG mailmerge is not supported" in text
        assert client.mail("s@src.test")[0] == 250  # the session goes on


def test_mailmerge_directives_warn_that_xmrg_is_refused(tmp_path: Path) -> None:
    """The allow-mailmerge warning says XMRG is refused, so an operator is told at start."""
    config = load(
        tmp_path,
        "<source 10/8>\n allow-mailmerge yes\n always-allow-api-submission yes\n</source>\n",
    )
    assert [w.line for w in config.warnings] == [2, 3]
    for warning in config.warnings:
        assert "has no effect here" in warning.message
        assert "XMRG, XDFN and XPRT are refused with 502 5.5.1" in warning.message


def test_deliver_only_spool_delivers_and_refuses_new_mail(tmp_path: Path) -> None:
    """`deliver-only yes`: MAIL gets 451 4.3.2; `no` (PowerMTA's default) accepts."""
    port = free_port()
    spool = f"<spool {tmp_path}/spool>\n    deliver-only yes\n</spool>\n"
    config = relay_config(tmp_path, port, DISCARD, spool)
    server = ServerProcess(tmp_path, config, wait_ports=(port,))
    with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        code, text = client.mail("s@src.test")
        assert code == 451 and text.startswith(b"4.3.2") and b"deliver-only" in text
    assert load(tmp_path, spool.replace("yes", "no")).settings.deliver_only is False
    assert load(tmp_path, spool).warnings == ()


def test_deliver_only_spool_still_delivers_what_it_holds(tmp_path: Path) -> None:
    """A message spooled before deliver-only yes is delivered after the restart."""
    import time

    from test_hardening_outbound import spool_message

    from mtaserver.events import Envelope, Recipient

    spool_message(
        tmp_path / "spool",
        lambda msg_id: Envelope(msg_id, "s@src.test", (Recipient("old@dst.test"),), time.time()),
    )
    port = free_port()
    spool = f"<spool {tmp_path}/spool>\n    deliver-only yes\n</spool>\n"
    config = relay_config(tmp_path, port, acct_file(tmp_path / "acct.csv", "d"), DISCARD, spool)
    with ServerProcess(tmp_path, config, wait_ports=(port,)):
        assert wait_until(lambda: read_acct(tmp_path / "acct.csv", "d"))
    assert [r["rcpt"] for r in read_acct(tmp_path / "acct.csv", "d")] == ["old@dst.test"]


@pytest.mark.parametrize("assume", ["yes", "no"])
def test_no_reply_to_the_final_dot(tmp_path: Path, assume: str) -> None:
    """No reply to the dot within smtp-data-termination-timeout: d when assumed, else t."""
    port = free_port()
    with ScriptedMx(dot_delay=60) as mx:
        config = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            domain(
                f"smtp-hosts [127.0.0.1]:{mx.port}\nretry-after 1h\n"
                "smtp-data-termination-timeout 2s\n"
                f"assume-delivery-upon-data-termination-timeout {assume}"
            ),
        )
        with ServerProcess(tmp_path, config, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.sendmail("s@src.test", ["r@dst.test"], b"Subject: x\r\n\r\nbody\r\n")
            assert wait_until(lambda: read_acct(tmp_path / "acct.csv", "d,t"), timeout=60)
            assert mx.bodies  # the body went out: only its reply is missing
    (record,) = read_acct(tmp_path / "acct.csv", "d,t")
    assert record["type"] == ("d" if assume == "yes" else "t")
    assert "timeout after 2s" in record["dsnDiag"]
    if assume == "yes":
        assert "assumed delivered" in record["dsnDiag"] and record["dsnStatus"].startswith("2.")


LOGGING = ("log-",)


@pytest.mark.parametrize("name", ["A_guide.conf", "B_tuck1s.conf", "C_kira41.conf"])
def test_corpus_configs_have_no_not_yet_warnings(tmp_path: Path, name: str) -> None:
    """Each corpus config loads with "no effect" warnings only (the log-* ones aside)."""
    config = load(tmp_path, corpus_text(name, tmp_path))
    not_yet = [
        str(w)
        for w in config.warnings
        if "is not yet implemented" in w.message and not w.message.startswith(LOGGING)
    ]
    assert not_yet == []


def test_http_webhook_log_verbose_logs_each_post(tmp_path: Path) -> None:
    """`http-webhook-log-verbose yes` logs every POST with its batch, size and outcome."""
    from test_webhook_batcher_fast import Endpoint, World, json_records
    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for verbose in (False, True):
            acct = tmp_path / f"acct-{verbose}.json"
            acct.write_bytes(json_records(0, 3))
            world = World(acct, Endpoint(fail_first=1), log_verbose=verbose)
            world.run(10)
            assert world.batcher.sent_batches == 1
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "{lines} records" in str(e.get("log_format", ""))]
    assert [(e["lines"], str(e["outcome"])[:12]) for e in lines] == [
        (3, "not accepted"),
        (3, "accepted"),
    ]
    assert "HTTP 503" in str(lines[0]["outcome"])
