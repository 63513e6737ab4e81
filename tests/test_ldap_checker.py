"""LdapChecker against a real slapd on loopback: logins, injection, outages, TLS, cache, groups.

The checker runs on the reactor thread of `reactor_thread` with the reactor's
thread pool as its `run_in_thread`, as in the server; slapd is the session
fixture from `tests/slapd.py` (its log counts binds, so a test can see whether a
login reached the directory).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from reactor_thread import run_in_reactor, run_in_thread
from server_process import free_port, wait_until
from slapd import (
    GROUPS,
    PASSWORDS,
    SERVICE_DN,
    SERVICE_PASSWORD,
    SUFFIX,
    SilentServer,
    Slapd,
    ldap_ca,  # noqa: F401 - fixture
    slapd_server,  # noqa: F401 - fixture
    user_dn,
)
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from mtaserver.auth.ldap import LdapChecker, LdapUnavailable, ldap_access_level
from mtaserver.config.model import LdapSettings
from mtaserver.config.values import LdapGroupAccess


def settings(uri: str, **overrides: Any) -> LdapSettings:
    values: dict[str, Any] = {
        "name": "corp",
        "uri": uri,
        "base_dn": SUFFIX,
        "user_filter": "(uid=%u)",
        "cache_ttl": 0.0,
        "timeout": 2.0,
    }
    values.update(overrides)
    return LdapSettings(**values)


def make_checker(uri: str, clock: Any = None, **overrides: Any) -> LdapChecker:
    return LdapChecker(settings(uri, **overrides), run_in_thread, clock or reactor)


def check(checker: LdapChecker, user: str, password: str) -> bool:
    return bool(run_in_reactor(checker.check, user, password, timeout=30))


def check_error(checker: LdapChecker, user: str, password: str) -> BaseException:
    """The exception `check` fails with (it must fail, not succeed or say no)."""
    with pytest.raises(Exception) as caught:
        check(checker, user, password)
    return caught.value


@pytest.fixture
def directory(slapd_server: Slapd) -> Slapd:  # noqa: F811 - fixture use
    return slapd_server


def test_good_login(directory: Slapd) -> None:
    """The right password for an existing user is accepted (search, then bind as the entry)."""
    before = directory.binds(user_dn("alice"))
    assert check(make_checker(directory.uri), "alice", PASSWORDS["alice"]) is True
    assert directory.binds(user_dn("alice")) == before + 1


def test_wrong_password(directory: Slapd) -> None:
    """A wrong password is refused (a 535, not an outage)."""
    assert check(make_checker(directory.uri), "alice", "not-wonderland") is False


def test_unknown_user(directory: Slapd) -> None:
    """A user the filter does not find is refused without a bind."""
    assert check(make_checker(directory.uri), "mallory", "anything") is False


def test_empty_password_refused_before_ldap(directory: Slapd) -> None:
    """An empty password never reaches the directory (it would be an anonymous bind)."""
    checker = make_checker(directory.uri)
    before = directory.binds(user_dn("alice"))
    assert check(checker, "alice", "") is False
    assert checker.directory_calls == 0
    assert directory.binds(user_dn("alice")) == before


def test_empty_user_refused_before_ldap(directory: Slapd) -> None:
    """An empty user name is refused without asking the directory."""
    checker = make_checker(directory.uri)
    assert check(checker, "", PASSWORDS["alice"]) is False
    assert checker.directory_calls == 0


def test_password_with_filter_metacharacters(directory: Slapd) -> None:
    """The password is sent as is: `p*ss)(w0rd\\` logs carol in, an escaped form would not."""
    checker = make_checker(directory.uri)
    assert check(checker, "carol", PASSWORDS["carol"]) is True
    assert check(checker, "carol", r"p\2ass\29\28w0rd\5c") is False


@pytest.mark.parametrize(
    "user",
    ["*)(uid=*", "alice)(|(uid=*", "*", "al*", "alice)(uid=bob", "alice\x00", "(uid=alice)"],
)
def test_filter_injection_user_names(directory: Slapd, user: str) -> None:
    """User names carrying filter syntax match nothing, even with a real password."""
    checker = make_checker(directory.uri)
    for password in (PASSWORDS["alice"], PASSWORDS["bob"]):
        assert check(checker, user, password) is False


def test_injection_reaches_slapd_escaped(directory: Slapd) -> None:
    """slapd sees `*` as the escaped value \\2a, not as a wildcard."""
    check(make_checker(directory.uri), "zz*)(uid=*", "x")
    assert r'filter="(uid=zz\2A\29\28uid=\2A)"' in directory.read_log()


def test_several_entries_is_a_failure(directory: Slapd) -> None:
    """A name matching two entries (uid=dup in two OUs) is refused even with the right password."""
    assert check(make_checker(directory.uri), "dup", PASSWORDS["dup"]) is False


def test_user_filter_on_another_attribute(directory: Slapd) -> None:
    """`user-filter (mail=%u)` logs in by mail address and binds as the entry found."""
    checker = make_checker(directory.uri, user_filter="(&(objectClass=inetOrgPerson)(mail=%u))")
    assert check(checker, "bob@example.org", PASSWORDS["bob"]) is True
    assert check(checker, "bob", PASSWORDS["bob"]) is False


def test_service_bind(directory: Slapd) -> None:
    """With `bind-dn`, searches run as the service account."""
    checker = make_checker(directory.uri, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD)
    before = directory.binds(SERVICE_DN)
    assert check(checker, "bob", PASSWORDS["bob"]) is True
    assert directory.binds(SERVICE_DN) == before + 1


def test_wrong_service_password_is_an_outage(directory: Slapd) -> None:
    """A refused service bind is a temporary failure, not a "wrong password" for the user."""
    checker = make_checker(directory.uri, bind_dn=SERVICE_DN, bind_password="nope")
    assert isinstance(check_error(checker, "bob", PASSWORDS["bob"]), LdapUnavailable)


def test_service_connections_are_reused(directory: Slapd) -> None:
    """Ten logins in a row bind the service account once: the search connection is pooled."""
    checker = make_checker(directory.uri, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD)
    before = directory.binds(SERVICE_DN)
    for _ in range(10):
        assert check(checker, "bob", PASSWORDS["bob"]) is True
    assert directory.binds(SERVICE_DN) == before + 1


def test_directory_down(directory: Slapd) -> None:
    """A port nobody listens on gives an outage at once (refused), not at the deadline."""
    checker = make_checker(f"ldap://127.0.0.1:{free_port()}", timeout=20.0)
    error = check_error(checker, "alice", PASSWORDS["alice"])
    assert isinstance(error, LdapUnavailable)
    assert "no answer within" not in str(error), "the refusal ends it, not the 20s deadline"


class CountingThreads:
    """The reactor's thread pool as `run_in_thread`, counting calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, work: Any) -> Any:
        def counted() -> Any:
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            try:
                return work()
            finally:
                with self.lock:
                    self.running -= 1

        return deferToThreadPool(reactor, reactor.getThreadPool(), counted)  # type: ignore[attr-defined]


