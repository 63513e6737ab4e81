"""Accounting: acct records (`r d b t tq f`), bounce categories, and the file writers."""

from mtaserver.accounting.bounce import CATEGORIES, classify, is_permanent, is_transient
from mtaserver.accounting.records import (
    DEFAULT_RECORDS,
    FIELDS,
    RECORD_TYPES,
    csv_header,
    csv_line,
    fields_for,
    format_time,
    json_line,
    records_from_event,
)
from mtaserver.accounting.writer import AcctFileWriter, csv_columns, position_pair

__all__ = [
    "CATEGORIES",
    "DEFAULT_RECORDS",
    "FIELDS",
    "RECORD_TYPES",
    "AcctFileWriter",
    "classify",
    "csv_columns",
    "csv_header",
    "csv_line",
    "fields_for",
    "format_time",
    "is_permanent",
    "is_transient",
    "json_line",
    "position_pair",
    "records_from_event",
]
