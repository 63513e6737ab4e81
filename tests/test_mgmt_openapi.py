"""schemathesis against the real management port, driven by our own OpenAPI document.

Bounded: a few examples per operation, a deadline, loopback only, on a server of its
own (generated commands run as admin and may pause or delete queues).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from mgmt_client import API_KEY, MgmtServer
from openapi_checks import BOUNDED, CHECKS

from mtaserver.http.openapi import document

schema = schemathesis.openapi.from_dict(document()).include(
    path_regex=(
        r"^/(|command|configFile|status|queues|domains|vmtas|jobs|metrics"
        r"|queueDetail|domainDetail|vmtaDetail|jobDetail|listQueue)$"
    )
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    mgmt = MgmtServer(tmp_path_factory.mktemp("openapi"), mx_port=9).start()
    yield mgmt
    mgmt.stop()


def test_served_document_is_ours(server: MgmtServer) -> None:
    """The mgmt port serves exactly the document the fuzzing below is generated from."""
    status, served = server.call("GET", "/api/v1/openapi.json")
    assert status == 200 and served == document()


@schema.parametrize()
@BOUNDED
def test_api_conforms_to_its_document(case: schemathesis.Case, server: MgmtServer) -> None:
    """Every generated request gets a documented status, content type and body; no 500."""
    response = case.call(base_url=server.url, headers={"X-API-Key": API_KEY}, timeout=10)
    case.validate_response(response, checks=CHECKS)
