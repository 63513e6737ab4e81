"""One typed error for every HTTP API, translated to JSON in one place.

Handlers raise `APIError(code, message, description)`; `handle_errors` turns it into
the SparkPost/PowerMTA shape `{"errors":[{"message":..,"description":..}]}` with the
status code, and turns anything unexpected into a logged 500 of the same shape, so a
client never sees a traceback. `read_body` enforces a size limit on every body read.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.logger import Logger
from twisted.web.iweb import IRequest

log = Logger()


class APIError(Exception):
    def __init__(self, code: int, message: str, description: str = "") -> None:
        super().__init__(f"{code} {message}: {description}")
        self.code = code
        self.message = message
        self.description = description

    def body(self) -> bytes:
        error = {"message": self.message}
        if self.description:
            error["description"] = self.description
        return json.dumps({"errors": [error]}).encode()


def json_response(request: IRequest, data: Any, code: int = 200) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data).encode()


Handler = Callable[..., Awaitable[Any] | Any]


def handle_errors(handler: Handler) -> Callable[..., Awaitable[Any]]:
    """Wrap a Klein handler (sync or async) so errors become JSON error bodies."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: IRequest, *args: Any, **kwargs: Any) -> Any:
        try:
            result = handler(self, request, *args, **kwargs)
            if hasattr(result, "__await__"):
                result = await result
            return result
        except APIError as error:
            request.setResponseCode(error.code)
            request.setHeader(b"Content-Type", b"application/json")
            return error.body()
        except Exception:
            log.failure("unhandled error in {path}", path=request.uri)
            internal = APIError(500, "Internal server error", "see the server log")
            request.setResponseCode(500)
            request.setHeader(b"Content-Type", b"application/json")
            return internal.body()

    return wrapper


def routing_error(request: IRequest, failure: Any, resource: str, methods: str) -> bytes:
    """A failure outside any handler, for a Klein app's `handle_errors(Exception)`.

    No route matched (404 naming the `resource`), the method is not routed (405
    listing `methods`), or something else (a logged 500): SparkPost's error shape.
    """
    from werkzeug.exceptions import MethodNotAllowed, NotFound

    if failure.check(NotFound):
        error = APIError(404, "Not found", f"no such {resource} resource")
    elif failure.check(MethodNotAllowed):
        error = APIError(405, "Method not allowed", f"use {methods}")
    else:
        log.failure("{api} API error", failure, api=resource)
        error = APIError(500, "Internal server error", "see the server log")
    request.setResponseCode(error.code)
    request.setHeader(b"Content-Type", b"application/json")
    return error.body()


def read_body(request: IRequest, limit: int) -> bytes:
    """The request body, or a 413 when it is larger than `limit` bytes."""
    length = request.getHeader(b"content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, "Request body too large", f"the limit is {limit} bytes")
    content = request.content
    content.seek(0)
    data: bytes = content.read(limit + 1)
    if len(data) > limit:
        raise APIError(413, "Request body too large", f"the limit is {limit} bytes")
    return data
