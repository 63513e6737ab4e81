"""Outbound SMTP, the TLS client side of STARTTLS: verified or opportunistic.

With `require-starttls yes` the certificate must verify against the MX name
(`optionsForClientTLS`: the system CAs or the configured trust root, and
service-identity's name check). With only `use-starttls yes` (Postfix's `may`) the
certificate is not verified: encryption against a passive listener is still worth
having when the receiver's certificate is self-signed or for another name, which is
common among MX hosts. TLS 1.2 is the minimum either way, and SNI is always sent for
a host name.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion, optionsForClientTLS
from zope.interface import implementer

__all__ = ["OpportunisticTLS", "tls_creator"]


@implementer(IOpenSSLClientConnectionCreator)
class OpportunisticTLS:
    """TLS without certificate verification (Postfix's `may`), still sending SNI.

    `optionsForClientTLS` always verifies; encryption against a passive listener is
    still worth having when the receiver's certificate is self-signed or for
    another name, which is the common case among MX hosts.
    """

    def __init__(self, hostname: str) -> None:
        self._options = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
        self._server_name: bytes | None = None
        try:
            ipaddress.ip_address(hostname)
        except ValueError:
            try:
                self._server_name = hostname.encode("idna")
            except UnicodeError:
                self._server_name = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if self._server_name:
            connection.set_tlsext_host_name(self._server_name)
        return connection


def tls_creator(hostname: str, verify: bool, trust_root: Any) -> Any:
    """The connection creator for `startTLS`: verified against `hostname`, or not."""
    if verify:
        return optionsForClientTLS(
            hostname,
            trustRoot=trust_root,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
    return OpportunisticTLS(hostname)
