"""Outbound SMTP, the TLS client side of STARTTLS: verified or opportunistic.

With `require-starttls yes` the certificate must verify against the MX name
(`optionsForClientTLS`: the system CAs or the configured trust root, and
service-identity's name check). With only `use-starttls yes` (Postfix's `may`) the
certificate is not verified: encryption against a passive listener is still worth
having when the receiver's certificate is self-signed or for another name, which is
common among MX hosts. The domain's `TlsPolicy` (`smtp-tls-allow-*`,
`smtp-tls-ciphers`; TLS 1.2 and later by default) applies either way, and SNI is
always sent for a host name.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from zope.interface import implementer

from mtaserver.config.model import TlsPolicy
from mtaserver.smtp.tls import certificate_options, restrict_context

__all__ = ["OpportunisticTLS", "ca_trust_root", "tls_creator"]


@functools.lru_cache(maxsize=64)
def ca_trust_root(pem: bytes) -> Any:
    """A trust root of the certificates in `pem` (`smtp-tls-ca-file`, read at config load)."""
    marker = b"-----BEGIN CERTIFICATE-----"
    certificates = [Certificate.loadPEM(marker + part) for part in pem.split(marker)[1:]]
    return trustRootFromCertificates(certificates)


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """TLS without certificate verification (Postfix's `may`), still sending SNI.

    `optionsForClientTLS` always verifies; encryption against a passive listener is
    still worth having when the receiver's certificate is self-signed or for
    another name, which is the common case among MX hosts.
    """

    def __init__(self, hostname: str, policy: TlsPolicy | None = None) -> None:
        self._options = CertificateOptions(**certificate_options(policy))
        self._policy = policy
        self._restricted = False
        self._server_name: bytes | None = None
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            try:
                self._server_name = hostname.encode("idna")
            except UnicodeError:
                self._server_name = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        context = self._options.getContext()
        if not self._restricted:  # a context cannot change once a connection used it
            restrict_context(context, self._policy)
            self._restricted = True
        connection = SSL.Connection(context, None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _RestrictedCreator:
    """A verifying creator (`optionsForClientTLS`) with the policy's min/max versions."""

    def __init__(self, creator: Any, policy: TlsPolicy | None) -> None:
        self._creator = creator
        # Twisted's ClientTLSOptions builds its context up front (`_ctx`) and makes every
        # connection from it: the range must be set before the first connection.
        context = getattr(creator, "_ctx", None)
        if isinstance(context, SSL.Context):
            restrict_context(context, policy)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N802
        connection: SSL.Connection = self._creator.clientConnectionForTLS(tlsProtocol)
        return connection


def tls_creator(
    hostname: str, verify: bool, trust_root: Any, policy: TlsPolicy | None = None
) -> Any:
    """The connection creator for `startTLS`: verified against `hostname`, or not."""
    if verify:
        creator = optionsForClientTLS(
            hostname,
            trustRoot=trust_root,
            extraCertificateOptions=certificate_options(policy),
        )
        return _RestrictedCreator(creator, policy)
    return OpportunisticTLS(hostname, policy)
