"""The blocking half of LDAP authentication: ldap3 calls, run only in pool threads.

`Directory` talks to one `<ldap NAME>` server: it searches for the user with a
service bind (`bind-dn`/`bind-password`, or anonymously), keeping a few of those
connections open for reuse, then binds as the entry it found on a connection of
its own (one per attempt, closed afterwards), so a user's bind never changes the
identity of a pooled connection. Every socket has `timeout` as its connect and
receive timeout. Answers are tri-state: an entry or True (yes), None or False
(no), `LdapUnavailable` (the directory could not answer: down, slow, refused the
service bind, TLS failed) — the last becomes `454 4.7.0`, never a success.

The user name goes into `user-filter` through ldap3's `escape_filter_chars`; the
password goes to the bind as UTF-8 bytes, neither escaped nor SASLprep'd.
Nothing here imports Twisted; `mtaserver.auth.ldap` runs it off the reactor.
"""

from __future__ import annotations

import contextlib
import math
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from mtaserver.config.model import LdapSettings

T = TypeVar("T")

# Bind results that mean "not this password / not this user": a 535, not a 454.
BIND_REFUSED = frozenset({32, 34, 48, 49, 50, 53})
SUCCESS, SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT = 0, 4, 32
MEMBER_OF = "memberOf"


class LdapUnavailable(Exception):
    """The directory gave no usable answer; the client should try again later."""


@attrs.frozen
class LdapEntry:
    """The one entry a user name matched, with its `memberOf` values (normalised)."""

    dn: str
    member_of: frozenset[str] = frozenset()


def user_filter(template: str, user: str) -> str:
    """`user-filter` with each `%u` replaced by the user name, filter-escaped (RFC 4515)."""
    return template.replace("%u", escape_filter_chars(user))


def member_filter(dn: str) -> str:
    """Matches a group entry that lists `dn` as `member` or `uniqueMember`."""
    escaped = escape_filter_chars(dn)
    return f"(|(member={escaped})(uniqueMember={escaped}))"


def clean_dn(dn: str) -> str:
    """A DN as ldap3 accepts it: no spaces around the separators (case kept)."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return dn.strip()
    return "".join(f"{attr}={value}{sep}" for attr, value, sep in parts)


def normalise_dn(dn: str) -> str:
    """A DN for comparison: attribute names and values lower-cased, spaces around RDNs gone."""
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPException:
        return dn.strip().lower()
    return "".join(f"{attr.lower()}={value.lower()}{sep}" for attr, value, sep in parts)


def server_for(settings: LdapSettings) -> Server:
    """The ldap3 `Server` for `uri` (ldap:// or ldaps://), TLS checked against `ca-file`."""
    parts = urlsplit(settings.uri)
    secure = parts.scheme.lower() == "ldaps"
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=settings.ca_file)
    return Server(
        parts.hostname or "localhost",
        port=parts.port or (636 if secure else 389),
        use_ssl=secure,
        tls=tls,
        connect_timeout=settings.timeout,
        get_info=NONE,
    )


