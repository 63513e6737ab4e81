"""The web console behind `http-auth-ldap`: the browser's login form, then the level.

The real server runs with `http-access 127.0.0.1/32 none`, so from 127.0.0.1 only a
directory login grants anything (the server, directory and `Mgmt` client are those
of `test_ldap_mgmt.py`): alice is in mail-admins (admin), bob in mail-monitors
(monitor). The page answers a request without a login with 401 and a Basic
challenge, which is what makes a browser ask for a user name and password.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import chromium, console_errors
from server_process import wait_until
from slapd import (
    PASSWORDS,
    Slapd,
    ldap_ca,  # noqa: F401 - fixture
    slapd_server,  # noqa: F401 - fixture
)
from test_ldap_mgmt import Mgmt, running_mgmt


@pytest.fixture(scope="module")
def mgmt(
    tmp_path_factory: pytest.TempPathFactory,
    slapd_server: Slapd,  # noqa: F811 - fixture use
) -> Iterator[Mgmt]:
    with running_mgmt(tmp_path_factory.mktemp("console-ldap"), slapd_server, "none") as client:
        yield client


def test_the_page_asks_for_a_login(mgmt: Mgmt) -> None:
    """Without a login `/ui/` is a 401 with a Basic challenge; a directory login reads it."""
    status, _, response = mgmt.call("GET", "/ui/")
    assert status == 401
    assert response.getheader("WWW-Authenticate") == 'Basic realm="mtaserver"'
    assert mgmt.call("GET", "/ui/", login=("bob", "wrong"))[0] == 401
    status, page, _ = mgmt.call("GET", "/ui/", login=("bob", PASSWORDS["bob"]))
    assert status == 200 and "console.js" in page
    assert mgmt.call("GET", "/ui/api/session")[0] == 401  # the data still needs the login
    assert mgmt.call("GET", "/status")[0] == 403  # the APIs keep their 403 without one
    status, reply, _ = mgmt.call("GET", "/ui/api/session", login=("bob", PASSWORDS["bob"]))
    assert (status, reply["data"]["level"]) == (200, "monitor")


@pytest.mark.parametrize(
    ("user", "level", "buttons"), [("alice", "admin", 2), ("bob", "monitor", 0)]
)
def test_a_browser_login_gets_the_users_level(
    mgmt: Mgmt, user: str, level: str, buttons: int
) -> None:
    """Logged in through the challenge, alice (admin) gets the actions, bob (monitor) none."""
    with chromium() as driver:
        driver.get(f"http://{user}:{PASSWORDS[user]}@127.0.0.1:{mgmt.port}/ui/#status")
        assert wait_until(lambda: driver.find_elements("id", "chart-traffic"))
        assert driver.find_element("id", "level").text.endswith(level)
        assert len(driver.find_elements("css selector", ".toolbar button.act")) == buttons
        assert console_errors(driver) == []
