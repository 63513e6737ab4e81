"""Every value type of the config language: a valid and an invalid case, at least."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtaserver.config import values as v

VALID: list[tuple[Any, str, Any]] = [
    (v.parse_size, "10K", 10 * 1024),
    (v.parse_size, "5M", 5 * 2**20),
    (v.parse_size, "1G", 2**30),
    (v.parse_size, "1234", 1234),
    (v.parse_size, "unlimited", 0),
    (v.parse_interval, "30s", 30),
    (v.parse_interval, "10m", 600),
    (v.parse_interval, "4h", 14400),
    (v.parse_interval, "2d", 172800),
    (v.parse_interval, "4d12h", 4.5 * 86400),
    (v.parse_interval, "45", 45),
    (v.parse_interval_list, "10m,10m,1h", (600, 600, 3600)),
    (v.parse_interval_list, "5m, 1h", (300, 3600)),
    (v.parse_bool, "yes", True),
    (v.parse_bool, "No", False),
    (v.parse_bool, "true", True),
    (v.parse_bool, "false", False),
    (v.parse_cidr, "0/0", ipaddress.ip_network("0.0.0.0/0")),
    (v.parse_cidr, "127.0.0.1", ipaddress.ip_network("127.0.0.1/32")),
    (v.parse_cidr, "10.0.0.0/8", ipaddress.ip_network("10.0.0.0/8")),
    (v.parse_cidr, "10/8", ipaddress.ip_network("10.0.0.0/8")),
    (v.parse_cidr, "2001:db8::/32", ipaddress.ip_network("2001:db8::/32")),
    (v.parse_cidr, "::1", ipaddress.ip_network("::1/128")),
    (v.parse_host_port, "127.0.0.1:2525", v.HostPort("127.0.0.1", 2525)),
    (v.parse_host_port, "[::1]:25", v.HostPort("::1", 25)),
    (v.parse_host_port, "0/0:25", v.HostPort("0.0.0.0", 25)),
    (v.parse_mgmt_port, "8080", v.HostPort("127.0.0.1", 8080)),
    (v.parse_name_server, "127.0.0.1", v.HostPort("127.0.0.1", 53)),
    (v.parse_name_server, "127.0.0.1:5353", v.HostPort("127.0.0.1", 5353)),
    (v.parse_rate, "100/h", v.Rate(100, 3600)),
    (v.parse_rate, "10/s", v.Rate(10, 1)),
    (v.parse_rate, "5/10m", v.Rate(5, 600)),
    (v.parse_rate, "unlimited", None),
    (v.parse_record_types, "d,b,t,tq,r,f", frozenset({"d", "b", "t", "tq", "r", "f"})),
    (v.parse_record_fields, "d timeLogged,rcpt", ("d", ("timeLogged", "rcpt"))),
    (v.parse_record_fields, "* *", ("*", ("*",))),
    (v.parse_domain_key, "s1,example.com,/k.pem", v.DomainKey("s1", "example.com", "/k.pem")),
    (
        v.parse_source_host,
        "127.0.0.2 out.example.com",
        v.SourceHost("127.0.0.2", "out.example.com"),
    ),
    (
        v.parse_http_access,
        "10/8 monitor",
        v.HttpAccess(ipaddress.ip_network("10.0.0.0/8"), "monitor"),
    ),
    (v.parse_api_key, "a" * 32, "a" * 32),
    (v.parse_url, "https://hooks.example.com/acct?x=1", "https://hooks.example.com/acct?x=1"),
    (v.parse_ldap_uri, "ldaps://127.0.0.1:636", "ldaps://127.0.0.1:636"),
    (v.parse_user_filter, "(uid=%u)", "(uid=%u)"),
    (v.parse_password, "{SSHA256}abcd", "{SSHA256}abcd"),
    (v.parse_password, "plain-secret", "plain-secret"),
    (v.parse_domain_pattern, "*", "*"),
    (v.parse_domain_pattern, "*.Example.COM", "*.example.com"),
    (v.parse_email, "postmaster@example.com", "postmaster@example.com"),
    (v.parse_choice("smtp", "discard"), "discard", "discard"),
]

INVALID: list[tuple[Any, str, str]] = [
    (v.parse_size, "10X", "expected a size"),
    (v.parse_size, "-1", "expected a size"),
    (v.parse_interval, "10 minutes", "expected an interval"),
    (v.parse_interval, "4h12", "expected an interval"),
    (v.parse_interval_list, "", "expected a list"),
    (v.parse_interval_list, "10m,x", "expected an interval"),
    (v.parse_bool, "maybe", "expected yes or no"),
    (v.parse_cidr, "300.1.1.1", "expected an address or CIDR"),
    (v.parse_cidr, "10.0.0.0/33", "expected an address or CIDR"),
    (v.parse_host_port, "127.0.0.1", "expected IP:PORT"),
    (v.parse_host_port, "127.0.0.1:99999", "port number"),
    (v.parse_host_port, "mail.example.com:25", "expected an IP"),
    (v.parse_rate, "100/y", "expected a rate"),
    (v.parse_rate, "0/h", "expected a rate"),
    (v.parse_record_types, "d,x", "expected record types"),
    (v.parse_record_fields, "d", "expected a record type"),
    (v.parse_domain_key, "s1,example.com", "SELECTOR,DOMAIN,KEYFILE"),
    (v.parse_source_host, "127.0.0.2", "IP HOSTNAME"),
    (v.parse_http_access, "10/8 root", "none|monitor|admin"),
    (v.parse_api_key, "short", "32 to 128"),
    (v.parse_api_key, "a" * 31 + "-", "32 to 128"),
    (v.parse_url, "ftp://x", "http:// or https://"),
    (v.parse_ldap_uri, "http://x", "ldap://"),
    (v.parse_user_filter, "(uid=bob)", "%u"),
    (v.parse_password, "{MD5}abcd", "unknown password scheme"),
    (v.parse_domain_pattern, "exa mple.com", "host name"),
    (v.parse_email, "nobody", "email address"),
    (v.parse_int, "12a", "whole number"),
    (v.parse_positive_int, "0", "greater than 0"),
    (v.parse_choice("smtp", "discard"), "pigeon", "expected one of smtp, discard"),
]


@pytest.mark.parametrize(("parse", "text", "expected"), VALID)
def test_valid_values_parse(parse: Any, text: str, expected: Any) -> None:
    """A well-formed value parses to the expected typed value."""
    assert parse(text) == expected


@pytest.mark.parametrize(("parse", "text", "message"), INVALID)
def test_invalid_values_are_refused_with_a_message(parse: Any, text: str, message: str) -> None:
    """A malformed value raises ValueError saying what was expected."""
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_smtp_hosts_levels_literals_ports_and_lookup_mx() -> None:
    """`;` separates levels, `,` hosts; [IP]:PORT, name:port and lookup-mx: all parse."""
    hosts = v.parse_smtp_hosts("h1, h2:2526; [10.1.1.1]:2525; lookup-mx:other.tld")
    assert hosts == (
        (v.SmtpHost("h1"), v.SmtpHost("h2", 2526)),
        (v.SmtpHost("10.1.1.1", 2525, literal=True),),
        (v.SmtpHost("other.tld", lookup_mx=True),),
    )


@pytest.mark.parametrize("text", ["", " ; ", "[300.1.1.1]", "bad host", "[10.0.0.1]:x1"])
def test_smtp_hosts_refuses_bad_lists(text: str) -> None:
    """Empty lists, bad literals and bad names in smtp-hosts are errors."""
    with pytest.raises(ValueError):
        v.parse_smtp_hosts(text)


def test_reply_pattern_compiles_and_checks_actions() -> None:
    """`reply /REGEX/ ACTION` compiles the regex; unknown actions and bad regexes fail."""
    pattern = v.parse_reply_pattern("/421 .* too many/i mode=backoff")
    assert pattern.actions == ("mode=backoff",)
    assert pattern.matches("421 4.7.0 TOO MANY connections")
    with pytest.raises(ValueError, match="unknown action"):
        v.parse_reply_pattern("/x/ explode")
    with pytest.raises(ValueError, match="bad regular expression"):
        v.parse_reply_pattern("/(/ bounce-rcpt")
    with pytest.raises(ValueError, match="REGEX"):
        v.parse_reply_pattern("421 mode=backoff")


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["s", "m", "h", "d"]))
def test_interval_units_multiply(count: int, unit: str) -> None:
    """N of a unit is N times the unit's seconds."""
    seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    assert v.parse_interval(f"{count}{unit}") == count * seconds


@given(st.integers(min_value=0, max_value=2**20), st.sampled_from(["", "K", "M", "G"]))
def test_size_units_multiply(count: int, unit: str) -> None:
    """N of a size unit is N times 1024 to the unit's power."""
    factor = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[unit]
    assert v.parse_size(f"{count}{unit}") == count * factor
