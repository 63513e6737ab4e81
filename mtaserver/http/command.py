"""The Command API: `POST /command` runs one operator command (the `mtactl` language).

Form fields (urlencoded, or multipart/form-data as `curl -F` sends them): `command`,
`input` (bulk input of a command: the CSV of `suppression import`),
and `format` = `json` (structured `data`) or `json-text` (`data` is the text table
`mtactl` prints), or `xml`/`xml-text`, the same in PowerMTA's XML envelope
(`<rsp><data>...</data><succ/></rsp>`, `xmlout.py`). The reply is PowerMTA's envelope,
`{"status":"success"|"error","data":...,"message":...}`; an unknown command or a bad
argument is a 400 whose message says what is wrong. Access is checked before the
command runs: `monitor` may run reading commands, only `admin` changing ones.
"""

from __future__ import annotations

import attrs
from klein import Klein
from twisted.web.iweb import IRequest

from mtaserver.commands import CommandError, Commands, parse, render_text
from mtaserver.http import xmlout
from mtaserver.http.access import (
    Access,
    error_body,
    form_field,
    handle_mgmt_errors,
    require_level,
    response_format,
)
from mtaserver.http.errors import APIError, json_response, read_body

MAX_COMMAND_BYTES = 64 * 1024


class CommandAPI:
    """`POST /command`."""

    app = Klein()

    def __init__(self, commands: Commands, access: Access) -> None:
        self.commands = commands
        self.access = access

    @app.route("/command", methods=["POST"])
    @handle_mgmt_errors
    async def command(self, request: IRequest) -> bytes:
        await require_level(self.access, request, "monitor")
        # the body may carry a bulk `input` (a suppression CSV) up to http-mgmt-max-request-size
        read_body(request, self.commands.holder.config.settings.http_mgmt_max_request_size)
        fmt = response_format(request, xml=True)
        text = form_field(request, "command")
        if text is None or not text.strip():
            raise APIError(400, "Missing command", "the form field 'command' is required")
        if len(text) > MAX_COMMAND_BYTES:
            raise APIError(413, "Command too long", f"the limit is {MAX_COMMAND_BYTES} bytes")
        try:
            parsed = attrs.evolve(parse(text), input=form_field(request, "input"))
            await require_level(self.access, request, parsed.level)
            result = await self.commands.run(parsed)
        except CommandError as exc:
            if fmt.startswith("xml"):
                return xmlout.error_reply(request, 400, exc.message)
            return json_response(
                request, error_body(APIError(400, exc.message), data=exc.data), 400
            )
        data = result.data
        if fmt.endswith("-text"):
            errors = "errors" in parsed.options  # --errors: error texts in full
            data = render_text(result.command, result.data, result.message, errors)
        if fmt.startswith("xml"):  # the same, in PowerMTA's XML envelope
            return xmlout.reply(request, data, result.message)
        return json_response(
            request, {"status": "success", "data": data, "message": result.message}
        )
