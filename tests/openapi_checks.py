"""How our OpenAPI documents are fuzzed against a real server, defined once.

`CHECKS` are the schemathesis checks every served operation must pass (no 500; a
documented status, content type and body) and `BOUNDED` the Hypothesis settings that
keep a run short and repeatable on a loaded machine: a few examples per operation,
a generous deadline, no health checks, derandomized.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

BOUNDED = settings(
    max_examples=8,
    deadline=5000,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
