"""MxResolver against a real twisted.names DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dns_server import REFUSED, SERVFAIL, SLOW, start_dns_server_in_thread
from reactor_thread import run_in_reactor
from twisted.internet.interfaces import IResolver
from twisted.internet.testing import MemoryReactorClock

from mtaserver.config.model import DomainSettings
from mtaserver.config.values import HostPort, parse_smtp_hosts
from mtaserver.smtp.mx import MxResolver, RouteError, Target
from mtaserver.smtp.resolver import make_resolver

ZONE: dict[str, Any] = {
    "multi.test": [
        ("MX", 20, "backup.multi.test"),
        ("MX", 10, "mx2.multi.test"),
        ("MX", 10, "mx1.multi.test"),
    ],
    "mx1.multi.test": [("A", "127.0.0.11"), ("AAAA", "::1")],
    "mx2.multi.test": [("A", "127.0.0.12")],
    "backup.multi.test": [("A", "127.0.0.13")],
    "implicit.test": [("A", "127.0.0.20"), ("AAAA", "::20")],
    "nullmx.test": [("MX", 0, ".")],
    "servfail.test": SERVFAIL,
    "refused.test": REFUSED,
    "slow.test": SLOW,
    "partial.test": [("MX", 10, "missing.partial.test"), ("MX", 20, "ok.partial.test")],
    "ok.partial.test": [("A", "127.0.0.21")],
    "allgone.test": [("MX", 10, "gone1.allgone.test"), ("MX", 20, "gone2.allgone.test")],
    "flaky.test": [("MX", 10, "down.flaky.test"), ("MX", 10, "gone.flaky.test")],
    "down.flaky.test": SERVFAIL,
    "noaddr.test": [("TXT", "v=spf1 -all")],
    "nodatamx.test": [("MX", 10, "txtonly.nodatamx.test")],
    "txtonly.nodatamx.test": [("TXT", "hello")],
    "cname.test": [("MX", 10, "alias.cname.test")],
    "alias.cname.test": [("CNAME", "mx2.multi.test")],
    "smart.test": [("A", "127.0.0.30")],
    "v6only.test": [("AAAA", "::30")],
}


@pytest.fixture(scope="module")
def dns_port() -> Iterator[int]:
    """One loopback DNS server serving ZONE for the whole module."""
    port, stop = start_dns_server_in_thread(ZONE)
    yield port
    stop()


# The zone's MX hosts live on loopback: allowed only with mx-allow-private-addresses.
LOOPBACK_OK = DomainSettings(mx_allow_private_addresses=True)


def _mx(port: int, timeout: tuple[float, ...] = (1, 2)) -> MxResolver:
    resolver = run_in_reactor(make_resolver, (HostPort("127.0.0.1", port),), None, timeout)
    return MxResolver(resolver)


def _route(mx: MxResolver, domain: str, settings: DomainSettings | None = None) -> Any:
    return run_in_reactor(mx.route, domain, settings or LOOPBACK_OK)


def _fails(mx: MxResolver, domain: str, settings: DomainSettings | None = None) -> RouteError:
    with pytest.raises(RouteError) as info:
        _route(mx, domain, settings)
    return info.value


def test_mx_levels_by_preference_with_all_addresses(dns_port: int) -> None:
    """MX hosts are grouped by preference and resolved to every A then AAAA address."""
    levels = _route(_mx(dns_port), "Multi.Test.")
    assert levels == [
        [
            Target("mx1.multi.test", "127.0.0.11", 25, 10),
            Target("mx2.multi.test", "127.0.0.12", 25, 10),
            Target("mx1.multi.test", "::1", 25, 10),
        ],
        [Target("backup.multi.test", "127.0.0.13", 25, 20)],
    ]


def test_round_robin_rotates_on_each_call(dns_port: int) -> None:
    """Successive routes for a domain start at the next address of each level."""
    mx = _mx(dns_port)
    firsts = [[t.ip for t in _route(mx, "multi.test")[0]] for _ in range(3)]
    assert firsts == [
        ["127.0.0.11", "127.0.0.12", "::1"],
        ["127.0.0.12", "127.0.0.11", "::1"],
        ["127.0.0.11", "127.0.0.12", "::1"],
    ]


def test_default_smtp_port_applies_to_mx_hosts(dns_port: int) -> None:
    """default-smtp-port is the port of every MX target."""
    levels = _route(
        _mx(dns_port),
        "multi.test",
        DomainSettings(default_smtp_port=2525, mx_allow_private_addresses=True),
    )
    assert {t.port for level in levels for t in level} == {2525}


def test_implicit_mx_uses_the_domain_addresses(dns_port: int) -> None:
    """A domain without MX records is its own MX (RFC 5321 5.1)."""
    assert _route(_mx(dns_port), "implicit.test") == [
        [Target("implicit.test", "127.0.0.20", 25, 0), Target("implicit.test", "::20", 25, 0)]
    ]


def test_ipv6_only_host(dns_port: int) -> None:
    """A host with only AAAA records still routes."""
    assert _route(_mx(dns_port), "v6only.test") == [[Target("v6only.test", "::30", 25, 0)]]


def test_mx_host_through_cname(dns_port: int) -> None:
    """An MX host that is a CNAME resolves to the canonical name's addresses."""
    assert _route(_mx(dns_port), "cname.test") == [
        [Target("alias.cname.test", "127.0.0.12", 25, 10)]
    ]


def test_null_mx_is_a_permanent_bad_domain(dns_port: int) -> None:
    """A null MX bounces with 5.1.10."""
    exc = _fails(_mx(dns_port), "nullmx.test")
    assert (exc.permanent, exc.status, exc.bounce_cat) == (True, "5.1.10", "bad-domain")
    assert "null MX" in exc.diag


