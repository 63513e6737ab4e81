"""DSN options end to end: the real server, a recipients' MX and the senders' MX.

Mail for `dst.test` goes to one aiosmtpd receiver (`soft...` 451, `hard...` 550, else
250); DSNs go to the sender's domain, routed by `smtp-hosts` to a second receiver,
where each is parsed back with the project's bounce parser (`mtaserver.inbound.dsn`)
and the `email` package. A DSN is a message of ours: it has an `r` record with an
empty `orig`, journaled before the `b` of the recipient it reports, so counting those
once every `b` is written says exactly which messages caused a DSN.
"""

from __future__ import annotations

import email
import email.policy
import json
import smtplib
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from mx_receiver import ReceivedMessage, Receiver
from scripted_mx import ScriptedMx
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until

from mtaserver.inbound.dsn import parse_bounce


@pytest.fixture
def dst() -> Iterator[Receiver]:
    with Receiver(hostname="mx.dst.test") as r:
        yield r


@pytest.fixture
def src() -> Iterator[Receiver]:
    with Receiver(hostname="mx.src.test") as r:
        yield r


def send(
    port: int,
    sender: str,
    rcpts: list[tuple[str, list[str]]],
    body: bytes,
    mail_options: list[str] | None = None,
) -> None:
    """One message over SMTP with per-recipient RCPT parameters (NOTIFY, ORCPT)."""
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo("client.test")
        assert "dsn" in client.esmtp_features
        code, _ = client.mail(sender, mail_options or [])
        assert code == 250
        for address, options in rcpts:
            code, _ = client.rcpt(address, options)
            assert code == 250
        code, _ = client.data(body)
        assert code == 250


def dsns(receiver: Receiver) -> list[ReceivedMessage]:
    return [m for m in receiver.messages if m.mail_from in ("", "<>")]


def parsed(message: ReceivedMessage) -> EmailMessage:
    result = email.message_from_bytes(message.data, policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


def blocks(report: Message) -> list[Message]:
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    payload = status.get_payload()
    assert isinstance(payload, list)
    return payload


def dsn_receptions(tmp_path: Path) -> list[dict[str, str]]:
    """The `r` records of our own DSNs: null reverse-path, to a sender (not to dst.test)."""
    return [
        r
        for r in read_acct(tmp_path / "acct.csv")
        if r["type"] == "r" and not r["orig"] and not r["rcpt"].endswith("@dst.test")
    ]


def records(tmp_path: Path, kind: str) -> list[dict[str, str]]:
    return [r for r in read_acct(tmp_path / "acct.csv") if r["type"] == kind]


def dst_and_src_config(tmp_path: Path, port: int, dst: Receiver, src: Receiver, *extra: str) -> str:
    """Relaying to `dst.test` and the senders' `src.test` (where DSNs go), acct on."""
    return relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv"),
        domain(f"smtp-hosts [127.0.0.1]:{dst.port}", "dst.test"),
        domain(f"smtp-hosts [127.0.0.1]:{src.port}", "src.test"),
        *extra,
    )


