"""Management API logins against a real slapd: HTTP Basic, `http-auth-ldap-group` levels.

The real server runs with `http-access 127.0.0.1/32 none`, so from 127.0.0.1 only
a directory login (or the API key) grants anything; a second server with
`http-access 127.0.0.1/32 monitor` shows that a login never lowers an address's level
(tests speak from 127.0.0.1 only, so each access level gets its own server). alice is
in mail-admins (admin) and mail-monitors, bob only in mail-monitors (monitor), dave in
no group.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_process import ServerProcess, free_port
from slapd import (
    GROUPS,
    PASSWORDS,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    Slapd,
    ldap_ca,  # noqa: F401 - fixture
    slapd_server,  # noqa: F401 - fixture
)

API_KEY = "mgmt-key-0123456789"

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {tmp}/spool
smtp-listener 127.0.0.1:{smtp}
http-mgmt-port 127.0.0.1:{mgmt}
http-access 127.0.0.1/32 {level}
http-api-key {key}
http-auth-ldap corp
http-auth-ldap-group cn=mail-monitors,{groups} monitor
http-auth-ldap-group cn=mail-admins,{groups} admin
<ldap corp>
    uri {uri}
    start-tls yes
    ca-file {ca_file}
    bind-dn {service_dn}
    bind-password {service_password}
    base-dn {suffix}
    timeout 3s
</ldap>
<domain *>
    type discard
</domain>
"""


class Mgmt:
    def __init__(self, process: ServerProcess, port: int) -> None:
        self.process = process
        self.port = port

    def call(
        self,
        method: str,
        path: str,
        *,
        login: tuple[str, str] | None = None,
        authorization: str | None = None,
        key: str | None = None,
        fields: dict[str, str] | None = None,
    ) -> tuple[int, Any, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers: dict[str, str] = {}
        if login is not None:
            token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        if authorization is not None:
            headers["Authorization"] = authorization
        if key is not None:
            headers["X-API-Key"] = key
        body = None
        if fields is not None:
            body = urllib.parse.urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            decoded: Any = json.loads(data)
        except ValueError:
            decoded = data.decode(errors="replace")
        return response.status, decoded, response

    def status(self, **kw: Any) -> int:
        return self.call("GET", "/status?format=json", **kw)[0]

    def pause(self, domain: str, **kw: Any) -> int:
        fields = {"command": f"pause queue {domain}", "format": "json"}
        return self.call("POST", "/command", fields=fields, **kw)[0]


@contextlib.contextmanager
def running_mgmt(tmp: Path, slapd: Slapd, level: str) -> Iterator[Mgmt]:
    """The real server with `http-access 127.0.0.1/32 LEVEL` and the directory logins,
    as a `Mgmt` client of its mgmt port; stopped on exit."""
    smtp, port = free_port(), free_port()
    config = CONFIG.format(
        level=level,
        tmp=tmp,
        smtp=smtp,
        mgmt=port,
        key=API_KEY,
        groups=GROUPS,
        uri=slapd.uri,
        ca_file=slapd.ca_file,
        service_dn=SERVICE_DN,
        service_password=SERVICE_PASSWORD,
        suffix=SUFFIX,
    )
    process = ServerProcess(tmp, config, wait_ports=(smtp, port)).start()
    try:
        yield Mgmt(process, port)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def mgmt(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
) -> Iterator[Mgmt]:
    """The server where 127.0.0.1 has no access of its own."""
    with running_mgmt(tmp_path_factory.mktemp("mgmt-ldap"), slapd_server, "none") as client:
        yield client


@pytest.fixture(scope="module")
def monitor_mgmt(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
) -> Iterator[Mgmt]:
    """The server where 127.0.0.1 is `monitor` by address."""
    tmp = tmp_path_factory.mktemp("mgmt-ldap-monitor")
    with running_mgmt(tmp, slapd_server, "monitor") as client:
        yield client


def test_admin_group_member_may_change_things(mgmt: Mgmt) -> None:
    """alice (mail-admins -> admin) may read status and pause a queue."""
    login = ("alice", PASSWORDS["alice"])
    assert mgmt.status(login=login) == 200
    assert mgmt.pause("a.test", login=login) == 200


def test_monitor_group_member_may_only_read(mgmt: Mgmt) -> None:
    """bob (mail-monitors -> monitor) may read status but not pause a queue (403)."""
    login = ("bob", PASSWORDS["bob"])
    assert mgmt.status(login=login) == 200
    assert mgmt.pause("b.test", login=login) == 403


def test_member_of_no_group_gets_nothing(mgmt: Mgmt) -> None:
    """dave logs in fine but is in no group: 403 even for reading."""
    assert mgmt.status(login=("dave", PASSWORDS["dave"])) == 403


def test_bad_logins_are_401_with_a_challenge(mgmt: Mgmt) -> None:
    """Wrong or empty password, unknown user, injection, garbage: 401 + WWW-Authenticate."""
    for login in [("alice", "wrong"), ("mallory", "x"), ("alice", ""), ("*", PASSWORDS["alice"])]:
        status, body, response = mgmt.call("GET", "/status", login=login)
        assert status == 401, login
        assert response.getheader("WWW-Authenticate", "").startswith("Basic")
        assert body["status"] == "error"
    status, _, _ = mgmt.call("GET", "/status", authorization="Basic !!!not-base64")
    assert status == 401


def test_without_login_the_address_decides(mgmt: Mgmt, monitor_mgmt: Mgmt) -> None:
    """No Authorization header: a `none` address gets 403, a `monitor` address reads."""
    assert mgmt.status() == 403
    assert monitor_mgmt.status() == 200
    assert monitor_mgmt.pause("d.test") == 403


def test_login_never_lowers_an_address_level(monitor_mgmt: Mgmt) -> None:
    """dave (no group) from the monitor address still has monitor access."""
    assert monitor_mgmt.status(login=("dave", PASSWORDS["dave"])) == 200


def test_api_key_still_works_beside_ldap(mgmt: Mgmt) -> None:
    """`X-API-Key` gives admin with no login; a wrong key is 401."""
    assert mgmt.pause("c.test", key=API_KEY) == 200
    assert mgmt.status(key="wrong-key") == 401


def test_directory_down_is_503_not_access() -> None:
    """With the directory down, a Basic login is a 503 (try later), never a granted level."""
    from reactor_thread import run_in_reactor
    from smtp_helpers import holder_from_text
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThreadPool
    from twisted.web.test.requesthelper import DummyRequest

    from mtaserver.auth.ldap import LdapCheckers
    from mtaserver.http.access import Access
    from mtaserver.http.errors import APIError

    holder = holder_from_text(
        f"http-auth-ldap down\nhttp-auth-ldap-group cn=x,{GROUPS} admin\n"
        f"<ldap down>\n  uri ldap://127.0.0.1:{free_port()}\n  base-dn {SUFFIX}\n</ldap>\n"
    )

    def run_in_thread(work: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work)  # type: ignore[attr-defined]

    access = Access(holder, LdapCheckers(holder, run_in_thread, reactor))
    request = DummyRequest([b"status"])
    token = base64.b64encode(f"alice:{PASSWORDS['alice']}".encode())
    request.requestHeaders.setRawHeaders(b"authorization", [b"Basic " + token])
    with pytest.raises(APIError) as caught:
        run_in_reactor(access.login, request)
    assert caught.value.code == 503
    assert access.level(request) == "none"
