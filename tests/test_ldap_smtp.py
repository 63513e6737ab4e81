"""SMTP AUTH against a real slapd, end to end: `twistd -n mtaserver` with `auth-ldap corp`.

smtplib talks to the real server process from 127.0.0.1 (the only loopback address
tests use); `<source 127.0.0.1>` authenticates against slapd (StartTLS to the directory
with a trustme CA, a service bind). Two more servers hold the other sources: one whose
source asks a directory that accepts connections and never answers, one with a low
`max-auth-failures-per-minute`. The acct file tells who sent a message (`rcvSmtpUser`).
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator

import pytest
import trustme
from server_process import ServerProcess, free_port, read_acct, wait_until
from slapd import (
    PASSWORDS,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    SilentServer,
    Slapd,
    ldap_ca,  # noqa: F401 - fixture
    slapd_server,  # noqa: F401 - fixture
)

from mtaserver.auth.passwords import hash_password

MAIN_SOURCE = """
    auth-ldap corp
    require-starttls-before-auth yes
    max-auth-failures-per-minute 50"""
STRICT_SOURCE = """
    auth-ldap corp
    require-starttls-before-auth yes
    max-auth-failures-per-minute 3"""
HUNG_SOURCE = """
    auth-ldap hung
    allow-unencrypted-plain-auth yes"""

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {tmp}/spool
smtp-listener 127.0.0.1:{port}
smtp-server-tls-certificate {pem}
<ldap corp>
    uri {uri}
    start-tls yes
    ca-file {ca_file}
    bind-dn {service_dn}
    bind-password {service_password}
    base-dn {suffix}
    user-filter (uid=%u)
    timeout 3s
    cache-ttl 5m
</ldap>
<ldap hung>
    uri {hung_uri}
    base-dn {suffix}
    timeout 1s
    cache-ttl 0s
</ldap>
<smtp-user localuser>
    password {local_hash}
</smtp-user>
<source 127.0.0.1>
{source}
</source>
<acct-file {tmp}/acct.csv>
    records r
</acct-file>
<domain *>
    type discard
</domain>
"""


class Mta:
    def __init__(self, process: ServerProcess, port: int, ca: trustme.CA, directory: Slapd):
        self.process = process
        self.port = port
        self.ca = ca
        self.directory = directory

    def client(self, tls: bool = True) -> smtplib.SMTP:
        smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=15)
        smtp.ehlo("client.test")
        if tls:
            context = ssl.create_default_context()
            self.ca.configure_trust(context)
            smtp.starttls(context=context)
            smtp.ehlo("client.test")
        return smtp


def start_mta(
    tmp_path_factory: pytest.TempPathFactory, slapd: Slapd, ca: trustme.CA, source: str
) -> Iterator[Mta]:
    """The real server whose `<source 127.0.0.1>` holds SOURCE."""
    tmp = tmp_path_factory.mktemp("mta")
    pem = tmp / "server.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    port = free_port()
    with SilentServer() as hung:
        config = CONFIG.format(
            tmp=tmp,
            port=port,
            pem=pem,
            uri=slapd.uri,
            ca_file=slapd.ca_file,
            service_dn=SERVICE_DN,
            service_password=SERVICE_PASSWORD,
            suffix=SUFFIX,
            hung_uri=hung.uri,
            local_hash=hash_password("local-secret"),
            source=source,
        )
        with ServerProcess(tmp, config, wait_ports=(port,)) as process:
            yield Mta(process, port, ca, slapd)


@pytest.fixture(scope="module")
def mta(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
    ca: trustme.CA,
) -> Iterator[Mta]:
    """The server that authenticates against slapd over StartTLS."""
    yield from start_mta(tmp_path_factory, slapd_server, ca, MAIN_SOURCE)


@pytest.fixture(scope="module")
def hung_mta(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
    ca: trustme.CA,
) -> Iterator[Mta]:
    """The server whose source asks a directory that never answers."""
    yield from start_mta(tmp_path_factory, slapd_server, ca, HUNG_SOURCE)


@pytest.fixture(scope="module")
def strict_mta(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
    ca: trustme.CA,
) -> Iterator[Mta]:
    """The server that cuts a client off after 3 AUTH failures a minute."""
    yield from start_mta(tmp_path_factory, slapd_server, ca, STRICT_SOURCE)


