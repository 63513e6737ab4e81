"""Config text for end-to-end tests: the shape most of them start from, and a DKIM key.

`relay_config` is a server that listens on loopback and relays for 127.0.0.1; the test
adds what it is about (acct files, domains, more global lines) as blocks. Keeping that
skeleton in one place means a new required directive, or a new default that breaks
loopback tests, is changed once.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

#: What every acct file of a delivery test records: receptions, outcomes, queue failures.
ALL_RECORDS = "r,d,b,t,tq"


def relay_config(
    tmp_path: Path,
    smtp_port: int,
    *blocks: str,
    settings: str = "",
    source: str = "",
    identity: bool = True,
) -> str:
    """A config relaying for 127.0.0.1 on `127.0.0.1:smtp_port`, spool in `tmp_path/spool`.

    `settings` are more global lines (before the source), `source` more lines of the
    `<source 127.0.0.1>`, `blocks` the rest in order (see `acct_file`, `domain`).
    `identity` adds `host-name mta.test` and `postmaster postmaster@mta.test`.
    """
    head = "host-name mta.test\npostmaster postmaster@mta.test\n" if identity else ""
    return (
        f"{head}spool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{smtp_port}\n{_lines(settings)}"
        f"<source 127.0.0.1>\n    always-allow-relaying yes\n{_body(source)}</source>\n"
        + "".join(_lines(block) for block in blocks)
    )


def acct_file(path: Path | str, records: str = ALL_RECORDS, body: str = "") -> str:
    """An `<acct-file path>` block recording `records`, with more lines in `body`."""
    return f"<acct-file {path}>\n    records {records}\n{_body(body)}</acct-file>\n"


def domain(body: str, name: str = "*") -> str:
    """A `<domain name>` block holding the lines of `body`."""
    return f"<domain {name}>\n{_body(body)}</domain>\n"


def _body(text: str) -> str:
    """The lines of `text` indented as a block's body."""
    return "".join(f"    {line.strip()}\n" for line in text.splitlines() if line.strip())


def _lines(text: str) -> str:
    """`text` ending in a newline (empty stays empty), so blocks join line by line."""
    return text if not text or text.endswith("\n") else text + "\n"


#: Every recipient is accepted and thrown away: for tests about reception or accounting.
DISCARD = domain("type discard")


def write_rsa_key(
    path: Path,
    bits: int = 2048,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.TraditionalOpenSSL,
) -> bytes:
    """A fresh RSA private key in `path` (PEM, in `fmt`); returns its DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
