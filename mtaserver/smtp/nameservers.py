"""The DNS resolver of the running `name-server`s, rebuilt when a reload changes them.

`MxResolver` and the SMTP client look names up through one resolver object; this one
forwards every `IResolver` call to a `make_resolver` of the current `name-server`
list, and builds a new one when a reload changes it. Lookups already running finish
on the old resolver; the next one uses the new servers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IResolver
from twisted.logger import Logger
from twisted.names import client, resolve
from zope.interface import implementer

from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.smtp.resolver import make_resolver

log = Logger()

MakeResolver = Callable[[tuple[HostPort, ...], Any], IResolver]


@implementer(IResolver)
class NameServerResolver:
    """An `IResolver` that follows `name-server` across reloads."""

    def __init__(
        self, holder: ConfigHolder, reactor: Any, make: MakeResolver = make_resolver
    ) -> None:
        self._reactor = reactor
        self._make = make
        self._servers = holder.config.settings.name_server
        self._current = make(self._servers, reactor)
        holder.on_reload(self.reloaded)

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: a changed `name-server` list gets a new resolver."""
        servers = new.settings.name_server
        if servers == self._servers:
            return
        previous, self._current = self._current, self._make(servers, self._reactor)
        self._servers = servers
        _stop_rereading(previous)
        shown = ", ".join(str(s) for s in servers) or "the system's (/etc/resolv.conf)"
        log.info("name servers now {servers} (config reloaded)", servers=shown)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._current, name)


def _stop_rereading(resolver: Any) -> None:
    """Cancel the periodic /etc/resolv.conf check of a resolver no longer used.

    Walks a chain's resolvers and a caching resolver's `upstream` down to the
    `client.Resolver`s, whose timer would otherwise keep the old resolver alive.
    """
    if isinstance(resolver, resolve.ResolverChain):
        for part in resolver.resolvers:
            _stop_rereading(part)
    elif isinstance(resolver, client.Resolver):
        call = getattr(resolver, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()
    elif getattr(resolver, "upstream", None) is not None:
        _stop_rereading(resolver.upstream)
