"""Route a domain to the hosts that take its mail: MX, implicit MX, null MX, smtp-hosts.

This module owns one question, "where do I connect to deliver this queue's mail?", and
answers it as preference levels of `Target`s (name, IP, port) that the SMTP client
tries in order. It uses twisted.names for every lookup (never a hand-written resolver),
so the same code runs against the system's resolver, the configured `name-server`s, or
a test's authoritative server on loopback. The resolver itself (/etc/hosts, the TTL
cache, the name servers) is built by `mtaserver.smtp.resolver.make_resolver`.

The pure parts (grouping MX records into levels, null-MX detection, round-robin
rotation, splicing `lookup-mx:` levels, choosing the error for a failed route) are plain
functions over plain values, table-tested without a reactor.

Errors, as `RouteError` (PowerMTA's bounce categories; Postfix-like diagnostics):

===========================================  =========  ======  ===================
what DNS said                                permanent  status  bounce_cat
===========================================  =========  ======  ===================
domain NXDOMAIN (MX query)                   yes        5.1.2   bad-domain
null MX (RFC 7505)                           yes        5.1.10  bad-domain
every MX host NXDOMAIN                       yes        5.1.2   bad-domain
every host NXDOMAIN or without A/AAAA        yes        5.4.4   bad-domain
  (also: no MX and the domain has no A/AAAA)
SERVFAIL, REFUSED, timeout, other failures   no         4.4.3   routing-errors
  (for the MX query, or for some host when
  no host has an address)
anything failing under `smtp-hosts`          no         4.4.3   bad-configuration
  (the operator chose those hosts; a typo      (DNS said no) or routing-errors
  must not bounce a whole queue)               (DNS failed)
every MX address private or loopback         yes        5.4.4   bad-domain
  (and no host failed temporarily)
===========================================  =========  ======  ===================

Addresses learned from DNS (MX hosts, the implicit MX, `lookup-mx:` entries) that
are private, loopback, link-local or unspecified (`is_private_address`) are skipped
unless the domain says `mx-allow-private-addresses yes`: a hostile DNS answer must
not turn us into a relay into our own network (SSRF). When that leaves no target,
the domain is treated like a null MX (RFC 7505): its mail bounces at once with 5.4.4
and "all MX hosts of <domain> resolve to private or loopback addresses". Hosts
named in `smtp-hosts` (names or `[IP]` literals) are the operator's choice and are
always allowed.

`no-answer-from-host` is left to the SMTP client (connections that time out): a DNS
failure is a routing problem, and 4.4.3 is RFC 3463's "routing server failure".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import dns, error

from mtaserver.config.model import DomainSettings
from mtaserver.config.values import SmtpHost, SmtpHosts

T = TypeVar("T")

# The outcome of looking up one host's addresses.
FOUND = "found"
NXDOMAIN = "nxdomain"  # the name does not exist: definitive
NODATA = "nodata"  # the name exists but has no A or AAAA: definitive
TEMPFAIL = "tempfail"  # SERVFAIL, REFUSED, timeout...: try again later

_MAX_ROTATION_KEYS = 100_000


@attrs.frozen
class Target:
    """One address to connect to; `host` is the MX (or smtp-hosts) name, for TLS checks.

    For an `[IP]` literal in smtp-hosts, `host` is the IP itself. `preference` is the MX
    preference, or the level's index (0, 1, ...) under smtp-hosts.
    """

    host: str
    ip: str
    port: int
    preference: int
    #: The domain's own address: it has no MX (`bounce-upon-no-mx`); not part of equality.
    no_mx: bool = attrs.field(default=False, eq=False)


class RouteError(Exception):
    """No target for a domain: `permanent` bounces its recipients, otherwise they wait."""

    def __init__(self, permanent: bool, status: str, diag: str, bounce_cat: str) -> None:
        super().__init__(f"{status} {diag}")
        self.permanent = permanent
        self.status = status
        self.diag = diag
        self.bounce_cat = bounce_cat


@attrs.frozen
class Hop:
    """A host to resolve (or an IP literal) at some preference, before addresses are known."""

    name: str
    port: int
    preference: int
    literal: bool = False
    from_dns: bool = False  # named by an MX answer (or the implicit MX), not the operator
    implicit: bool = False  # the domain itself: it has no MX (RFC 5321 5.1)


@attrs.frozen
class HostAddresses:
    """What DNS said about one host name: its addresses, or why there are none."""

    name: str
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    status: str = FOUND
    reason: str = ""  # for diagnostics: "Host not found", "SERVFAIL", "timeout", ...


# -- pure parts ------------------------------------------------------------------------


def normalize_name(name: str) -> str:
    """Lowercase, without the root's trailing dot: how names are compared and shown."""
    return name.strip().rstrip(".").lower()


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def is_host_name(name: str) -> bool:
    """A DNS answer's exchange name is a plain host name (letters, digits, `-`, `_`).

    DNS labels may hold any byte; a name with CR/LF or ESC in it would reach log lines
    and acct fields (`dsnMta`), so such an MX is ignored like one that does not resolve.
    """
    labels = name.split(".")
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def is_null_mx(records: Sequence[tuple[int, str]]) -> bool:
    """RFC 7505: a single MX whose exchange is the root ("." or "") means "no mail here".

    The RFC says preference 0; like Postfix we accept any preference, since the
    publisher's intent is unambiguous with only one record naming the root.
    """
    return len(records) == 1 and normalize_name(records[0][1]) == ""


