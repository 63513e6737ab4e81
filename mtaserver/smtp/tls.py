"""The server side of STARTTLS: a TLS context from one PEM file.

`smtp-server-tls-certificate` (or `tls-certificate` in an `<smtp-listener>`) names
a PEM file holding the private key, the certificate and its chain, the way most
ACME clients write them. The file is read once, when the listener starts (and at
each reload).

Versions and ciphers follow a `TlsPolicy` (`smtp-server-tls-allow-*`, `tls-allow-*`,
`smtp-tls-allow-*` and the `*-ciphers` directives): the lowest allowed version is the
context's minimum protocol version and TLS 1.3 its maximum (`tls_bounds`), set with
OpenSSL's own min/max proto version calls; without a policy TLS 1.2 is the minimum.
The client side (`client_tls`) uses the same helpers.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl

from mtaserver.config.model import TLS_VERSIONS, TlsPolicy

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)
_KEY = re.compile(
    rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.+?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)


class TlsConfigError(ValueError):
    """The certificate file is missing, unreadable or incomplete."""


#: PowerMTA's version names -> (Twisted's, OpenSSL's) versions, oldest first.
_VERSIONS: dict[str, tuple[ssl.TLSVersion, int]] = dict(
    zip(
        TLS_VERSIONS,
        [
            (ssl.TLSVersion.SSLv3, SSL.SSL3_VERSION),
            (ssl.TLSVersion.TLSv1_0, SSL.TLS1_VERSION),
            (ssl.TLSVersion.TLSv1_1, SSL.TLS1_1_VERSION),
            (ssl.TLSVersion.TLSv1_2, SSL.TLS1_2_VERSION),
        ],
        strict=True,
    )
)


def tls_bounds(policy: TlsPolicy | None) -> tuple[ssl.TLSVersion, int]:
    """The minimum version a policy allows (Twisted's and OpenSSL's numbers).

    The lowest allowed version is the minimum: a version between two allowed ones
    cannot be left out (OpenSSL has a range, not a set). None: TLS 1.2.
    """
    allowed = [_VERSIONS[v] for v in TLS_VERSIONS if policy is None or v in policy.allow]
    if policy is None:
        return _VERSIONS["tlsv1.2"]
    return allowed[0] if allowed else (ssl.TLSVersion.TLSv1_3, SSL.TLS1_3_VERSION)


def certificate_options(policy: TlsPolicy | None, **options: Any) -> dict[str, Any]:
    """`CertificateOptions` keyword arguments for `policy`'s versions and ciphers."""
    minimum, _ = tls_bounds(policy)
    options[
        "insecurelyLowerMinimumTo" if minimum < ssl.TLSVersion.TLSv1_2 else "raiseMinimumTo"
    ] = minimum
    if policy is not None and policy.ciphers:
        options["acceptableCiphers"] = ssl.AcceptableCiphers.fromOpenSSLCipherString(policy.ciphers)
    return options


def restrict_context(context: SSL.Context, policy: TlsPolicy | None) -> SSL.Context:
    """Set the context's min/max proto version from `policy` (OpenSSL's own range).

    Twisted expresses its minimum with `OP_NO_*` flags; the explicit range also
    overrides a system-wide `MinProtocol` that is lower than asked, and caps at TLS 1.3.
    """
    _, minimum = tls_bounds(policy)
    context.set_min_proto_version(minimum)
    context.set_max_proto_version(SSL.TLS1_3_VERSION)
    return context


class _PolicyOptions(ssl.CertificateOptions):
    """CertificateOptions whose contexts also carry the policy's min/max versions."""

    def __init__(self, policy: TlsPolicy | None, **options: Any) -> None:
        super().__init__(**certificate_options(policy, **options))
        self._policy = policy
        self._restricted = False

    def getContext(self) -> SSL.Context:  # noqa: N802 - Twisted's name
        context = super().getContext()  # made once, then cached by Twisted
        if not self._restricted:  # a context cannot change once a connection used it
            restrict_context(context, self._policy)
            self._restricted = True
        return context


def server_tls_options(pem_path: str, policy: TlsPolicy | None = None) -> ssl.CertificateOptions:
    """TLS options for STARTTLS from a PEM with key, certificate and chain.

    `policy` chooses the versions and ciphers; None is TLS 1.2 and later, OpenSSL's
    ciphers.
    """
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
        return _PolicyOptions(
            policy,
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
        )
    except Exception as exc:
        raise TlsConfigError(f"{pem_path}: {exc}") from None
