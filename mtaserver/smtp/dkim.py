"""DKIM signing (RFC 6376, RFC 8463) of outgoing mail with the configured domain keys.

Receivers judge bulk mail by its DKIM signature (DMARC alignment, domain reputation), so
every message a queue with `dkim-sign yes` sends goes out signed with the `domain-key`
of its From domain. This module owns the keys (read and checked once, when the config
is loaded, so a bad key file is a config error rather than a delivery-time surprise)
and the signing itself, done by dkimpy.

Which key: the From header's domain picks it, the key for that domain or else for its
nearest parent (`news.example.com` uses a key for `example.com`, and `d=example.com`
stays aligned with the From domain under relaxed DMARC). No key, no signature:
`signing_domain_for` returns None and the caller sends the message as it is.

Signatures are relaxed/relaxed, rsa-sha256 (or ed25519-sha256 for Ed25519 keys, which
needs PyNaCl), over the usual headers that are present (`SIGNED_HEADERS`), with From
signed once more than it occurs, so that a second From cannot be added later.

`sign` hashes the whole body and does an RSA operation in pure Python (dkimpy): run it
in a thread (`deferToThreadPool`), never on the reactor. It is thread-safe: the signer
is immutable after construction and dkimpy keeps its state per call.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from email import policy as email_policy
from email.headerregistry import AddressHeader
from email.parser import BytesHeaderParser

import attrs
import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mtaserver.config.model import GlobalSettings
from mtaserver.config.values import DomainKey

SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
"""Signed when present: the brief's usual set, plus the headers mailbox providers
require to be signed (List-Unsubscribe for one-click unsubscribe, RFC 8058)."""

MIN_RSA_BITS = 1024  # RFC 8301: verifiers reject smaller keys, so refuse them at load

_HEADER_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


class DkimError(Exception):
    """A key that cannot be used, or a signing request that cannot be honoured."""


@attrs.frozen
class SigningKey:
    """One `domain-key`, parsed: what dkimpy needs and the DNS record to publish."""

    selector: str
    domain: str
    algorithm: str  # rsa-sha256 | ed25519-sha256
    private_key: bytes = attrs.field(repr=False)  # PKCS#1 PEM (RSA) or base64 seed (Ed25519)
    dns_record: str  # the TXT record for SELECTOR._domainkey.DOMAIN

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def load_key(domain_key: DomainKey) -> SigningKey:
    """Read and check a key file (PEM, PKCS#1 or PKCS#8, RSA or Ed25519)."""
    try:
        with open(domain_key.key_file, "rb") as f:
            pem = f.read()
    except OSError as exc:
        raise DkimError(f"cannot read DKIM key file {domain_key.key_file}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimError(
            f"{domain_key.key_file}: not an unencrypted PEM private key ({exc})"
        ) from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimError(
                f"{domain_key.key_file}: a {key.key_size}-bit RSA key is too small for DKIM "
                f"(at least {MIN_RSA_BITS} bits)"
            )
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        algorithm, kind = "rsa-sha256", "rsa"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        try:
            import nacl.signing  # noqa: F401  (dkimpy signs Ed25519 with PyNaCl)
        except ImportError:
            raise DkimError(
                f"{domain_key.key_file}: Ed25519 DKIM keys need the PyNaCl package"
            ) from None
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        private = base64.b64encode(seed)
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        algorithm, kind = "ed25519-sha256", "ed25519"
    else:
        raise DkimError(f"{domain_key.key_file}: DKIM keys are RSA or Ed25519")
    record = f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode('ascii')}"
    return SigningKey(domain_key.selector, domain_key.domain.lower(), algorithm, private, record)


def header_names(message: bytes) -> list[str]:
    """The names of the header fields of `message`, lowercased, in order."""
    names = []
    for line in re.split(rb"\r?\n", message):
        if not line.strip():
            break
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation line
        match = _HEADER_NAME.match(line)
        if match:
            names.append(match.group(1).decode("ascii").lower())
    return names


FORBIDDEN_HEADERS = frozenset(
    {"bcc", "keywords", "return-path", "comments", "received", "dkim-signature", "resent-bcc"}
)
"""Never signed, whatever `dkim-headers` says (PowerMTA's list: RFC 4871 forbids them)."""


def parse_dkim_headers(values: Iterable[str]) -> tuple[str | re.Pattern[str], ...]:
    """`dkim-headers foo, /bar/` lines: exact names (lowercased) and /regular expressions/.

    `dkim-headers ""` adds nothing. Raises ValueError for a bad regular expression.
    """
    found: list[str | re.Pattern[str]] = []
    for value in values:
        for word in (w.strip() for w in value.split(",")):
            word = word.strip('"').strip()
            if not word:
                continue
            if len(word) > 1 and word.startswith("/") and word.endswith("/"):
                try:
                    found.append(re.compile(word[1:-1], re.IGNORECASE))
                except re.error as exc:
                    raise ValueError(f"bad regular expression {word!r}: {exc}") from None
            else:
                found.append(word.lower())
    return tuple(found)


