"""A real OpenLDAP `slapd` on loopback for the LDAP tests, with a throw-away database.

`Slapd(directory)` writes a `slapd.conf` (mdb backend, a root DN, TLS from a
`trustme` CA), loads `DATA` with `slapadd` while the server is down, and runs
`/usr/sbin/slapd -d stats` in the foreground on `ldap://127.0.0.1:PORT/` and
`ldaps://127.0.0.1:PORT/`, so the test owns the process and its log. The log
lets a test count binds (`binds("uid=alice,...")`). Everything lives in the
temporary directory: no system config, no AppArmor profile paths, no root
privileges needed beyond being able to run slapd.

The `slapd_server` fixture (session scope) is shared; tests that stop a directory build
their own `Slapd`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from server_process import free_port, listening

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SCHEMA = "/etc/ldap/schema"
MODULES = "/usr/lib/ldap"

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "rootsecret"
SERVICE_DN = f"cn=mtaserver,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-secret"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"

# user -> password; carol's password holds every filter metacharacter.
PASSWORDS = {
    "alice": "wonderland",
    "bob": "builder",
    "carol": "p*ss)(w0rd\\",
    "dave": "davepass",
    "dup": "duplicate",
}

DATA = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=contractors,{SUFFIX}
objectClass: organizationalUnit
ou: contractors

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: mtaserver
userPassword: {SERVICE_PASSWORD}

dn: uid=alice,{PEOPLE}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Liddell
mail: alice@example.org
userPassword: {PASSWORDS["alice"]}

dn: uid=bob,{PEOPLE}
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
mail: bob@example.org
userPassword: {PASSWORDS["bob"]}

dn: uid=carol,{PEOPLE}
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: Singer
mail: carol@example.org
userPassword: {PASSWORDS["carol"]}

dn: uid=dave,{PEOPLE}
objectClass: inetOrgPerson
uid: dave
cn: Dave
sn: Nobody
userPassword: {PASSWORDS["dave"]}

dn: uid=dup,{PEOPLE}
objectClass: inetOrgPerson
uid: dup
cn: Dup One
sn: One
userPassword: {PASSWORDS["dup"]}

dn: uid=dup,ou=contractors,{SUFFIX}
objectClass: inetOrgPerson
uid: dup
cn: Dup Two
sn: Two
userPassword: {PASSWORDS["dup"]}

dn: cn=mail-admins,{GROUPS}
objectClass: groupOfNames
cn: mail-admins
member: uid=alice,{PEOPLE}

dn: cn=mail-monitors,{GROUPS}
objectClass: groupOfUniqueNames
cn: mail-monitors
uniqueMember: uid=bob,{PEOPLE}
uniqueMember: uid=alice,{PEOPLE}
"""


def available() -> bool:
    return os.access(SLAPD, os.X_OK) and os.access(SLAPADD, os.X_OK)


class Slapd:
    """One slapd process over its own database and config in `directory`."""

    def __init__(self, directory: Path, ca: trustme.CA, data: str = DATA) -> None:
        self.directory = directory
        self.ca = ca
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.cert_file = directory / "slapd-cert.pem"
        self.key_file = directory / "slapd-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))
        self.db = directory / "db"
        self.db.mkdir(exist_ok=True)
        self.conf = directory / "slapd.conf"
        self.conf.write_text(self._config())
        self.log = directory / "slapd.log"
        self.port = 0
        self.ldaps_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        ldif = directory / "data.ldif"
        ldif.write_text(data)
        subprocess.run(
            [SLAPADD, "-f", str(self.conf), "-l", str(ldif)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _config(self) -> str:
        schemas = "\n".join(
            f"include {SCHEMA}/{name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")
        )
        return f"""\
{schemas}
pidfile {self.directory}/slapd.pid
argsfile {self.directory}/slapd.args
modulepath {MODULES}
moduleload back_mdb
TLSCACertificateFile {self.ca_file}
TLSCertificateFile {self.cert_file}
TLSCertificateKeyFile {self.key_file}
database mdb
maxsize 67108864
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {self.db}
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
"""

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self, timeout: float = 20.0) -> Slapd:
        """Start on fresh free ports (the same ports again after a `stop`)."""
        for _attempt in range(5):
            if not self.port:
                self.port, self.ldaps_port = free_port(), free_port()
            urls = f"ldap://127.0.0.1:{self.port}/ ldaps://127.0.0.1:{self.ldaps_port}/"
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    [SLAPD, "-d", "stats", "-h", urls, "-f", str(self.conf)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if listening(self.port, 0.5) and listening(self.ldaps_port, 0.5):
                    return self
                time.sleep(0.05)
            self.stop()
            self.port = self.ldaps_port = 0  # perhaps a port race: try others
        raise RuntimeError(f"slapd did not start:\n{self.read_log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=20)
            self.proc = None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def binds(self, dn: str) -> int:
        """How many simple binds as `dn` this directory has seen."""
        return self.read_log().count(f'BIND dn="{dn}" method=')

    def __enter__(self) -> Slapd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def user_dn(user: str) -> str:
    return f"uid={user},{PEOPLE}"


@pytest.fixture(scope="session")
def ldap_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def slapd_server(tmp_path_factory: pytest.TempPathFactory, ldap_ca: trustme.CA) -> Iterator[Slapd]:
    """One directory for the whole session (tests must not change its data)."""
    if not available():
        pytest.fail("slapd is not installed: run `make system-deps`")
    server = Slapd(tmp_path_factory.mktemp("slapd"), ldap_ca)
    with server:
        yield server


class SilentServer:
    """A TCP server on loopback that accepts connections and never says a word (a hung LDAP)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True, name="silent-ldap")
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread
        self.sock.close()
        self._thread.join(5)
        for conn in self._held:
            conn.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
