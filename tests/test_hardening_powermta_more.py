"""More PowerMTA 5.0 directives real configs use, end to end against real SMTP receivers.

Each test starts the real server (`twistd -n mtaserver`) with a PowerMTA-shaped config,
sends over SMTP and checks what the receiver saw (DKIM verified by dkimpy) or what the
acct file says.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
from pathlib import Path

import pytest
from mx_receiver import Receiver
from server_configs import write_rsa_key
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_powermta import base_config


def acct(tmp_path: Path, types: str | None = None) -> list[dict[str, str]]:
    return read_acct(tmp_path / "acct.csv", types)


def _dkim_tags(data: bytes) -> dict[str, str]:
    """The tags of the first DKIM-Signature of `data`, whitespace removed."""
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    value = head.split("DKIM-Signature:", 1)[1]
    lines = value.split("\r\n")
    folded = [lines[0]] + [line for line in lines[1:] if line[:1] in (" ", "\t")]
    text = "".join("".join(folded).split())
    return dict(tag.split("=", 1) for tag in text.split(";") if "=" in tag)


def test_dkim_algorithm_and_dkim_headers(tmp_path: Path, receiver: Receiver) -> None:
    """`dkim-algorithm rsa-sha1` and `dkim-headers X-Campaign, /^x-list-/` change a=/h=."""
    import dkim

    record = write_rsa_key(tmp_path / "key.pem")
    port = free_port()
    extra = (
        f"domain-key s1,brand.test,{tmp_path}/key.pem\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n"
        "<domain sha1.test>\n dkim-sign yes\n dkim-algorithm rsa-sha1\n"
        " dkim-headers X-Campaign, /^x-list-/\n dkim-headers Received\n</domain>\n"
        "<domain plain.test>\n dkim-sign yes\n</domain>\n"
    )
    message = (
        b"From: <news@brand.test>\r\nSubject: s\r\nX-Campaign: c1\r\n"
        b"X-List-Id: l1\r\nX-Other: o\r\n\r\nbody\r\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("news@brand.test", ["a@sha1.test"], message)
            client.sendmail("news@brand.test", ["b@plain.test"], message)
        assert wait_until(lambda: len(receiver.messages) == 2)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"s1._domainkey.brand.test." else b""

    by_rcpt = {m.rcpt_tos[0]: m.data for m in receiver.messages}
    for data in by_rcpt.values():
        assert dkim.verify(data, dnsfunc=dnsfunc)
    sha1 = _dkim_tags(by_rcpt["a@sha1.test"])
    plain = _dkim_tags(by_rcpt["b@plain.test"])
    assert sha1["a"] == "rsa-sha1" and plain["a"] == "rsa-sha256"
    signed = sha1["h"].lower().split(":")
    assert "x-campaign" in signed and "x-list-id" in signed
    assert "x-other" not in signed and "received" not in signed  # Received is never signed
    assert "subject" in signed  # the usual set stays
    assert "x-campaign" not in plain["h"].lower()


TWO_VMTAS = """
<virtual-mta vm-a>
    smtp-source-host 127.0.0.1 a.out.test
</virtual-mta>
<virtual-mta vm-b>
    smtp-source-host 127.0.0.1 b.out.test
