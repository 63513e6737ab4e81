"""Suppression entries: what a record says, which values are valid, and its CSV form.

A suppression entry means "never mail this recipient again" within a scope: `global`
(every sender), `domain:<sending-domain>` (mail from one sending domain) or
`source:<name>` (mail received on one `<source>`, PowerMTA's `suppression-lists`).
The fields and words are SparkPost's (`recipient`, `type`, `source`, `description`,
`created`, `updated`) so that the HTTP API added later can speak SparkPost's JSON and
CSV without a translation table.

Everything here is pure: times are passed in, nothing touches the disk or the reactor.
Validation is strict on purpose: the store is fed by bounces, complaints and CSV uploads
from customers, and a value that could break a CSV line, a log line or a JSON document
later is refused here, with the line it came from.
"""

from __future__ import annotations

import csv
import enum
import re
from collections.abc import Iterable, Iterator
from typing import TextIO

import attrs

MAX_RECIPIENT_LENGTH = 320  # RFC 5321: 64 octets of local part, @, 255 of domain
MAX_DESCRIPTION_LENGTH = 1024  # SparkPost's limit on `description`
MAX_SCOPE_LENGTH = 300

GLOBAL_SCOPE = "global"

CSV_COLUMNS = ("recipient", "type", "source", "description", "scope", "created", "updated")


class SuppressionError(ValueError):
    """A value that cannot be stored: a bad address, scope, type or source."""


class CsvImportError(SuppressionError):
    """A CSV upload refused as a whole; `line` is the 1-based physical line at fault."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


class SuppressionType(enum.Flag):
    """SparkPost's `type`: which kind of mail the suppression stops; both may be set."""

    TRANSACTIONAL = 1
    NON_TRANSACTIONAL = 2
    BOTH = 3

    @property
    def words(self) -> tuple[str, ...]:
        """SparkPost's words for the flags set, transactional first."""
        out = []
        if self & SuppressionType.TRANSACTIONAL:
            out.append("transactional")
        if self & SuppressionType.NON_TRANSACTIONAL:
            out.append("non_transactional")
        return tuple(out)

    @classmethod
    def from_word(cls, word: str) -> SuppressionType:
        """`transactional` or `non_transactional` (SparkPost's words) as a flag."""
        try:
            return _TYPE_WORDS[word.strip().lower()]
        except KeyError:
            raise SuppressionError(
                f"type must be transactional or non_transactional, not {word!r}"
            ) from None


_TYPE_WORDS = {
    "transactional": SuppressionType.TRANSACTIONAL,
    "non_transactional": SuppressionType.NON_TRANSACTIONAL,
}


class SuppressionSource(enum.StrEnum):
    """Why the recipient is suppressed, in SparkPost's words."""

    BOUNCE_RULE = "Bounce Rule"
    SPAM_COMPLAINT = "Spam Complaint"
    MANUALLY_ADDED = "Manually Added"
    UNSUBSCRIBE = "Unsubscribe"
    COMPLIANCE = "Compliance"

    @classmethod
    def from_word(cls, word: str) -> SuppressionSource:
        """SparkPost's source word (case-insensitive) as a member."""
        for member in cls:
            if member.value.lower() == word.strip().lower():
                return member
        allowed = ", ".join(m.value for m in cls)
        raise SuppressionError(f"source must be one of {allowed}, not {word!r}")


# Characters that never belong in an address we store: controls (CR, LF, NUL, tab...),
# whitespace, and the separators of header, CSV and SMTP syntax. Quoted local parts
# ("a b"@x) are legal in RFC 5321 but are not accepted here: no bounce or complaint
# for a real mailbox needs them, and refusing them keeps every later format simple.
_BAD_ADDRESS_CHARS = re.compile(r"[\x00-\x20\x7f-\x9f\"(),:;<>\[\\\]\u2028\u2029]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Letters, digits and hyphens, or non-ASCII letters of an internationalised name.
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9\-_\u00a0-\U0010ffff]{1,63}(?<!-)$")


