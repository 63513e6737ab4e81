"""MX hosts on private, loopback or link-local addresses are not connected to by default.

Against a real twisted.names server on loopback (tests/dns_server.py), and end to end
through the real server: a domain whose MX set is all private bounces 5.4.4 at once.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dns_server import SERVFAIL, start_dns_server_in_thread
from mx_receiver import Receiver
from reactor_thread import run_in_reactor
from server_configs import acct_file, domain, relay_config
from server_process import ServerProcess, free_port, read_acct, wait_until

from mtaserver.config.model import DomainSettings
from mtaserver.config.values import HostPort, parse_smtp_hosts
from mtaserver.smtp.mx import MxResolver, RouteError, Target, is_private_address
from mtaserver.smtp.resolver import make_resolver

ZONE: dict[str, Any] = {
    "private.test": [("MX", 10, "mx.private.test"), ("MX", 20, "mx2.private.test")],
    "mx.private.test": [("A", "10.1.2.3"), ("AAAA", "fe80::1")],
    "mx2.private.test": [("A", "127.0.0.1"), ("AAAA", "::ffff:192.168.1.1")],
    "mixed.test": [("MX", 10, "inside.mixed.test"), ("MX", 20, "outside.mixed.test")],
    "inside.mixed.test": [("A", "172.16.0.9")],
    "outside.mixed.test": [("A", "192.0.2.25")],
    "implicit-private.test": [("A", "169.254.1.1")],
    "flaky-private.test": [("MX", 10, "p.flaky-private.test"), ("MX", 20, "s.flaky-private.test")],
    "p.flaky-private.test": [("A", "10.0.0.1")],
    "s.flaky-private.test": SERVFAIL,
    "relay.internal.test": [("A", "10.9.9.9")],
}


@pytest.fixture(scope="module")
def dns_port() -> Iterator[int]:
    port, stop = start_dns_server_in_thread(ZONE)
    yield port
    stop()


def _route(port: int, domain: str, settings: DomainSettings | None = None) -> Any:
    resolver = run_in_reactor(make_resolver, (HostPort("127.0.0.1", port),), None, (1, 2))
    return run_in_reactor(MxResolver(resolver).route, domain, settings or DomainSettings())


@pytest.mark.parametrize(
    ("ip", "private"),
    [
        ("10.0.0.1", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("172.32.0.1", False),
        ("192.168.0.1", True),
        ("127.0.0.1", True),
        ("169.254.10.10", True),
        ("0.1.2.3", True),
        ("::1", True),
        ("::", True),
        ("fe80::1", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("::ffff:10.0.0.1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:192.0.2.1", False),
        ("192.0.2.1", False),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("not an ip", True),
    ],
)
def test_is_private_address(ip: str, private: bool) -> None:
    """The refused ranges: RFC 1918, loopback, link-local, ULA, 0/8, and IPv4-mapped forms."""
    assert is_private_address(ip) is private


def test_all_private_mx_bounces_5_4_4(dns_port: int) -> None:
    """A domain whose every MX address is private is refused permanently (5.4.4, bad-domain)."""
    with pytest.raises(RouteError) as info:
        _route(dns_port, "private.test")
    error = info.value
    assert (error.permanent, error.status, error.bounce_cat) == (True, "5.4.4", "bad-domain")
    assert "all MX hosts of private.test resolve to private or loopback addresses" in error.diag


def test_implicit_mx_on_a_private_address_is_refused(dns_port: int) -> None:
    """Without MX, the domain's own private A record is refused too."""
    with pytest.raises(RouteError) as info:
        _route(dns_port, "implicit-private.test")
    assert info.value.status == "5.4.4"


def test_private_addresses_are_skipped_among_public_ones(dns_port: int) -> None:
    """Only the public MX remains when the set mixes private and public addresses."""
    assert _route(dns_port, "mixed.test") == [[Target("outside.mixed.test", "192.0.2.25", 25, 20)]]


def test_private_and_temporary_failure_stays_transient(dns_port: int) -> None:
    """A private MX plus one that fails temporarily: no bounce, the mail waits (4.4.3)."""
    with pytest.raises(RouteError) as info:
        _route(dns_port, "flaky-private.test")
    assert not info.value.permanent