def test_nxdomain_is_a_permanent_bad_domain(dns_port: int) -> None:
    """A domain that does not exist bounces with 5.1.2."""
    exc = _fails(_mx(dns_port), "nxdomain.test")
    assert (exc.permanent, exc.status, exc.bounce_cat) == (True, "5.1.2", "bad-domain")
    assert "Host or domain name not found" in exc.diag and "nxdomain.test" in exc.diag


@pytest.mark.parametrize(
    ("domain", "reason"), [("servfail.test", "SERVFAIL"), ("refused.test", "REFUSED")]
)
def test_server_failures_are_temporary(dns_port: int, domain: str, reason: str) -> None:
    """SERVFAIL and REFUSED keep the mail queued with 4.4.3."""
    exc = _fails(_mx(dns_port), domain)
    assert (exc.permanent, exc.status, exc.bounce_cat) == (False, "4.4.3", "routing-errors")
    assert reason in exc.diag


def test_timeout_is_temporary(dns_port: int) -> None:
    """A name server that never answers gives a temporary failure after the timeouts."""
    exc = _fails(_mx(dns_port, timeout=(0.2, 0.3)), "slow.test")
    assert (exc.permanent, exc.status) == (False, "4.4.3")
    assert "timeout" in exc.diag  # ended by the resolver's timeouts, not the test's deadline


def test_mx_hosts_without_addresses_are_skipped(dns_port: int) -> None:
    """An MX host that does not resolve is left out; the others still route."""
    assert _route(_mx(dns_port), "partial.test") == [
        [Target("ok.partial.test", "127.0.0.21", 25, 20)]
    ]


def test_every_mx_host_nxdomain_is_permanent(dns_port: int) -> None:
    """When every MX host is NXDOMAIN the domain cannot receive mail: 5.1.2."""
    exc = _fails(_mx(dns_port), "allgone.test")
    assert (exc.permanent, exc.status, exc.bounce_cat) == (True, "5.1.2", "bad-domain")


def test_mx_host_failing_temporarily_keeps_mail_queued(dns_port: int) -> None:
    """One MX host with SERVFAIL and the rest NXDOMAIN is a temporary failure."""
    exc = _fails(_mx(dns_port), "flaky.test")
    assert (exc.permanent, exc.status) == (False, "4.4.3")
    assert "down.flaky.test" in exc.diag


@pytest.mark.parametrize("domain", ["noaddr.test", "nodatamx.test"])
def test_no_addresses_at_all_is_permanent(dns_port: int, domain: str) -> None:
    """No MX and no address, or MX hosts without addresses: 5.4.4."""
    exc = _fails(_mx(dns_port), domain)
    assert (exc.permanent, exc.status, exc.bounce_cat) == (True, "5.4.4", "bad-domain")


def test_smtp_hosts_override_mx(dns_port: int) -> None:
    """smtp-hosts levels: names, ports, literals, and lookup-mx splicing."""
    settings = DomainSettings(
        smtp_hosts=parse_smtp_hosts(
            "smart.test:2526, lookup-mx:multi.test; [127.0.0.99]:2525, [::1]"
        ),
        default_smtp_port=587,
        mx_allow_private_addresses=True,  # lookup-mx: addresses come from DNS
    )
    assert _route(_mx(dns_port), "anything.test", settings) == [
        [
            Target("smart.test", "127.0.0.30", 2526, 0),
            Target("mx1.multi.test", "127.0.0.11", 587, 0),
            Target("mx2.multi.test", "127.0.0.12", 587, 0),
            Target("mx1.multi.test", "::1", 587, 0),
        ],
        [Target("backup.multi.test", "127.0.0.13", 587, 1)],
        [Target("127.0.0.99", "127.0.0.99", 2525, 2), Target("::1", "::1", 587, 2)],
    ]


def test_smtp_hosts_literal_needs_no_dns() -> None:
    """An [IP] smarthost routes without asking any name server."""
    mx = MxResolver(make_resolver((HostPort("127.0.0.1", 9),), MemoryReactorClock()))
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("[127.0.0.5]:2525"))
    assert _route(mx, "x.test", settings) == [[Target("127.0.0.5", "127.0.0.5", 2525, 0)]]


def test_smtp_hosts_failures_are_never_permanent(dns_port: int) -> None:
    """An unresolvable smarthost is the operator's to fix: 4.4.3 bad-configuration."""
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("missing.test; lookup-mx:nullmx.test"))
    exc = _fails(_mx(dns_port), "x.test", settings)
    assert (exc.permanent, exc.status, exc.bounce_cat) == (False, "4.4.3", "bad-configuration")


def test_smtp_hosts_lookup_mx_failure_alone(dns_port: int) -> None:
    """A lookup-mx entry whose domain fails is reported, and still only temporarily."""
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("lookup-mx:nxdomain.test"))
    exc = _fails(_mx(dns_port), "x.test", settings)
    assert (exc.permanent, exc.status) == (False, "4.4.3")
    assert "nxdomain.test" in exc.diag


def test_smtp_hosts_skip_failed_lookup_mx(dns_port: int) -> None:
    """A failing lookup-mx level is skipped when another level routes."""
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("lookup-mx:servfail.test; smart.test"))
    assert _route(_mx(dns_port), "x.test", settings) == [
        [Target("smart.test", "127.0.0.30", 25, 0)]
    ]


def test_make_resolver_without_name_servers_uses_the_system() -> None:
    """No name-server directive: a resolver chain over /etc/hosts and resolv.conf."""
    resolver = make_resolver((), MemoryReactorClock())
    assert IResolver.providedBy(resolver)
