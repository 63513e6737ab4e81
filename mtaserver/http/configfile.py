"""The Configuration API: read, list and commit the server's config files.

`GET /configFile?op=listconfigfiles&format=json` lists the files the running config
was read from (`Config.files`), `GET /configFile?op=read&filename=F` returns one, and
`POST /configFile` (multipart or urlencoded: `op=commit`, `file.N.name`,
`file.N.op=write`, `file.N.content`) replaces some of them.

Beyond PowerMTA, a commit is safe:

* only files under the main config's directory may be named: absolute names, `..`
  and symlinks that lead outside are refused with 403;
* the new set of files is validated as a whole before anything is written: the
  config directory's files are mirrored into a temporary directory with the new
  contents laid over them and `load_config` runs there; any problem is returned as
  `FILE:LINE: message` with the real file names, and nothing changes;
* each file is written atomically (temporary file, fsync, rename, fsync of the
  directory) in a thread, and commits are serialised.

Reading is `admin` only, and shows every secret as `********` (`config/redact.py`); a commit
that keeps a `********` placeholder keeps the value on disk at that place. Only config
files may be named: the files the running config was read from, and `*.conf` files
under its directory; never keys, certificates, accounting or other data files beside
it (403). A validation problem in a file outside the config directory (an
`include /etc/shadow`) is reported without its text. A commit writes `.tmp-*` files
next to the targets; any left by a crash are removed at start and before each commit.

A commit does not reload; the `reload` command does. The rules and the blocking file
helpers live in `mtaserver.config.files` (the API runs them in a thread).
"""

from __future__ import annotations

from klein import Klein
from twisted.internet import defer
from twisted.web.iweb import IRequest

from mtaserver.config.files import (
    PathRefused,
    commit_files,
    config_file_path,
    listed_files,
    read_file,
    remove_stale_temporaries,
)
from mtaserver.config.reload import ConfigHolder
from mtaserver.http.access import (
    Access,
    error_body,
    form_field,
    handle_mgmt_errors,
    require_level,
    response_format,
)
from mtaserver.http.errors import APIError, json_response, read_body
from mtaserver.runtime import RunInThread


class ConfigFileAPI:
    """`/configFile`: list (monitor), read and commit (admin: a file holds secrets)."""

    app = Klein()

    def __init__(self, holder: ConfigHolder, access: Access, run_in_thread: RunInThread) -> None:
        self.holder = holder
        self.access = access
        self.run_in_thread = run_in_thread
        self._lock = defer.DeferredLock()
        remove_stale_temporaries(holder.config)  # at start, before the reactor runs

    @app.route("/configFile", methods=["GET"])
    @handle_mgmt_errors
    async def get(self, request: IRequest) -> bytes:
        await require_level(self.access, request, "monitor")
        response_format(request)
        op = form_field(request, "op")
        config = self.holder.config
        if op == "listconfigfiles":  # names only: monitor may see them
            return json_response(request, {"status": "success", "data": listed_files(config)})
        if op == "read":
            await require_level(self.access, request, "admin")  # a file may hold secrets
            name = form_field(request, "filename") or ""
            try:
                text = await self.run_in_thread(lambda: read_file(config, name))
            except PathRefused as exc:
                raise APIError(403, "Forbidden file name", str(exc)) from None
            except FileNotFoundError:
                raise APIError(404, "No such file", name) from None
            except (OSError, UnicodeDecodeError) as exc:
                raise APIError(400, "Cannot read the file", str(exc)) from None
            return json_response(request, {"status": "success", "data": text})
        raise APIError(
            400, "Invalid op", "op must be read or listconfigfiles (GET) or commit (POST)"
        )

    @app.route("/configFile", methods=["POST"])
    @handle_mgmt_errors
    async def post(self, request: IRequest) -> bytes:
        await require_level(self.access, request, "admin")
        read_body(request, self.holder.config.settings.http_mgmt_max_request_size)
        response_format(request)
        if form_field(request, "op") != "commit":
            raise APIError(400, "Invalid op", "POST /configFile takes op=commit")
        config = self.holder.config
        new_files: dict[str, str] = {}
        names: dict[str, str] = {}
        indexes = sorted(
            {
                key.decode("utf-8", "replace").split(".")[1]
                for key in request.args
                if key.startswith(b"file.") and key.count(b".") == 2
            }
        )
        if not indexes:
            raise APIError(400, "No files", "a commit needs file.N.name and file.N.content")
        for index in indexes:
            name = form_field(request, f"file.{index}.name")
            op = form_field(request, f"file.{index}.op") or "write"
            content = form_field(request, f"file.{index}.content")
            if name is None or content is None:
                raise APIError(400, "Incomplete file", f"file.{index} needs name and content")
            if op != "write":
                raise APIError(400, "Invalid file op", f"file.{index}.op must be write")
            try:
                path = config_file_path(config, name)
            except PathRefused as exc:
                raise APIError(403, "Forbidden file name", str(exc)) from None
            if path in new_files:
                raise APIError(400, "Duplicate file", f"{name} is named twice")
            new_files[path] = content
            names[path] = name
        await self._lock.acquire()
        try:
            problems = await self.run_in_thread(lambda: commit_files(config, new_files))
        finally:
            self._lock.release()
        if problems:
            return json_response(
                request,
                error_body(
                    APIError(
                        400,
                        "Invalid configuration",
                        f"{len(problems)} error(s), nothing was written: " + "; ".join(problems),
                    ),
                    data=problems,
                ),
                400,
            )
        return json_response(
            request,
            {
                "status": "success",
                "message": f"wrote {len(new_files)} file(s); run 'reload' to use them",
                "data": sorted(names.values()),
            },
        )