def headers_to_sign(message: bytes, extra: tuple[str | re.Pattern[str], ...] = ()) -> list[str]:
    """Each occurrence of a `SIGNED_HEADERS` field, then `from` once more (over-signing).

    `extra` (`dkim-headers`) adds the fields it names or matches, except the forbidden
    ones: the usual set cannot be narrowed, as in PowerMTA.
    """

    def wanted(name: str) -> bool:
        if name in SIGNED_HEADERS:
            return True
        if name in FORBIDDEN_HEADERS:
            return False
        return any(item == name if isinstance(item, str) else item.search(name) for item in extra)

    names = [name for name in header_names(message) if wanted(name)]
    return [*names, "from"]


def parse_x_dkim_options(value: str) -> dict[str, str]:
    """`s=key2; d=example.com; i=@news.example.com` -> {"s": "key2", ...} (tags lower-cased)."""
    options = {}
    for tag in value.split(";"):
        name, eq, tag_value = tag.partition("=")
        if eq and name.strip() and tag_value.strip():
            options[name.strip().lower()] = "".join(tag_value.split())
    return options


def identity_domain(identity: str) -> str:
    return identity.rpartition("@")[2].lower()


class DkimSigner:
    """The configured domain keys, and signing with them. Thread-safe; see module doc."""

    def __init__(self, domain_keys: Iterable[DomainKey]) -> None:
        keys: dict[str, list[SigningKey]] = {}
        for domain_key in domain_keys:
            key = load_key(domain_key)
            keys.setdefault(key.domain, []).append(key)  # the first for a domain is used
        self._keys = keys

    @classmethod
    def from_settings(cls, settings: GlobalSettings) -> DkimSigner:
        return cls(settings.domain_key)

    def key_for(
        self, domain: str, selector: str | None = None, exact: bool = False
    ) -> SigningKey | None:
        """The key for `domain`, or (unless `exact`) for its nearest parent domain, or None.

        `selector` (X-DKIM-Options `s=`) takes only a key with that selector.
        """
        labels = domain.strip().rstrip(".").lower().split(".")
        for start in range(1 if exact else len(labels)):
            for key in self._keys.get(".".join(labels[start:]), ()):
                if selector is None or key.selector == selector:
                    return key
        return None

    def signing_domain_for(self, message: bytes, selector: str | None = None) -> str | None:
        """The From header's domain if some key can sign for it, else None."""
        headers = BytesHeaderParser(policy=email_policy.default).parsebytes(message)
        from_header = headers["From"]
        if not isinstance(from_header, AddressHeader) or not from_header.addresses:
            return None
        domain = from_header.addresses[0].domain.lower()
        return domain if domain and self.key_for(domain, selector) else None

    def sign(
        self,
        message: bytes,
        signing_domain: str,
        identity: str | None = None,
        algorithm: str | None = None,
        extra_headers: tuple[str | re.Pattern[str], ...] = (),
        selector: str | None = None,
        exact: bool = False,
    ) -> bytes:
        """`message` with a DKIM-Signature prepended, by the key for `signing_domain`.

        `identity` (`dkim-identity`, e.g. `@news.example.com`) becomes `i=`; it must be
        in the key's domain or a subdomain of it. `algorithm` (`dkim-algorithm`:
        rsa-sha1 or rsa-sha256) applies to RSA keys; an Ed25519 key always signs
        ed25519-sha256. `extra_headers` is `dkim-headers` (see `headers_to_sign`).
        `selector` and `exact` choose the key as `key_for` does (X-DKIM-Options s= and d=).
        CPU-heavy: call from a thread.
        Raises DkimError when there is no key or the identity does not fit.
        """
        key = self.key_for(signing_domain, selector, exact)
        if key is None:
            raise DkimError(f"no domain-key for {signing_domain}")
        if identity is not None:
            in_domain = identity_domain(identity)
            if in_domain != key.domain and not in_domain.endswith("." + key.domain):
                raise DkimError(f"dkim-identity {identity} is not within d={key.domain}")
        signature_algorithm = key.algorithm
        if algorithm is not None and key.algorithm.startswith("rsa-"):
            signature_algorithm = algorithm
        first_newline = message.find(b"\n")
        crlf = first_newline < 0 or message[first_newline - 1 : first_newline] == b"\r"
        try:
            signature: bytes = dkimpy.sign(
                message,
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.private_key,
                identity=identity.encode("utf-8") if identity is not None else None,
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=signature_algorithm.encode("ascii"),
                include_headers=[
                    name.encode("ascii") for name in headers_to_sign(message, extra_headers)
                ],
                linesep=b"\r\n" if crlf else b"\n",
            )
        except dkimpy.DKIMException as exc:
            raise DkimError(f"DKIM signing for {key.domain} failed: {exc}") from exc
        return signature + message