</virtual-mta>
"""


def test_pattern_list_header_lines_choose_the_vmta(tmp_path: Path, receiver: Receiver) -> None:
    """`header NAME /REGEX/ virtual-mta=X` routes by a header, before mail-from lines."""
    port = free_port()
    extra = TWO_VMTAS + (
        "<pattern-list by-header>\n"
        "    header x-eval /^\\s*eval/ virtual-mta=vm-a\n"
        "    header subject /hello world/ virtual-mta=vm-b\n"
        "    mail-from /^abc/ virtual-mta=vm-b\n"
        "</pattern-list>\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n pattern-list by-header\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("abc@x.test", ["h1@dst.test"], b"X-Eval:  EVAL me\r\n\r\nb\r\n")
            client.sendmail("zz@x.test", ["h2@dst.test"], b"Subject: say Hello World\r\n\r\nb\r\n")
            client.sendmail("abc@x.test", ["h3@dst.test"], b"X-Eval: no\r\n\r\nb\r\n")
            client.sendmail("zz@x.test", ["h4@dst.test"], b"Subject: other\r\n\r\nb\r\n")
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 4)
    vmta_by_rcpt = {r["rcpt"]: r["vmta"] for r in acct(tmp_path, "d")}
    assert vmta_by_rcpt == {
        "h1@dst.test": "vm-a",
        "h2@dst.test": "vm-b",
        "h3@dst.test": "vm-b",
        "h4@dst.test": "{default}",
    }
    helo_by_rcpt = {m.rcpt_tos[0]: m.helo for m in receiver.messages}
    assert helo_by_rcpt["h1@dst.test"] == "a.out.test"


def test_acct_user_string_and_privacy_policy(tmp_path: Path, receiver: Receiver) -> None:
    """`user-string` fills `userstring`; `privacy-policy` hashes or redacts rcpt local parts."""
    from mtaserver.accounting.privacy import siphash24

    port = free_port()
    extra = (
        f"<acct-file {tmp_path}/hmac.csv>\n records d\n record-fields d type,rcpt,userstring\n"
        ' user-string unique-id\n privacy-policy hmac-sha256 "secret"\n</acct-file>\n'
        f"<acct-file {tmp_path}/sip.csv>\n records d\n"
        ' privacy-policy siphash "secret"\n</acct-file>\n'
        f"<acct-file {tmp_path}/redact.csv>\n records b\n"
        ' privacy-policy redact "X"\n</acct-file>\n'
        "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("s@src.test", ["Alice@dst.test"], b"Subject: p\r\n\r\nb\r\n")
            client.sendmail("", ["hard.bob@dst.test"], b"Subject: p\r\n\r\nb\r\n")
        assert wait_until(lambda: len(read_acct(tmp_path / "redact.csv")) == 1)
        assert wait_until(lambda: len(read_acct(tmp_path / "sip.csv")) == 1)
        assert wait_until(lambda: len(read_acct(tmp_path / "hmac.csv")) == 1)
    digest = hmac.new(b"secret", b"alice", hashlib.sha256).hexdigest()
    assert read_acct(tmp_path / "hmac.csv") == [
        {"type": "d", "rcpt": f"{digest}@dst.test", "userstring": "unique-id"}
    ]
    sip_key = b"secret".ljust(16, b"\0")
    (sip,) = read_acct(tmp_path / "sip.csv")
    assert sip["rcpt"] == f"{siphash24(sip_key, b'alice'):016x}@dst.test"
    assert "userstring" not in sip  # named only where record-fields asks for it
    (bounce,) = read_acct(tmp_path / "redact.csv")
    assert bounce["rcpt"] == "X@dst.test" and "hard.bob" not in ",".join(bounce.values())
    # the file without a policy keeps the real addresses
    assert {r["rcpt"] for r in acct(tmp_path, "db")} == {"Alice@dst.test", "hard.bob@dst.test"}


def test_privacy_policy_key_is_checked_at_load(tmp_path: Path) -> None:
    """A SipHash key over 16 bytes or a bad hex key is a config error, not a crash."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    for policy in ('siphash "0123456789abcdefXYZ"', "hmac-sha256-hexkey zz"):
        path = tmp_path / "pmta.conf"
        path.write_text(
            f"spool {tmp_path}/spool\n<acct-file {tmp_path}/a.csv>\n"
            f" privacy-policy {policy}\n</acct-file>\n"
        )
        with pytest.raises(ConfigError, match="privacy-policy"):
            load_config(str(path))


