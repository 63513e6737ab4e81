"""The docs table of every directive, generated from the registry and the catalog.

`python -m mtaserver.config.doctable` prints the table; `--write docs/config.rst`
replaces the text between the markers in that file. `tests/test_hardening_catalog.py`
checks that the committed docs equal what this module generates, so the table can never
fall behind the registry or the catalog.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Iterator
from typing import Any

import attrs

from mtaserver.config import catalog
from mtaserver.config import registry as reg
from mtaserver.config import values as v
from mtaserver.config.load import SCOPE_RECORDS

BEGIN = ".. BEGIN GENERATED DIRECTIVE TABLE (python -m mtaserver.config.doctable --write)"
END = ".. END GENERATED DIRECTIVE TABLE"

#: How the table names the value of a registry directive, by its parser.
_PARSER_LABELS: dict[Any, str] = {
    v.parse_bool: "yes/no",
    v.parse_int: "number",
    v.parse_positive_int: "number > 0",
    v.parse_size: "size (10K 5M 1G)",
    v.parse_interval: "interval (30s 10m 4h)",
    v.parse_interval_or_never: "interval or never",
    v.parse_interval_list: "intervals (10m,1h)",
    v.parse_rate: "rate (100/h)",
    v.parse_cidr: "CIDR",
    v.parse_cidr_list: "CIDRs",
    v.parse_string: "text",
    v.parse_name: "name",
    v.parse_email: "email address",
    v.parse_url: "URL",
    v.parse_hostname: "host name",
}

_ORDER = [
    reg.GLOBAL,
    reg.SOURCE,
    reg.SMTP_USER,
    catalog.SOURCE_GROUP,
    reg.DOMAIN,
    reg.VMTA,
    reg.VMTA_POOL,
    reg.ACCT_FILE,
    reg.PATTERN_LIST,
    catalog.PATTERN_LIST,
    catalog.REWRITE_LIST,
    reg.SMTP_LISTENER,
    reg.API_LISTENER,
    reg.API,
    reg.LDAP,
]


#: The same for the registry's own value parsers, by name.
_NAMED_LABELS: dict[str, str] = {
    "_path": "file",
    "_certificate": "file [PASSWORD]",
    "parse_domain_key": "SELECTOR,DOMAIN,KEYFILE",
    "parse_http_access": "CIDR none|monitor|admin",
    "parse_ldap_group_access": "GROUP-DN none|monitor|admin",
    "parse_mgmt_port": "[IP:]PORT",
    "parse_name_server": "IP[:PORT]",
    "parse_domain_pattern": "domain, * or *.suffix",
    "_listener_arg": "IP:PORT [source=NAME]",
    "parse_size_mb": "size (bare number: MB)",
    "_category_list": "bounce categories or none",
    "_date_header": "yes/no/override",
    "_default_vmta": "virtual MTA or pool name",
    "_name_list": "names (a,b)",
    "parse_domain_pattern_or_email": "address, *@domain, domain or *.domain",
    "parse_password": "password or {SCHEME}hash",
    "_source_ref": "source name",
    "_dkim_identity": "address, domain or sender-or-from",
    "parse_smtp_hosts": "hosts (h1,h2;[IP]:PORT;lookup-mx:DOMAIN)",
    "_queue_type": "smtp | discard | file | http-delivery",
    "parse_source_host": "IP HOSTNAME",
    "parse_header_mapping": "RECORD-TYPES HEADER [FIELD]",
    "parse_record_fields": "RECORD-TYPE FIELD-LIST",
    "parse_record_types": "record types (d,b,t,tq,r,f,rb,rs)",
    "parse_reply_pattern": "/REGEX/ ACTIONS",
    "parse_api_key": "32-128 of [A-Za-z0-9_]",
    "parse_ldap_uri": "ldap[s]://HOST:PORT",
    "parse_user_filter": "LDAP filter with %u",
    "_address_pattern": "address, local part or /regex/",
    "_dsn_from_header": "Name <address>",
    "parse_dsn_text_file": "file ($sender $recipients ...)",
}


def _value_label(entry: catalog.Entry) -> str:
    if entry.value:
        return entry.value
    label = _PARSER_LABELS.get(entry.parse) or _NAMED_LABELS.get(entry.parse.__name__)
    cells = getattr(entry.parse, "__closure__", None) or ()
    choices = [c.cell_contents for c in cells if isinstance(c.cell_contents, tuple)]
    if label is None and entry.parse.__qualname__.startswith("parse_choice") and choices:
        label = " | ".join(choices[0])
    label = label or "see the scope's table above"
    return label + (" (repeatable)" if entry.repeatable else "")


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return ""
    if isinstance(value, tuple | frozenset):
        return ",".join(sorted(_format_default(item) for item in value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _registry_default(name: str, scope: str) -> str:
    record = SCOPE_RECORDS.get(scope)
    if record is None:
        return ""
    for field in attrs.fields(record):
        if field.name == reg.field_name(name):
            if isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
                return "(computed)"
            if field.default is attrs.NOTHING:
                return "(required)"
            return _format_default(field.default)
    return ""


def entries() -> Iterator[catalog.Entry]:
    """Every directive in every scope, registry and catalog, in the table's order."""
    found: list[catalog.Entry] = []
    for name, spec in reg.DIRECTIVES.items():
        for scope in spec.scopes:
            entry = catalog.lookup(name, scope)
            assert entry is not None
            found.append(entry)
    found += [e for key, e in catalog.CATALOG.items() if catalog.lookup(*key) is e]
    rank = {scope: index for index, scope in enumerate(_ORDER)}
    found.sort(key=lambda e: (rank.get(e.scope, len(rank)), e.scope, e.name))
    yield from found


