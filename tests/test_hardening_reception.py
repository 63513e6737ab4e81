"""Hardening of SMTP reception: what a client says never turns into commands or forged lines.

Pure functions first (ORCPT/ENVID validation, hop and structure limits, the
sender/login rule, the AUTH limiter driven by `task.Clock`), then the protocol over a
StringTransport, then the real server (`twistd -n mtaserver`) over raw sockets on
127.0.0.1, with an aiosmtpd receiver where mail would leave.
"""

from __future__ import annotations

import base64
import os
import socket
from pathlib import Path

import pytest
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, wait_until
from smtp_helpers import Session, holder_from_text
from twisted.internet import task

from mtaserver.auth.limiter import AuthFailureLimiter
from mtaserver.message.addresses import without_controls
from mtaserver.message.limits import (
    ContentChecker,
    ContentLimits,
    check_message,
    count_hops,
)
from mtaserver.smtp.reception import sender_matches_login
from mtaserver.smtp.server_params import (
    ParamError,
    parse_mail_params,
    parse_mailbox,
    parse_rcpt_params,
)

# -- pure functions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "param",
    [
        b"ORCPT=rfc822;x+0D+0ARCPT+20TO:<victim@ext.test>",
        b"ORCPT=rfc822;a+0Ab@c.test",
        b"ORCPT=rfc822;a+00b@c.test",
        b"ORCPT=rfc822;a+7Fb@c.test",
        b"ORCPT=rfc822;a+C3+A9@c.test",
        b"ORCPT=rfc822;",
    ],
)
def test_orcpt_with_control_or_non_ascii_is_refused(param: bytes) -> None:
    """ORCPT whose xtext decodes to a control, DEL, 8-bit octet or nothing: 501 5.5.4."""
    with pytest.raises(ParamError) as caught:
        parse_rcpt_params([param], esmtp=True)
    assert (caught.value.reply.code, caught.value.reply.status) == (501, "5.5.4")


def test_orcpt_valid_xtext_is_kept_decoded() -> None:
    """A proper ORCPT keeps its decoded address (`+2B` is `+`, a space is allowed)."""
    params = parse_rcpt_params([b"ORCPT=rfc822;a+2Bb+20c@d.test"], esmtp=True)
    assert params.orcpt == "rfc822;a+b c@d.test"


@pytest.mark.parametrize("value", [b"ENVID=x+0D+0AQUIT", b"ENVID=a+20b", b"ENVID=a+80"])
def test_envid_with_control_space_or_8bit_is_refused(value: bytes) -> None:
    """ENVID must decode to visible US-ASCII (RFC 3461 4.4): otherwise 501 5.5.4."""
    with pytest.raises(ParamError) as caught:
        parse_mail_params([value], esmtp=True, allow_smtputf8=True)
    assert (caught.value.reply.code, caught.value.reply.status) == (501, "5.5.4")
    assert parse_mail_params([b"ENVID=job+2B7"], True, True).env_id == "job+7"


@pytest.mark.parametrize("address", ["a\x85b@c.test", "a\u2028b@c.test", "ab@c\x9f.test"])
def test_utf8_addresses_refuse_c1_controls_and_line_separators(address: str) -> None:
    """SMTPUTF8 addresses may be UTF-8, but never C1 controls or U+2028/2029."""
    with pytest.raises(ParamError):
        parse_mailbox(address, "5.1.3")
    assert parse_mailbox("jos\u00e9@c.test", "5.1.3").address == "jos\u00e9@c.test"


def test_without_controls() -> None:
    """Control characters (CR, LF, ESC, C1, U+2028) are taken out of header values."""
    assert without_controls("job\r\n7\x1b[0m\x85\u2028") == "job7[0m"


def _headers(count: int, name: str = "X-H") -> bytes:
    return b"".join(f"{name}: {i}\r\n".encode() for i in range(count))


def test_count_hops_counts_received_fields_of_the_header_only() -> None:
    """count_hops counts Received: fields up to the empty line, not continuation or body lines."""
    block = (
        b"Received: from a\r\n\tby b\r\nreceived : from c\r\nSubject: x\r\n\r\nReceived: body\r\n"
    )
    assert count_hops(block) == 2
    assert count_hops(b"Received: x\nReceived: y\n") == 2


