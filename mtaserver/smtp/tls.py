"""The server side of STARTTLS: a TLS context from one PEM file.

`smtp-server-tls-certificate` (or `tls-certificate` in an `<smtp-listener>`) names
a PEM file holding the private key, the certificate and its chain, the way most
ACME clients write them. TLS 1.2 is the minimum; Twisted's defaults pick the
ciphers. The file is read once, when the listener starts.
"""

from __future__ import annotations

import re

from OpenSSL import crypto
from twisted.internet import ssl

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)


class TlsConfigError(ValueError):
    """The certificate file is missing, unreadable or incomplete."""


def server_tls_options(pem_path: str) -> ssl.CertificateOptions:
    """TLS options for STARTTLS from a PEM with key, certificate and chain (TLS >= 1.2)."""
    try:
        with open(pem_path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        raise TlsConfigError(f"{pem_path}: cannot read: {exc.strerror}") from None
    keys = _KEY.findall(pem)
    certs = _CERT.findall(pem)
    if not keys or not certs:
        raise TlsConfigError(f"{pem_path}: needs a private key and at least one certificate")
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, keys[0])
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, c) for c in certs]
    except crypto.Error as exc:
        raise TlsConfigError(f"{pem_path}: {exc}") from None
    try:
        return ssl.CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
    except Exception as exc:
        raise TlsConfigError(f"{pem_path}: {exc}") from None