def test_rewrite_list_rewrites_mail_from_and_the_from_domain(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A source's `rewrite-list`: mail-from rules change MAIL FROM, from-domain the From."""
    port = free_port()
    extra = (
        "<rewrite-list abc>\n"
        "    mail-from foo@* *@bar.test\n"
        "    mail-from *@old.test bounces@new.test\n"
        "    from-domain *.port25.test bouncedomain.test\n"
        "</rewrite-list>\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n rewrite-list abc\n</source>\n"
    )
    with ServerProcess(tmp_path, base_config(tmp_path, port, receiver.port, extra), (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail(
                "Foo@xyz.test",
                ["r1@dst.test"],
                b"From: Foo <foo@mail.port25.test>\r\nSubject: a\r\n\r\nb\r\n",
            )
            client.sendmail(
                "anyone@OLD.test", ["r2@dst.test"], b"From: <x@port25.test>\r\n\r\nb\r\n"
            )
            client.sendmail("keep@other.test", ["r3@dst.test"], b"Subject: c\r\n\r\nb\r\n")
        assert wait_until(lambda: len(receiver.messages) == 3)
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 3)
    by_rcpt = {m.rcpt_tos[0]: m for m in receiver.messages}
    assert by_rcpt["r1@dst.test"].mail_from == "Foo@bar.test"
    assert b"From: Foo <foo@bouncedomain.test>\r\n" in by_rcpt["r1@dst.test"].data
    assert by_rcpt["r2@dst.test"].mail_from == "bounces@new.test"
    assert b"From: <x@port25.test>\r\n" in by_rcpt["r2@dst.test"].data  # *.port25.test only
    assert by_rcpt["r3@dst.test"].mail_from == "keep@other.test"
    orig = {r["rcpt"]: r["orig"] for r in acct(tmp_path, "d")}
    assert orig == {
        "r1@dst.test": "Foo@bar.test",
        "r2@dst.test": "bounces@new.test",
        "r3@dst.test": "keep@other.test",
    }


def test_rewrite_list_errors(tmp_path: Path) -> None:
    """An undefined rewrite-list, or `mail-from <> *@x`, is a config error."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    cases = {
        "<source 0/0>\n rewrite-list nope\n</source>\n": "no <rewrite-list nope>",
        "<rewrite-list r>\n mail-from <> *@foo.test\n</rewrite-list>\n": "target of <>",
    }
    for text, message in cases.items():
        path = tmp_path / "pmta.conf"
        path.write_text(f"spool {tmp_path}/spool\n{text}")
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))


def test_process_x_dkim_options_choose_the_key(tmp_path: Path, receiver: Receiver) -> None:
    """X-DKIM-Options s=/d= choose the signing key and are removed (kept with retain-...)."""
    import dkim

    records = {
        b"k1._domainkey.brand.test.": write_rsa_key(tmp_path / "k1.pem"),
        b"k2._domainkey.brand.test.": write_rsa_key(tmp_path / "k2.pem"),
        b"e1._domainkey.esp.test.": write_rsa_key(tmp_path / "e1.pem"),
    }
    port, keep_port = free_port(), free_port()
    extra = (
        f"domain-key k1,brand.test,{tmp_path}/k1.pem\n"
        f"domain-key k2,brand.test,{tmp_path}/k2.pem\n"
        f"domain-key e1,esp.test,{tmp_path}/e1.pem\n"
        "<source 127.0.0.1>\n always-allow-relaying yes\n process-x-dkim-options yes\n</source>\n"
        f"smtp-listener 127.0.0.1:{keep_port} source=keep\n"
        "<source keep>\n always-allow-relaying yes\n process-x-dkim-options yes\n"
        " retain-x-dkim-options yes\n</source>\n"
        "<domain dst.test>\n dkim-sign yes\n</domain>\n"
    )
    head = b"From: <news@brand.test>\r\nSubject: s\r\n"
    with ServerProcess(
        tmp_path, base_config(tmp_path, port, receiver.port, extra), (port, keep_port)
    ):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("n@brand.test", ["plain@dst.test"], head + b"\r\nb\r\n")
            client.sendmail(
                "n@brand.test", ["s2@dst.test"], head + b"X-DKIM-Options: s=k2\r\n\r\nb\r\n"
            )
            client.sendmail(
                "n@brand.test",
                ["esp@dst.test"],
                head + b"X-Dkim-Options: s=e1; d=esp.test;\r\n\r\nb\r\n",
            )
        with smtplib.SMTP("127.0.0.1", keep_port) as client:
            client.sendmail(
                "n@brand.test", ["kept@dst.test"], head + b"X-DKIM-Options: s=k2\r\n\r\nb\r\n"
            )
        assert wait_until(lambda: len(receiver.messages) == 4)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records.get(name, b"")

    by_rcpt = {m.rcpt_tos[0]: m.data for m in receiver.messages}
    for data in by_rcpt.values():
        assert dkim.verify(data, dnsfunc=dnsfunc)
    tags = {rcpt: _dkim_tags(data) for rcpt, data in by_rcpt.items()}
    assert (tags["plain@dst.test"]["s"], tags["plain@dst.test"]["d"]) == ("k1", "brand.test")
    assert (tags["s2@dst.test"]["s"], tags["s2@dst.test"]["d"]) == ("k2", "brand.test")
    assert (tags["esp@dst.test"]["s"], tags["esp@dst.test"]["d"]) == ("e1", "esp.test")
    assert tags["kept@dst.test"]["s"] == "k2"
    assert b"x-dkim-options" not in by_rcpt["s2@dst.test"].lower()
    assert b"x-dkim-options" not in by_rcpt["esp@dst.test"].lower()
    assert b"X-DKIM-Options: s=k2\r\n" in by_rcpt["kept@dst.test"]


def spool_scope_config(tmp_path: Path, port: int, mx_port: int, spool: str) -> str:
    """base_config with its `spool` directive replaced by `spool` (a `<spool>` scope)."""
    text = base_config(tmp_path, port, mx_port, RELAY_ONLY)
    return text.replace(f"spool {tmp_path}/spool\n", spool)


RELAY_ONLY = "<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n"


def test_spool_scope_is_the_spool_directory(tmp_path: Path, receiver: Receiver) -> None:
    """`<spool DIR>` (with delete-file-holders) names the spool; min-free-space guards it."""
    port = free_port()
    spool = f"<spool {tmp_path}/pmta-spool>\n    delete-file-holders true\n</spool>\n"
    conf = spool_scope_config(tmp_path, port, receiver.port, spool)
    with ServerProcess(tmp_path, conf, (port,)):
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("s@src.test", ["ok@dst.test"], b"Subject: s\r\n\r\nb\r\n")
        assert wait_until(lambda: len(acct(tmp_path, "d")) == 1)
    assert (tmp_path / "pmta-spool" / "journal").is_dir()
    assert not (tmp_path / "spool").exists()

    full = tmp_path / "full"
    full.mkdir()
    port = free_port()
    spool = f"<spool {tmp_path}/pmta-spool>\n    min-free-space 1000000T\n</spool>\n"
    conf = spool_scope_config(full, port, receiver.port, spool)
    with (
        ServerProcess(full, conf, (port,)),
        smtplib.SMTP("127.0.0.1", port) as client,
        pytest.raises(smtplib.SMTPSenderRefused) as refused,
    ):
        client.sendmail("s@src.test", ["ok2@dst.test"], b"Subject: s\r\n\r\nb\r\n")
    assert refused.value.smtp_code == 452  # 4.3.1 insufficient system storage


def test_several_spools_are_a_config_error(tmp_path: Path) -> None:
    """Two `<spool>` scopes, or `<spool A>` with `spool B`, are refused (one spool here)."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    cases = {
        "<spool /a>\n</spool>\n<spool /b>\n</spool>\n": "only one spool directory",
        "spool /a\n<spool /b>\n</spool>\n": "disagree",
    }
    for text, message in cases.items():
        path = tmp_path / "pmta.conf"
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))


