"""The Command API's XML formats (`format=xml`, `xml-text`), on the real server.

`POST /command` answers PowerMTA's XML envelope with the same data as its JSON, or
with mtactl's text; a bad command is an XML error when XML was asked for.
"""

from __future__ import annotations

import http.client
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from mgmt_client import API_KEY, MgmtServer, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    mgmt = MgmtServer(tmp_path_factory.mktemp("command-xml"), mx_port=9).start()
    yield mgmt
    mgmt.stop()


def post(server: MgmtServer, command: str, fmt: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.mgmt, timeout=30)
    body = urllib.parse.urlencode({"command": command, "format": fmt})
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-API-Key": API_KEY}
    try:
        connection.request("POST", "/command", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


def test_command_xml_has_the_json_data(server: MgmtServer) -> None:
    """format=xml: `<rsp><data>` holds the same rows as the JSON, `<succ/>` closes it."""
    assert server.command("pause queue xmlcmd.test")[0] == 200
    server.send(["a@xmlcmd.test", "b@xmlcmd.test"])

    def row() -> dict | None:
        reply = server.command("show queues")[1]
        return next((r for r in reply["data"] if r["name"] == "xmlcmd.test/{default}"), None)

    assert wait_until(lambda: row() is not None)
    status, content_type, body = post(server, "show queues", "xml")
    assert status == 200 and content_type.startswith("application/xml")
    root = ET.fromstring(body)
    assert root.tag == "rsp" and root.find("succ") is not None
    names = [item.findtext("name") for item in root.findall("data/item")]
    assert "xmlcmd.test/{default}" in names
    status, _, body = post(server, "show status", "xml")
    assert status == 200 and ET.fromstring(body).find("data") is not None


def test_command_xml_text_and_errors(server: MgmtServer) -> None:
    """xml-text carries mtactl's text; an unknown command is a 400 `<rsp><error>`."""
    status, _, body = post(server, "show version", "xml-text")
    assert status == 200 and "mtaserver" in (ET.fromstring(body).findtext("data") or "")
    status, content_type, body = post(server, "frobnicate <now>", "xml")
    assert status == 400 and content_type.startswith("application/xml")
    root = ET.fromstring(body)
    assert root.find("fail") is not None and "unknown command" in (
        root.findtext("error/message") or ""
    )
    status, _, body = post(server, "show version", "yaml")
    assert status == 400 and b"format must be" in body