def test_mx_allow_private_addresses_yes_allows_them(dns_port: int) -> None:
    """`mx-allow-private-addresses yes` connects to private MX addresses."""
    levels = _route(dns_port, "private.test", DomainSettings(mx_allow_private_addresses=True))
    assert [t.ip for level in levels for t in level] == [
        "10.1.2.3",
        "fe80::1",
        "127.0.0.1",
        "::ffff:c0a8:101",
    ]


def test_smtp_hosts_chosen_by_the_operator_are_always_allowed(dns_port: int) -> None:
    """smtp-hosts names and [IP] literals may be private: the operator chose them."""
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("relay.internal.test; [10.0.0.7]:2525"))
    assert _route(dns_port, "anything.test", settings) == [
        [Target("relay.internal.test", "10.9.9.9", 25, 0)],
        [Target("10.0.0.7", "10.0.0.7", 2525, 1)],
    ]


def test_smtp_hosts_lookup_mx_is_still_dns_and_filtered(dns_port: int) -> None:
    """`lookup-mx:` addresses come from DNS: filtered, and never a bounce under smtp-hosts."""
    settings = DomainSettings(smtp_hosts=parse_smtp_hosts("lookup-mx:private.test"))
    with pytest.raises(RouteError) as info:
        _route(dns_port, "anything.test", settings)
    assert (info.value.permanent, info.value.bounce_cat) == (False, "bad-configuration")


def _config(tmp_path: Path, port: int, dns_port: int, receiver_port: int, allow: bool) -> str:
    return relay_config(
        tmp_path,
        port,
        acct_file(tmp_path / "acct.csv"),
        domain(f"retry-after 1s\ndefault-smtp-port {receiver_port}"),
        domain(
            f"mx-allow-private-addresses {'yes' if allow else 'no'}\n"
            f"default-smtp-port {receiver_port}",
            name="allowed.test",
        ),
        settings=f"name-server 127.0.0.1:{dns_port}",
    )


def _acct(tmp_path: Path) -> list[dict[str, str]]:
    return read_acct(tmp_path / "acct.csv")


def test_end_to_end_loopback_mx_bounces_unless_allowed(tmp_path: Path) -> None:
    """MX on 127.0.0.1: bounced 5.4.4 by default; delivered where the domain allows it."""
    zone = {
        "denied.test": [("MX", 10, "mx.denied.test")],
        "mx.denied.test": [("A", "127.0.0.1")],
        "allowed.test": [("MX", 10, "mx.allowed.test")],
        "mx.allowed.test": [("A", "127.0.0.1")],
    }
    dns_port, stop_dns = start_dns_server_in_thread(zone)
    port = free_port()
    try:
        with Receiver() as receiver:
            conf = _config(tmp_path, port, dns_port, receiver.port, allow=True)
            with ServerProcess(tmp_path, conf, wait_ports=(port,)):
                with smtplib.SMTP("127.0.0.1", port) as client:
                    client.sendmail("s@src.test", ["a@denied.test"], b"Subject: x\r\n\r\nx\r\n")
                    client.sendmail("s@src.test", ["b@allowed.test"], b"Subject: y\r\n\r\ny\r\n")
                wanted = {"a@denied.test": "b", "b@allowed.test": "d"}
                assert wait_until(
                    lambda: (
                        {
                            r["rcpt"]: r["type"]
                            for r in _acct(tmp_path)
                            if r["type"] != "r" and r["rcpt"] in wanted
                        }
                        == wanted
                    )
                )
            assert [m.rcpt_tos for m in receiver.messages] == [["b@allowed.test"]]
    finally:
        stop_dns()
    (bounce,) = [r for r in _acct(tmp_path) if r["type"] == "b" and r["rcpt"] == "a@denied.test"]
    assert bounce["dsnStatus"] == "5.4.4 (unable to route)"
    assert bounce["bounceCat"] == "bad-domain"
    assert (
        "all MX hosts of denied.test resolve to private or loopback addresses"
        in (bounce["dsnDiag"])
    )