def test_check_message_limits() -> None:
    """Hops, header count, header size and MIME depth: each refused just past its limit."""
    limits = ContentLimits(
        max_message_hops=3, max_header_count=10, max_header_size=400, max_mime_depth=2
    )
    body = b"\r\nhello\r\n"
    assert check_message(_headers(3, "Received") + body, limits) is None
    hops = check_message(_headers(4, "Received") + body, limits)
    assert hops is not None and (hops.code, hops.status) == (554, "5.4.6")
    assert check_message(_headers(10) + body, limits) is None
    many = check_message(_headers(11) + body, limits)
    assert many is not None and (many.code, many.status) == (552, "5.3.4")
    big = check_message(b"Subject: " + b"x" * 300 + b"\r\n\t" + b"y" * 200 + b"\r\n" + body, limits)
    assert big is not None and (big.code, big.status) == (552, "5.3.4")
    assert check_message(nested_mime(2), limits) is None
    deep = check_message(nested_mime(3), limits)
    assert deep is not None and (deep.code, deep.status) == (554, "5.6.0")


def nested_mime(depth: int) -> bytes:
    """A message with `depth` multiparts nested in each other."""
    lines = [b"Subject: nested", b'Content-Type: multipart/mixed; boundary="b0"', b""]
    for level in range(1, depth):
        lines += [
            f"--b{level - 1}".encode(),
            f"Content-Type: multipart/mixed;\r\n boundary=b{level}".encode(),
            b"",
        ]
    lines += [f"--b{depth - 1}".encode(), b"Content-Type: text/plain", b"", b"leaf"]
    for level in range(depth - 1, -1, -1):
        lines.append(f"--b{level}--".encode())
    return b"\r\n".join(lines) + b"\r\n"


def rfc822_nested(depth: int) -> bytes:
    """Multiparts each holding an attached message/rfc822 that opens the next multipart."""
    lines = [b"Subject: nested", b'Content-Type: multipart/mixed; boundary="b0"', b""]
    for level in range(1, depth):
        lines += [
            f"--b{level - 1}".encode(),
            b"Content-Type: message/rfc822",
            b"",
            f"Subject: inner {level}".encode(),
            f'Content-Type: multipart/mixed; boundary="b{level}"'.encode(),
            b"",
        ]
    lines += [f"--b{depth - 1}".encode(), b"Content-Type: text/plain", b"", b"leaf"]
    for level in range(depth - 1, -1, -1):
        lines.append(f"--b{level}--".encode())
    return b"\r\n".join(lines) + b"\r\n"


def test_attached_messages_count_towards_mime_depth() -> None:
    """A message/rfc822 part is a level, and the multiparts in its header are seen too."""
    limits = ContentLimits(max_mime_depth=5)
    assert check_message(rfc822_nested(3), limits) is None  # 3 multiparts + 2 messages
    deep = check_message(rfc822_nested(4), limits)  # 4 + 3
    assert deep is not None and (deep.code, deep.status) == (554, "5.6.0")


def test_mime_siblings_do_not_add_depth() -> None:
    """Parts closed before the next one opens do not count as nesting."""
    limits = ContentLimits(max_mime_depth=2)
    parts = b"".join(
        b'--top\r\nContent-Type: multipart/alternative; boundary="in"\r\n\r\n'
        b"--in\r\nContent-Type: text/plain\r\n\r\nx\r\n--in--\r\n"
        for _ in range(20)
    )
    message = b'Content-Type: multipart/mixed; boundary="top"\r\n\r\n' + parts + b"--top--\r\n"
    assert check_message(message, limits) is None


def test_streamed_checking_matches_whole_message() -> None:
    """Fed in batches of any size, the checker finds what the whole-message check finds."""
    limits = ContentLimits(max_mime_depth=3)
    message = nested_mime(4)
    lines = message.split(b"\r\n")[:-1]
    for size in (1, 2, 3, 7, len(lines)):
        checker = ContentChecker(limits)
        for start in range(0, len(lines), size):
            checker.feed(lines[start : start + size])
        assert checker.problem == check_message(message, limits)
        assert checker.problem is not None