def rows() -> list[list[str]]:
    table = []
    for entry in entries():
        scope = "global" if entry.scope == reg.GLOBAL else f"<{entry.scope}>"
        default = entry.default or _registry_default(entry.name, entry.scope)
        reload = "restart" if entry.name in reg.RESTART_ONLY else "live"
        status = entry.status.replace("-", " ")
        table.append(
            [f"``{entry.name}``", scope, status, _value_label(entry), default, reload, entry.reason]
        )
    return table


def generate() -> str:
    """The reStructuredText between the markers (markers excluded)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows():
        writer.writerow(row)
    body = "".join(f"   {line}\n" for line in out.getvalue().splitlines())
    counts = {s: 0 for s in (catalog.IMPLEMENTED, catalog.NO_EFFECT, catalog.NOT_YET)}
    for entry in entries():
        counts[entry.status] += 1
    summary = (
        f"{sum(counts.values())} directive entries (a directive counts once per scope): "
        f"{counts[catalog.IMPLEMENTED]} implemented, {counts[catalog.NO_EFFECT]} no effect, "
        f"{counts[catalog.NOT_YET]} not yet."
    )
    return (
        f"{summary}\n\n"
        ".. csv-table:: Every directive, by scope\n"
        "   :header: directive, scope, status, value, default, reload, reason\n"
        "   :widths: 18, 10, 8, 14, 10, 6, 34\n\n" + body
    )


def replace_between_markers(text: str, generated: str) -> str:
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END)
    return text[:start] + "\n\n" + generated + "\n" + text[end:]


def committed(text: str) -> str:
    """What a docs file holds between the markers, as `generate()` returns it."""
    start = text.index(BEGIN) + len(BEGIN)
    return text[start : text.index(END)].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", metavar="FILE", help="replace the table in FILE")
    args = parser.parse_args(argv)
    generated = generate()
    if args.write:
        with open(args.write, encoding="utf-8") as stream:
            text = stream.read()
        with open(args.write, "w", encoding="utf-8") as stream:
            stream.write(replace_between_markers(text, generated))
    else:
        sys.stdout.write(generated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