def mx_levels(records: Iterable[tuple[int, str]]) -> list[tuple[int, list[str]]]:
    """Group `(preference, exchange)` records into levels, lowest preference first.

    Names inside a level are sorted (DNS answers come in any order; a stable order makes
    round robin predictable) and deduplicated; root exchanges (a null MX mixed with
    real records, which RFC 7505 forbids) are dropped rather than tried.
    """
    by_preference: dict[int, set[str]] = {}
    for preference, exchange in records:
        name = normalize_name(exchange)
        if name:
            by_preference.setdefault(preference, set()).add(name)
    return [(pref, sorted(names)) for pref, names in sorted(by_preference.items())]


def rotate(items: Sequence[T], turn: int) -> list[T]:
    """`items` started at position `turn` (modulo its length): the round-robin step."""
    if not items:
        return []
    start = turn % len(items)
    return list(items[start:]) + list(items[:start])


def merge_levels(entries: Sequence[Sequence[Sequence[T]]]) -> list[list[T]]:
    """Merge several entries' level lists index by index.

    One smtp-hosts level may hold `h1, lookup-mx:other.tld`: `h1` gives one level,
    `other.tld` its MX levels. The best level of each entry shares the first merged
    level; the backup MX levels of `other.tld` follow right after, in their order.
    """
    merged: list[list[T]] = []
    for levels in entries:
        for index, level in enumerate(levels):
            while len(merged) <= index:
                merged.append([])
            merged[index].extend(level)
    return [level for level in merged if level]


def smtp_hosts_levels(smtp_hosts: SmtpHosts, default_port: int) -> list[list[SmtpHost]]:
    """`smtp-hosts` levels with every port filled in (`default-smtp-port` when unset)."""
    return [
        [attrs.evolve(host, port=host.port or default_port) for host in level]
        for level in smtp_hosts
    ]


_PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def is_private_address(ip: str) -> bool:
    """True for private, loopback, link-local and unspecified addresses (also IPv4-mapped).

    Those are where an MX from a hostile DNS answer must not lead us (see the module
    docstring). An unparsable address counts as private: it is never connected to.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            address = mapped
    return any(address in net for net in _PRIVATE_NETWORKS if net.version == address.version)


def level_targets(
    hops: Sequence[Hop],
    found: dict[str, HostAddresses],
    turn: int,
    allow_private: bool = True,
    refused: set[str] | None = None,
) -> list[Target]:
    """The targets of one level: IPv4 addresses first, each family rotated by `turn`.

    Rotating the whole level (every address of every host) spreads successive
    connections over all of a domain's equal-preference servers; keeping IPv4 first
    means a sender without IPv6 connectivity does not waste its first tries.
    Without `allow_private`, DNS-learned private addresses are skipped and added to
    `refused`.
    """
    ipv4: list[Target] = []
    ipv6: list[Target] = []
    seen: set[tuple[str, int]] = set()
    for hop in hops:
        if hop.literal:
            addresses: Iterable[str] = [hop.name]
        else:
            result = found.get(hop.name)
            addresses = (result.ipv4 + result.ipv6) if result else ()
        for ip in addresses:
            if (ip, hop.port) in seen:
                continue
            if hop.from_dns and not allow_private and is_private_address(ip):
                if refused is not None:
                    refused.add(ip)
                continue
            seen.add((ip, hop.port))
            family = ipv6 if ipaddress.ip_address(ip).version == 6 else ipv4
            family.append(Target(hop.name, ip, hop.port, hop.preference, no_mx=hop.implicit))
    return rotate(ipv4, turn) + rotate(ipv6, turn)


def no_target_error(domain: str, results: Sequence[HostAddresses], configured: bool) -> RouteError:
    """Why none of a route's hosts gave an address (see the module docstring's table)."""
    if not results:
        return RouteError(False, "4.4.3", f"No usable host for {domain}", "routing-errors")
    definitive = all(r.status in (NXDOMAIN, NODATA) for r in results)
    worst = next((r for r in results if r.status == TEMPFAIL), results[0])
    diag = (
        "Host or domain name not found. "
        f"Name service error for name={worst.name} type=A: {worst.reason}"
    )
    if configured:
        cat = "bad-configuration" if definitive else "routing-errors"
        return RouteError(False, "4.4.3", diag, cat)
    if not definitive:
        return RouteError(False, "4.4.3", diag + ", try again", "routing-errors")
    if all(r.status == NXDOMAIN for r in results):
        return RouteError(True, "5.1.2", diag, "bad-domain")
    return RouteError(True, "5.4.4", diag, "bad-domain")


def lookup_failure(exc: BaseException) -> tuple[str, str]:
    """Map a twisted.names failure to (NXDOMAIN or TEMPFAIL, a reason for diagnostics)."""
    # Order matters: every rCode error (SERVFAIL, REFUSED...) subclasses DomainError,
    # which the hosts file resolver raises alone for "not found".
    if isinstance(exc, error.DNSServerError):
        return TEMPFAIL, "SERVFAIL"
    if isinstance(exc, error.DNSQueryRefusedError):
        return TEMPFAIL, "REFUSED"
    if isinstance(exc, defer.TimeoutError | error.DNSQueryTimeoutError):
        return TEMPFAIL, "timeout"
    if isinstance(exc, error.DNSNameError | error.AuthoritativeDomainError) or (
        type(exc) is error.DomainError
    ):
        return NXDOMAIN, "Host not found"
    return TEMPFAIL, type(exc).__name__


# -- the resolver ----------------------------------------------------------------------


class MxResolver:
    """Turns a domain and its settings into preference levels of delivery targets.

    Holds only the round-robin counters; caching belongs to the resolver
    (`mtaserver.smtp.resolver.make_resolver` builds one with a TTL cache).
    Call `route` on the reactor thread.
    """

    def __init__(self, resolver: IResolver) -> None:
        # Any: twisted's IResolver annotations type an answer as a tuple of three
        # RRHeaders (it is three lists of them) and make `timeout` required.
        self._resolver: Any = resolver
        self._turns: dict[str, int] = {}

    def names_cached(self) -> int:
        """How many answers the resolver's cache holds (`/status` resolver.namesCached)."""
        cache = getattr(self._resolver, "cache", None)
        try:
            return len(cache) if cache is not None else 0
        except TypeError:  # a resolver whose cache is not sized
            return 0

    def clear_cache(self, domain: str | None = None) -> int:
        """Forget the resolver's cached answers (`clear dnscache`), all or those about
        `domain` and its subdomains, when it keeps any; how many."""
        clear = getattr(self._resolver, "clear", None)
        if clear is None:
            return 0
        return int(clear(domain) or 0) if domain is not None else int(clear() or 0)

    async def records(self, domain: str) -> list[tuple[Hop, HostAddresses]]:
        """`resolve DOMAIN`: the MX hosts as DNS gives them, best first (without MX: the
        implicit MX, the domain itself), each with what its address lookup said. Raises
        `RouteError` when the MX query fails or says the domain takes no mail."""
        hops = [hop for level in await self._mx_hops(normalize_name(domain), 25) for hop in level]
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self.addresses(hop.name)) for hop in hops]
        )
        return list(zip(hops, results, strict=True))

    def _next_turn(self, domain: str) -> int:
        if len(self._turns) >= _MAX_ROTATION_KEYS and domain not in self._turns:
            self._turns.clear()  # bounded memory; the rotation merely restarts
        turn = self._turns.get(domain, -1) + 1
        self._turns[domain] = turn
        return turn

    async def route(self, domain: str, settings: DomainSettings) -> list[list[Target]]:
        """Levels of targets for `domain`, best first; raises `RouteError` if there are none.

        Each call rotates the targets inside each level, so successive connections of a
        queue spread over the domain's equal-preference hosts and addresses.
        """
        domain = normalize_name(domain)
        configured = settings.smtp_hosts is not None
        lookup_errors: list[RouteError] = []
        if settings.smtp_hosts is not None:
            levels = await self._smtp_hosts_hops(
                settings.smtp_hosts, settings.default_smtp_port, lookup_errors
            )
        else:
            levels = await self._mx_hops(domain, settings.default_smtp_port)
            if settings.bounce_upon_no_mx is True and levels[0][0].implicit:
                # PowerMTA's bounce-upon-no-mx true: no A/AAAA fallback, bounce at once
                diag = f"no MX record for {domain} (bounce-upon-no-mx)"
                raise RouteError(True, "5.4.4", diag, "bad-domain")
        names = sorted({hop.name for level in levels for hop in level if not hop.literal})
        results = await defer.gatherResults(
            [defer.Deferred.fromCoroutine(self.addresses(name)) for name in names]
        )
        found = {result.name: result for result in results}
        turn = self._next_turn(domain)
        allow_private = settings.mx_allow_private_addresses
        refused: set[str] = set()
        routed = [
            targets
            for level in levels
            if (targets := level_targets(level, found, turn, allow_private, refused))
        ]
        if not routed and refused and not any(r.status == TEMPFAIL for r in results):
            diag = (
                f"all MX hosts of {domain} resolve to private or loopback addresses "
                f"({', '.join(sorted(refused))}); mx-allow-private-addresses is no"
            )
            if configured:
                raise RouteError(False, "4.4.3", diag, "bad-configuration")
            raise RouteError(True, "5.4.4", diag, "bad-domain")
        if not routed:
            if lookup_errors and not results:
                first = lookup_errors[0]  # only lookup-mx entries, and they all failed
                raise RouteError(False, "4.4.3", first.diag, "bad-configuration")
            raise no_target_error(domain, results, configured)
        return routed

    async def rollup_name(self, domain: str) -> str | None:
        """`mx-rollup`: the name of `domain`'s best MX host, which names its shared queue.

        Domains whose best MX is the same host share one queue. None when DNS fails, the
        domain has no MX or a null MX: such a domain keeps a queue of its own.
        """
        try:
            levels = await self._mx_hops(domain, 25)
        except RouteError:
            return None
        best = sorted(normalize_name(hop.name) for hop in levels[0] if hop.from_dns)
        return best[0] if best and best[0] != normalize_name(domain) else None

    async def _mx_hops(self, domain: str, port: int) -> list[list[Hop]]:
        """The MX levels of `domain` as hops; implicit MX (the domain itself) without MX."""
        try:
            answers, _authority, _additional = await self._resolver.lookupMailExchange(domain)
        except Exception as exc:
            status, reason = lookup_failure(exc)
            diag = (
                f"Host or domain name not found. Name service error for name={domain} type=MX: "
                f"{reason}"
            )
            if status == NXDOMAIN:
                raise RouteError(True, "5.1.2", diag, "bad-domain") from None
            raise RouteError(False, "4.4.3", diag + ", try again", "routing-errors") from None
        records = [
            (int(rr.payload.preference), str(rr.payload.name))
            for rr in answers
            if rr.type == dns.MX
        ]
        if not records:
            return [[Hop(domain, port, 0, from_dns=True, implicit=True)]]  # RFC 5321 5.1
        if is_null_mx(records):
            raise RouteError(
                True, "5.1.10", f"Domain {domain} does not accept mail (null MX)", "bad-domain"
            )
        valid = [(pref, name) for pref, name in records if is_host_name(normalize_name(name))]
        if not valid:
            raise RouteError(
                True, "5.4.4", f"no MX host of {domain} has a valid host name", "bad-domain"
            )
        return [
            [Hop(name, port, pref, from_dns=True) for name in names]
            for pref, names in mx_levels(valid)
        ]

    async def _smtp_hosts_hops(
        self, smtp_hosts: SmtpHosts, default_port: int, errors: list[RouteError]
    ) -> list[list[Hop]]:
        """`smtp-hosts` levels as hops; `lookup-mx:` entries splice in that domain's MX levels.

        A `lookup-mx:` domain that cannot be routed contributes nothing and its error is
        appended to `errors`, so the other levels can still carry the mail.
        """
        levels: list[list[Hop]] = []
        for level in smtp_hosts_levels(smtp_hosts, default_port):
            entries: list[list[list[Hop]]] = []
            for host in level:
                port = host.port or default_port
                if host.lookup_mx:
                    try:
                        entries.append(await self._mx_hops(host.host, port))
                    except RouteError as exc:
                        errors.append(exc)
                else:
                    entries.append([[Hop(host.host, port, 0, literal=host.literal)]])
            levels.extend(merge_levels(entries))
        return [
            [attrs.evolve(hop, preference=index) for hop in level]
            for index, level in enumerate(levels)
        ]

    async def addresses(self, name: str) -> HostAddresses:
        """All A then AAAA addresses of `name`; never raises (the status says what failed)."""
        outcomes = await defer.DeferredList(
            [self._resolver.lookupAddress(name), self._resolver.lookupIPV6Address(name)],
            consumeErrors=True,
        )
        found: dict[int, list[str]] = {dns.A: [], dns.AAAA: []}
        failures: list[tuple[str, str]] = []
        for rrtype, (ok, result) in zip((dns.A, dns.AAAA), outcomes, strict=True):
            if not ok:
                failures.append(lookup_failure(result.value))
                continue
            for rr in result[0]:
                if rr.type == rrtype:
                    found[rrtype].append(str(ipaddress.ip_address(rr.payload.address)))
        ipv4, ipv6 = tuple(dict.fromkeys(found[dns.A])), tuple(dict.fromkeys(found[dns.AAAA]))
        if ipv4 or ipv6:
            return HostAddresses(name, ipv4, ipv6)
        for status in (NXDOMAIN, TEMPFAIL):
            for failed_status, reason in failures:
                if failed_status == status:
                    return HostAddresses(name, status=status, reason=reason)
        return HostAddresses(
            name, status=NODATA, reason="Host found but no data record of requested type"
        )
