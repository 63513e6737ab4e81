"""Which addresses the server may POST to: the webhook target policy.

`http-webhook-url` (in `<acct-file>`) and `http-delivery-url` (in `<domain>`) make the
server open connections, so a URL naming the cloud metadata service
(169.254.169.254), a private network, loopback or the server's own management port
would turn a config change (or a reload) into a request forgery. Such addresses are
refused unless the global `http-webhook-allow-addresses CIDR[, CIDR...]` lists them;
the server's own management and API listeners are refused even then.

The check runs twice: at config load for literal addresses (a `FILE:LINE: message`
error, so start-up and reload both refuse), and at send time for the addresses a host
name resolves to (DNS rebinding): see `mtaserver.webhooks.guard`.

Numeric hosts are read the way a resolver reads them. `getaddrinfo` goes through
`inet_aton`, which takes one to four parts in decimal, octal (leading 0) or hex (0x),
the last filling the remaining bytes: `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.1`
are all 127.0.0.1. Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from mtaserver.config.model import Config

from mtaserver.config.grammar import ConfigProblem, Directive, Node, Scope
from mtaserver.config.values import HostPort, IPAddress, IPNetwork, parse_url

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

#: Refused IPv4 ranges and why (most specific first).
REFUSED_V4: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata service"),
    (_V4("100.100.100.200/32"), "cloud metadata service"),
    (_V4("0.0.0.0/8"), "unspecified ('this host')"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("100.64.0.0/10"), "shared address space (carrier NAT)"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
)

#: Refused IPv6 ranges and why; IPv4 embedded in IPv6 is checked as IPv4 first.
REFUSED_V6: tuple[tuple[IPNetwork, str], ...] = (
    (_V6("fd00:ec2::254/128"), "cloud metadata service"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "IPv4-compatible"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("fc00::/7"), "unique local (private)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local"),
    (_V6("ff00::/8"), "multicast"),
)

_NAT64 = _V6("64:ff9b::/96")
_PART = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """`text` as `inet_aton(3)` reads it, or None if it is not a numeric IPv4 form."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_PART.fullmatch(p) for p in parts):
        return None
    values = []
    for part in parts:
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def numeric_host(host: str) -> IPAddress | None:
    """The address a URL host names literally (any inet_aton form, `[v6]`), else None."""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        host = host.split("%", 1)[0]  # a zone id (`%25eth0` in a URL) does not matter here
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return inet_aton(host)


def embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: mapped, NAT64 (64:ff9b::/96) or 6to4."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def refused_reason(address: IPAddress) -> str | None:
    """Why `address` is not a target without an allow-list entry (None: it is public)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_v4(address)
        if inner is not None:
            why = refused_reason(inner)
            return f"{why} (as {inner})" if why else None
        table = REFUSED_V6
    else:
        table = REFUSED_V4
    if address == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    for network, why in table:
        if address in network:
            return why
    return None


def url_host_port(url: str) -> tuple[str, int]:
    """The host (as written, brackets kept) and port of an http(s) URL."""
    scheme, _, rest = url.partition("://")
    netloc = re.split(r"[/?#]", rest, maxsplit=1)[0].rpartition("@")[2]
    default = 443 if scheme.lower() == "https" else 80
    if netloc.startswith("["):
        host, _, tail = netloc.partition("]")
        host += "]"
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    return host.lower(), int(port) if port.isdigit() else default


def _in(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@attrs.frozen
class TargetPolicy:
    """`http-webhook-allow-addresses` and the server's own management/API listeners."""

    allow: tuple[IPNetwork, ...] = ()
    own: tuple[HostPort, ...] = ()

    def own_listener(
        self, address: IPAddress, port: int, is_local: Callable[[IPAddress], bool] | None = None
    ) -> HostPort | None:
        """The management/API listener `address:port` reaches, if any.

        A listener on a wildcard address is reached through loopback, the unspecified
        address and (given `is_local`, which send time has) any address of this host.
        """
        plain = address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            plain = address.ipv4_mapped
        for listener in self.own:
            if listener.port != port:
                continue
            bound = ipaddress.ip_address(listener.host)
            if plain == bound:
                return listener
            if bound.is_unspecified and (
                plain.is_loopback or plain.is_unspecified or (is_local and is_local(plain))
            ):
                return listener
        return None

    def refusal(
        self, address: IPAddress, port: int, is_local: Callable[[IPAddress], bool] | None = None
    ) -> str | None:
        """Why a connection to `address:port` is refused, or None if it may go ahead."""
        listener = self.own_listener(address, port, is_local)
        if listener is not None:
            return f"the server's own management/API listener {listener}"
        why = refused_reason(address)
        if why is None:
            return None
        inner = embedded_v4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if _in(address, self.allow) or (inner is not None and _in(inner, self.allow)):
            return None
        return f"{why} address, not in http-webhook-allow-addresses"

    def check_url(self, url: str) -> str | None:
        """Config load: why `url` is refused, judged on its literal host (names pass)."""
        host, port = url_host_port(url)
        address = numeric_host(host)
        if address is None:
            return None
        why = self.refusal(address, port)
        return None if why is None else f"{host} is {address}: {why}"


def policy_for(
    allow: tuple[IPNetwork, ...], mgmt: HostPort | None, api: Iterable[HostPort]
) -> TargetPolicy:
    """The policy of a config: its allow-list, its management port and API listeners."""
    own = ((mgmt,) if mgmt is not None else ()) + tuple(api)
    return TargetPolicy(allow, own)


def config_policy(config: Config) -> TargetPolicy:
    """The target policy a loaded config sets."""
    settings = config.settings
    return policy_for(
        settings.http_webhook_allow_addresses,
        settings.http_mgmt_port,
        (listener.address for listener in config.api_listeners),
    )


#: The directives whose URLs the server connects to.
TARGET_DIRECTIVES = ("http-webhook-url", "http-delivery-url")


def check_targets(nodes: Iterable[Node], config: Config, problems: list[ConfigProblem]) -> None:
    """Add a `FILE:LINE: message` problem for each webhook URL whose literal host is refused."""
    policy = config_policy(config)
    for node in nodes:
        if isinstance(node, Scope):
            check_targets(node.children, config, problems)
        elif isinstance(node, Directive) and node.name in TARGET_DIRECTIVES:
            try:
                url = parse_url(node.value)
            except ValueError:
                continue  # already reported by the directive's own parser
            why = policy.check_url(url)
            if why is not None:
                problems.append(ConfigProblem(node.file, node.line, f"{node.name}: {why}"))
