"""DKIM signing, checked by dkimpy's verifier against keys made in the test."""

from __future__ import annotations

import base64
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from server_configs import write_rsa_key

from mtaserver.config.model import GlobalSettings
from mtaserver.config.values import DomainKey
from mtaserver.smtp.dkim import DkimError, DkimSigner, header_names, headers_to_sign

MESSAGE = (
    b"From: News <news@example.test>\r\n"
    b"To: rcpt@remote.test\r\n"
    b"Subject: This week\r\n"
    b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b"this is the body.\r\n"
)

# A throwaway 512-bit key: cryptography refuses to generate one, but must load it.
SMALL_RSA_KEY = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIBOwIBAAJBAOVsqdmE8bWybe+lUViaXJcrrojwWbPZj5Cnn1PCZHaE2YtTGHgs
W8/tmx4nLgbfXZIi1kLR+7kv0aOuzdCa1RECAwEAAQJAIv/20XZUoZF88AhaZpf1
9CH32HBCXwubuUe5KMAJL4M+7WGxss/nPjNTpi43+jYa+APp1FKt8XlKhgKBe6vx
IQIhAPhvoMLuVoAVHXFd/9/nTJ87Xq2Bg3wwBfvJGuaWrNBVAiEA7GjawzfBbIy1
lr0VlRb3wEgmE8C69GTFxUeT96kE/c0CIQCpvVMgfEk7f7G7KFdPuq/eR2kbsNaO
Ph2Id1Ha5G20dQIgDJi5r1U1NTd6JYIFuF/064XsoXjPfV4xO4XI2JVk8rECIQCt
7cUpkySo4Yp45AlOtiArT9HwATVc9fOvBW7k4N8Taw==
-----END RSA PRIVATE KEY-----
"""


def _rsa_key(
    tmp_path: Path,
    name: str = "rsa.pem",
    bits: int = 2048,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> tuple[Path, str]:
    """Write a new RSA key; return its path and the DNS record built from it here."""
    path = tmp_path / name
    return path, write_rsa_key(path, bits, fmt).decode()


def _dns(records: dict[str, str]) -> Callable[..., bytes | None]:
    """A dnsfunc for dkim.verify that serves the test's TXT records."""

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        record = records.get(name.decode().rstrip("."))
        return record.encode() if record else None

    return lookup


@pytest.fixture(scope="module")
def rsa_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[DkimSigner, dict[str, str]]:
    """A signer with one RSA key for example.test, and the DNS that publishes it."""
    path, record = _rsa_key(tmp_path_factory.mktemp("keys"))
    signer = DkimSigner([DomainKey("sel1", "example.test", str(path))])
    return signer, {"sel1._domainkey.example.test": record}


def _tags(signed: bytes) -> dict[str, str]:
    header = signed.split(b"\r\n\r\n")[0].decode()
    value = header.split("DKIM-Signature:", 1)[1].split("\r\nFrom:")[0]
    value = "".join(value.split())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


def test_signature_verifies(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """A signed message verifies with the public key published in DNS."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test")
    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=_dns(records))


def test_signature_tags(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """relaxed/relaxed, rsa-sha256, d= and s= from the key, the usual headers, From twice."""
    signer, _ = rsa_setup
    tags = _tags(signer.sign(MESSAGE, "example.test"))
    assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
        "rsa-sha256",
        "relaxed/relaxed",
        "example.test",
        "sel1",
    )
    assert tags["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "from",
    ]


def test_modified_body_fails(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """Changing the body after signing breaks the signature."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test")
    assert not dkim.verify(signed.replace(b"the body", b"a body"), dnsfunc=_dns(records))


def test_modified_subject_fails(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """Changing a signed header breaks the signature; an unsigned one does not."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test")
    assert not dkim.verify(signed.replace(b"This week", b"That week"), dnsfunc=_dns(records))
    assert dkim.verify(signed.replace(b"X-Mailer: test", b"X-Mailer: other"), dnsfunc=_dns(records))


def test_added_from_fails(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """A second From added above the signed one does not verify."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test")
    forged = b"From: evil@attacker.test\r\n" + signed  # above the signed one
    assert not dkim.verify(forged, dnsfunc=_dns(records))


def test_relaxed_canonicalization_tolerates_refolding(
    rsa_setup: tuple[DkimSigner, dict[str, str]],
) -> None:
    """Whitespace changes in transit (relaxed/relaxed) keep the signature valid."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test")
    assert dkim.verify(
        signed.replace(b"Subject: This week", b"Subject:  This   week"), dnsfunc=_dns(records)
    )


def test_identity_is_honoured(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """dkim-identity becomes i=, and the signature still verifies."""
    signer, records = rsa_setup
    signed = signer.sign(MESSAGE, "example.test", identity="@news.example.test")
    assert _tags(signed)["i"] == "@news.example.test"
    assert dkim.verify(signed, dnsfunc=_dns(records))


@pytest.mark.parametrize("identity", ["@other.test", "user@notexample.test"])
def test_identity_outside_the_domain_is_refused(
    rsa_setup: tuple[DkimSigner, dict[str, str]], identity: str
) -> None:
    """An i= outside d= would fail verification everywhere: refused."""
    signer, _ = rsa_setup
    with pytest.raises(DkimError):
        signer.sign(MESSAGE, "example.test", identity=identity)


def test_subdomain_uses_the_parent_key(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """A From subdomain without its own key is signed with d= of the parent's key."""
    signer, records = rsa_setup
    message = MESSAGE.replace(b"news@example.test", b"news@mail.example.test")
    domain = signer.signing_domain_for(message)
    assert domain == "mail.example.test"
    signed = signer.sign(message, domain)
    assert _tags(signed)["d"] == "example.test"
    assert dkim.verify(signed, dnsfunc=_dns(records))


