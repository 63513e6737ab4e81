"""SparkPost's Suppression List API on the Transmissions API port: `/api/v1/suppression-list`.

The routes and JSON are SparkPost's, so its clients (the `sparkpost` Python package's
`sp.suppression_list.create/update/delete/get/list`) work unmodified:

* `GET /api/v1/suppression-list?from=&to=&types=&sources=&cursor=&per_page=&limit=`:
  search by `updated` time range (ISO 8601, UTC when no offset), types
  (`transactional`, `non_transactional`) and sources (`Bounce Rule`, `Spam Complaint`,
  `Manually Added`, ...); `{"results": [...], "links": [...], "total_count": n}` with
  one result per type, as SparkPost lists them, and a `next` link while there is more;
* `GET /api/v1/suppression-list/{recipient}`: that recipient's entry, 404 if none;
* `PUT /api/v1/suppression-list/{recipient}` (one) and `PUT /api/v1/suppression-list`
  with `{"recipients": [...]}` (bulk, thousands at once, all or nothing: one bad entry
  refuses the request with a 400 naming it): each entry has `recipient` (or the older
  `email`), `type` (or the older `transactional` / `non_transactional` booleans; both
  types when neither is given), `description`, optionally `source`;
* `DELETE /api/v1/suppression-list/{recipient}`: 204, 404 if there was none.

mtaserver's own addition is `scope` (query parameter or entry field): `global` (the
default, what SparkPost's account-level list is), `domain:<sending domain>` or
`source:<name>` (a `<source>`'s `suppression-lists`). Authorization is any `api-key` of
`<transmissions-api>`, compared in constant time; bodies are read under
`max-request-size`; errors are SparkPost's `{"errors":[{"message","description"}]}`.
Writes are durable (fsync'd, in the thread pool) before the answer.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from klein import Klein
from twisted.web.iweb import IRequest

from mtaserver.config.reload import ConfigHolder
from mtaserver.http.access import api_key_error, form_field
from mtaserver.http.errors import APIError, handle_errors, json_response, read_body, routing_error
from mtaserver.suppression.model import (
    GLOBAL_SCOPE,
    Entry,
    SuppressionError,
    SuppressionSource,
    SuppressionType,
    normalize_scope,
)
from mtaserver.suppression.service import SuppressionService

PATH = "/api/v1/suppression-list"
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_BULK = 100_000  # entries in one bulk PUT (the body limit usually bites first)
IN_THREAD_ABOVE = 256 * 1024  # bulk bodies larger than this are parsed in the thread pool
UPDATED = "Suppression List successfully updated"


def format_time(seconds: int) -> str:
    """SparkPost's timestamps: `2016-05-02T16:29:56+00:00`."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


