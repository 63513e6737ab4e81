"""Secrets never leave the server: redaction of config text, settings and log events.

A `monitor` client may see how the server is set up but must never learn a credential
that would make it `admin` (`http-api-key`), let it submit mail (`api-key`, an
`<smtp-user>` `password`, hashes included), or impersonate the server elsewhere
(`auth-password`, LDAP `bind-password`, `http-webhook-hmac-key`). Every read of a config
file shows such a value as `REDACTED` (`********`), and so do `show settings` and the
JSON log observer.

A redacted read round-trips through a commit: a secret directive whose value is still
exactly `********` keeps the value it has at the same place of the file on disk (same
enclosing scopes, same directive, same occurrence among its repeats). A placeholder with
no value at that place is refused (`RedactionError`), so `********` never becomes a
password by accident. These are plain functions over text (no I/O).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mtaserver.config.grammar import strip_comment

REDACTED = "********"

#: Config directives whose value is a credential.
SECRET_DIRECTIVES = frozenset(
    {
        "http-api-key",
        "api-key",
        "auth-password",
        "bind-password",
        "http-webhook-hmac-key",
        "password",
    }
)
#: Directives whose words after the first are a credential: `smtp-server-tls-certificate
#: FILE PASSWORD`, `tls-certificate FILE PASSWORD`, `privacy-policy siphash KEY`.
SECRET_AFTER_FIRST_WORD = frozenset(
    {"smtp-server-tls-certificate", "tls-certificate", "privacy-policy"}
)


def _split_secret(name: str, value: str) -> tuple[str, str]:
    """(the part shown, the secret part) of a secret directive's value."""
    if name in SECRET_AFTER_FIRST_WORD:
        first, space, rest = value.partition(" ")
        return first + space, rest
    return "", value


#: Settings fields (directive names with `_`) and log event keys holding credentials.
SECRET_FIELDS = frozenset(name.replace("-", "_") for name in SECRET_DIRECTIVES) | {
    "authorization",
    "x_api_key",
}

_OPEN = re.compile(r"<\s*([A-Za-z][A-Za-z0-9-]*)(?:\s+([^>]*?))?\s*>\s*$")
_CLOSE = re.compile(r"</\s*([A-Za-z][A-Za-z0-9-]*)\s*>\s*$")
_DIRECTIVE = re.compile(r"(\s*)([A-Za-z][A-Za-z0-9-]*)(\s+)(.*?)(\s*)$")

#: (enclosing scopes, directive, occurrence) -> the value text as written.
SecretKey = tuple[tuple[str, ...], str, int]


class RedactionError(Exception):
    """A `********` placeholder with no earlier value to keep (`line` is 1-based)."""

    def __init__(self, line: int, directive: str) -> None:
        super().__init__(
            f"{line}: {directive} {REDACTED} has no earlier value at this place to keep; "
            "write the new value instead of the placeholder"
        )
        self.line = line
        self.directive = directive


def _secret_lines(text: str) -> list[tuple[int, SecretKey, re.Match[str], str]]:
    """Each secret directive line: (index, key, match of its code part, trailing comment)."""
    scopes: list[str] = []
    seen: dict[tuple[tuple[str, ...], str], int] = {}
    found = []
    for index, raw in enumerate(text.splitlines()):
        code = strip_comment(raw)
        stripped = code.strip()
        if not stripped:
            continue
        if stripped.startswith("</"):
            if _CLOSE.match(stripped) and scopes:
                scopes.pop()
            continue
        if stripped.startswith("<"):
            opening = _OPEN.match(stripped)
            if opening:
                arg = " ".join((opening.group(2) or "").split())
                scopes.append(f"{opening.group(1).lower()} {arg}")
            continue
        match = _DIRECTIVE.fullmatch(code)
        name = match.group(2).lower() if match else ""
        if not match or not (
            name in SECRET_DIRECTIVES
            or (name in SECRET_AFTER_FIRST_WORD and len(match.group(4).split()) > 1)
        ):
            continue
        place = (tuple(scopes), name)
        occurrence = seen.get(place, 0)
        seen[place] = occurrence + 1
        found.append((index, (place[0], name, occurrence), match, raw[len(code) :]))
    return found


def redact_config_text(text: str) -> str:
    """`text` with the value of every secret directive replaced by `********`."""
    lines = text.splitlines(keepends=True)
    for index, _key, match, comment in _secret_lines(text):
        ending = lines[index][len(lines[index].rstrip("\r\n")) :]
        indent, name, space = match.group(1), match.group(2), match.group(3)
        shown, _secret = _split_secret(name.lower(), match.group(4))
        lines[index] = f"{indent}{name}{space}{shown}{REDACTED}{match.group(5)}{comment}{ending}"
    return "".join(lines)


def restore_secrets(new_text: str, old_text: str | None) -> str:
    """`new_text` with each `********` secret replaced by the value at its place in `old_text`.

    Raises `RedactionError` for a placeholder that has no value to keep.
    """
    old = {
        key: _split_secret(key[1], match.group(4))[1]
        for _i, key, match, _c in _secret_lines(old_text or "")
    }
    lines = new_text.splitlines(keepends=True)
    for index, key, match, comment in _secret_lines(new_text):
        shown, secret = _split_secret(key[1], match.group(4))
        if secret != REDACTED:
            continue
        kept = old.get(key)
        if kept is None or kept == REDACTED:
            raise RedactionError(index + 1, key[1])
        ending = lines[index][len(lines[index].rstrip("\r\n")) :]
        indent, name, space = match.group(1), match.group(2), match.group(3)
        lines[index] = f"{indent}{name}{space}{shown}{kept}{match.group(5)}{comment}{ending}"
    return "".join(lines)


def redact_values(data: Any) -> Any:
    """A copy of JSON-like `data` with every value under a secret key replaced."""
    if isinstance(data, Mapping):
        return {
            key: _placeholder(value) if str(key).lower() in SECRET_FIELDS else redact_values(value)
            for key, value in data.items()
        }
    if isinstance(data, list | tuple):
        return [redact_values(item) for item in data]
    return data


def _placeholder(value: Any) -> Any:
    if value in (None, "", [], ()):
        return value
    if isinstance(value, list | tuple):
        return [REDACTED] * len(value)
    return REDACTED
