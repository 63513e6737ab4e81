"""HTTP listeners: TLS from a PEM file, plain HTTP only on loopback.

Safe by default (DESIGN.md invariant 6): an HTTP listener off loopback without a
certificate is refused at start. TLS 1.2 is the minimum. With a `guard.RequestGuard`
(both HTTP ports have one) every connection gets the request deadlines, the rate
limit and the checks before the body.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.web.resource import IResource
from twisted.web.server import Site

from mtaserver.config.model import Listener
from mtaserver.http.guard import GuardedSite, RequestGuard


class InsecureListenerError(Exception):
    """An HTTP listener off loopback without tls-certificate."""


def tls_options_from_pem(pem_path: str) -> ssl.CertificateOptions:
    """Server TLS options from one PEM with the key and the certificate chain."""
    with open(pem_path, "rb") as stream:
        pem = stream.read()
    certificate = ssl.PrivateCertificate.loadPEM(pem)
    chain = [ssl.Certificate.loadPEM(block).original for block in _pem_certificates(pem)[1:]]
    return ssl.CertificateOptions(
        privateKey=certificate.privateKey.original,
        certificate=certificate.original,
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def _pem_certificates(pem: bytes) -> list[bytes]:
    marker = b"-----END CERTIFICATE-----"
    blocks = []
    for part in pem.split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            blocks.append(part[start:] + marker + b"\n")
    return blocks


def http_service(
    listener: Listener,
    resource: IResource,
    reactor: Any,
    name: str,
    guard: RequestGuard | None = None,
) -> IService:
    """Serve `resource` on `listener`: HTTPS with its certificate, or HTTP on loopback."""
    host, port = listener.address.host, listener.address.port
    site = GuardedSite(resource, guard) if guard is not None else Site(resource)
    site.displayTracebacks = False
    if listener.tls_certificate:
        endpoint: Any = SSL4ServerEndpoint(
            reactor, port, tls_options_from_pem(listener.tls_certificate), interface=host
        )
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