def parse_time(text: str, what: str) -> int:
    """An ISO 8601 time (no offset: UTC) as epoch seconds, or a 400."""
    try:
        when = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise _bad(f"{what} must be an ISO 8601 time such as 2024-01-31T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0, int(when.timestamp()))


def results_of(entry: Entry) -> list[dict[str, Any]]:
    """An entry as SparkPost shows it: one result per type it covers."""
    return [
        {
            "recipient": entry.recipient,
            "type": word,
            "transactional": word == "transactional",
            "non_transactional": word == "non_transactional",
            "source": entry.source.value,
            "description": entry.description,
            "scope": entry.scope,
            "created": format_time(entry.created),
            "updated": format_time(entry.updated),
        }
        for word in entry.type.words
    ]


def _bad(description: str) -> APIError:
    return APIError(400, "Invalid request", description)


def entry_from_json(
    data: Any, now: int, recipient: str | None = None, scope: str = GLOBAL_SCOPE
) -> Entry:
    """One suppression entry of a PUT body (SparkPost's new or older field names)."""
    if not isinstance(data, dict):
        raise SuppressionError("each entry must be a JSON object")
    address = recipient if recipient is not None else data.get("recipient", data.get("email"))
    if not isinstance(address, str):
        raise SuppressionError("recipient is required")
    kind = data.get("type")
    if kind is not None:
        if not isinstance(kind, str):
            raise SuppressionError("type must be transactional or non_transactional")
        types = SuppressionType.from_word(kind)
    else:
        flags = SuppressionType(0)
        for word, flag in (
            ("transactional", SuppressionType.TRANSACTIONAL),
            ("non_transactional", SuppressionType.NON_TRANSACTIONAL),
        ):
            value = data.get(word)
            if value is not None and not isinstance(value, bool):
                raise SuppressionError(f"{word} must be true or false")
            if value:
                flags |= flag
        types = flags or SuppressionType.BOTH
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuppressionError("description must be text")
    source = data.get("source", SuppressionSource.MANUALLY_ADDED.value)
    if not isinstance(source, str):
        raise SuppressionError("source must be text")
    entry_scope = data.get("scope", scope)
    if not isinstance(entry_scope, str):
        raise SuppressionError("scope must be text")
    return Entry.make(
        address, now=now, scope=entry_scope, type=types, source=source, description=description
    )


def bulk_entries(raw: bytes, now: int, scope: str) -> list[Entry]:
    """The entries of a bulk PUT body, every one checked; a 400 naming the bad ones."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _bad(f"the body is not JSON: {exc}") from None
    entries = body.get("recipients") if isinstance(body, dict) else None
    if not isinstance(entries, list) or not entries:
        raise _bad('the body must be {"recipients": [ ... ]} with at least one entry')
    if len(entries) > MAX_BULK:
        raise _bad(f"at most {MAX_BULK} entries in one request")
    parsed: list[Entry] = []
    problems: list[str] = []
    for index, data in enumerate(entries):
        try:
            parsed.append(entry_from_json(data, now, scope=scope))
        except SuppressionError as exc:
            problems.append(f"recipients[{index}]: {exc}")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise _bad("; ".join(problems[:10]) + more)
    return parsed


class SuppressionAPI:
    """The Klein app mounted at `/api/v1/suppression-list` by `TransmissionsAPI`."""

    app = Klein()

    def __init__(self, holder: ConfigHolder, suppression: SuppressionService) -> None:
        self.holder = holder
        self.suppression = suppression

    @app.route("/", methods=["GET", "PUT"], strict_slashes=False)
    @handle_errors
    async def collection(self, request: IRequest) -> bytes:
        self._authorize(request)
        if request.method == b"PUT":
            return await self._bulk(request)
        return await self._search(request)

    @app.route("/<string:recipient>", methods=["GET", "PUT", "DELETE"])
    @handle_errors
    async def one(self, request: IRequest, recipient: str) -> bytes:
        self._authorize(request)
        scope = self._scope(request)
        if request.method == b"GET":
            try:
                entry = self.suppression.store.get(scope, recipient)
            except SuppressionError as exc:
                raise _bad(str(exc)) from None
            if entry is None:
                raise APIError(404, "Recipient could not be found", recipient[:320])
            return json_response(request, {"results": results_of(entry)})
        if request.method == b"DELETE":
            try:
                removed = await self.suppression.remove(scope, recipient)
            except SuppressionError as exc:
                raise _bad(str(exc)) from None
            if not removed:
                raise APIError(404, "Recipient could not be found", recipient[:320])
            request.setResponseCode(204)
            return b""
        body = self._json_body(request)
        try:
            entry = entry_from_json(body, self._now(), recipient, scope)
        except SuppressionError as exc:
            raise _bad(str(exc)) from None
        await self.suppression.add([entry])
        return json_response(request, {"results": {"message": UPDATED}})

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Any) -> bytes:
        """Anything outside a handler (a route that does not match): SparkPost's shape."""
        return routing_error(request, failure, "suppression-list", "GET, PUT or DELETE")

    # -- the parts ---------------------------------------------------------------------

    def _now(self) -> int:
        return int(self.suppression.clock.seconds())

    def _authorize(self, request: IRequest) -> None:
        refused = api_key_error(request.getHeader(b"authorization"), self.holder.config.api.api_key)
        if refused is not None:
            raise refused

    def _arg(self, request: IRequest, name: str) -> str | None:
        return form_field(request, name, title="Invalid request")

    def _scope(self, request: IRequest) -> str:
        try:
            return normalize_scope(self._arg(request, "scope") or GLOBAL_SCOPE)
        except SuppressionError as exc:
            raise _bad(str(exc)) from None

    def _json_body(self, request: IRequest) -> Any:
        raw = read_body(request, self.holder.config.api.max_request_size)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _bad(f"the body is not JSON: {exc}") from None

    async def _bulk(self, request: IRequest) -> bytes:
        raw = read_body(request, self.holder.config.api.max_request_size)
        scope = self._scope(request)
        now = self._now()
        if len(raw) > IN_THREAD_ABOVE:  # thousands of entries: parse and check off the reactor
            parsed = await self.suppression.run_in_thread(lambda: bulk_entries(raw, now, scope))
        else:
            parsed = bulk_entries(raw, now, scope)
        await self.suppression.add(parsed)
        return json_response(request, {"results": {"message": UPDATED}})

    async def _search(self, request: IRequest) -> bytes:
        criteria: dict[str, Any] = {}
        since, until = self._arg(request, "from"), self._arg(request, "to")
        if since:
            criteria["since"] = parse_time(since, "from")
        if until:
            criteria["until"] = parse_time(until, "to") + 1  # `to` is inclusive
        types = self._arg(request, "types")
        try:
            if types:
                flags = SuppressionType(0)
                for word in types.split(","):
                    flags |= SuppressionType.from_word(word)
                criteria["types"] = flags
            sources = self._arg(request, "sources")
            if sources:
                criteria["sources"] = [SuppressionSource.from_word(w) for w in sources.split(",")]
            scope = self._arg(request, "scope")
            if scope:
                criteria["scope"] = normalize_scope(scope)
        except SuppressionError as exc:
            raise _bad(str(exc)) from None
        size = self._arg(request, "per_page") or self._arg(request, "limit")
        if size is not None and (not size.isdigit() or not 1 <= int(size) <= MAX_PAGE):
            raise _bad(f"per_page must be a number from 1 to {MAX_PAGE}")
        limit = int(size) if size else DEFAULT_PAGE
        cursor = self._arg(request, "cursor")
        try:
            page = await self.suppression.search(
                cursor=None if cursor in (None, "initial") else cursor, limit=limit, **criteria
            )
        except SuppressionError as exc:
            raise _bad(str(exc)) from None
        results = [result for entry in page.entries for result in results_of(entry)]
        links = []
        if page.cursor is not None:
            query = {k.decode(): bytes(v[0]).decode() for k, v in request.args.items() if v}
            query["cursor"] = page.cursor
            links.append({"href": f"{PATH}?{urllib.parse.urlencode(query)}", "rel": "next"})
        body: dict[str, Any] = {"results": results, "links": links}
        if page.cursor is None and cursor in (None, "initial"):
            body["total_count"] = len(results)
        return json_response(request, body)
