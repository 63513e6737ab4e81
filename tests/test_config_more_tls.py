"""TLS versions and ciphers from PowerMTA's directives, against real TLS peers.

`smtp-server-tls-allow-*` / `smtp-server-tls-ciphers` (global), `tls-allow-*` /
`tls-ciphers` in an `<smtp-listener>` and `smtp-tls-allow-*` / `smtp-tls-ciphers` in a
`<domain>` set the range of protocol versions (OpenSSL's min/max proto version) and
the cipher list. Checked with Python's `ssl` clients and an aiosmtpd receiver, each
restricted to one TLS version (trustme certificates).
"""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

import pytest
import trustme
from mx_receiver import Receiver
from server_configs import DISCARD, acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until
from test_hardening_catalog import errors, load


def client(ca: trustme.CA, version: ssl.TLSVersion, ciphers: str | None = None) -> ssl.SSLContext:
    """A client context that speaks exactly `version` (and `ciphers`, for TLS 1.2)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.minimum_version = context.maximum_version = version
    if ciphers:
        context.set_ciphers(ciphers)
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str] | str:
    """STARTTLS with `context`: (version, cipher) on success, else the error's text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        try:
            smtp.starttls(context=context)
        except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            return f"failed: {exc}"
        sock = smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        return str(sock.version()), str((sock.cipher() or ("",))[0])


