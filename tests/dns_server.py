"""An authoritative twisted.names DNS server on loopback, for tests that look names up.

Serves a zone built in code, over UDP and TCP on the same port of 127.0.0.1, so the
code under test can use a real `twisted.names.client.Resolver` (as production does)
without touching the network.

Records: a dict from a name to a list of records, each either a twisted.names record
(`dns.Record_MX(10, b"mx.example.test")`) or a short tuple:

    ("A", "127.0.0.1")   ("AAAA", "::1")   ("MX", 10, "mx.example.test")   ("MX", 0, ".")
    ("CNAME", "other.test")   ("TXT", "v=DKIM1; k=rsa; p=...")

or, instead of a list, one of the behaviours `SERVFAIL`, `REFUSED` or `SLOW` (never
answers: for timeouts). A name not in the dict is NXDOMAIN; a name present without a
record of the asked type is NODATA (NOERROR, empty answer). Names are matched without
case and without a trailing dot. The dict is read at each query, so a test may change
it while the server runs.

From a test with the reactor in a thread (tests/reactor_thread.py):

    from dns_server import start_dns_server_in_thread
    port, stop = start_dns_server_in_thread({"example.test": [("MX", 10, "mx.example.test")],
                                            "mx.example.test": [("A", "127.0.0.1")]})
    try:
        ... resolver = mtaserver.smtp.resolver.make_resolver((HostPort("127.0.0.1", port),)) ...
    finally:
        stop()

On the reactor thread (trial, or inside `run_in_reactor`): `port, stop =
start_dns_server(records)`; `stop()` returns a Deferred that fires when both ports are
closed. Pass `queries=[]` to either to collect `(name, type name)` of each query served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from reactor_thread import run_in_reactor
from twisted.internet import defer, error
from twisted.names import common, dns, server
from twisted.names import error as dns_error

SERVFAIL = "SERVFAIL"
REFUSED = "REFUSED"
SLOW = "SLOW"

TTL = 60


class _Refused(Exception):
    """Raised by the zone to make the server answer REFUSED."""


class _ServFail(Exception):
    """Raised by the zone to make the server answer SERVFAIL (without logging an error)."""


def _record(spec: Any) -> dns.IEncodable:
    if not isinstance(spec, tuple):
        return spec  # already a twisted.names record
    kind, *args = spec
    kind = kind.upper()
    if kind == "A":
        return dns.Record_A(args[0], ttl=TTL)
    if kind == "AAAA":
        return dns.Record_AAAA(args[0], ttl=TTL)
    if kind == "MX":
        exchange = args[1].rstrip(".")
        return dns.Record_MX(args[0], exchange.encode("ascii"), ttl=TTL)
    if kind == "CNAME":
        return dns.Record_CNAME(args[0].encode("ascii"), ttl=TTL)
    if kind == "TXT":
        text = args[0].encode("ascii") if isinstance(args[0], str) else args[0]
        chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [b""]
        return dns.Record_TXT(*chunks, ttl=TTL)
    raise ValueError(f"unknown record type in test zone: {spec!r}")


def _key(name: bytes | str) -> str:
    text = name.decode("ascii") if isinstance(name, bytes) else name
    return text.rstrip(".").lower()


class ZoneResolver(common.ResolverBase):
    """An IResolver answering from a dict, as an authority for every name in it."""

    def __init__(self, records: Mapping[str, Any], queries: list[tuple[str, str]] | None):
        common.ResolverBase.__init__(self)
        self.records = records
        self.queries = queries

    def _entry(self, name: str) -> Any:
        for key, value in self.records.items():
            if _key(key) == name:
                return value
        return None

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> defer.Deferred[Any]:
        key = _key(name)
        if self.queries is not None:
            self.queries.append((key, dns.QUERY_TYPES.get(type, str(type))))
        entry = self._entry(key)
        if entry is None:
            return defer.fail(dns_error.DomainError(key))
        if entry == SERVFAIL:
            return defer.fail(_ServFail(key))
        if entry == REFUSED:
            return defer.fail(_Refused(key))
        if entry == SLOW:
            return defer.Deferred()  # never fires: the client times out
        answers = []
        owner = key
        for _ in range(8):  # follow CNAMEs inside the zone, as a recursive server would
            records = [_record(spec) for spec in self._entry(owner) or []]
            matching = [r for r in records if type in (dns.ALL_RECORDS, r.TYPE)]
            cnames = [r for r in records if r.TYPE == dns.CNAME]
            if matching or not cnames:
                answers += [self._rr(owner, r) for r in matching]
                break
            answers.append(self._rr(owner, cnames[0]))
            owner = _key(cnames[0].name.name)
        return defer.succeed((answers, [], []))

    @staticmethod
    def _rr(owner: str, record: Any) -> dns.RRHeader:
        return dns.RRHeader(
            owner.encode("ascii"), record.TYPE, dns.IN, record.ttl or TTL, record, auth=True
        )


class _Factory(server.DNSServerFactory):
    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        """Answer REFUSED or SERVFAIL for the zone's behaviours, without logging errors."""
        if failure.check(_Refused, _ServFail):
            code = dns.EREFUSED if failure.check(_Refused) else dns.ESERVER
            response = self._responseFromMessage(message=message, rCode=code)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


class DnsServer(NamedTuple):
    port: int
    stop: Callable[[], Any]


def start_dns_server(
    records: Mapping[str, Sequence[Any] | str],
    queries: list[tuple[str, str]] | None = None,
    reactor: Any = None,
) -> DnsServer:
    """Listen on 127.0.0.1, UDP and TCP on one port; call on the reactor thread."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    factory = _Factory(authorities=[ZoneResolver(records, queries)])
    factory.noisy = False
    for _ in range(20):
        # a fresh protocol each try: a stopped UDP port leaves its protocol attached
        protocol = dns.DNSDatagramProtocol(controller=factory)
        protocol.noisy = False
        udp = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        port = udp.getHost().port
        try:
            tcp = reactor.listenTCP(port, factory, interface="127.0.0.1")
        except error.CannotListenError:
            udp.stopListening()
            continue
        break
    else:
        raise RuntimeError("no free port for both UDP and TCP")

    def stop() -> defer.Deferred[Any]:
        return defer.gatherResults(
            [defer.maybeDeferred(udp.stopListening), defer.maybeDeferred(tcp.stopListening)]
        )

    return DnsServer(port, stop)


def start_dns_server_in_thread(
    records: Mapping[str, Sequence[Any] | str], queries: list[tuple[str, str]] | None = None
) -> DnsServer:
    """`start_dns_server` from a test thread, with the reactor in tests/reactor_thread.py.

    The returned `stop()` blocks until both ports are closed.
    """
    running: DnsServer = run_in_reactor(start_dns_server, records, queries)

    def stop() -> None:
        run_in_reactor(running.stop)

    return DnsServer(running.port, stop)
