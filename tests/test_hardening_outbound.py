"""Outbound hardening, end to end: the real server delivering to misbehaving receivers.

* ORCPT/ENVID with CR/LF (put in the spool directly, bypassing reception) reach the
  wire xtext-encoded: one RCPT, never a second, injected command.
* A reply text with a bare CR, and an ORCPT with CRLF, give one acct CSV line each.
* Only a 354 sends the body: a `250` to DATA, two `250` after the dot, an unsolicited
  reply while idle are desyncs; the mail in flight is `t` (never `d`), the connection
  is dropped and the next message goes out properly over a fresh one.

Receivers are tests/scripted_mx.py (raw sockets, misbehaving per connection).
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from scripted_mx import ScriptedMx
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until

from mtaserver.events import Envelope, Recipient
from mtaserver.spool import open_spool
from mtaserver.spool.testing import run_now


def config(tmp_path: Path, smtp_port: int, mx_port: int) -> str:
    return relay_config(
        tmp_path,
        smtp_port,
        acct_file(tmp_path / "acct.csv"),
        domain(f"retry-after 1s\nmax-smtp-out 1\nsmtp-hosts [127.0.0.1]:{mx_port}"),
    )


def acct(tmp_path: Path) -> list[dict[str, str]]:
    return read_acct(tmp_path / "acct.csv")


def records(tmp_path: Path, kind: str, rcpt: str) -> list[dict[str, str]]:
    return [r for r in acct(tmp_path) if r["type"] == kind and r["rcpt"] == rcpt]


def send(port: int, rcpts: list[str], subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.sendmail("s@src.test", rcpts, f"Subject: {subject}\r\n\r\n{subject}\r\n".encode())


def spool_message(spool: Path, envelope_of: object) -> str:
    """Write a message straight into the spool (as if reception had accepted it)."""
    _, journal, store = open_spool(str(spool), run_now)
    writer = store.begin()
    writer.write(b"Subject: injected\r\n\r\nbody\r\n")
    envelope = envelope_of(writer.msg_id)  # type: ignore[operator]
    done = writer.commit(envelope)
    assert done.called
    journal.close()
    return writer.msg_id


def test_malicious_orcpt_and_envid_go_out_xtext_encoded(tmp_path: Path) -> None:
    """A spooled ORCPT/ENVID with CRLF reaches the wire xtext-encoded: exactly one RCPT."""
    orcpt = "rfc822;x\r\nRCPT TO:<victim@ext.test>"
    env_id = "e1\r\nRSET"
    spool_message(
        tmp_path / "spool",
        lambda msg_id: Envelope(
            msg_id,
            "s@src.test",
            (Recipient("v@our.test", orcpt=orcpt, notify="FAILURE"),),
            time.time(),
            env_id=env_id,
        ),
    )
    port = free_port()
    with ScriptedMx() as mx, ServerProcess(tmp_path, config(tmp_path, port, mx.port), (port,)):
        assert wait_until(lambda: records(tmp_path, "d", "v@our.test"))
        lines = mx.commands(0)
    rcpts = [line for line in lines if line.upper().startswith(b"RCPT")]
    assert rcpts == [
        b"RCPT TO:<v@our.test> NOTIFY=FAILURE ORCPT=rfc822;x+0D+0ARCPT+20TO:<victim@ext.test>"
    ]
    (mail,) = [line for line in lines if line.upper().startswith(b"MAIL")]
    assert b"ENVID=e1+0D+0ARSET" in mail
    assert not any(b"victim" in line and line.startswith(b"RCPT TO:<victim") for line in lines)
    assert not any(line == b"RSET" for line in lines)
    # The acct file holds one line per record even though ORCPT/ENVID carry CRLF.
    text = (tmp_path / "acct.csv").read_text("utf-8")
    assert len(text.splitlines()) == 1 + len(acct(tmp_path))
    (delivered,) = records(tmp_path, "d", "v@our.test")
    assert delivered["orcpt"] == "rfc822;x RCPT TO:<victim@ext.test>"
    assert delivered["envId"] == "e1 RSET"


def test_reply_with_bare_cr_gives_one_acct_line_per_record(tmp_path: Path) -> None:
    """A crafted RCPT reply with a bare CR lands in dsnDiag without breaking the CSV line."""
    port = free_port()
    crafted = b"550 5.1.1 no such user\rtype,forged\r\n550 5.1.1 second line"
    crafted = crafted.replace(b"550 5.1.1 no", b"550-5.1.1 no", 1)
    with (
        ScriptedMx(rcpt_reply=crafted) as mx,
        ServerProcess(tmp_path, config(tmp_path, port, mx.port), (port,)),
    ):
        send(port, ["a@dst.test"], "cr")
        assert wait_until(lambda: records(tmp_path, "b", "a@dst.test"))
    text = (tmp_path / "acct.csv").read_text("utf-8")
    rows = acct(tmp_path)
    assert len(text.splitlines()) == 1 + len(rows)
    assert "\r" not in text
    (bounce,) = records(tmp_path, "b", "a@dst.test")
    assert "no such user type,forged second line" in bounce["dsnDiag"]


def test_data_answered_250_is_not_delivered(tmp_path: Path) -> None:
    """DATA answered 250 (no 354): the recipients get t 4.5.0, never d; later mail goes out."""
    port = free_port()
    modes = {0: "data-250"}
    with (
        ScriptedMx(lambda n: modes.get(n, "normal")) as mx,
        ServerProcess(tmp_path, config(tmp_path, port, mx.port), (port,)),
    ):
        send(port, ["a1@dst.test", "a2@dst.test"], "first")
        assert wait_until(lambda: records(tmp_path, "t", "a2@dst.test"))
        send(port, ["b@dst.test"], "second")
        assert wait_until(lambda: records(tmp_path, "d", "b@dst.test"))
        assert wait_until(lambda: records(tmp_path, "d", "a1@dst.test"))
        bodies = list(mx.bodies)
    for rcpt in ("a1@dst.test", "a2@dst.test"):
        kinds = [r["type"] for r in acct(tmp_path) if r["rcpt"] == rcpt and r["type"] != "r"]
        assert kinds[0] == "t"
        assert kinds.count("d") == 1
        (deferred,) = records(tmp_path, "t", rcpt)
        assert deferred["dsnStatus"] == "4.5.0 (other or undefined protocol status)"
    # No body was sent on the first connection; both messages arrived later, once each.
    assert all(n != 0 for n, _ in bodies)
    assert sorted(b.split(b"\r\n\r\n", 1)[1] for _, b in bodies) == [b"first\r\n", b"second\r\n"]


def test_two_replies_after_the_dot_desync_is_caught(tmp_path: Path) -> None:
    """Two 250s after the dot: that mail is t, and the next one is sent with its body anew."""
    port = free_port()
    modes = {0: "double-250"}
    with (
        ScriptedMx(lambda n: modes.get(n, "normal"), dot_delay=0.5) as mx,
        ServerProcess(tmp_path, config(tmp_path, port, mx.port), (port,)),
    ):
        with smtplib.SMTP("127.0.0.1", port) as client:
            for subject, rcpt in (("first", "a@dst.test"), ("second", "b@dst.test")):
                client.sendmail("s@src.test", [rcpt], f"Subject: x\r\n\r\n{subject}\r\n".encode())
        assert wait_until(lambda: records(tmp_path, "d", "b@dst.test"))
        assert wait_until(lambda: records(tmp_path, "d", "a@dst.test"))
        bodies = list(mx.bodies)
        first_connection = mx.commands(0)
    (deferred,) = records(tmp_path, "t", "a@dst.test")
    assert deferred["dsnStatus"] == "4.5.0 (other or undefined protocol status)"
    # The first connection carried one transaction only: no MAIL after the desync.
    assert sum(1 for line in first_connection if line.upper().startswith(b"MAIL")) == 1
    second = [n for n, body in bodies if body.endswith(b"second\r\n")]
    assert second and all(n != 0 for n in second)


def test_unsolicited_reply_while_idle_drops_the_connection(tmp_path: Path) -> None:
    """A reply while idle closes that connection; the next message goes out on a fresh one."""
    port = free_port()
    modes = {0: "idle-unsolicited"}
    with (
        ScriptedMx(lambda n: modes.get(n, "normal")) as mx,
        ServerProcess(tmp_path, config(tmp_path, port, mx.port), (port,)),
    ):
        send(port, ["a@dst.test"], "first")
        assert wait_until(lambda: records(tmp_path, "d", "a@dst.test"))
        # The client drops the connection on its own, without QUIT.
        assert wait_until(lambda: 0 in mx.unsolicited_sent and 0 in mx.closed)
        assert b"QUIT" not in mx.commands(0)
        send(port, ["b@dst.test"], "second")
        assert wait_until(lambda: records(tmp_path, "d", "b@dst.test"))
        bodies = list(mx.bodies)
    assert [n for n, body in bodies if body.endswith(b"second\r\n")] != []
    assert all(n != 0 for n, body in bodies if body.endswith(b"second\r\n"))
    assert not records(tmp_path, "t", "b@dst.test")