def test_delay_dsns_repeat_for_notify_delay_only(
    tmp_path: Path, dst: Receiver, src: Receiver
) -> None:
    """NOTIFY=DELAY gets a delayed DSN each notify-of-delay-every; others, and <>, none."""
    port = free_port()
    conf = relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv"),
        domain(
            f"smtp-hosts [127.0.0.1]:{dst.port}\nretry-after 1s\n"
            "notify-of-delay-every 2s\nbounce-after 1h",
            "dst.test",
        ),
        domain(f"smtp-hosts [127.0.0.1]:{src.port}", "src.test"),
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        send(port, "", [("soft9@dst.test", ["NOTIFY=DELAY"])], b"Subject: null\r\n\r\nx\r\n")
        send(
            port,
            "sender@src.test",
            [
                ("soft1@dst.test", ["NOTIFY=DELAY", "ORCPT=rfc822;First+2Bone@dst.test"]),
                ("soft2@dst.test", []),
                ("soft3@dst.test", ["NOTIFY=NEVER"]),
                ("soft4@dst.test", ["NOTIFY=FAILURE"]),
            ],
            b"Subject: slow\r\n\r\nbody\r\n",
            mail_options=["ENVID=env+2B42", "RET=FULL"],
        )
        assert wait_until(lambda: len(dsns(src)) >= 2, timeout=60)
    notices = dsns(src)
    for notice in notices:
        assert notice.rcpt_tos == ["sender@src.test"]
        report = parse_bounce(notice.data)
        assert report is not None
        assert report.envId == "env+42"
        assert [(r.rcpt, r.action, r.dsnStatus) for r in report.recipients] == [
            ("soft1@dst.test", "delayed", "4.2.0")
        ]
        assert "451 4.2.0 mailbox busy" in report.recipients[0].dsnDiag
        assert report.recipients[0].orcpt.endswith("First+one@dst.test")
        message = parsed(notice)
        assert message["Subject"] == "Delayed Mail (still being retried)"
        (block,) = blocks(message)[1:]
        assert block["Will-Retry-Until"] is not None
        assert b"body" in notice.data  # RET=FULL: the whole original
    assert len({parsed(n)["Message-ID"] for n in notices}) == len(notices)
    # PowerMTA writes no b for a delay: the recipients stay queued, with their t records
    assert records(tmp_path, "b") == []
    assert {r["rcpt"] for r in records(tmp_path, "t")} >= {"soft1@dst.test", "soft9@dst.test"}
    assert {r["rcpt"] for r in dsn_receptions(tmp_path)} == {"sender@src.test"}


def test_success_dsn_and_notify_never(tmp_path: Path, dst: Receiver, src: Receiver) -> None:
    """NOTIFY=SUCCESS is reported relayed (the MX has no DSN); NOTIFY=NEVER silences a bounce."""
    port = free_port()
    conf = dst_and_src_config(tmp_path, port, dst, src)
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        send(
            port,
            "sender@src.test",
            [
                ("ok1@dst.test", ["NOTIFY=SUCCESS,FAILURE"]),
                ("ok2@dst.test", []),
                ("hard1@dst.test", ["NOTIFY=NEVER"]),
                ("hard2@dst.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;hard2@dst.test"]),
            ],
            b"Subject: mixed\r\n\r\nbody\r\n",
        )
        assert wait_until(lambda: len(records(tmp_path, "b")) == 2)
        assert wait_until(lambda: len(dsns(src)) >= 1)
    (notice,) = dsns(src)
    assert len(dsn_receptions(tmp_path)) == 1
    message = parsed(notice)
    assert message.get_content_type() == "multipart/report"
    reported = sorted(
        (str(b["Final-Recipient"]), str(b["Action"]), str(b["Status"])[:1])
        for b in blocks(message)[1:]
    )
    assert reported == [
        ("rfc822; hard2@dst.test", "failed", "5"),
        ("rfc822; ok1@dst.test", "relayed", "2"),
    ]
    assert "relayed to the recipients' mail systems" in notice.data.decode()
    bounce = parse_bounce(notice.data)  # the bounce parser reads only the failure
    assert bounce is not None
    assert [(r.rcpt, r.dsnStatus) for r in bounce.recipients] == [("hard2@dst.test", "5.1.1")]


