"""schemathesis against a real Transmissions API listener, driven by our OpenAPI document.

The transmissions and templates paths (`mtaserver.http.openapi_transmissions`) on a
server of their own: a plain-HTTP listener on loopback, every domain routed to an
aiosmtpd receiver. Bounded: a few examples per operation and a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from mx_receiver import Receiver
from openapi_checks import BOUNDED, CHECKS
from server_process import ServerProcess, free_port

from mtaserver.http.openapi import document

KEY = "schema_key_0123456789_0123456789_abcdef"

schema = schemathesis.openapi.from_dict(document()).include(
    path_regex=r"^/api/v1/(transmissions|templates)"
)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("openapi-transmissions")
    receiver = Receiver()
    port = free_port()
    config = f"""
host-name api.example.test
spool {directory}/spool
<transmissions-api-listener 127.0.0.1:{port}>
</transmissions-api-listener>
<transmissions-api>
  api-key {KEY}
  max-request-size 64K
</transmissions-api>
<virtual-mta-pool pool1>
  virtual-mta vm-a
</virtual-mta-pool>
<virtual-mta vm-a>
  smtp-source-host 127.0.0.1 a.out.test
</virtual-mta>
<domain *>
  smtp-hosts [127.0.0.1]:{receiver.port}
  use-starttls no
</domain>
"""
    try:
        with ServerProcess(directory, config, wait_ports=(port,)):
            yield f"http://127.0.0.1:{port}"
    finally:
        receiver.stop()


@schema.parametrize()
@BOUNDED
def test_transmissions_api_conforms_to_its_document(case: schemathesis.Case, base_url: str) -> None:
    """Every generated request gets a documented status, content type and body; no 500."""
    response = case.call(base_url=base_url, headers={"Authorization": KEY}, timeout=10)
    case.validate_response(response, checks=CHECKS)
