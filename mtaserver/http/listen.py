"""HTTP listeners: TLS from a PEM file, plain HTTP only on loopback.

Safe by default (API keys and logins never cross a network in clear): an HTTP
listener off loopback without a
certificate is refused at start. TLS 1.2 is the minimum. With a `guard.RequestGuard`
(both HTTP ports have one) every connection gets the request deadlines, the rate
limit and the checks before the body.

`HttpListeners` keeps a port's listeners in step with reloads: an address added is
bound, one removed stops accepting (requests in progress finish), and every reload
reads the certificate files again, in the thread pool, so a renewed certificate is
served from the next TLS handshake on. A listener a reload makes insecure, or whose
certificate does not load, is logged and left as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from OpenSSL import SSL, crypto
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.model import Config, Listener
from mtaserver.config.reload import ConfigHolder
from mtaserver.config.values import HostPort
from mtaserver.http.guard import GuardedSite, RequestGuard
from mtaserver.runtime import RunInThread

log = Logger()


class InsecureListenerError(Exception):
    """An HTTP listener off loopback without tls-certificate."""


def tls_options_from_pem(pem_path: str) -> ssl.CertificateOptions:
    """Server TLS options from one PEM with the key and the certificate chain.

    A file that is not such a PEM is a ValueError naming it (OpenSSL's own error is no
    reason a start-up should end in a traceback).
    """
    with open(pem_path, "rb") as stream:
        pem = stream.read()
    try:
        certificate = ssl.PrivateCertificate.loadPEM(pem)
        chain = [ssl.Certificate.loadPEM(block).original for block in _pem_certificates(pem)[1:]]
    except (crypto.Error, SSL.Error, ValueError) as exc:
        raise ValueError(f"{pem_path}: not a PEM private key and certificate ({exc})") from None
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def check_http_certificates(config: Config) -> list[ConfigProblem]:
    """The management and API ports' certificates load (a start check: `test config`)."""
    paths = [config.settings.http_mgmt_tls_certificate]
    paths += [listener.tls_certificate for listener in config.api_listeners]
    problems = []
    for path in filter(None, paths):
        try:
            tls_options_from_pem(path)
        except (OSError, ValueError) as exc:
            problems.append(ConfigProblem(config.path, 0, str(exc)))
    return problems


def _pem_certificates(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    blocks = []
    for part in pem.split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:] + marker + b"\n")
    return blocks


@implementer(IOpenSSLServerConnectionCreator)
class SwappableTls:
    """TLS options a reload can replace: each new connection uses the current ones."""

    def __init__(self, options: ssl.CertificateOptions) -> None:
        self.options = options

    def serverConnectionForTLS(self, protocol: Any) -> Any:  # noqa: N802 - Twisted's name
        return self.options.serverConnectionForTLS(protocol)

    def getContext(self) -> Any:  # noqa: N802 - Twisted's name
        return self.options.getContext()


def http_service(
    listener: Listener,
    resource: IResource | Site,
    reactor: Any,
    name: str,
    guard: RequestGuard | None = None,
    tls: SwappableTls | None = None,
) -> StreamServerEndpointService:
    """Serve `resource` (or a ready `Site`) on `listener`: HTTPS, or HTTP on loopback.

    `tls` is the listener's certificate already loaded (else it is read here).
    """
    host, port = listener.address.host, listener.address.port
    if isinstance(resource, Site):
        site = resource
    else:
        site = GuardedSite(resource, guard) if guard is not None else Site(resource)
        site.displayTracebacks = False
    if listener.tls_certificate:
        if tls is None:
            tls = SwappableTls(tls_options_from_pem(listener.tls_certificate))
        endpoint: Any = SSL4ServerEndpoint(reactor, port, tls, interface=host)
    elif not listener.is_loopback:
        raise InsecureListenerError(
            f"{name} on {listener.address} needs tls-certificate (plain HTTP is loopback only)"
        )
    elif ":" in host:
        endpoint = TCP6ServerEndpoint(reactor, port, interface=host)
    else:
        endpoint = TCP4ServerEndpoint(reactor, port, interface=host)
    service = StreamServerEndpointService(endpoint, site)
    service.setName(f"{name} {listener.address}")
    return service