def test_format_from_return_default_and_suppression(
    tmp_path: Path, dst: Receiver, src: Receiver
) -> None:
    """dsn-format, -text-file, custom-dsn-from-header, dsn-return-default, suppression."""
    port, quiet_port = free_port(), free_port()
    senders_mx = f"smtp-hosts [127.0.0.1]:{src.port}"
    template = tmp_path / "dsn-text.txt"
    template.write_text("Dear $sender: $subject\n$recipients\n")
    conf = relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv"),
        domain(f"smtp-hosts [127.0.0.1]:{dst.port}", "dst.test"),
        domain(senders_mx, "src.test"),
        domain(f"{senders_mx}\ndsn-format plain-text", "plain.test"),
        domain(f"{senders_mx}\ndeliver-local-dsn no", "nodsn.test"),
        domain(f"{senders_mx}\ndsn-text-file {template}", "tmpl.test"),
        settings=f'custom-dsn-from-header "Bounce Desk <bounces@mta.test>"\n'
        f"smtp-listener 127.0.0.1:{quiet_port} source=quiet\n"
        "<source quiet>\n always-allow-relaying yes\n suppress-local-dsn yes\n</source>\n",
        source="dsn-return-default full",
    )
    hard = [("hard@dst.test", [])]
    with ServerProcess(tmp_path, conf, wait_ports=(port, quiet_port)):
        send(quiet_port, "a@src.test", hard, b"Subject: a-quiet\r\n\r\nBODY-A\r\n")
        send(port, "b@nodsn.test", hard, b"Subject: b-nodsn\r\n\r\nBODY-B\r\n")
        send(port, "c@plain.test", hard, b"Subject: c-plain\r\n\r\nBODY-C\r\n", ["RET=FULL"])
        send(port, "d@src.test", hard, b"Subject: d-full\r\n\r\nBODY-D\r\n")
        send(port, "e@src.test", hard, b"Subject: e-hdrs\r\n\r\nBODY-E\r\n", ["RET=HDRS"])
        send(port, "f@tmpl.test", hard, b"Subject: f-tmpl\r\n\r\nBODY-F\r\n")
        assert wait_until(lambda: len(records(tmp_path, "b")) == 6)
        assert sorted(r["rcpt"] for r in dsn_receptions(tmp_path)) == [
            "c@plain.test",
            "d@src.test",
            "e@src.test",
            "f@tmpl.test",
        ]
        assert wait_until(lambda: len(dsns(src)) == 4)
    by_rcpt = {m.rcpt_tos[0]: m for m in dsns(src)}
    plain, full, headers = (
        parsed(by_rcpt[a]) for a in ("c@plain.test", "d@src.test", "e@src.test")
    )
    for message in (plain, full, headers):
        assert message["From"] == "Bounce Desk <bounces@mta.test>"
    # plain-text: only the status fields, nothing of the original, even with RET=FULL
    assert plain.get_content_type() == "text/plain"
    text = plain.get_content().replace("\r\n", "\n")
    per_message, per_rcpt = (email.message_from_string(b) for b in text.strip().split("\n\n"))
    assert per_message["Reporting-MTA"] == "dns; mta.test"
    assert (per_rcpt["Final-Recipient"], per_rcpt["Action"]) == ("rfc822; hard@dst.test", "failed")
    assert per_rcpt["Status"] == "5.1.1"
    assert b"BODY-C" not in by_rcpt["c@plain.test"].data
    assert b"c-plain" not in by_rcpt["c@plain.test"].data
    # dsn-return-default full: the whole original; an explicit RET=HDRS still wins
    returned = next(p for p in full.walk() if p.get_content_type() == "message/rfc822")
    assert b"BODY-D" in returned.as_bytes()
    assert b"BODY-E" not in by_rcpt["e@src.test"].data
    assert any(p.get_content_type() == "text/rfc822-headers" for p in headers.walk())
    # dsn-text-file of the sender's domain: the notification part from the template
    templated = parsed(by_rcpt["f@tmpl.test"])
    notification = next(p for p in templated.walk() if p["Content-Description"] == "Notification")
    assert notification.get_content().replace("\r\n", "\n") == (
        "Dear f@tmpl.test: f-tmpl\n<hard@dst.test>: failed (host 127.0.0.1 said): "
        "550 5.1.1 no such user\n"
    )
    for message in (by_rcpt["d@src.test"], by_rcpt["e@src.test"], by_rcpt["f@tmpl.test"]):
        report = parse_bounce(message.data)
        assert report is not None
        assert [r.rcpt for r in report.recipients] == ["hard@dst.test"]


