"""The suppression list: recipients never to be mailed again, durable and fast to check."""

from mtaserver.suppression.model import (
    GLOBAL_SCOPE,
    CsvImportError,
    Entry,
    SuppressionError,
    SuppressionSource,
    SuppressionType,
    domain_scope,
    format_csv,
    normalize_recipient,
    normalize_scope,
    parse_csv,
    source_scope,
)
from mtaserver.suppression.store import (
    SearchPage,
    SuppressionStore,
    SuppressionStoreError,
    suppression_directory,
)

__all__ = [
    "GLOBAL_SCOPE",
    "CsvImportError",
    "Entry",
    "SearchPage",
    "SuppressionError",
    "SuppressionSource",
    "SuppressionStore",
    "SuppressionStoreError",
    "SuppressionType",
    "domain_scope",
    "format_csv",
    "normalize_recipient",
    "normalize_scope",
    "parse_csv",
    "source_scope",
    "suppression_directory",
]
