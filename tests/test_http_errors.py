"""`mtaserver.http.errors.routing_error`: what a Klein API answers outside its handlers."""

from __future__ import annotations

import json

import pytest
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from mtaserver.http.errors import routing_error


@pytest.mark.parametrize(
    ("exception", "code", "message", "description"),
    [
        (NotFound(), 404, "Not found", "no such templates resource"),
        (MethodNotAllowed(), 405, "Method not allowed", "use GET, PUT or DELETE"),
        (RuntimeError("boom"), 500, "Internal server error", "see the server log"),
    ],
)
def test_routing_error_is_sparkposts_json_error(
    exception: Exception, code: int, message: str, description: str
) -> None:
    """No route: 404 naming the resource; wrong method: 405 listing methods; else a 500."""
    request = DummyRequest([b""])
    try:
        raise exception
    except Exception:
        failure = Failure()
    body = routing_error(request, failure, "templates", "GET, PUT or DELETE")
    assert request.responseCode == code
    assert request.responseHeaders.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert json.loads(body) == {"errors": [{"message": message, "description": description}]}
    assert "boom" not in body.decode()
