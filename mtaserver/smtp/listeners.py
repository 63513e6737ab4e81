"""The `smtp-listener`s as one service that follows reloads.

A reload that adds an `smtp-listener` binds it at once; one that removes a listener
closes its port but lets the sessions already on it finish their messages (they are
told 421 only when the server itself stops). So moving the SMTP port is a config
edit and a `reload`, with no restart and no session cut short.

Every reload also reads the STARTTLS certificates again (`smtp-server-tls-certificate`,
a listener's `tls-certificate`), in the thread pool, so a renewed certificate file
is served from the next STARTTLS on; a file that does not load is logged and the
listener keeps the certificate it had.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.model import Config, Listener, TlsPolicy
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.runtime import RunInThread
from mtaserver.smtp.server import SmtpListenerService
from mtaserver.smtp.tls import TlsConfigError, server_tls_options

log = Logger()


TlsOptions = ssl.CertificateOptions | None
#: Builds the service of one listener; None TLS options: the factory reads the PEM.
MakeListener = Callable[[Listener, TlsOptions], SmtpListenerService]


def certificate_of(listener: Listener, config: Config) -> str | None:
    """The PEM a listener's STARTTLS uses: its own, else the global one."""
    return listener.tls_certificate or config.settings.smtp_server_tls_certificate


def tls_policy_of(listener: Listener, config: Config) -> TlsPolicy:
    """The TLS versions and ciphers a listener's STARTTLS takes: its own, else global."""
    return listener.tls or config.settings.smtp_server_tls


def check_listener_certificates(config: Config) -> list[ConfigProblem]:
    """Each SMTP listener's STARTTLS certificate loads (a start check: `test config`).

    Not a reload check: a reload keeps a listener's old certificate when the new file
    does not load (see `SmtpListeners.apply`).
    """
    problems = []
    for listener in config.settings.smtp_listener:
        pem = certificate_of(listener, config)
        try:
            _load(pem, tls_policy_of(listener, config))
        except (TlsConfigError, OSError) as exc:
            problems.append(
                ConfigProblem(config.path, 0, f"smtp-listener {listener.address}: {exc}")
            )
    return problems


class SmtpListeners(MultiService):
    """One `SmtpListenerService` per configured address, re-bound on reload."""

    def __init__(
        self, holder: ConfigHolder, make_listener: MakeListener, run_in_thread: RunInThread
    ) -> None:
        super().__init__()
        self._make = make_listener
        self._run_in_thread = run_in_thread
        self._by_address: dict[HostPort, SmtpListenerService] = {}
        self._retired: list[SmtpListenerService] = []
        self._changing: Deferred[Any] = succeed(None)
        for listener in holder.config.settings.smtp_listener:
            self._bind(listener, None)
        holder.on_reload(self.reloaded)

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: see `apply`."""
        self.apply(new)

    def apply(self, config: Config) -> Deferred[Any]:
        """Bind new addresses, close removed ones, reload every listener's certificate.

        Queued one reload after another; certificates are read in the thread pool.
        """
        self._changing = self._changing.addBoth(
            lambda _: Deferred.fromCoroutine(self._apply(config))
        )
        return self._changing

    async def _apply(self, config: Config) -> None:
        wanted = {listener.address: listener for listener in config.settings.smtp_listener}
        for address, listener in wanted.items():
            pem = certificate_of(listener, config)
            policy = tls_policy_of(listener, config)
            try:
                options = await self._run_in_thread(partial(_load, pem, policy))
            except TlsConfigError as exc:
                log.error("smtp-listener {address}: {error}", address=address, error=str(exc))
                if address in self._by_address:
                    continue  # keeps the certificate it had
                options = None
            service = self._by_address.get(address)
            if service is not None:
                service.smtp_factory.tls_options = options
                service.smtp_factory.handler.listener_source = listener.source
                continue
            try:
                self._bind(listener, options)
            except TlsConfigError as exc:
                log.error(
                    "smtp-listener {address} not started: {error}", address=address, error=str(exc)
                )
                continue
            log.info("smtp-listener {address}: listening (config reloaded)", address=address)
        for address in [a for a in self._by_address if a not in wanted]:
            self._retire(self._by_address.pop(address))
        # Forget retired ports whose last session has ended.
        self._retired = [s for s in self._retired if s.smtp_factory.live.sessions]

    def _bind(self, listener: Listener, options: TlsOptions) -> None:
        service = self._make(listener, options)
        self._by_address[listener.address] = service
        service.setServiceParent(self)  # binds now when the server is running

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


def _load(pem: str | None, policy: TlsPolicy | None = None) -> TlsOptions:
    """In a thread: the STARTTLS options of `pem` (None without a certificate)."""
    return server_tls_options(pem, policy) if pem else None