def start_checks(checker: LdapChecker, count: int) -> list[Any]:
    """Start `count` logins on the reactor thread; their results (or Failures) land in a list."""
    results: list[Any] = []

    def start() -> None:
        for i in range(count):
            checker.check(f"user{i}", "pw").addBoth(results.append)

    run_in_reactor(start)
    return results


def test_directory_slow() -> None:
    """A directory that accepts and never answers gives an outage at `timeout`, not before."""
    clock = task.Clock()
    with SilentServer() as silent:
        checker = make_checker(silent.uri, clock=clock, timeout=20.0)
        results = start_checks(checker, 1)
        assert wait_until(lambda: silent.accepted >= 1), "the login reached the directory"
        run_in_reactor(clock.advance, 19.9)
        assert results == []
        run_in_reactor(clock.advance, 0.1)
        (failure,) = results
        assert isinstance(failure.value, LdapUnavailable)
        assert "no answer within 20s" in str(failure.value)


def test_slow_directory_holds_at_most_max_concurrent_threads() -> None:
    """Twelve logins against a hung directory all fail at the deadline using only 2 threads."""
    clock = task.Clock()
    threads = CountingThreads()
    with SilentServer() as silent:
        checker = LdapChecker(settings(silent.uri, timeout=20.0), threads, clock, max_concurrent=2)
        results = start_checks(checker, 12)
        assert wait_until(lambda: silent.accepted >= 2 and threads.running == 2)
        run_in_reactor(clock.advance, 20)
        assert len(results) == 12
        assert all(isinstance(r, Failure) and r.check(LdapUnavailable) for r in results)
        assert checker.directory_calls == 2, "the 10 waiting for a slot never reach the directory"
        assert threads.most == 2
    # the hung threads end once the silent directory closes; the skipped calls stay skipped
    assert wait_until(lambda: threads.running == 0)
    assert checker.directory_calls == 2
    assert silent.accepted == 2