class Directory:
    """One `<ldap>` server, used from pool threads; at most `max_idle` idle service connections."""

    def __init__(self, settings: LdapSettings, max_idle: int = 4) -> None:
        self.settings = settings
        self.server = server_for(settings)
        self.max_idle = max_idle
        # ldap3 (SYNC) sets this with struct.pack("LL", ...): it must be an int.
        self.receive_timeout = max(1, math.ceil(settings.timeout))
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- connections ----------------------------------------------------------------

    def _connect(self, user: str | None = None, password: bytes | None = None) -> Connection:
        conn = Connection(
            self.server,
            user=user,
            password=password,
            receive_timeout=self.receive_timeout,
            raise_exceptions=False,
            read_only=True,
            auto_referrals=False,
        )
        try:
            conn.open()
            if self.settings.start_tls:
                conn.start_tls()
        except (LDAPException, OSError) as exc:
            _close(conn)
            raise LdapUnavailable(f"{self.settings.uri}: {exc}") from exc
        except BaseException:
            _close(conn)
            raise
        return conn

    def _service_connection(self) -> tuple[Connection, bool]:
        """An idle service connection (reused=True) or a new one, bound as `bind-dn`."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        settings = self.settings
        password = (settings.bind_password or "").encode("utf-8")
        conn = self._connect(settings.bind_dn, password if settings.bind_dn else None)
        if settings.bind_dn and not conn.bind():
            result = dict(conn.result or {})
            _close(conn)
            raise LdapUnavailable(
                f"service bind as {settings.bind_dn} refused: {result.get('description')}"
            )
        return conn, False

    def _release(self, conn: Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        _close(conn)

    def _with_service(self, operation: Callable[[Connection], T]) -> T:
        """Run `operation` on a service connection; a stale reused one is replaced once."""
        while True:
            conn, reused = self._service_connection()
            try:
                result = operation(conn)
            except (LDAPCommunicationError, OSError) as exc:
                _close(conn)
                if reused:
                    continue  # the directory closed an idle connection; try a new one
                raise LdapUnavailable(f"{self.settings.uri}: {exc}") from exc
            except LDAPException as exc:  # refused on this side (a malformed DN, say)
                self._release(conn)
                raise LdapUnavailable(f"{self.settings.uri}: {exc}") from exc
            except BaseException:
                _close(conn)
                raise
            self._release(conn)
            return result

    def close(self) -> None:
        """Unbind every idle connection; later releases are closed instead of kept."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _close(conn)

    # -- operations -----------------------------------------------------------------

    def find_user(self, user: str) -> LdapEntry | None:
        """The single entry `user-filter` matches under `base-dn`; None for zero or several."""
        query = user_filter(self.settings.user_filter, user)

        def search(conn: Connection) -> tuple[int, list[dict[str, Any]]]:
            conn.search(
                self.settings.base_dn,
                query,
                search_scope=SUBTREE,
                attributes=[MEMBER_OF],
                size_limit=2,
                time_limit=self.receive_timeout,
            )
            return _outcome(conn)

        code, entries = self._with_service(search)
        if code in (SIZE_LIMIT_EXCEEDED, NO_SUCH_OBJECT):
            return None
        if code != SUCCESS:
            raise LdapUnavailable(f"{self.settings.uri}: search failed with result {code}")
        if len(entries) != 1:
            return None
        entry = entries[0]
        groups = entry.get("attributes", {}).get(MEMBER_OF) or []
        return LdapEntry(
            dn=str(entry["dn"]),
            member_of=frozenset(normalise_dn(str(group)) for group in groups),
        )

    def bind_as(self, dn: str, password: str) -> bool:
        """Does the directory accept `password` for `dn`? On a connection of its own."""
        if not password:
            return False  # an empty simple bind is an anonymous bind (RFC 4513 5.1.2)
        conn = self._connect(dn, password.encode("utf-8"))
        try:
            accepted = conn.bind()
            code = int((conn.result or {}).get("result", -1))
        except (LDAPException, OSError) as exc:
            raise LdapUnavailable(f"{self.settings.uri}: {exc}") from exc
        finally:
            _close(conn)
        if accepted and code == SUCCESS:
            return True
        if code in BIND_REFUSED:
            return False
        raise LdapUnavailable(f"{self.settings.uri}: bind failed with result {code}")

    def authenticate(self, user: str, password: str) -> LdapEntry | None:
        """Search, then bind as the entry found: the entry, or None for a bad login."""
        if not user or not password:
            return None
        entry = self.find_user(user)
        if entry is None or not self.bind_as(entry.dn, password):
            return None
        return entry

    def is_member(self, group_dn: str, member_dn: str) -> bool:
        """Does the group entry list `member_dn` as `member` or `uniqueMember`?"""

        def search(conn: Connection) -> tuple[int, list[dict[str, Any]]]:
            conn.search(
                clean_dn(group_dn),
                member_filter(member_dn),
                search_scope=BASE,
                attributes=["1.1"],
                time_limit=self.receive_timeout,
            )
            return _outcome(conn)

        code, entries = self._with_service(search)
        if code == NO_SUCH_OBJECT:
            return False
        if code != SUCCESS:
            raise LdapUnavailable(f"{self.settings.uri}: group search failed with result {code}")
        return len(entries) == 1


def _outcome(conn: Connection) -> tuple[int, list[dict[str, Any]]]:
    code = int((conn.result or {}).get("result", -1))
    entries = [r for r in conn.response or () if r.get("type") == "searchResEntry"]
    return code, entries


def _close(conn: Connection) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection: nothing to report
        conn.unbind()