def test_server_tls_versions_and_listener_override(tmp_path: Path, ca: trustme.CA) -> None:
    """allow-tlsv1.2 no refuses a TLS 1.2 client; a listener's tls-allow-tlsv1.2 yes takes it."""
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "cert.pem")
    )
    port, other = free_port(), free_port()
    config = relay_config(
        tmp_path,
        port,
        DISCARD,
        f"<smtp-listener 127.0.0.1:{other}>\n    tls-allow-tlsv1.2 yes\n</smtp-listener>\n",
        settings=(
            f"smtp-server-tls-certificate {tmp_path}/cert.pem\nsmtp-server-tls-allow-tlsv1.2 no\n"
        ),
    )
    with ServerProcess(tmp_path, config, wait_ports=(port, other)):
        refused = handshake(port, client(ca, ssl.TLSVersion.TLSv1_2))
        assert isinstance(refused, str) and refused.startswith("failed")
        assert handshake(port, client(ca, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"
        assert handshake(other, client(ca, ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"


def test_server_tls_ciphers(tmp_path: Path, ca: trustme.CA) -> None:
    """`smtp-server-tls-ciphers` is the list offered: a TLS 1.2 client outside it fails."""
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "cert.pem")
    )
    port = free_port()
    config = relay_config(
        tmp_path,
        port,
        DISCARD,
        settings=(
            f"smtp-server-tls-certificate {tmp_path}/cert.pem\n"
            "smtp-server-tls-ciphers ECDHE-ECDSA-AES256-GCM-SHA384\n"
        ),
    )
    tls12 = ssl.TLSVersion.TLSv1_2
    with ServerProcess(tmp_path, config, wait_ports=(port,)):
        refused = handshake(port, client(ca, tls12, "ECDHE-ECDSA-AES128-GCM-SHA256"))
        assert isinstance(refused, str) and refused.startswith("failed")
        ok = handshake(
            port, client(ca, tls12, "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")
        )
        assert ok == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")


def test_client_tls_versions(tmp_path: Path, ca: trustme.CA) -> None:
    """`smtp-tls-allow-tlsv1.2 no`: no STARTTLS with a TLS 1.2-only MX; by default, TLS 1.2."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "mx.test").configure_cert(context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    port = free_port()
    with Receiver(tls_context=context, require_tls=True) as mx:
        config = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            domain(f"smtp-hosts [127.0.0.1]:{mx.port}\nretry-after 1h"),
            domain("smtp-tls-allow-tlsv1.2 no", name="strict.test"),
        )
        with ServerProcess(tmp_path, config, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail(
                    "s@src.test", ["a@plain.test", "b@strict.test"], b"Subject: x\r\n\r\nx\r\n"
                )

            def outcome() -> dict[str, dict[str, str]]:
                return {r["rcpt"]: r for r in read_acct(tmp_path / "acct.csv", "d,b,t")}

            assert wait_until(lambda: {"a@plain.test", "b@strict.test"} <= set(outcome()))
        received = [(m.rcpt_tos, m.tls) for m in mx.messages if "a@plain.test" in m.rcpt_tos]
    plain, strict = outcome()["a@plain.test"], outcome()["b@strict.test"]
    assert (plain["type"], plain["dlvTlsProtocol"]) == ("d", "TLSv1.2")
    assert strict["type"] != "d" and "STARTTLS" in strict["dsnDiag"]
    assert received == [(["a@plain.test"], True)]


@pytest.mark.parametrize(
    "line",
    ["smtp-server-tls-ciphers NOSUCHCIPHER\n", "<domain *>\n smtp-tls-ciphers ''\n</domain>\n"],
)
def test_a_cipher_list_that_selects_nothing_is_a_config_error(tmp_path: Path, line: str) -> None:
    """A cipher list OpenSSL cannot use is refused at load, naming the form expected."""
    [message] = errors(tmp_path, line)
    assert "expected an OpenSSL cipher list" in message


def test_tls_policy_layers(tmp_path: Path) -> None:
    """Domain scopes lay their smtp-tls-allow-* over each other, most specific last."""
    config = load(
        tmp_path,
        "<domain *>\n smtp-tls-allow-tlsv1.1 yes\n</domain>\n"
        "<domain old.test>\n smtp-tls-allow-tlsv1 yes\n smtp-tls-ciphers HIGH\n</domain>\n",
    )
    assert config.domain_settings("x.test").smtp_tls.allow == {"tlsv1.1", "tlsv1.2"}
    old = config.domain_settings("old.test").smtp_tls
    assert old.allow == {"tlsv1", "tlsv1.1", "tlsv1.2"} and old.ciphers == "HIGH"


def test_smtp_tls_ca_file_verifies_the_mx(tmp_path: Path, ca: trustme.CA) -> None:
    """require-starttls with smtp-tls-ca-file trusts that CA; without it, the MX is refused."""
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    with Receiver(tls_cert=ca.issue_cert("127.0.0.1"), require_tls=True) as mx:
        config = relay_config(
            tmp_path,
            port,
            acct_file(tmp_path / "acct.csv"),
            domain(f"smtp-hosts [127.0.0.1]:{mx.port}\nretry-after 1h\nrequire-starttls yes"),
            domain(f"smtp-tls-ca-file {tmp_path}/ca.pem", name="private.test"),
        )
        with ServerProcess(tmp_path, config, wait_ports=(port,)):
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.sendmail(
                    "s@src.test", ["a@private.test", "b@public.test"], b"Subject: x\r\n\r\nx\r\n"
                )

            def outcome() -> dict[str, str]:
                rows = read_acct(tmp_path / "acct.csv", "d,b,t,tq")
                return {r["rcpt"] or r["queue"]: r["type"] for r in rows}

            assert wait_until(
                lambda: "a@private.test" in outcome() and "public.test/{default}" in outcome()
            )
    assert outcome()["a@private.test"] == "d"
    assert "b@public.test" not in outcome() or outcome()["b@public.test"] != "d"
    assert [m.rcpt_tos for m in mx.messages if m.tls] == [["a@private.test"]]


def test_smtp_tls_ca_file_without_a_certificate_is_an_error(tmp_path: Path) -> None:
    """An smtp-tls-ca-file holding no PEM certificate is refused at load."""
    (tmp_path / "empty.pem").write_text("nothing here\n")
    text = f"<domain *>\n smtp-tls-ca-file {tmp_path}/empty.pem\n</domain>\n"
    assert errors(tmp_path, text) == [
        f"smtp-tls-ca-file {tmp_path}/empty.pem: no PEM certificate in it"
    ]
