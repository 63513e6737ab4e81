"""The pure parts of routing: MX levels, null MX, rotation, smtp-hosts, error choice."""

from __future__ import annotations

import pytest
from twisted.internet import defer
from twisted.names import error as dns_error

from mtaserver.config.values import SmtpHost, parse_smtp_hosts
from mtaserver.smtp.mx import (
    NODATA,
    NXDOMAIN,
    TEMPFAIL,
    Hop,
    HostAddresses,
    Target,
    is_host_name,
    is_null_mx,
    level_targets,
    lookup_failure,
    merge_levels,
    mx_levels,
    no_target_error,
    normalize_name,
    rotate,
    smtp_hosts_levels,
)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([(0, "")], True),
        ([(0, ".")], True),
        ([(10, ".")], True),
        ([(0, "mx.example.test")], False),
        ([(0, ""), (10, "mx.example.test")], False),
        ([], False),
    ],
)
def test_is_null_mx(records: list[tuple[int, str]], expected: bool) -> None:
    """Only a single MX naming the root is a null MX."""
    assert is_null_mx(records) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mx.example.test", True),
        ("mx-1.example.test", True),
        ("_dmarc.example.test", True),
        ("evil\r\ninject.example.test", False),
        ("evil\x1b[2j.example.test", False),
        ("a b.example.test", False),
        ("-mx.example.test", False),
        ("mx..example.test", False),
        ("", False),
        ("a" * 64 + ".test", False),
    ],
)
def test_is_host_name(name: str, expected: bool) -> None:
    """An MX exchange with control characters or junk is not a host name we connect to."""
    assert is_host_name(name) is expected


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ([], []),
        (
            [(20, "b.test"), (10, "z.test"), (10, "a.test"), (20, "c.test")],
            [(10, ["a.test", "z.test"]), (20, ["b.test", "c.test"])],
        ),
        ([(5, "MX.Test."), (5, "mx.test")], [(5, ["mx.test"])]),
        ([(0, ""), (10, "mx.test")], [(10, ["mx.test"])]),
    ],
)
def test_mx_levels(records: list[tuple[int, str]], expected: list[tuple[int, list[str]]]) -> None:
    """Levels come lowest preference first, names sorted, deduplicated, root dropped."""
    assert mx_levels(records) == expected


@pytest.mark.parametrize(
    ("items", "turn", "expected"),
    [
        ([], 3, []),
        ([1, 2, 3], 0, [1, 2, 3]),
        ([1, 2, 3], 1, [2, 3, 1]),
        ([1, 2, 3], 5, [3, 1, 2]),
        ([1], 7, [1]),
    ],
)
def test_rotate(items: list[int], turn: int, expected: list[int]) -> None:
    """Rotation starts at turn modulo the length."""
    assert rotate(items, turn) == expected


def test_merge_levels_splices_backup_levels_after_the_shared_first_level() -> None:
    """A lookup-mx entry's backup levels follow the level it shares with other hosts."""
    entries = [[["h1"]], [["mx1", "mx2"], ["backup"]], [["h2"]]]
    assert merge_levels(entries) == [["h1", "mx1", "mx2", "h2"], ["backup"]]


def test_merge_levels_drops_empty_entries() -> None:
    """An entry that routed nowhere leaves no empty level."""
    assert merge_levels([[], [["h1"]]]) == [["h1"]]


def test_smtp_hosts_levels_fill_default_port() -> None:
    """Ports not written in smtp-hosts default to default-smtp-port."""
    hosts = parse_smtp_hosts("a.test, b.test:2526; [10.1.1.1]:2525; lookup-mx:other.test")
    assert smtp_hosts_levels(hosts, 587) == [
        [SmtpHost("a.test", 587), SmtpHost("b.test", 2526)],
        [SmtpHost("10.1.1.1", 2525, literal=True)],
        [SmtpHost("other.test", 587, lookup_mx=True)],
    ]