def test_siphash_matches_the_reference_vectors() -> None:
    """SipHash-2-4 (privacy-policy siphash) gives the paper's test vectors."""
    from mtaserver.accounting.privacy import siphash24

    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(8))) == 0x93F5F5799A932462
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5


def test_rewrite_list_mail_from_forms() -> None:
    """Each SOURCE/TARGET form of the guide's table rewrites as documented; first match wins."""
    from mtaserver.config.model import RewriteList

    rules = RewriteList(
        "r",
        mail_from=(
            ("abcd@xyz.test", "fixed@a.test"),
            ("abcd@*", "*@b.test"),
            ("*@xyz.test", "new@*"),
            ("<>", "bounces@c.test"),
            ("*@drop.test", "<>"),
            ("*@*", "*@*"),
        ),
    )
    assert rules.rewrite_mail_from("ABCD@xyz.test") == "fixed@a.test"
    assert rules.rewrite_mail_from("abcd@other.test") == "abcd@b.test"
    assert rules.rewrite_mail_from("zed@xyz.test") == "new@xyz.test"
    assert rules.rewrite_mail_from("") == "bounces@c.test"
    assert rules.rewrite_mail_from("x@drop.test") == ""
    assert rules.rewrite_mail_from("x@y.test") == "x@y.test"
    assert RewriteList("e").rewrite_mail_from("") == ""  # *@* never matches <>


def test_dkim_headers_bad_regex_is_a_config_error(tmp_path: Path) -> None:
    """`dkim-headers /(/` is refused when the config loads, not at signing time."""
    from mtaserver.config.grammar import ConfigError
    from mtaserver.config.load import load_config

    path = tmp_path / "pmta.conf"
    path.write_text(f"spool {tmp_path}/spool\n<domain *>\n dkim-headers foo, /(/\n</domain>\n")
    with pytest.raises(ConfigError, match="dkim-headers: bad regular expression"):
        load_config(str(path))