@pytest.mark.parametrize(
    ("sender", "login", "patterns", "ok"),
    [
        ("alice@our.test", "alice@our.test", (), True),
        ("Alice@OUR.test", "alice@our.test", (), True),
        ("mallory@our.test", "alice@our.test", (), False),
        ("", "alice@our.test", (), True),
        ("x@bob.test", "bob", ("*@bob.test",), True),
        ("x@bob.test", "bob", ("bob.test",), True),
        ("x@sub.bob.test", "bob", ("*.bob.test",), True),
        ("x@bob.test", "bob", ("*.bob.test",), False),
        ("x@evilbob.test", "bob", ("*.bob.test", "bob.test"), False),
        ("boss@bob.test", "bob", ("bob@bob.test",), False),
        ("bob@bob.test", "bob", ("bob@bob.test",), True),
        ("x@bob.test", "bob", (), False),
    ],
)
def test_sender_matches_login(sender: str, login: str, patterns: tuple[str, ...], ok: bool) -> None:
    """MAIL FROM is the login address or matches a mail-from pattern; `<>` always may."""
    assert sender_matches_login(sender, login, patterns) is ok


def test_limiter_locks_an_account_guessed_from_many_ips() -> None:
    """25 IPs x 4 failures for one account lock it; no IP reaches its own limit of 5/min."""
    clock = task.Clock()
    limiter = AuthFailureLimiter(clock.seconds)
    locked_at = None
    for n in range(100):
        ip = f"10.0.{n // 4}.1"
        assert not limiter.blocked(ip, 5, 60.0)
        if limiter.record_user("alice", 10, 900.0) and locked_at is None:
            locked_at = n + 1
        limiter.record(ip, 60.0)
        clock.advance(1)
    assert locked_at == 10
    assert limiter.user_locked("alice")
    assert limiter.user_locked("ALICE")  # case-folded: no fresh account by case
    assert not limiter.user_locked("bob")
    clock.advance(900)
    assert not limiter.user_locked("alice")


def test_limiter_per_ip_rate_window() -> None:
    """A 3/10s rate: 3 failures within 10 s block, and they age out after 10 s."""
    clock = task.Clock()
    limiter = AuthFailureLimiter(clock.seconds)
    for _ in range(3):
        limiter.record("10.0.0.1", 10.0)
        clock.advance(2)
    assert limiter.blocked("10.0.0.1", 3, 10.0)
    clock.advance(6)
    assert not limiter.blocked("10.0.0.1", 3, 10.0)


# -- the protocol over a StringTransport ----------------------------------------------

PROTO = """
host-name mx.our.test
relay-domain our.test
max-auth-failures-per-user 3
auth-lockout-time 10m
<smtp-user alice>
  password wonderland
</smtp-user>
<source 127.0.0.1/32>
  allow-unencrypted-plain-auth yes
  max-auth-failures-per-minute 100
  smtp-command-timeout 1h
  process-x-job yes
  {extra}
</source>
"""


def proto(extra: str = "") -> Session:
    return Session(holder_from_text(PROTO.format(extra=extra)))


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def test_protocol_locked_account_answers_454_even_for_the_right_password() -> None:
    """Past max-auth-failures-per-user, the right password gets 454 4.7.0 until the lockout ends."""
    s = proto()
    s.command("EHLO c.test")
    for _ in range(3):
        assert s.command(f"AUTH PLAIN {plain('alice', 'wrong')}").startswith("535 5.7.8")
    assert s.command(f"AUTH PLAIN {plain('alice', 'wonderland')}").startswith("454 4.7.0")
    s.clock.advance(601)
    assert s.command(f"AUTH PLAIN {plain('alice', 'wonderland')}").startswith("235 ")


def test_protocol_smtp_max_auth_failure_rate_replaces_per_minute() -> None:
    """`smtp-max-auth-failure-rate 2/h`: the second failure ends the session with 421."""
    s = proto("smtp-max-auth-failure-rate 2/h")
    s.command("EHLO c.test")
    assert s.command(f"AUTH PLAIN {plain('nobody', 'x')}").startswith("535")
    assert s.command(f"AUTH PLAIN {plain('nobody', 'y')}").startswith("421 4.7.0")
    assert s.closed


