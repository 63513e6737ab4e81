"""Pure parts of LDAP authentication: filter building and DN handling, the checker chain.

Filter building is also checked against ldap3's MOCK_SYNC strategy (an in-memory
directory), to show that an escaped name matches only its literal value; the real
behaviour against slapd is in test_ldap_checker.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from ldap3 import MOCK_SYNC, SUBTREE, Connection, Server
from smtp_helpers import holder_from_text
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed

from mtaserver.auth.checkers import CheckerChoice, FirstOf
from mtaserver.auth.ldap import LdapChecker, LdapCheckers
from mtaserver.auth.ldap_directory import (
    LdapUnavailable,
    clean_dn,
    member_filter,
    normalise_dn,
    user_filter,
)
from mtaserver.spool.testing import run_now


@pytest.mark.parametrize(
    ("template", "user", "expected"),
    [
        ("(uid=%u)", "alice", "(uid=alice)"),
        ("(uid=%u)", "*", r"(uid=\2a)"),
        ("(uid=%u)", "*)(uid=*", r"(uid=\2a\29\28uid=\2a)"),
        ("(uid=%u)", "alice)(|(uid=*", r"(uid=alice\29\28|\28uid=\2a)"),
        ("(uid=%u)", "back\\slash", r"(uid=back\5cslash)"),
        ("(uid=%u)", "nul\x00", r"(uid=nul\00)"),
        ("(|(uid=%u)(mail=%u))", "a*", r"(|(uid=a\2a)(mail=a\2a))"),
        ("(uid=%u)", "%u", "(uid=%u)"),  # substituted once, not again
        ("(uid=%u)", "jürgen", "(uid=jürgen)"),
    ],
)
def test_user_filter_escapes_the_name(template: str, user: str, expected: str) -> None:
    """`%u` becomes the RFC 4515-escaped user name, everywhere it appears."""
    assert user_filter(template, user) == expected


def test_member_filter_escapes_the_dn() -> None:
    """A DN with filter metacharacters is escaped in the group query."""
    assert member_filter("uid=a*(b),dc=x") == (
        r"(|(member=uid=a\2a\28b\29,dc=x)(uniqueMember=uid=a\2a\28b\29,dc=x))"
    )


def test_dn_normalisation() -> None:
    """Case and spaces around separators do not matter when comparing DNs; escapes survive."""
    assert normalise_dn("CN=Admins, OU=Groups, DC=Example") == "cn=admins,ou=groups,dc=example"
    assert normalise_dn(r"cn=a\, b+uid=X,dc=e") == r"cn=a\, b+uid=x,dc=e"
    assert clean_dn("CN=Admins, OU=Groups") == "CN=Admins,OU=Groups"


@pytest.fixture
def mock_directory() -> Connection:
    conn = Connection(Server("mock"), client_strategy=MOCK_SYNC)
    conn.strategy.add_entry("dc=x", {"objectClass": "domain", "dc": "x"})
    for uid in ("alice", "bob", "*"):
        dn = "uid=star,dc=x" if uid == "*" else f"uid={uid},dc=x"
        conn.strategy.add_entry(dn, {"objectClass": "inetOrgPerson", "uid": uid, "sn": uid})
    conn.bind()
    return conn


@pytest.mark.parametrize(
    ("user", "found"),
    [
        ("alice", ["uid=alice,dc=x"]),
        ("*", ["uid=star,dc=x"]),  # the literal value "*", not a wildcard
        ("*)(uid=*", []),
        ("alice)(|(uid=*", []),
        ("al*", []),
    ],
)
def test_escaped_filter_matches_only_the_literal_name(
    mock_directory: Connection, user: str, found: list[str]
) -> None:
    """Against an in-memory directory, the built filter finds the literal name only."""
    mock_directory.search("dc=x", user_filter("(uid=%u)", user), SUBTREE)
    assert sorted(e["dn"] for e in mock_directory.response) == found


class Fixed:
    """A checker with a fixed answer (True, False, or an outage), counting calls."""

    def __init__(self, answer: bool | None) -> None:
        self.answer = answer
        self.calls = 0

    def check(self, user: str, password: str) -> Deferred[bool]:
        self.calls += 1
        if self.answer is None:
            return fail(LdapUnavailable("down"))
        return succeed(self.answer)


def outcome(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the chain should answer at once"
    return results[0]


def test_first_of_stops_at_the_first_yes() -> None:
    """LDAP yes: local users are not asked."""
    ldap, local = Fixed(True), Fixed(False)
    assert outcome(FirstOf(ldap, local).check("u", "p")) is True
    assert local.calls == 0


def test_first_of_falls_back_to_local_users() -> None:
    """LDAP no, local yes: yes."""
    assert outcome(FirstOf(Fixed(False), Fixed(True)).check("u", "p")) is True


def test_first_of_outage_then_local_yes() -> None:
    """LDAP down but the user is local: yes."""
    assert outcome(FirstOf(Fixed(None), Fixed(True)).check("u", "p")) is True


def test_first_of_outage_then_no_is_an_outage() -> None:
    """LDAP down and not a local user: the outage (454), not a wrong password (535)."""
    result = outcome(FirstOf(Fixed(None), Fixed(False)).check("u", "p"))
    assert result.check(LdapUnavailable)


def test_checker_choice() -> None:
    """No auth-ldap: local users; a known directory: LDAP then local; an unknown one: None."""
    local, corp = Fixed(True), Fixed(False)
    choice = CheckerChoice(local, {"corp": corp})
    assert choice.for_source(None) is local
    chained = choice.for_source("corp")
    assert isinstance(chained, FirstOf) and chained.checkers == (corp, local)
    assert choice.for_source("missing") is None


LDAP_CONFIG = "<ldap corp>\n  uri ldap://127.0.0.1:{port}\n  base-dn dc=x\n</ldap>\n"


def test_ldap_checkers_follow_reloads(tmp_path: Any) -> None:
    """A reload that changes an <ldap> scope gives a new checker; an unchanged one is kept."""
    holder = holder_from_text(LDAP_CONFIG.format(port=1), str(tmp_path))
    checkers = LdapCheckers(holder, run_now, task.Clock())
    first = checkers["corp"]
    assert checkers["corp"] is first and list(checkers) == ["corp"]
    (tmp_path / "mtaserver.conf").write_text(LDAP_CONFIG.format(port=2))
    assert holder.reload() == []
    second = checkers["corp"]
    assert second is not first and second.settings.uri == "ldap://127.0.0.1:2"
    (tmp_path / "mtaserver.conf").write_text("")
    assert holder.reload() == []
    assert "corp" not in checkers and len(checkers) == 0


def test_empty_credentials_never_reach_a_thread() -> None:
    """Empty password or user: a no at once, without running anything in a thread."""
    ran: list[Any] = []

    def run_in_thread(work: Any) -> Deferred[Any]:
        ran.append(work)
        return run_now(work)

    holder = holder_from_text(LDAP_CONFIG.format(port=1))
    checker = LdapChecker(holder.config.ldap["corp"], run_in_thread, task.Clock())
    assert outcome(checker.check("alice", "")) is False
    assert outcome(checker.check("", "secret")) is False
    assert ran == [] and checker.directory_calls == 0


def test_deadline_answers_even_if_the_thread_never_returns() -> None:
    """A thread that never finishes still gives the caller an outage at `timeout`."""
    clock = task.Clock()
    never: Deferred[Any] = Deferred()
    holder = holder_from_text(LDAP_CONFIG.format(port=1))
    checker = LdapChecker(holder.config.ldap["corp"], lambda work: never, clock)
    answer = checker.check("alice", "secret")
    results: list[Any] = []
    answer.addBoth(results.append)
    clock.advance(9.9)
    assert results == []
    clock.advance(0.2)  # the default timeout is 10s
    assert results[0].check(LdapUnavailable)
    never.callback(True)  # a late success changes nothing
    assert len(results) == 1
