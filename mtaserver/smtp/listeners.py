"""The `smtp-listener`s as one service that follows reloads.

A reload that adds an `smtp-listener` binds it at once; one that removes a listener
closes its port but lets the sessions already on it finish their messages (they are
told 421 only when the server itself stops). So moving the SMTP port is a config
edit and a `reload`, with no restart and no session cut short.

A listener is known by its address: changing only its `tls-certificate` waits for a
restart (`registry.RESTART_ONLY`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from mtaserver.config.model import Config, Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.smtp.server import SmtpListenerService

log = Logger()


class SmtpListeners(MultiService):
    """One `SmtpListenerService` per configured address, re-bound on reload."""

    def __init__(
        self, holder: ConfigHolder, make_listener: Callable[[Listener], SmtpListenerService]
    ) -> None:
        super().__init__()
        self._make = make_listener
        self._by_address: dict[HostPort, SmtpListenerService] = {}
        self._retired: list[SmtpListenerService] = []
        self.apply(holder.config.settings.smtp_listener)
        holder.on_reload(self.reloaded)

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: bind the new addresses, close the ports of the removed ones."""
        self.apply(new.settings.smtp_listener)

    def apply(self, listeners: tuple[Listener, ...]) -> None:
        wanted = {listener.address: listener for listener in listeners}
        for address, listener in wanted.items():
            if address not in self._by_address:
                service = self._make(listener)
                self._by_address[address] = service
                service.setServiceParent(self)  # binds now when the server is running
                if self.running:
                    log.info(
                        "smtp-listener {address}: listening (config reloaded)", address=address
                    )
        for address in [a for a in self._by_address if a not in wanted]:
            self._retire(self._by_address.pop(address))

    @property
    def listening(self) -> list[SmtpListenerService]:
        """The services of the configured addresses (retired ones excluded)."""
        return list(self._by_address.values())

    def _retire(self, service: SmtpListenerService) -> None:
        """Close the port only: the sessions on it run to their end."""
        log.info("smtp-listener {name}: port closed (config reloaded)", name=service.name)
        if service.name in self.namedServices:
            del self.namedServices[service.name]
        self.services.remove(service)
        service.parent = None
        if service.running:
            # The endpoint service's own stop closes the port; SmtpListenerService's
            # stop would also end the sessions, which a reload must not do.
            StreamServerEndpointService.stopService(service)
        self._retired.append(service)

    def stopService(self) -> Deferred[None]:  # noqa: N802 - Twisted's name
        """Stop the listeners, and end the sessions still open on retired ports."""
        stopped: Deferred[Any] = super().stopService()
        closing = [s.smtp_factory.live.close_all(s.shutdown_grace) for s in self._retired]
        self._retired = []
        both = gatherResults([stopped, *closing], consumeErrors=True)
        return both.addCallback(lambda _: None)
