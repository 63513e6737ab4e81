"""The DNS resolver that MX routing asks: /etc/hosts from memory, a TTL cache, name servers.

`make_resolver` builds the twisted.names resolver chain `MxResolver` (`smtp/mx.py`)
uses for every lookup. Two things make it cheaper than twisted's stock chain:

* `HostsFile` answers from /etc/hosts as parsed once, and parses it again only when
  its modification time (or size, or inode) changes, or on `clear()`. Twisted's
  `hosts.Resolver` reads and parses the whole file on the reactor thread for every
  single lookup, and a queue run asks for A and AAAA of every MX host.
* `DnsCache` keeps each answer from the name servers for as long as its TTL says (the
  smallest TTL of its records, at most `MAX_TTL`), so the thousand queues of a busy
  sender ask once per TTL for `gmail.com`'s MX instead of once per connection. It is
  twisted.names' `CacheResolver` with three changes: it is filled here (nothing in a
  client chain fills the stock one: only twisted's DNS server does), it holds at most
  `DNS_CACHE_SIZE` answers (the oldest go first), and an entry expires when it is read
  after its TTL rather than through one reactor timer per entry. Failures (NXDOMAIN,
  SERVFAIL, timeouts) are not cached: twisted's errors do not carry the SOA minimum
  that negative caching (RFC 2308) needs, and a failed route is retried by the
  scheduler on its own schedule anyway.

`DnsResolver.clear()` empties the cache and re-reads /etc/hosts at the next lookup;
it is the hook for an operator's `clear dnscache`.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import cache, client, common, dns, resolve
from twisted.names import error as dns_error
from twisted.python.failure import Failure
from zope.interface import implementer

from mtaserver.config.values import HostPort

log = Logger()

__all__ = [
    "DNS_CACHE_SIZE",
    "MAX_TTL",
    "DnsCache",
    "DnsResolver",
    "HostsFile",
    "make_resolver",
    "parse_hosts",
]

#: Answers kept at most; each is a few hundred bytes.
DNS_CACHE_SIZE = 10_000
#: The longest an answer is kept, whatever its TTL says (a day, as unbound's cache-max-ttl).
MAX_TTL = 86_400
#: The TTL of answers from /etc/hosts (twisted's default for its hosts resolver).
HOSTS_TTL = 3600


# -- /etc/hosts ------------------------------------------------------------------------


def parse_hosts(data: bytes) -> dict[str, tuple[str, ...]]:
    """hosts(5) text -> lowercase name -> its addresses, in file order, without repeats.

    `#` starts a comment; a line is an address then names. A line whose first field is
    not an IPv4 or IPv6 address is skipped, as twisted's hosts resolver does.
    """
    names: dict[str, list[str]] = {}
    for raw in data.splitlines():
        fields = raw.split(b"#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(fields[0].decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            continue
        for name in fields[1:]:
            key = name.decode("ascii", "replace").rstrip(".").lower()
            if address not in names.setdefault(key, []):
                names[key].append(address)
    return {name: tuple(addresses) for name, addresses in names.items()}


class HostsFile(common.ResolverBase):
    """A hosts(5) file as an IResolver (A and AAAA only), parsed once per change.

    Each lookup costs one `stat` of the file; it is read and parsed again only when
    its mtime, size or inode changed since the last parse (an edit, or a new file
    renamed into place), or after `reload()`. A missing or unreadable file answers
    nothing, so the chain goes on to the name servers.
    """

    def __init__(self, path: str = "/etc/hosts", ttl: int = HOSTS_TTL) -> None:
        common.ResolverBase.__init__(self)
        self.path = path
        self.ttl = ttl
        self._stamp: tuple[int, int, int] | None = None
        self._names: dict[str, tuple[str, ...]] = {}

    def reload(self) -> None:
        """Parse the file again at the next lookup, whatever its mtime says."""
        self._stamp = None

    def _current(self) -> dict[str, tuple[str, ...]]:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._names = None, {}
            return self._names
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                with open(self.path, "rb") as stream:
                    self._names = parse_hosts(stream.read())
            except OSError:
                self._names = {}
            self._stamp = stamp
        return self._names

    def _answer(self, name: bytes | str, version: int) -> defer.Deferred[Any]:
        owner = dns.domainString(name)
        key = owner.decode("ascii", "replace").rstrip(".").lower()
        records: list[dns.RRHeader] = []
        for address in self._current().get(key, ()):
            if ipaddress.ip_address(address).version != version:
                continue
            payload: Any
            if version == 4:
                payload = dns.Record_A(address, self.ttl)
                rrtype = dns.A
            else:
                payload = dns.Record_AAAA(address, self.ttl)
                rrtype = dns.AAAA
            records.append(dns.RRHeader(owner, rrtype, dns.IN, self.ttl, payload))
        if records:
            return defer.succeed((records, [], []))
        return defer.fail(dns_error.DomainError(owner))

    def lookupAddress(self, name: bytes | str, timeout: Any = None) -> defer.Deferred[Any]:  # noqa: N802
        return self._answer(name, 4)

    def lookupIPV6Address(self, name: bytes | str, timeout: Any = None) -> defer.Deferred[Any]:  # noqa: N802
        return self._answer(name, 6)

    lookupAllRecords = lookupAddress  # noqa: N815 - twisted's hosts resolver does the same

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        # Every other record type (MX, TXT...) is not in a hosts file: ask further.
        return defer.fail(dns_error.DomainError(name))


# -- the cache -------------------------------------------------------------------------


class DnsCache(cache.CacheResolver):
    """Answers kept for their TTL, at most `max_entries` of them (see the module docstring).

    `clock` provides `seconds()` (the reactor, or a `task.Clock` in tests).
    """

    def __init__(
        self, clock: Any, max_entries: int = DNS_CACHE_SIZE, max_ttl: int = MAX_TTL
    ) -> None:
        super().__init__(reactor=clock)
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._expires: dict[dns.Query, float] = {}

    def __len__(self) -> int:
        return len(self.cache)

    def cacheResult(  # noqa: N802 - twisted's name
        self, query: dns.Query, payload: Any, cacheTime: float | None = None
    ) -> None:
        records = [*payload[0], *payload[1], *payload[2]]
        ttl = min((record.ttl for record in records), default=0)
        ttl = min(ttl, self.max_ttl)
        if ttl <= 0:
            return  # nothing to keep (RFC 1035: TTL 0 means "use only for this answer")
        now = cacheTime or self._reactor.seconds()
        if query in self.cache:
            self._drop(query)
        while len(self.cache) >= self.max_entries:
            self._drop(next(iter(self.cache)))  # the oldest answer
        self.cache[query] = (now, payload)
        self._expires[query] = now + ttl

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        query = dns.Query(name, type, cls)
        expires = self._expires.get(query)
        if expires is None:
            return defer.fail(dns_error.DomainError(name))
        if self._reactor.seconds() >= expires:
            self._drop(query)
            return defer.fail(dns_error.DomainError(name))
        result: defer.Deferred[Any] = super()._lookup(name, cls, type, timeout)
        return result

    def lookupAllRecords(self, name: bytes, timeout: Any = None) -> defer.Deferred[Any]:  # noqa: N802
        return self._lookup(dns.domainString(name), dns.IN, dns.ALL_RECORDS, timeout)

    def clear(self, name: str | None = None) -> int:
        """Forget every answer, or those about `name` and its subdomains; how many."""
        if name is None:
            count = len(self.cache)
            self.cache.clear()
            self._expires.clear()
            return count
        name = name.lower().rstrip(".")
        gone = [
            query
            for query in self.cache
            if (asked := query.name.name.decode("ascii", "replace").lower().rstrip("."))
            == name
            or asked.endswith("." + name)
        ]
        for query in gone:
            self._drop(query)
        return len(gone)

    def _drop(self, query: dns.Query) -> None:
        self.cache.pop(query, None)
        self._expires.pop(query, None)


@implementer(IResolver)
class CachingResolver(common.ResolverBase):
    """Asks `cache` first; on a miss asks `upstream` and keeps what it answers.

    Identical questions asked while one is on its way need nothing here:
    `client.Resolver` already sends them as one query.
    """

    def __init__(self, upstream: Any, dns_cache: DnsCache) -> None:
        common.ResolverBase.__init__(self)
        self.upstream = upstream
        self.cache = dns_cache

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        query = dns.Query(name, type, cls)
        cached: defer.Deferred[Any] = self.cache.query(query, timeout)
        cached.addErrback(self._miss, query, timeout)
        return cached

    def _miss(self, failure: Failure, query: dns.Query, timeout: Any) -> defer.Deferred[Any]:
        failure.trap(dns_error.DomainError)
        answer: defer.Deferred[Any] = self.upstream.query(query, timeout)
        answer.addCallback(self._keep, query)
        return answer

    def _keep(self, payload: Any, query: dns.Query) -> Any:
        self.cache.cacheResult(query, payload)
        return payload


@implementer(IResolver)
class DnsResolver(resolve.ResolverChain):
    """The chain `make_resolver` builds, with `clear()` for `clear dnscache`."""

    def __init__(
        self, resolvers: list[Any], dns_cache: DnsCache, hosts: HostsFile | None = None
    ) -> None:
        super().__init__(resolvers)
        self.cache = dns_cache
        self.hosts = hosts

    def clear(self, name: str | None = None) -> int:
        """Forget every cached answer (or those about `name`) and read /etc/hosts again
        at the next lookup; how many answers were forgotten."""
        count = self.cache.clear(name)
        if self.hosts is not None:
            self.hosts.reload()
        log.info("DNS cache cleared ({what})", what=name or "everything")
        return count


def make_resolver(
    name_servers: tuple[HostPort, ...],
    reactor: Any = None,
    timeout: tuple[float, ...] = (2, 4),
    *,
    clock: Any = None,
    hosts_file: str = "/etc/hosts",
    cache_size: int = DNS_CACHE_SIZE,
) -> DnsResolver:
    """A caching twisted.names resolver for the `name-server`s, or the system's when none.

    `timeout` is the per-try schedule in seconds (a query fails after their sum), shorter
    than twisted's default (1, 3, 11, 45): a queue waiting a minute on DNS delivers
    nothing, and a failed route is retried by the scheduler anyway. The system resolver
    reads /etc/resolv.conf and, for addresses, `hosts_file` first (from memory, not
    cached: it has its own change check). `clock` times the cache (default: `reactor`;
    None for both: the global reactor, as twisted.names does).
    """
    dns_cache = DnsCache(clock if clock is not None else reactor, cache_size)
    if name_servers:
        servers = [(ns.host, ns.port) for ns in name_servers]
        upstream = client.Resolver(servers=servers, timeout=timeout, reactor=reactor)
        return DnsResolver([CachingResolver(upstream, dns_cache)], dns_cache)
    system = client.Resolver(resolv=b"/etc/resolv.conf", timeout=timeout, reactor=reactor)
    hosts = HostsFile(hosts_file)
    return DnsResolver([hosts, CachingResolver(system, dns_cache)], dns_cache, hosts)