ListenersOf = Callable[[Config], tuple[Listener, ...]]


class HttpListeners(MultiService):
    """The listeners `listeners_of(config)` names, serving one site, following reloads."""

    def __init__(
        self,
        holder: ConfigHolder,
        listeners_of: ListenersOf,
        resource: IResource,
        reactor: Any,
        name: str,
        guard: RequestGuard | None,
        run_in_thread: RunInThread,
        *,
        json_api: bool = False,
    ) -> None:
        """Binds nothing yet; raises `InsecureListenerError` for a listener that may not run.

        `json_api`: see `GuardedSite` (the Transmissions API's listeners)."""
        super().__init__()
        self.setName(f"{name}s")
        self._listeners_of = listeners_of
        self._site = (
            GuardedSite(resource, guard, json_api=json_api) if guard is not None else Site(resource)
        )
        self._site.displayTracebacks = False
        self._reactor = reactor
        self._kind = name
        self._run_in_thread = run_in_thread
        self._bound: dict[HostPort, tuple[StreamServerEndpointService, SwappableTls | None]] = {}
        self._changing: Deferred[Any] = succeed(None)
        for listener in listeners_of(holder.config):
            self._bind(listener, None)
        holder.on_reload(self.reloaded)

    def reloaded(self, old: Config, new: Config) -> None:
        """A reload listener: see `apply`."""
        self.apply(new)

    def apply(self, config: Config) -> Deferred[Any]:
        """Bind added addresses, close removed ones, reload certificates (queued)."""
        self._changing = self._changing.addBoth(
            lambda _: Deferred.fromCoroutine(self._apply(config))
        )
        return self._changing

    async def _apply(self, config: Config) -> None:
        wanted = {listener.address: listener for listener in self._listeners_of(config)}
        for address, listener in wanted.items():
            if not listener.tls_certificate and not listener.is_loopback:
                log.error(
                    "{kind} {address} needs tls-certificate (plain HTTP is loopback only); "
                    "left as it was",
                    kind=self._kind,
                    address=address,
                )
                continue
            options = None
            if listener.tls_certificate:
                try:
                    options = await self._run_in_thread(
                        partial(tls_options_from_pem, listener.tls_certificate)
                    )
                except Exception as exc:
                    log.error(
                        "{kind} {address}: certificate not loaded, left as it was: {error}",
                        kind=self._kind,
                        address=address,
                        error=str(exc),
                    )
                    continue
            bound = self._bound.get(address)
            if bound is not None:
                service, tls = bound
                if tls is not None and options is not None:
                    tls.options = options  # the next handshake uses the new certificate
                    continue
                if tls is None and options is None:
                    continue
                self._retire(address)  # plain <-> TLS on the same address
            self._bind(listener, SwappableTls(options) if options is not None else None)
            log.info(
                "{kind} {address}: listening (config reloaded)", kind=self._kind, address=address
            )
        for address in [a for a in self._bound if a not in wanted]:
            self._retire(address)
            log.info(
                "{kind} {address}: port closed (config reloaded)", kind=self._kind, address=address
            )

    def _bind(self, listener: Listener, tls: SwappableTls | None) -> None:
        if listener.tls_certificate and tls is None:
            tls = SwappableTls(tls_options_from_pem(listener.tls_certificate))
        service = http_service(listener, self._site, self._reactor, self._kind, tls=tls)
        self._bound[listener.address] = (service, tls)
        service.setServiceParent(self)  # listens now when the server is running

    def _retire(self, address: HostPort) -> None:
        """Stop accepting on `address`; requests in progress finish."""
        service, _ = self._bound.pop(address)
        service.disownServiceParent()
