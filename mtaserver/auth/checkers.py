"""The seam between SMTP AUTH and where passwords live.

A checker answers one question, asynchronously: is this password right for this
user? Local `<smtp-user>` entries (`users.LocalUserChecker`) and `<ldap NAME>`
directories (`ldap.LdapChecker`, chosen by `auth-ldap NAME` in a `<source>`)
answer it through the same interface, so the SMTP server never learns where a
user came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import Interface


class IPasswordChecker(Interface):
    """Checks a user name and password; never blocks the reactor."""

    def check(user: str, password: str) -> Deferred[bool]:
        """Fire True if the password is right, False if not; errback on an outage."""


class PasswordChecker(Protocol):
    """The static type of an `IPasswordChecker` provider."""

    def check(self, user: str, password: str) -> Deferred[bool]: ...


class FirstOf:
    """Asks its checkers in turn; the first that says yes wins.

    A checker that cannot answer (an outage) does not end the search, but if no
    later checker says yes, the outage is the answer (a temporary 454), not a
    "wrong password" (535): a user must not be told no while their directory is down.
    """

    def __init__(self, *checkers: PasswordChecker) -> None:
        self.checkers = checkers

    def check(self, user: str, password: str) -> Deferred[bool]:
        async def check() -> bool:
            outage: Failure | None = None
            for checker in self.checkers:
                try:
                    if await checker.check(user, password):
                        return True
                except Exception:
                    outage = outage or Failure()
            if outage is not None:
                outage.raiseException()
            return False

        return Deferred.fromCoroutine(check())


class CheckerChoice:
    """Picks the checker for a session: the source's `auth-ldap NAME` first, then local users.

    `ldap` maps `<ldap NAME>` to its checker (`ldap.LdapCheckers` follows the
    running config; it is looked up at each AUTH, not copied). A source naming an
    LDAP server that has no checker gets `None`: AUTH is then not offered, rather
    than silently falling back to local users alone.
    """

    def __init__(
        self, local: PasswordChecker, ldap: Mapping[str, PasswordChecker] | None = None
    ) -> None:
        self.local = local
        self.ldap: Mapping[str, PasswordChecker] = ldap if ldap is not None else {}

    def for_source(self, auth_ldap: str | None) -> PasswordChecker | None:
        if auth_ldap is None:
            return self.local
        directory = self.ldap.get(auth_ldap)
        if directory is None:
            return None
        return FirstOf(directory, self.local)