def test_level_targets_ipv4_first_and_rotated_per_family() -> None:
    """Each family rotates on its own and IPv4 always comes before IPv6."""
    hops = [Hop("a.test", 25, 10), Hop("b.test", 25, 10)]
    found = {
        "a.test": HostAddresses("a.test", ("192.0.2.1", "192.0.2.2"), ("2001:db8::1",)),
        "b.test": HostAddresses("b.test", ("192.0.2.3",), ("2001:db8::3",)),
    }
    ips = [t.ip for t in level_targets(hops, found, 1)]
    assert ips == ["192.0.2.2", "192.0.2.3", "192.0.2.1", "2001:db8::3", "2001:db8::1"]
    first = level_targets(hops, found, 0)[0]
    assert first == Target("a.test", "192.0.2.1", 25, 10)


def test_level_targets_literals_and_missing_hosts() -> None:
    """Literals need no lookup; hosts without addresses add nothing; duplicates collapse."""
    hops = [
        Hop("10.1.1.1", 2525, 0, literal=True),
        Hop("gone.test", 25, 0),
        Hop("10.1.1.1", 2525, 0, literal=True),
    ]
    found = {"gone.test": HostAddresses("gone.test", status=NXDOMAIN, reason="Host not found")}
    assert level_targets(hops, found, 0) == [Target("10.1.1.1", "10.1.1.1", 2525, 0)]


def _host(name: str, status: str) -> HostAddresses:
    return HostAddresses(name, status=status, reason=status)


@pytest.mark.parametrize(
    ("statuses", "configured", "permanent", "status", "cat"),
    [
        ([NXDOMAIN, NXDOMAIN], False, True, "5.1.2", "bad-domain"),
        ([NXDOMAIN, NODATA], False, True, "5.4.4", "bad-domain"),
        ([NODATA], False, True, "5.4.4", "bad-domain"),
        ([NXDOMAIN, TEMPFAIL], False, False, "4.4.3", "routing-errors"),
        ([TEMPFAIL], False, False, "4.4.3", "routing-errors"),
        ([NXDOMAIN], True, False, "4.4.3", "bad-configuration"),
        ([TEMPFAIL, NODATA], True, False, "4.4.3", "routing-errors"),
        ([], False, False, "4.4.3", "routing-errors"),
    ],
)
def test_no_target_error(
    statuses: list[str], configured: bool, permanent: bool, status: str, cat: str
) -> None:
    """Definitive DNS answers bounce, failures wait, and smtp-hosts never bounce."""
    results = [_host(f"h{i}.test", s) for i, s in enumerate(statuses)]
    exc = no_target_error("example.test", results, configured)
    assert (exc.permanent, exc.status, exc.bounce_cat) == (permanent, status, cat)
    if results:
        assert "name=h" in exc.diag


def test_no_target_error_names_the_failing_host() -> None:
    """The diagnostic names a host that failed temporarily, the reason to wait."""
    results = [
        _host("a.test", NXDOMAIN),
        HostAddresses("b.test", status=TEMPFAIL, reason="SERVFAIL"),
    ]
    exc = no_target_error("example.test", results, False)
    assert "name=b.test" in exc.diag and "SERVFAIL" in exc.diag


def test_normalize_name() -> None:
    """Names compare lowercased, without the root dot."""
    assert normalize_name(" MX.Example.TEST. ") == "mx.example.test"


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (dns_error.DNSNameError(), (NXDOMAIN, "Host not found")),
        (dns_error.DomainError(), (NXDOMAIN, "Host not found")),
        (dns_error.AuthoritativeDomainError(), (NXDOMAIN, "Host not found")),
        (dns_error.DNSServerError(), (TEMPFAIL, "SERVFAIL")),
        (dns_error.DNSQueryRefusedError(), (TEMPFAIL, "REFUSED")),
        (dns_error.DNSQueryTimeoutError(None), (TEMPFAIL, "timeout")),
        (defer.TimeoutError(), (TEMPFAIL, "timeout")),
        (dns_error.DNSFormatError(), (TEMPFAIL, "DNSFormatError")),
        (ConnectionRefusedError(), (TEMPFAIL, "ConnectionRefusedError")),
    ],
)
def test_lookup_failure(exc: BaseException, expected: tuple[str, str]) -> None:
    """Only "no such name" is definitive; every rCode error subclass waits."""
    assert lookup_failure(exc) == expected