def test_starttls_with_ca_file(directory: Slapd) -> None:
    """`start-tls yes` with `ca-file` (a trustme CA) logs in over TLS."""
    checker = make_checker(directory.uri, start_tls=True, ca_file=str(directory.ca_file))
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    assert check(checker, "alice", "wrong") is False


def test_starttls_with_an_untrusted_ca_is_an_outage(directory: Slapd, tmp_path: Path) -> None:
    """A directory certificate from another CA is refused: an outage, never a login."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    checker = make_checker(directory.uri, start_tls=True, ca_file=str(other))
    assert isinstance(check_error(checker, "alice", PASSWORDS["alice"]), LdapUnavailable)


def test_ldaps_uri(directory: Slapd) -> None:
    """`uri ldaps://` speaks TLS from the first byte."""
    checker = make_checker(directory.ldaps_uri, ca_file=str(directory.ca_file))
    assert check(checker, "bob", PASSWORDS["bob"]) is True


def test_cache_hit_does_not_reach_slapd(directory: Slapd) -> None:
    """A second login with the same password within `cache-ttl` is answered from the cache."""
    checker = make_checker(directory.uri, cache_ttl=300.0)
    before = directory.binds(user_dn("bob"))
    assert check(checker, "bob", PASSWORDS["bob"]) is True
    assert check(checker, "bob", PASSWORDS["bob"]) is True
    assert directory.binds(user_dn("bob")) == before + 1
    assert checker.directory_calls == 1


def test_cache_miss_on_a_different_password(directory: Slapd) -> None:
    """A different password is not a cache hit: it goes to slapd and is refused."""
    checker = make_checker(directory.uri, cache_ttl=300.0)
    assert check(checker, "bob", PASSWORDS["bob"]) is True
    before = directory.binds(user_dn("bob"))
    assert check(checker, "bob", "builder2") is False
    assert directory.binds(user_dn("bob")) == before + 1
    assert check(checker, "bob", "builder2") is False  # failures are never cached
    assert directory.binds(user_dn("bob")) == before + 2


def test_cache_does_not_hold_the_password(directory: Slapd) -> None:
    """Cache keys hold the user and a salted digest, never the password."""
    checker = make_checker(directory.uri, cache_ttl=300.0)
    assert check(checker, "carol", PASSWORDS["carol"]) is True
    ((user, digest),) = list(checker._cache)
    assert user == "carol"
    assert PASSWORDS["carol"].encode() not in digest and len(digest) == 32


def test_cache_expires_after_ttl(directory: Slapd) -> None:
    """After `cache-ttl` the next login goes to the directory again."""
    clock = task.Clock()
    checker = make_checker(directory.uri, clock=clock, cache_ttl=60.0)
    before = directory.binds(user_dn("alice"))
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    run_in_reactor(clock.advance, 59)
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    assert directory.binds(user_dn("alice")) == before + 1
    run_in_reactor(clock.advance, 2)
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    assert directory.binds(user_dn("alice")) == before + 2


def test_cache_ttl_zero_always_asks(directory: Slapd) -> None:
    """`cache-ttl 0` turns the cache off."""
    checker = make_checker(directory.uri, cache_ttl=0.0)
    before = directory.binds(user_dn("dave"))
    for _ in range(3):
        assert check(checker, "dave", PASSWORDS["dave"]) is True
    assert directory.binds(user_dn("dave")) == before + 3


@pytest.fixture
def own_slapd(tmp_path: Path, ldap_ca: trustme.CA) -> Iterator[Slapd]:  # noqa: F811
    server = Slapd(tmp_path / "slapd", ldap_ca)
    with server:
        yield server


def test_cached_login_survives_a_stopped_directory(own_slapd: Slapd) -> None:
    """With slapd stopped, a cached login still works and an uncached one is an outage."""
    checker = make_checker(own_slapd.uri, cache_ttl=300.0)
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    own_slapd.stop()
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    assert isinstance(check_error(checker, "bob", PASSWORDS["bob"]), LdapUnavailable)
    assert isinstance(check_error(checker, "alice", "wrong"), LdapUnavailable)


def test_pooled_connection_replaced_after_a_directory_restart(own_slapd: Slapd) -> None:
    """A service connection that slapd closed (restart) is replaced, and the login works."""
    checker = make_checker(own_slapd.uri, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD)
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    own_slapd.stop()
    own_slapd.start()  # same ports
    assert check(checker, "alice", PASSWORDS["alice"]) is True
    assert check(checker, "alice", "wrong") is False


ADMINS = f"cn=mail-admins,{GROUPS}"
MONITORS = f"cn=mail-monitors,{GROUPS}"
GROUP_LEVELS = (LdapGroupAccess(MONITORS, "monitor"), LdapGroupAccess(ADMINS, "admin"))


def access(checker: LdapChecker, user: str, password: str, groups: Any = GROUP_LEVELS) -> Any:
    return run_in_reactor(ldap_access_level, checker, user, password, groups, timeout=30)


def test_group_access_levels(directory: Slapd) -> None:
    """member of mail-admins -> admin, uniqueMember of mail-monitors -> monitor, neither -> none."""
    checker = make_checker(directory.uri, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD)
    assert access(checker, "alice", PASSWORDS["alice"]) == "admin"
    assert access(checker, "bob", PASSWORDS["bob"]) == "monitor"
    assert access(checker, "dave", PASSWORDS["dave"]) == "none"


def test_group_access_bad_login_is_none(directory: Slapd) -> None:
    """A wrong password, an unknown user or an empty password give None (a bad login)."""
    checker = make_checker(directory.uri)
    assert access(checker, "alice", "wrong") is None
    assert access(checker, "nobody", "x") is None
    assert access(checker, "alice", "") is None


def test_group_access_missing_group_and_dn_spelling(directory: Slapd) -> None:
    """A group DN that does not exist grants nothing; DN case and spacing do not matter."""
    checker = make_checker(directory.uri)
    missing = (LdapGroupAccess(f"cn=nope,{GROUPS}", "admin"),)
    assert access(checker, "alice", PASSWORDS["alice"], missing) == "none"
    spelled = (LdapGroupAccess("CN=Mail-Admins, OU=Groups, DC=Example, DC=Org", "admin"),)
    assert access(checker, "alice", PASSWORDS["alice"], spelled) == "admin"


def test_group_access_directory_down() -> None:
    """With the directory down, the access check fails (an outage), never grants access."""
    checker = make_checker(f"ldap://127.0.0.1:{free_port()}")
    with pytest.raises(LdapUnavailable):
        access(checker, "alice", PASSWORDS["alice"])