def test_protocol_auth_identity_with_crlf_fails_without_lookup() -> None:
    """An AUTH name holding CR LF is a failure (535), and is never a locked-out account."""
    s = proto()
    s.command("EHLO c.test")
    name = "alice\r\nRCPT TO:<x@y>"
    assert s.command("AUTH PLAIN " + plain(name, "p")).startswith("535")
    assert not s.factory.limiter.user_locked(name)


@pytest.mark.parametrize("name", ["bad\x01name", "a\x1bb", "x\x7f"])
def test_protocol_helo_with_control_characters_is_refused(name: str) -> None:
    """HELO/EHLO names with control characters: 501 5.5.4 (they end up in Received and acct)."""
    s = proto()
    assert s.command(f"EHLO {name}").startswith("501 5.5.4")
    assert s.command(f"HELO {name}").startswith("501 5.5.4")


def test_protocol_x_job_controls_do_not_reach_the_envelope() -> None:
    """An X-Job value with control characters is stored without them."""
    s = proto()
    s.command("EHLO c.test")
    s.command("MAIL FROM:<a@src.test>")
    s.command("RCPT TO:<v@our.test>")
    s.command("DATA")
    assert s.send("X-Job: camp\x0b7\x1b\r\nSubject: x\r\n\r\nhi\r\n.\r\n")[-1].startswith("250")
    assert s.accepted[0].job_id == "camp7"


