"""AUTH against the `<smtp-user NAME>` entries of the running configuration.

The configuration is read at each check, so a reload that adds, removes or
changes a user takes effect on the next AUTH. Verification runs in a thread
(`run_in_thread`), because the CRYPT schemes are deliberately slow.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from mtaserver.auth.checkers import IPasswordChecker
from mtaserver.auth.passwords import verify_password
from mtaserver.config.reload import ConfigHolder
from mtaserver.runtime import RunInThread

# Compared against when the user does not exist, so that an unknown user costs
# about as much as a wrong password.
_NO_USER = "{PLAIN}\x00no such user\x00"


@implementer(IPasswordChecker)
class LocalUserChecker:
    """Checks passwords of `<smtp-user>` entries (plain or Dovecot-hashed)."""

    def __init__(self, holder: ConfigHolder, run_in_thread: RunInThread) -> None:
        self._holder = holder
        self._run_in_thread = run_in_thread

    def has_users(self) -> bool:
        return bool(self._holder.config.smtp_users)

    def check(self, user: str, password: str) -> Deferred[bool]:
        entry = self._holder.config.smtp_users.get(user)
        stored = entry.password if entry is not None else _NO_USER
        exists = entry is not None

        def verify() -> bool:
            return verify_password(stored, password) and exists

        result: Deferred[bool] = self._run_in_thread(verify)
        return result