def auth_plain(smtp: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt (smtplib's `login` would try a second mechanism)."""
    smtp.user, smtp.password = user, password
    try:
        return smtp.auth("PLAIN", smtp.auth_plain)
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def acct_rows(mta: Mta) -> list[dict[str, str]]:
    return read_acct(mta.process.directory / "acct.csv")


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_ldap_login_relays_and_records_rcv_smtp_user(mta: Mta, mechanism: str) -> None:
    """AUTH PLAIN/LOGIN as an LDAP user over STARTTLS relays, and `r` names the user."""
    with mta.client() as smtp:
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        smtp.user, smtp.password = "alice", PASSWORDS["alice"]
        method = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
        code, _ = smtp.auth(mechanism, method, initial_response_ok=mechanism == "PLAIN")
        assert code == 235
        rcpt = f"someone-{mechanism.lower()}@elsewhere.test"
        smtp.sendmail("alice@example.org", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")
    assert wait_until(lambda: any(r["rcpt"] == rcpt for r in acct_rows(mta)))
    (row,) = [r for r in acct_rows(mta) if r["rcpt"] == rcpt]
    assert row["type"] == "r"
    assert row["rcvSmtpUser"] == "alice"


def test_password_with_metacharacters_over_smtp(mta: Mta) -> None:
    """carol's password `p*ss)(w0rd\\` works through SMTP AUTH PLAIN and the directory."""
    with mta.client() as smtp:
        code, _ = smtp.login("carol", PASSWORDS["carol"])
        assert code == 235


def test_wrong_password_is_535(mta: Mta) -> None:
    """A wrong LDAP password gets 535 5.7.8."""
    with mta.client() as smtp:
        code, text = auth_plain(smtp, "bob", "not-builder")
    assert code == 535
    assert text.startswith(b"5.7.8")


@pytest.mark.parametrize("user", ["*)(uid=*", "alice)(|(uid=*", "*"])
def test_injection_user_names_are_535(mta: Mta, user: str) -> None:
    """Filter syntax in the user name matches nobody: 535, even with a real password."""
    with mta.client() as smtp:
        assert auth_plain(smtp, user, PASSWORDS["alice"])[0] == 535


def test_relay_without_auth_is_denied(mta: Mta) -> None:
    """Without AUTH, the same client may not relay (the login is what allows it)."""
    with mta.client() as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
        smtp.sendmail("x@example.org", ["y@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n")
    ((code, _),) = caught.value.recipients.values()
    assert code == 550


def test_local_user_after_ldap(mta: Mta) -> None:
    """A local `<smtp-user>` still logs in where the source names an LDAP directory."""
    with mta.client() as smtp:
        code, _ = smtp.login("localuser", "local-secret")
        assert code == 235


def test_auth_before_starttls_is_538(mta: Mta) -> None:
    """`require-starttls-before-auth`: AUTH on the plain connection gets 538 5.7.11."""
    with mta.client(tls=False) as smtp:
        assert not smtp.has_extn("auth")
        code, text = smtp.docmd("AUTH", "PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=")
        assert code == 538
        assert text.startswith(b"5.7.11")


def test_hung_directory_is_454_not_235(hung_mta: Mta) -> None:
    """A directory that never answers gives 454 4.7.0 (after `timeout 1s`), never 235."""
    with hung_mta.client(tls=False) as smtp:
        code, text = auth_plain(smtp, "alice", PASSWORDS["alice"])
    assert code == 454
    assert text.startswith(b"4.7.0")


def test_failure_limit_per_client_ip(strict_mta: Mta) -> None:
    """After `max-auth-failures-per-minute` (3) failures from an address: 421 and cut off."""
    with strict_mta.client() as smtp:
        codes = [auth_plain(smtp, "dave", f"wrong-{attempt}")[0] for attempt in range(3)]
        assert codes == [535, 535, 421]
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    # A new session from that address is refused at once, even with the right password
    # (that other addresses are not affected is test_smtp_server_protocol's
    # test_auth_failures_then_421, which can speak from several addresses).
    with strict_mta.client() as smtp:
        assert auth_plain(smtp, "dave", PASSWORDS["dave"])[0] == 421