@pytest.mark.parametrize(
    ("from_header", "expected"),
    [
        (b"From: a@example.test", "example.test"),
        (b'From: "A" <a@Sub.Example.Test>', "sub.example.test"),
        (b"From: a@notexample.test", None),
        (b"From: a@other.test", None),
        (b"From: undisclosed", None),
        (b"X-No-From: 1", None),
    ],
)
def test_signing_domain_for(
    rsa_setup: tuple[DkimSigner, dict[str, str]], from_header: bytes, expected: str | None
) -> None:
    """The From domain when a key covers it, else None (the message goes unsigned)."""
    signer, _ = rsa_setup
    message = from_header + b"\r\nSubject: x\r\n\r\nbody\r\n"
    assert signer.signing_domain_for(message) == expected


def test_key_for(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """Keys match the domain or a parent, never a mere suffix."""
    signer, _ = rsa_setup
    assert signer.key_for("EXAMPLE.test.") is not None
    assert signer.key_for("a.b.example.test") is not None
    assert signer.key_for("notexample.test") is None
    assert signer.key_for("test") is None


def test_sign_without_a_key_raises(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """Asking to sign for a domain without a key is an error, not a silent no-op."""
    signer, _ = rsa_setup
    with pytest.raises(DkimError):
        signer.sign(MESSAGE, "other.test")


def test_lf_message_keeps_lf(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """A message with bare LF line ends gets an LF-folded signature that verifies."""
    signer, records = rsa_setup
    message = MESSAGE.replace(b"\r\n", b"\n")
    signed = signer.sign(message, "example.test")
    assert b"\r" not in signed
    assert dkim.verify(signed, dnsfunc=_dns(records))


def test_pkcs1_key_and_first_key_wins(tmp_path: Path) -> None:
    """A PKCS#1 key file loads; with two keys for a domain, the first one signs."""
    first, record = _rsa_key(tmp_path, "a.pem", fmt=serialization.PrivateFormat.TraditionalOpenSSL)
    second, _ = _rsa_key(tmp_path, "b.pem")
    signer = DkimSigner.from_settings(
        GlobalSettings(
            host_name="mta.test",
            domain_key=(
                DomainKey("a", "example.test", str(first)),
                DomainKey("b", "example.test", str(second)),
            ),
        )
    )
    signed = signer.sign(MESSAGE, "example.test")
    assert _tags(signed)["s"] == "a"
    assert dkim.verify(signed, dnsfunc=_dns({"a._domainkey.example.test": record}))


def test_ed25519_key(tmp_path: Path) -> None:
    """An Ed25519 key signs with ed25519-sha256 (RFC 8463) and verifies."""
    pytest.importorskip("nacl")
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    record = "v=DKIM1; k=ed25519; p=" + base64.b64encode(public).decode()
    signer = DkimSigner([DomainKey("ed", "example.test", str(path))])
    assert signer.key_for("example.test").dns_record == record  # type: ignore[union-attr]
    signed = signer.sign(MESSAGE, "example.test")
    assert _tags(signed)["a"] == "ed25519-sha256"
    assert dkim.verify(signed, dnsfunc=_dns({"ed._domainkey.example.test": record}))
    assert not dkim.verify(
        signed.replace(b"the body", b"a body"), dnsfunc=_dns({"ed._domainkey.example.test": record})
    )


def test_published_record_matches_the_key(tmp_path: Path) -> None:
    """The signer's DNS record is the one an operator must publish."""
    path, record = _rsa_key(tmp_path)
    key = DkimSigner([DomainKey("s", "Example.Test", str(path))]).key_for("example.test")
    assert key is not None
    assert (key.dns_name, key.dns_record) == ("s._domainkey.example.test", record)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"not a key", "not an unencrypted PEM"),
        ("small", "too small"),
    ],
)
def test_bad_key_files_fail_at_load(tmp_path: Path, content: object, message: str) -> None:
    """Unreadable, malformed or weak keys are refused when the signer is built."""
    path = tmp_path / "key.pem"
    if content == "small":
        path.write_bytes(SMALL_RSA_KEY)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(DkimError, match=message):
        DkimSigner([DomainKey("s", "example.test", str(path))])


def test_signing_is_thread_safe(rsa_setup: tuple[DkimSigner, dict[str, str]]) -> None:
    """Signing different messages from many threads at once gives valid signatures."""
    signer, records = rsa_setup
    messages = [MESSAGE.replace(b"the body", f"body {i}".encode()) for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(lambda m: signer.sign(m, "example.test"), messages))
    for original, result in zip(messages, signed, strict=True):
        assert result.endswith(original)
        assert dkim.verify(result, dnsfunc=_dns(records))


def test_header_names_and_selection() -> None:
    """Header names come in order, continuation lines skipped; only the usual ones signed."""
    message = b"From: a@b\r\nReceived: x\r\n  y\r\nTo: c@d\r\nto: e@f\r\n\r\nFrom: body\r\n"
    assert header_names(message) == ["from", "received", "to", "to"]
    assert headers_to_sign(message) == ["from", "to", "to", "from"]
