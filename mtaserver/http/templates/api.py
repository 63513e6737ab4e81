"""SparkPost's Templates API on the Transmissions API port: `/api/v1/templates`.

The routes and JSON are SparkPost's, so its clients (the `sparkpost` package's
`sp.templates.create/update/get/list/delete/preview`) work unmodified:

* `POST /api/v1/templates`: create (`id` or one made from `name`; `published`
  false makes a draft); `{"results": {"id": ...}}`, 409 when the id is taken;
* `GET /api/v1/templates`: every template, summarised;
* `GET /api/v1/templates/{id}?draft=true|false`: the draft, the published or (no
  `draft`) the latest version, 404 when there is none;
* `PUT /api/v1/templates/{id}?update_published=true|false`: change the draft (or
  the published version); `published: true` publishes;
* `DELETE /api/v1/templates/{id}`: every version;
* `POST /api/v1/templates/{id}/preview?draft=`: the content rendered with the
  body's `substitution_data`, as a transmission would render it.

A transmission uses one with `content.template_id` (the published version, or the
draft with `content.use_draft_template: true`). Authorization is any `api-key` of
`<transmissions-api>`; bodies are read under `max-request-size`; files are written
durably in the thread pool (`store`). Errors are SparkPost's
`{"errors":[{"message","description"}]}`: 400 malformed, 403 key, 404, 409, 413,
415 not JSON, 422 a field this server does not support (named).
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from mtaserver.config.reload import ConfigHolder
from mtaserver.http.access import api_key_error, form_field
from mtaserver.http.content import Content, ContentError, personal_headers, render
from mtaserver.http.errors import (
    APIError,
    handle_errors,
    json_response,
    read_body,
    routing_error,
)
from mtaserver.http.templates.model import (
    bad_request,
    check_unknown,
    detail,
    new_record,
    summary,
    updated_record,
    valid_id,
    version_of,
)
from mtaserver.http.templates.store import (
    MAX_TEMPLATES,
    TemplateExists,
    TemplateStore,
    TooManyTemplates,
)
from mtaserver.http.transmissions.parse import parse_json

log = Logger()

PATH = "/api/v1/templates"


def not_found(template_id: str) -> APIError:
    shown = template_id[:64].encode("unicode_escape").decode("ascii")
    return APIError(404, "Resource could not be found", f"no template {shown!r}")


class TemplatesAPI:
    """The Klein app mounted at `/api/v1/templates` by `TransmissionsAPI`."""

    app = Klein()

    def __init__(self, holder: ConfigHolder, store: TemplateStore, clock: IReactorTime) -> None:
        self.holder = holder
        self.store = store
        self.clock = clock

    @app.route("/", methods=["GET", "POST"], strict_slashes=False)
    @handle_errors
    async def collection(self, request: IRequest) -> bytes:
        self._authorize(request)
        if request.method == b"GET":
            records = await self.store.list()
            return json_response(request, {"results": [summary(r) for r in records]})
        record = new_record(self._body(request), self.clock.seconds())
        try:
            await self.store.create(record)
        except TemplateExists:
            raise APIError(
                409, "Resource conflict", f"a template with id {record['id']!r} exists"
            ) from None
        except TooManyTemplates:
            raise APIError(
                422, "Too many templates", f"at most {MAX_TEMPLATES} templates are kept"
            ) from None
        log.info("template {id} created", id=record["id"])
        return json_response(request, {"results": {"id": record["id"]}})

    @app.route("/<string:template_id>", methods=["GET", "PUT", "DELETE"])
    @handle_errors
    async def one(self, request: IRequest, template_id: str) -> bytes:
        self._authorize(request)
        if not valid_id(template_id):
            raise not_found(template_id)
        if request.method == b"GET":
            record = await self.store.get(template_id)
            shown = detail(record, self._flag(request, "draft")) if record is not None else None
            if shown is None:
                raise not_found(template_id)
            return json_response(request, {"results": shown})
        if request.method == b"DELETE":
            if not await self.store.delete(template_id):
                raise not_found(template_id)
            log.info("template {id} deleted", id=template_id)
            return json_response(request, {})
        body = self._body(request)
        update_published = self._flag(request, "update_published") is True
        now = self.clock.seconds()
        updated = await self.store.update(
            template_id, lambda record: updated_record(record, body, update_published, now)
        )
        if updated is None:
            raise not_found(template_id)
        log.info("template {id} updated", id=template_id)
        return json_response(request, {"results": {"id": template_id}})

    @app.route("/<string:template_id>/preview", methods=["POST"])
    @handle_errors
    async def preview(self, request: IRequest, template_id: str) -> bytes:
        self._authorize(request)
        record = await self.store.get(template_id) if valid_id(template_id) else None
        version = version_of(record, self._flag(request, "draft")) if record else None
        if version is None:
            raise not_found(template_id)
        body = self._body(request)
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        check_unknown(body, {"substitution_data"}, "")
        data = body.get("substitution_data") or {}
        if not isinstance(data, dict):
            raise bad_request("substitution_data must be an object")
        return json_response(request, {"results": _rendered(version["content"], data)})

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Any) -> bytes:
        """Anything outside a handler (a route that does not match): SparkPost's shape."""
        return routing_error(request, failure, "templates", "GET, POST, PUT or DELETE")

    # -- the parts ---------------------------------------------------------------------

    def _authorize(self, request: IRequest) -> None:
        refused = api_key_error(request.getHeader(b"authorization"), self.holder.config.api.api_key)
        if refused is not None:
            raise refused

    def _flag(self, request: IRequest, name: str) -> bool | None:
        value = form_field(request, name, title="Invalid request")
        if value is None:
            return None
        if value.lower() not in ("true", "false"):
            raise bad_request(f"{name} must be true or false")
        return value.lower() == "true"

    def _body(self, request: IRequest) -> Any:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            raise APIError(415, "Unsupported media type", "send Content-Type: application/json")
        return parse_json(read_body(request, self.holder.config.api.max_request_size))


def _rendered(content: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """A template's content with `data` substituted, as SparkPost's preview shows it."""
    if "email_rfc822" in content:
        return {"email_rfc822": content["email_rfc822"]}
    try:
        parsed = Content.parse(content, smtputf8=True)
        fields = dict(personal_headers(parsed, data, None))
    except ContentError as exc:
        raise bad_request(str(exc)) from None
    sender: dict[str, str] = {"email": parsed.from_email}
    if parsed.from_name is not None:
        sender["name"] = render(parsed.from_name, data)
    shown: dict[str, Any] = {"from": sender, "subject": fields["Subject"]}
    if parsed.reply_to is not None:
        shown["reply_to"] = fields["Reply-To"]
    if parsed.headers:
        shown["headers"] = {name: fields[name] for name, _ in parsed.headers}
    if parsed.text is not None:
        shown["text"] = render(parsed.text, data)
    if parsed.html is not None:
        shown["html"] = render(parsed.html, data, escape_html=True)
    return shown
