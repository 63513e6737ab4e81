"""DNS off the hot path: answers cached for their TTL, /etc/hosts parsed once per change.

Against a real twisted.names server on loopback (tests/dns_server.py) that answers with
short TTLs and records every query it serves, so "did the lookup reach the server" is
read from the server itself. The cache's time is a `task.Clock`, advanced on the
reactor thread, so expiry never waits on the wall clock.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import start_dns_server_in_thread
from reactor_thread import run_in_reactor
from twisted.internet import defer, task
from twisted.names import dns
from twisted.names import error as dns_error
from twisted.python.failure import Failure

from mtaserver.config.model import DomainSettings
from mtaserver.config.values import HostPort
from mtaserver.smtp.mx import MxResolver, Target
from mtaserver.smtp.resolver import (
    MAX_TTL,
    DnsCache,
    DnsResolver,
    HostsFile,
    make_resolver,
    parse_hosts,
)

SHORT = 30  # seconds: the TTL of the zone's short-lived records

ZONE: dict[str, Any] = {
    "cached.test": [dns.Record_MX(10, b"mx.cached.test", ttl=SHORT)],
    "mx.cached.test": [dns.Record_A("127.0.0.21", ttl=SHORT), dns.Record_AAAA("::1", ttl=600)],
    "one.test": [dns.Record_A("127.0.0.23", ttl=SHORT)],
    "two.test": [dns.Record_A("127.0.0.24", ttl=SHORT)],
    "three.test": [dns.Record_A("127.0.0.25", ttl=SHORT)],
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    queries: list[tuple[str, str]] = []
    port, stop = start_dns_server_in_thread(ZONE, queries)
    yield port, queries
    stop()


def _fired(deferred: defer.Deferred[Any]) -> Any:
    """The result (or Failure, then handled) of a Deferred that has already fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def _resolver(port: int, clock: task.Clock, **kwargs: Any) -> DnsResolver:
    servers = (HostPort("127.0.0.1", port),)
    resolver: DnsResolver = run_in_reactor(
        make_resolver, servers, None, (1, 2), clock=clock, **kwargs
    )
    return resolver


def _addresses(resolver: Any, name: str) -> list[str]:
    answers, _, _ = run_in_reactor(resolver.lookupAddress, name)
    return [answer.payload.dottedQuad() for answer in answers if answer.type == dns.A]


def _served(queries: list[tuple[str, str]], name: str) -> int:
    return sum(1 for served, _ in queries if served == name)


def test_second_lookup_within_ttl_does_not_reach_the_server(
    dns_server: tuple[int, list[tuple[str, str]]],
) -> None:
    """Within the TTL a lookup is answered from the cache; after it, the server is asked."""
    port, queries = dns_server
    clock = task.Clock()
    resolver = _resolver(port, clock)
    before = _served(queries, "one.test")
    assert _addresses(resolver, "one.test") == ["127.0.0.23"]
    assert _served(queries, "one.test") == before + 1
    run_in_reactor(clock.advance, SHORT - 1)
    assert _addresses(resolver, "one.test") == ["127.0.0.23"]
    assert _served(queries, "one.test") == before + 1
    run_in_reactor(clock.advance, 1)
    assert _addresses(resolver, "one.test") == ["127.0.0.23"]
    assert _served(queries, "one.test") == before + 2


def test_cached_answer_counts_its_ttl_down(
    dns_server: tuple[int, list[tuple[str, str]]],
) -> None:
    """A cached answer says how long it has left, not the TTL it came with."""
    port, _ = dns_server
    clock = task.Clock()
    resolver = _resolver(port, clock)
    run_in_reactor(resolver.lookupAddress, "two.test")
    run_in_reactor(clock.advance, 10)
    answers, _, _ = run_in_reactor(resolver.lookupAddress, "two.test")
    assert [answer.ttl for answer in answers] == [SHORT - 10]


def test_routing_a_queue_twice_within_ttl_asks_dns_once(
    dns_server: tuple[int, list[tuple[str, str]]],
) -> None:
    """MX, A and AAAA of a second route within the TTL all come from the cache."""
    port, queries = dns_server
    clock = task.Clock()
    mx = MxResolver(_resolver(port, clock))
    start = len(queries)
    settings = DomainSettings(mx_allow_private_addresses=True)  # the zone's MX is loopback
    first = run_in_reactor(mx.route, "cached.test", settings)
    asked = queries[start:]
    assert sorted(asked) == [
        ("cached.test", "MX"),
        ("mx.cached.test", "A"),
        ("mx.cached.test", "AAAA"),
    ]
    second = run_in_reactor(mx.route, "cached.test", settings)
    assert queries[start:] == asked
    expected = [
        Target("mx.cached.test", "127.0.0.21", 25, 10),
        Target("mx.cached.test", "::1", 25, 10),
    ]
    assert first == second == [expected]
    # The MX answer (TTL 30) expires before the AAAA (TTL 600): only it and A are asked again.
    run_in_reactor(clock.advance, SHORT)
    run_in_reactor(mx.route, "cached.test", settings)
    assert sorted(queries[start + len(asked) :]) == [("cached.test", "MX"), ("mx.cached.test", "A")]


def test_clear_forgets_every_answer(dns_server: tuple[int, list[tuple[str, str]]]) -> None:
    """After clear() (the `clear dnscache` hook) the next lookup reaches the server."""
    port, queries = dns_server
    resolver = _resolver(port, task.Clock())
    mx = MxResolver(resolver)
    before = _served(queries, "three.test")
    _addresses(resolver, "three.test")
    _addresses(resolver, "three.test")
    assert _served(queries, "three.test") == before + 1
    run_in_reactor(mx.clear_cache)
    _addresses(resolver, "three.test")
    assert _served(queries, "three.test") == before + 2


