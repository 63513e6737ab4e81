"""Send-time target checks: resolve a webhook's host, check every address, connect to one.

Config load refuses literal addresses (`mtaserver.config.targets`); a host *name* can
still resolve to the metadata service or a private address, at any time (DNS
rebinding). So the agent's endpoints come from `GuardedEndpointFactory`: each
connection resolves the host once, drops the addresses the `TargetPolicy` refuses,
and connects to a checked address itself (never resolving again, so the answer that
was checked is the one used). If no address is left the connection fails with
`RefusedTarget`, naming the host, its addresses and why: the webhook batch (or the
`http-delivery` attempt) fails, is logged and is retried later; nothing connects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from mtaserver.config.targets import TargetPolicy, config_policy, numeric_host
from mtaserver.config.values import IPAddress

TargetSource = Callable[[], TargetPolicy]


def holder_targets(holder: Any) -> TargetSource:
    """The target policy of the running config (`holder.config`), read at each connection,
    so a reload that changes `http-webhook-allow-addresses` applies at once."""
    return lambda: config_policy(holder.config)


class RefusedTarget(Exception):
    """The webhook's host resolves only to addresses the target policy refuses."""


def is_local_address(address: IPAddress) -> bool:
    """Whether `address` is one of this host's own (the kernel routes it to itself).

    A UDP `connect` sends nothing; it only asks the routing table, which answers a
    local destination with itself as the source address. Non-blocking.
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((str(address), 9))
            return bool(ipaddress.ip_address(probe.getsockname()[0]) == address)
    except OSError:
        return False


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects what an `IHostnameResolver` answers."""

    def __init__(self) -> None:
        self.addresses: list[IPAddress] = []
        self.done: defer.Deferred[list[IPAddress]] = defer.Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:  # noqa: N802
        pass

    def addressResolved(self, address: Any) -> None:  # noqa: N802
        with contextlib.suppress(ValueError):
            self.addresses.append(ipaddress.ip_address(address.host.split("%", 1)[0]))

    def resolutionComplete(self) -> None:  # noqa: N802
        self.done.callback(list(dict.fromkeys(self.addresses)))


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """Connects to `host:port` only through addresses the target policy allows."""

    def __init__(self, factory: GuardedEndpointFactory, host: str, port: int, tls: bool) -> None:
        self.factory = factory
        self.host = host
        self.port = port
        self.tls = tls

    def connect(self, protocol_factory: Any) -> defer.Deferred[Any]:
        return defer.Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _resolve(self) -> list[IPAddress]:
        literal = numeric_host(self.host)
        if literal is not None:
            return [literal]
        receiver = _Addresses()
        self.factory.resolver.resolveHostName(receiver, self.host, self.port)
        return await receiver.done

    async def _connect(self, protocol_factory: Any) -> Any:
        addresses = await self._resolve()
        if not addresses:
            raise RefusedTarget(f"{self.host}: no address found")
        policy = self.factory.targets()
        allowed, refused = [], []
        for address in addresses:
            why = policy.refusal(address, self.port, is_local_address)
            if why is None:
                allowed.append(address)
            else:
                refused.append(f"{address} ({why})")
        if not allowed:
            raise RefusedTarget(f"refused target {self.host}: resolves to {', '.join(refused)}")
        error: BaseException | None = None
        for address in allowed:
            endpoint = self._endpoint(address)
            try:
                return await endpoint.connect(protocol_factory)
            except Exception as e:
                error = e
        assert error is not None
        raise error

    def _endpoint(self, address: IPAddress) -> Any:
        reactor, timeout = self.factory.reactor, self.factory.connect_timeout
        endpoint: Any
        if address.version == 6:
            endpoint = TCP6ClientEndpoint(reactor, str(address), self.port, timeout)
        else:
            endpoint = TCP4ClientEndpoint(reactor, str(address), self.port, timeout)
        if self.tls:
            name = self.host.encode("ascii") if self.host.isascii() else self.host.encode("idna")
            creator = self.factory.tls_policy.creatorForNetloc(name, self.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """The `Agent` endpoint factory that checks every target address before connecting."""

    def __init__(
        self,
        reactor: Any,
        targets: TargetSource,
        tls_policy: IPolicyForHTTPS,
        connect_timeout: float = 30.0,
        resolver: IHostnameResolver | None = None,
    ) -> None:
        self.reactor = reactor
        self.targets = targets
        self.tls_policy = tls_policy
        self.connect_timeout = connect_timeout
        self.resolver = resolver if resolver is not None else reactor.nameResolver

    def endpointForURI(self, uri: Any) -> GuardedEndpoint:  # noqa: N802 - Twisted's name
        if uri.scheme not in (b"http", b"https"):
            raise ValueError(f"unsupported scheme {uri.scheme!r}")
        return GuardedEndpoint(self, uri.host.decode("ascii"), uri.port, uri.scheme == b"https")