def test_protocol_bdat_chunk_split_over_writes_is_skipped() -> None:
    """BDAT is not offered: 502, and its chunk is skipped even when it arrives in pieces."""
    s = proto()
    s.command("EHLO c.test")
    chunk = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<v@our.test>\r\nQUIT\r\n"
    assert s.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk[:10]) == [
        "502 5.5.1 BDAT not available (CHUNKING not offered)"
    ]
    assert s.send(chunk[10:30]) == []
    assert s.send(chunk[30:] + b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert not s.closed
    assert s.command("RCPT TO:<v@our.test>").startswith("503")  # no MAIL ever ran


def test_protocol_size_is_checked_against_spool_space() -> None:
    """MAIL FROM with SIZE asks the spool for that much room."""
    s = proto("max-message-size 0")
    s.command("EHLO c.test")
    assert s.command("MAIL FROM:<a@b.test> SIZE=12345").startswith("250")
    assert s.store.space_needed[-1] == 12345


# -- the real server ------------------------------------------------------------------


def server_config(tmp_path: Path, port: int, source: str = "", extra: str = "") -> str:
    return f"""
host-name mx.our.test
postmaster postmaster@our.test
spool {tmp_path}/spool
smtp-listener 127.0.0.1:{port}
relay-domain our.test
<source 127.0.0.1>
    smtp-command-timeout 30s
{source}
</source>
<domain *>
    retry-after 1s
</domain>
{extra}
"""


class Client:
    """A raw SMTP client socket: send bytes, read whole replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        self.greeting = self.reply()

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def reply(self) -> str:
        """The next complete reply (the last line of a multi-line one); '' once closed."""
        while True:
            end = self.buffer.find(b"\r\n")
            while end >= 0:
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if line[3:4] != b"-":
                    return line.decode("utf-8", "replace")
                end = self.buffer.find(b"\r\n")
            data = self.sock.recv(65536)
            if not data:
                return ""
            self.buffer += data

    def command(self, line: str) -> str:
        self.send(line + "\r\n")
        return self.reply()

    def rest(self) -> list[str]:
        """Every reply until the server closes the connection."""
        out = []
        while (reply := self.reply()) != "":
            out.append(reply)
        return out

    def close(self) -> None:
        self.sock.close()


def test_orcpt_injection_refused_end_to_end(tmp_path: Path, receiver: Receiver) -> None:
    """ORCPT/ENVID with CR LF get 501 5.5.4 at RCPT/MAIL; nothing of them reaches the next hop."""
    port = free_port()
    conf = server_config(
        tmp_path,
        port,
        extra=f"<domain our.test>\n    smtp-hosts [127.0.0.1]:{receiver.port}\n</domain>",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        c = Client(port)
        assert c.command("EHLO client.test").startswith("250 ")
        assert c.command("MAIL FROM:<s@src.test> ENVID=x+0D+0AQUIT").startswith("501 5.5.4")
        assert c.command("MAIL FROM:<s@src.test>").startswith("250 ")
        injected = "RCPT TO:<v@our.test> ORCPT=rfc822;x+0D+0ARCPT+20TO:<victim@ext.test>"
        assert c.command(injected).startswith("501 5.5.4")
        assert c.command("RCPT TO:<v@our.test> ORCPT=rfc822;v@our.test").startswith("250 ")
        assert c.command("DATA").startswith("354")
        assert c.command("Subject: after\r\n\r\nhello\r\n.").startswith("250 ")
        assert c.command("QUIT").startswith("221")
        c.close()
        assert wait_until(lambda: len(receiver.messages) == 1)
    (message,) = receiver.messages
    assert message.rcpt_tos == ["v@our.test"]
    assert not any("victim" in command for command in receiver.commands)
    assert not any("QUIT" in command and "ENVID" in command for command in receiver.commands)


def test_per_user_lockout_real_server(tmp_path: Path) -> None:
    """From 127.0.0.1: three wrong passwords lock alice; the right one then gets 454 4.7.0."""
    port = free_port()
    conf = server_config(
        tmp_path,
        port,
        source="    allow-unencrypted-plain-auth yes\n    max-auth-failures-per-minute 50",
        extra="max-auth-failures-per-user 3\nauth-lockout-time 15m\n"
        "<smtp-user alice>\n    password wonderland\n</smtp-user>",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        for _ in range(3):
            c = Client(port)
            c.command("EHLO client.test")
            assert c.command(f"AUTH PLAIN {plain('alice', 'guess')}").startswith("535 5.7.8")
            c.close()
        c = Client(port)
        c.command("EHLO client.test")
        assert c.command(f"AUTH PLAIN {plain('alice', 'wonderland')}").startswith("454 4.7.0")
        assert c.command("MAIL FROM:<alice@our.test>").startswith("250")  # not authenticated
        assert c.command("RCPT TO:<x@ext.test>").startswith("550 5.7.1")
        c.close()


def test_mail_loop_refused_real_server(tmp_path: Path) -> None:
    """101 Received headers: 554 5.4.6 at the end of DATA; 100 are accepted."""
    port = free_port()
    with ServerProcess(tmp_path, server_config(tmp_path, port), wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        for hops, expected in ((101, "554 5.4.6"), (100, "250 ")):
            assert c.command("MAIL FROM:<s@src.test>").startswith("250")
            assert c.command("RCPT TO:<v@our.test>").startswith("250")
            assert c.command("DATA").startswith("354")
            received = b"".join(b"Received: from h%d by h\r\n" % i for i in range(hops))
            c.send(received + b"Subject: loop\r\n\r\nbody\r\n.\r\n")
            assert c.reply().startswith(expected)
        c.close()


def test_size_against_spool_free_space_real_server(tmp_path: Path) -> None:
    """SIZE= that cannot fit above spool-min-free-space: 452 4.3.1 at MAIL; a small one is fine."""
    port = free_port()
    stat = os.statvfs(tmp_path)
    free = stat.f_bavail * stat.f_frsize
    conf = server_config(
        tmp_path, port, source="    max-message-size 0", extra=f"spool-min-free-space {free // 2}b"
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        assert c.command(f"MAIL FROM:<s@src.test> SIZE={free}").startswith("452 4.3.1")
        assert c.command("MAIL FROM:<s@src.test> SIZE=1000000000000000").startswith("452 4.3.1")
        assert c.command("MAIL FROM:<s@src.test> SIZE=1000").startswith("250 ")
        c.close()


def test_pipelined_body_after_refused_data_is_never_run(tmp_path: Path) -> None:
    """DATA refused (no valid RCPT) with a body sent blind: no line of it runs; the session ends."""
    port = free_port()
    with ServerProcess(tmp_path, server_config(tmp_path, port), wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        c.send(
            "MAIL FROM:<s@src.test>\r\n"
            "RCPT TO:<victim@ext.test>\r\n"
            "DATA\r\n"
            "RCPT TO:<v@our.test>\r\n"
            "MAIL FROM:<other@src.test>\r\n"
            "NOOP\r\n"
            "QUIT\r\n"
        )
        replies = c.rest()
        c.close()
        assert [r[:9] for r in replies] == ["250 2.1.0", "550 5.7.1", "554 5.5.1"]
        c = Client(port)  # with no MAIL at all: 503 and the same
        c.command("EHLO client.test")
        c.send("DATA\r\nMAIL FROM:<s@src.test>\r\nQUIT\r\n")
        assert [r[:9] for r in c.rest()] == ["503 5.5.1"]
        c.close()


def test_bdat_chunk_never_runs_real_server(tmp_path: Path) -> None:
    """BDAT (not offered) gets 502 and its chunk is skipped; without a size the session ends."""
    port = free_port()
    with ServerProcess(tmp_path, server_config(tmp_path, port), wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        chunk = b"MAIL FROM:<s@src.test>\r\nRCPT TO:<v@our.test>\r\nQUIT\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
        assert c.reply().startswith("502 5.5.1")
        assert c.reply().startswith("250 2.0.0")  # the NOOP, and nothing from the chunk
        assert c.command("RCPT TO:<v@our.test>").startswith("503")
        c.send(b"BDAT\r\nMAIL FROM:<s@src.test>\r\nQUIT\r\n")
        assert [r[:9] for r in c.rest()] == ["502 5.5.1"]
        c.close()


def test_require_sender_match_login_real_server(tmp_path: Path) -> None:
    """require-sender-match-login: after AUTH, a MAIL FROM the login does not own gets 553 5.7.1."""
    port = free_port()
    conf = server_config(
        tmp_path,
        port,
        source="    allow-unencrypted-plain-auth yes\n    require-sender-match-login yes",
        extra="<smtp-user alice@our.test>\n    password wonderland\n</smtp-user>\n"
        "<smtp-user bob>\n    password builder\n    mail-from *@bob.test\n</smtp-user>",
    )
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        assert c.command("MAIL FROM:<anyone@src.test>").startswith("250")  # no AUTH: no rule
        c.command("RSET")
        assert c.command(f"AUTH PLAIN {plain('alice@our.test', 'wonderland')}").startswith("235")
        assert c.command("MAIL FROM:<mallory@our.test>").startswith("553 5.7.1")
        assert c.command("MAIL FROM:<alice@our.test>").startswith("250")
        c.close()
        c = Client(port)
        c.command("EHLO client.test")
        assert c.command(f"AUTH PLAIN {plain('bob', 'builder')}").startswith("235")
        assert c.command("MAIL FROM:<bob@our.test>").startswith("553 5.7.1")
        assert c.command("MAIL FROM:<sales@bob.test>").startswith("250")
        c.close()


def test_header_and_mime_limits_real_server(tmp_path: Path) -> None:
    """Too many header fields or header bytes: 552 5.3.4; MIME nested too deep: 554 5.6.0."""
    port = free_port()
    conf = server_config(
        tmp_path,
        port,
        source="    max-header-count 50\n    max-header-size 4k\n    max-mime-depth 3",
    )
    cases = [
        (_headers(51) + b"\r\nbody\r\n", "552 5.3.4"),
        (b"Subject: x\r\n" + b"".join(b"\tfold %d\r\n" % i for i in range(600)), "552 5.3.4"),
        (nested_mime(4), "554 5.6.0"),
        (nested_mime(3), "250 "),
        (_headers(50) + b"\r\nbody\r\n", "250 "),
    ]
    with ServerProcess(tmp_path, conf, wait_ports=(port,)):
        c = Client(port)
        c.command("EHLO client.test")
        for message, expected in cases:
            assert c.command("MAIL FROM:<s@src.test>").startswith("250")
            assert c.command("RCPT TO:<v@our.test>").startswith("250")
            assert c.command("DATA").startswith("354")
            c.send(message + b".\r\n")
            assert c.reply().startswith(expected), message[:60]
        c.close()


def test_protocol_bdat_over_max_message_size_drops_the_session() -> None:
    """A BDAT "chunk" bigger than max-message-size is not skipped forever: the session ends."""
    s = proto("max-message-size 1k")
    s.command("EHLO c.test")
    assert s.send(b"BDAT 2000 LAST\r\nMAIL FROM:<a@b.test>\r\n") == [
        "502 5.5.1 BDAT not available (CHUNKING not offered)"
    ]
    assert s.closed