def test_cache_size_is_bounded(dns_server: tuple[int, list[tuple[str, str]]]) -> None:
    """With room for two answers, a third pushes out the oldest, which is asked again."""
    port, queries = dns_server
    resolver = _resolver(port, task.Clock(), cache_size=2)
    names = ["one.test", "two.test", "three.test"]
    before = {name: _served(queries, name) for name in names}
    for name in names:
        _addresses(resolver, name)
    assert len(resolver.cache) == 2
    _addresses(resolver, "three.test")
    _addresses(resolver, "two.test")
    _addresses(resolver, "one.test")
    served = {name: _served(queries, name) - before[name] for name in names}
    assert served == {"one.test": 2, "two.test": 1, "three.test": 1}


def test_cache_expiry_without_a_network() -> None:
    """DnsCache alone: a hit until the smallest TTL of the answer has passed, then a miss."""
    clock = task.Clock()
    cache = DnsCache(clock, max_entries=10)
    query = dns.Query(b"x.test", dns.A, dns.IN)
    answer = dns.RRHeader(b"x.test", dns.A, dns.IN, 60, dns.Record_A("127.0.0.1", 60))
    extra = dns.RRHeader(b"ns.x.test", dns.A, dns.IN, 20, dns.Record_A("127.0.0.2", 20))
    cache.cacheResult(query, ([answer], [], [extra]))
    clock.advance(19)
    answers, _, additional = _fired(cache.lookupAddress(b"x.test"))
    assert [(a.ttl, b.ttl) for a, b in zip(answers, additional, strict=True)] == [(41, 1)]
    clock.advance(1)
    assert isinstance(_fired(cache.lookupAddress(b"x.test")), Failure)
    assert len(cache) == 0


def test_ttl_zero_and_empty_answers_are_not_kept() -> None:
    """An answer with TTL 0 (or with no record at all) is used once and never cached."""
    cache = DnsCache(task.Clock())
    zero = dns.RRHeader(b"z.test", dns.A, dns.IN, 0, dns.Record_A("127.0.0.1", 0))
    cache.cacheResult(dns.Query(b"z.test", dns.A, dns.IN), ([zero], [], []))
    cache.cacheResult(dns.Query(b"e.test", dns.A, dns.IN), ([], [], []))
    assert len(cache) == 0
    assert isinstance(_fired(cache.lookupAddress(b"z.test")), Failure)


def test_huge_ttl_is_capped() -> None:
    """A TTL of years is kept at most MAX_TTL (a day): a hostile answer cannot pin itself."""
    clock = task.Clock()
    cache = DnsCache(clock)
    year = 365 * 86_400
    record = dns.RRHeader(b"p.test", dns.A, dns.IN, year, dns.Record_A("127.0.0.1", year))
    cache.cacheResult(dns.Query(b"p.test", dns.A, dns.IN), ([record], [], []))
    clock.advance(MAX_TTL - 1)
    assert not isinstance(_fired(cache.lookupAddress(b"p.test")), Failure)
    clock.advance(1)
    assert isinstance(_fired(cache.lookupAddress(b"p.test")), Failure)


# -- /etc/hosts -------------------------------------------------------------------------


def test_parse_hosts() -> None:
    """Comments, aliases, IPv6, case and bad addresses are read as hosts(5) says."""
    text = (
        b"# comment\n127.0.0.1 localhost Local.Test  # trailing\n"
        b"::1 localhost ip6-localhost\nnot-an-ip broken.test\n10.0.0.1 local.test\n"
    )
    assert parse_hosts(text) == {
        "localhost": ("127.0.0.1", "::1"),
        "local.test": ("127.0.0.1", "10.0.0.1"),
        "ip6-localhost": ("::1",),
    }


def _lookup(resolver: Any, name: str) -> list[str]:
    result = _fired(resolver.lookupAddress(name))
    if isinstance(result, Failure):
        assert result.check(dns_error.DomainError)
        return []
    answers, _, _ = result
    return [answer.payload.dottedQuad() for answer in answers]


def test_hosts_file_is_read_once_until_it_changes(tmp_path: Path) -> None:
    """Lookups do not re-read /etc/hosts; a new mtime (an edit) makes the next one read it."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.5 app.test\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    hosts = HostsFile(str(path))
    assert _lookup(hosts, "app.test") == ["127.0.0.5"]
    # Same size, same mtime: a lookup that read the file would see .6; this one must not.
    path.write_bytes(b"127.0.0.6 app.test\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert _lookup(hosts, "app.test") == ["127.0.0.5"]
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert _lookup(hosts, "app.test") == ["127.0.0.6"]
    hosts_reloaded = HostsFile(str(path))
    assert _lookup(hosts_reloaded, "APP.test.") == ["127.0.0.6"]


def test_clear_rereads_the_hosts_file(tmp_path: Path) -> None:
    """`clear()` on the system resolver re-reads /etc/hosts even when its mtime is unchanged."""
    path = tmp_path / "hosts"
    path.write_bytes(b"127.0.0.5 app.test\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    resolver = make_resolver((), task.Clock(), hosts_file=str(path))
    assert _lookup(resolver, "app.test") == ["127.0.0.5"]
    path.write_bytes(b"127.0.0.6 app.test\n")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert _lookup(resolver, "app.test") == ["127.0.0.5"]
    resolver.clear()
    assert _lookup(resolver, "app.test") == ["127.0.0.6"]


def test_missing_hosts_file_answers_nothing(tmp_path: Path) -> None:
    """No hosts file: the lookup fails with DomainError, so the chain asks DNS."""
    hosts = HostsFile(str(tmp_path / "absent"))
    assert _lookup(hosts, "app.test") == []