API_KEY = "dsn_key_0123456789_0123456789_abcdef"


@pytest.mark.parametrize("suppress", [False, True])
def test_transmissions_api_source_options(
    tmp_path: Path, dst: Receiver, src: Receiver, suppress: bool
) -> None:
    """{transmissions-api}: dsn-return-default full returns the body; suppress-local-dsn none."""
    port, api_port = free_port(), free_port()
    conf = dst_and_src_config(
        tmp_path,
        port,
        dst,
        src,
        f"<transmissions-api-listener 127.0.0.1:{api_port}>\n</transmissions-api-listener>\n"
        f"<transmissions-api>\n api-key {API_KEY}\n</transmissions-api>\n"
        "<source {transmissions-api}>\n dsn-return-default full\n"
        f" suppress-local-dsn {'yes' if suppress else 'no'}\n</source>\n",
    )
    body = {
        "return_path": "api@src.test",
        "recipients": [{"address": "hard@dst.test"}, {"address": "ok@dst.test"}],
        "content": {"email_rfc822": "Subject: via-api\r\n\r\nBODY-API\r\n"},
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/api/v1/transmissions",
        data=json.dumps(body).encode(),
        headers={"Authorization": API_KEY, "Content-Type": "application/json"},
        method="POST",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port, api_port)):
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["results"]["total_accepted_recipients"] == 2
        assert wait_until(lambda: len(records(tmp_path, "b")) == 1)
        assert wait_until(lambda: len(records(tmp_path, "d")) >= 1)
        if suppress:
            assert dsn_receptions(tmp_path) == []
            return
        assert wait_until(lambda: len(dsns(src)) == 1)
    (notice,) = dsns(src)
    assert notice.rcpt_tos == ["api@src.test"]
    message = parsed(notice)
    returned = next(p for p in message.walk() if p.get_content_type() == "message/rfc822")
    assert b"BODY-API" in returned.as_bytes()
    report = parse_bounce(notice.data)
    assert report is not None and [r.rcpt for r in report.recipients] == ["hard@dst.test"]


def test_no_success_dsn_when_the_next_hop_offers_dsn(
    tmp_path: Path, dst: Receiver, src: Receiver
) -> None:
    """NOTIFY=SUCCESS goes on to an MX that offers DSN (it reports); to one without, relayed."""
    port = free_port()
    with ScriptedMx() as dsn_mx:
        conf = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            domain(f"smtp-hosts [127.0.0.1]:{dsn_mx.port}\nuse-starttls no", "dsn.test"),
            domain(f"smtp-hosts [127.0.0.1]:{dst.port}", "dst.test"),
            domain(f"smtp-hosts [127.0.0.1]:{src.port}", "src.test"),
        )
        with ServerProcess(tmp_path, conf, wait_ports=(port,)):
            success = ["NOTIFY=SUCCESS", "ORCPT=rfc822;ok@dsn.test"]
            send(port, "a@src.test", [("ok@dsn.test", success)], b"Subject: a\r\n\r\nx\r\n")
            send(port, "b@src.test", [("ok@dst.test", ["NOTIFY=SUCCESS"])], b"Subject: b\r\n\r\n")
            assert wait_until(lambda: len(records(tmp_path, "d")) >= 2)
            # a DSN's r record is journaled before the d it reports on
            assert [r["rcpt"] for r in dsn_receptions(tmp_path)] == ["b@src.test"]
            assert wait_until(lambda: len(dsns(src)) == 1)
        rcpt_lines = [c for c in dsn_mx.commands(0) if c.upper().startswith(b"RCPT")]
    assert rcpt_lines == [b"RCPT TO:<ok@dsn.test> NOTIFY=SUCCESS ORCPT=rfc822;ok@dsn.test"]
    (notice,) = dsns(src)
    (block,) = blocks(parsed(notice))[1:]
    assert (str(block["Final-Recipient"]), str(block["Action"])) == (
        "rfc822; ok@dst.test",
        "relayed",
    )