def normalize_recipient(recipient: str) -> str:
    """The address lower-cased, or SuppressionError saying what is wrong with it."""
    if not isinstance(recipient, str):
        raise SuppressionError(f"recipient must be text, not {type(recipient).__name__}")
    address = recipient.strip(" \t").lower()  # not CR/LF: a line break is refused
    if not address:
        raise SuppressionError("recipient is empty")
    if len(address) > MAX_RECIPIENT_LENGTH:
        raise SuppressionError(f"recipient longer than {MAX_RECIPIENT_LENGTH} characters")
    bad = _BAD_ADDRESS_CHARS.search(address)
    if bad:
        raise SuppressionError(
            f"recipient {address!r} contains a forbidden character {bad.group()!r}"
        )
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or "@" in local:
        raise SuppressionError(f"recipient {address!r} is not an address (local@domain)")
    if len(local) > 64:
        raise SuppressionError(f"recipient {address!r}: local part longer than 64")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise SuppressionError(f"recipient {address!r}: misplaced dot in the local part")
    _check_domain(domain, f"recipient {address!r}")
    return address


def _check_domain(domain: str, what: str) -> None:
    if len(domain) > 255 or not all(_DOMAIN_LABEL.match(label) for label in domain.split(".")):
        raise SuppressionError(f"{what}: {domain!r} is not a domain name")


def normalize_scope(scope: str) -> str:
    """`global`, `domain:<domain>` (lower-cased) or `source:<name>`, checked."""
    if not isinstance(scope, str):
        raise SuppressionError(f"scope must be text, not {type(scope).__name__}")
    scope = scope.strip()
    if scope.lower() == GLOBAL_SCOPE:
        return GLOBAL_SCOPE
    kind, colon, name = scope.partition(":")
    kind = kind.lower()
    if len(scope) > MAX_SCOPE_LENGTH or not colon or not name:
        raise SuppressionError(
            f"scope must be global, domain:<domain> or source:<name>, not {scope!r}"
        )
    if kind == "domain":
        name = name.lower()
        if _BAD_ADDRESS_CHARS.search(name):
            raise SuppressionError(f"scope {scope!r}: {name!r} is not a domain name")
        _check_domain(name, f"scope {scope!r}")
        return f"domain:{name}"
    if kind == "source":
        if _BAD_ADDRESS_CHARS.search(name):
            raise SuppressionError(f"scope {scope!r}: a source name has no spaces or controls")
        return f"source:{name}"
    raise SuppressionError(f"scope must be global, domain:<domain> or source:<name>, not {scope!r}")


def domain_scope(domain: str) -> str:
    """The scope of mail sent from `domain`."""
    return normalize_scope(f"domain:{domain}")


def source_scope(name: str) -> str:
    """The scope of mail received on the `<source>` named `name`."""
    return normalize_scope(f"source:{name}")


def _check_description(description: str) -> str:
    if not isinstance(description, str):
        raise SuppressionError("description must be text")
    if len(description) > MAX_DESCRIPTION_LENGTH:
        raise SuppressionError(f"description longer than {MAX_DESCRIPTION_LENGTH} characters")
    bad = _CONTROL_CHARS.search(description)
    if bad:
        raise SuppressionError(f"description contains a control character {bad.group()!r}")
    return description


def _check_time(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 40:
        raise SuppressionError(f"{what} must be whole epoch seconds, not {value!r}")
    return value


@attrs.frozen(slots=True)
class Entry:
    """One suppression: `recipient` is never mailed within `scope` for the `type` set.

    Build with `Entry.make(...)`, which normalises and checks every field; the plain
    constructor trusts its arguments (the store uses it for records it wrote itself).
    """

    scope: str
    recipient: str
    type: SuppressionType
    source: SuppressionSource
    description: str
    created: int
    updated: int

    @classmethod
    def make(
        cls,
        recipient: str,
        *,
        now: int,
        scope: str = GLOBAL_SCOPE,
        type: SuppressionType = SuppressionType.BOTH,  # noqa: A002 - SparkPost's word
        source: SuppressionSource | str = SuppressionSource.MANUALLY_ADDED,
        description: str = "",
        created: int | None = None,
    ) -> Entry:
        """A checked entry; `now` is both `created` and `updated` unless `created` given."""
        if not isinstance(type, SuppressionType) or not type & SuppressionType.BOTH:
            raise SuppressionError("type must include transactional or non_transactional")
        if not isinstance(source, SuppressionSource):
            source = SuppressionSource.from_word(source)
        updated = _check_time(now, "updated")
        return cls(
            scope=normalize_scope(scope),
            recipient=normalize_recipient(recipient),
            type=type,
            source=source,
            description=_check_description(description),
            created=updated if created is None else _check_time(created, "created"),
            updated=updated,
        )

    @property
    def key(self) -> tuple[str, str]:
        """(scope, recipient): what the store is keyed by; an add with the same key upserts."""
        return (self.scope, self.recipient)

    def to_json(self) -> dict[str, object]:
        """SparkPost-shaped JSON (times as epoch seconds; the API formats them)."""
        return {
            "recipient": self.recipient,
            "type": list(self.type.words),
            "source": self.source.value,
            "description": self.description,
            "scope": self.scope,
            "created": self.created,
            "updated": self.updated,
        }


def parse_csv(
    lines: Iterable[str],
    *,
    now: int,
    scope: str = GLOBAL_SCOPE,
    source: SuppressionSource = SuppressionSource.MANUALLY_ADDED,
) -> list[Entry]:
    """The entries of a SparkPost-style CSV upload, or CsvImportError naming the line.

    The first row is the header; `recipient` is required, `type`, `source`,
    `description`, `scope`, `created` and `updated` are optional (missing or empty:
    both types, `source`, the given `scope`, `now`). Column names are case-insensitive;
    unknown columns are refused rather than ignored, so a misspelt `type` does not
    silently suppress both kinds of mail. Rows naming the same (scope, recipient) are
    merged into one entry with the union of their types, which is how SparkPost's
    one-row-per-type files read. `lines` should come from a file opened with
    `newline=""` so quoted line breaks reach the parser (and get refused).
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise CsvImportError(reader.line_num, f"malformed CSV: {e}") from None
    if header is None:
        raise CsvImportError(1, "empty file: a header with a recipient column is required")
    columns = [name.strip().lower().lstrip("\ufeff") for name in header]
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise CsvImportError(1, f"unknown column {unknown[0]!r} (known: {', '.join(CSV_COLUMNS)})")
    if "recipient" not in columns:
        raise CsvImportError(1, "no recipient column in the header")
    if len(set(columns)) != len(columns):
        raise CsvImportError(1, "a column is named twice in the header")
    merged: dict[tuple[str, str], Entry] = {}
    while True:
        line = reader.line_num + 1  # where the row starts (a quoted field may span lines)
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise CsvImportError(line, f"malformed CSV: {e}") from None
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(columns):
            raise CsvImportError(line, f"{len(row)} fields where the header has {len(columns)}")
        fields = dict(zip(columns, row, strict=True))
        try:
            entry = _entry_from_row(fields, now=now, scope=scope, source=source)
        except SuppressionError as e:
            raise CsvImportError(line, str(e)) from None
        previous = merged.get(entry.key)
        if previous is not None:
            entry = attrs.evolve(entry, type=previous.type | entry.type)
        merged[entry.key] = entry
    return list(merged.values())


def _entry_from_row(
    fields: dict[str, str], *, now: int, scope: str, source: SuppressionSource
) -> Entry:
    type_word = fields.get("type", "").strip()
    created = _csv_time(fields.get("created", ""), "created")
    updated = _csv_time(fields.get("updated", ""), "updated")
    return Entry.make(
        fields["recipient"],
        now=now if updated is None else updated,
        scope=fields.get("scope", "").strip() or scope,
        type=SuppressionType.from_word(type_word) if type_word else SuppressionType.BOTH,
        source=fields.get("source", "").strip() or source,
        description=fields.get("description", ""),
        created=created,
    )


def _csv_time(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not text.isdigit() or not text.isascii():
        raise SuppressionError(f"{what} must be whole epoch seconds, not {text!r}")
    return _check_time(int(text), what)


def format_csv(entries: Iterable[Entry], out: TextIO) -> int:
    """Write `entries` as CSV with a header; one row per type, as SparkPost exports.

    Returns the number of rows written (without the header).
    """
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    rows = 0
    for row in csv_rows(entries):
        writer.writerow(row)
        rows += 1
    return rows


def csv_rows(entries: Iterable[Entry]) -> Iterator[tuple[str, ...]]:
    """The CSV rows of `entries`, in `CSV_COLUMNS` order."""
    for entry in entries:
        for word in entry.type.words:
            yield (
                entry.recipient,
                word,
                entry.source.value,
                entry.description,
                entry.scope,
                str(entry.created),
                str(entry.updated),
            )
