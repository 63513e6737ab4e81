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

Reading is `admin` only, and shows every secret as `********` (`redact.py`); a commit
that keeps a `********` placeholder keeps the value on disk at that place. Only config
files may be named: the files the running config was read from, and `*.conf` files
under its directory; never keys, certificates, accounting or other data files beside
it (403). A validation problem in a file outside the config directory (an
`include /etc/shadow`) is reported without its text. A commit writes `.tmp-*` files
next to the targets; any left by a crash are removed at start and before each commit.

A commit does not reload; the `reload` command does. The file helpers here are plain
blocking functions (the API runs them in a thread) so `commands.py` shares them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

from klein import Klein
from twisted.internet import defer
from twisted.web.iweb import IRequest

from mtaserver.config.grammar import ConfigError
from mtaserver.config.load import load_config
from mtaserver.config.model import Config
from mtaserver.config.reload import ConfigHolder
from mtaserver.http.access import Access, error_body, handle_mgmt_errors
from mtaserver.http.command import require_level
from mtaserver.http.errors import APIError, json_response, read_body
from mtaserver.http.redact import RedactionError, redact_config_text, restore_secrets

RunInThread = Callable[[Callable[[], Any]], "defer.Deferred[Any]"]


class PathRefused(Exception):
    """A file name outside the config directory (or otherwise unusable)."""


def config_dir(config: Config) -> str:
    """The real directory of the main config file; every editable file lies under it."""
    return os.path.dirname(os.path.realpath(config.path))


def resolve_name(directory: str, name: str) -> str:
    """The real path of `name` relative to `directory`, or `PathRefused`.

    Refuses empty names, absolute names, `..` components, NUL bytes and names whose
    real path (after following symlinks) is not inside `directory`.
    """
    if not name or "\0" in name:
        raise PathRefused("a file name is required")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise PathRefused(f"{name}: absolute file names are not allowed")
    parts = name.replace("\\", "/").split("/")
    if any(part == ".." for part in parts):
        raise PathRefused(f"{name}: '..' is not allowed in a file name")
    base = os.path.realpath(directory)
    real = os.path.realpath(os.path.join(base, name))
    if real == base or os.path.commonpath([base, real]) != base:
        raise PathRefused(f"{name}: not inside the config directory")
    return real


TEMPORARY_PREFIX = ".tmp-"
CONFIG_SUFFIX = ".conf"


def config_file_path(config: Config, name: str) -> str:
    """The real path of config file `name`, or `PathRefused` for anything else.

    A config file is one the running config was read from, or a `*.conf` file under
    the config directory (a new file for an `include` glob); keys, certificates and
    data files beside the config are never readable or writable through the API.
    """
    path = resolve_name(config_dir(config), name)
    known = {os.path.realpath(p) for p in config.files}
    if path not in known and not path.endswith(CONFIG_SUFFIX):
        raise PathRefused(f"{name}: not a config file (only the config's files and *.conf)")
    return path


def remove_stale_temporaries(config: Config) -> list[str]:
    """Delete `.tmp-*` files a crashed commit left in the config's directories; their paths."""
    directories = {config_dir(config)} | {
        os.path.dirname(os.path.realpath(p)) for p in config.files
    }
    removed = []
    for directory in sorted(directories):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            if name.startswith(TEMPORARY_PREFIX) and os.path.isfile(path):
                try:
                    os.unlink(path)
                except OSError:
                    continue
                removed.append(path)
    return removed


def listed_files(config: Config) -> list[str]:
    """The config's files as names relative to its directory (those inside it)."""
    base = config_dir(config)
    names = []
    for path in config.files:
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) == base:
            names.append(os.path.relpath(real, base))
    return names


def read_file(config: Config, name: str) -> str:
    """Config file `name` with its secrets shown as `********`."""
    path = config_file_path(config, name)
    with open(path, encoding="utf-8") as stream:
        return redact_config_text(stream.read())


def conceal_outside(problem: str, base: str, known: frozenset[str] = frozenset()) -> str:
    """A problem `FILE:LINE: text`, without its text unless FILE is a config file.

    A config file lies under `base` and is a `*.conf` or one of `known`; the text of a
    problem elsewhere (an `include /etc/shadow`, a key file) may quote its contents.
    """
    file = problem.split(":", 1)[0]
    real = os.path.realpath(file) if file else ""
    if (
        real
        and os.path.commonpath([base, real]) == base
        and (real.endswith(CONFIG_SUFFIX) or real in known)
    ):
        return problem
    return f"{file}: is not a config file of this server (its contents are not shown)"


def validate_files(config: Config, new_files: Mapping[str, str]) -> list[str]:
    """Load the config as it would be with `new_files` written; its problems, real names.

    `new_files` maps real paths (from `resolve_name`) to their new text.
    """
    base = config_dir(config)
    mirror = tempfile.mkdtemp(prefix="mtaserver-config-")
    try:
        for path in config.files:
            real = os.path.realpath(path)
            if os.path.commonpath([base, real]) == base and os.path.isfile(real):
                target = os.path.join(mirror, os.path.relpath(real, base))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(real, target)
        for path, content in new_files.items():
            target = os.path.join(mirror, os.path.relpath(path, base))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8") as stream:
                stream.write(content)
        main = os.path.join(mirror, os.path.relpath(os.path.realpath(config.path), base))
        try:
            load_config(main)
        except ConfigError as exc:
            real_mirror = os.path.realpath(mirror)
            problems = []
            for problem in exc.problems:
                text = str(problem)
                real_file = os.path.realpath(problem.file)
                inside = os.path.commonpath([real_mirror, real_file]) == real_mirror
                for prefix in (real_mirror, mirror):
                    text = text.replace(prefix, base)
                problems.append(text if inside else conceal_outside(text, base))
            return list(dict.fromkeys(problems))
        return []
    finally:
        shutil.rmtree(mirror, ignore_errors=True)


def write_atomically(path: str, content: str) -> None:
    """Temporary file in the same directory, fsync, rename, fsync the directory."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        if os.path.exists(path):
            os.chmod(temporary, os.stat(path).st_mode & 0o7777)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def restore_redacted(new_files: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Each file with its `********` secrets replaced by the values on disk; and problems."""
    restored: dict[str, str] = {}
    problems: list[str] = []
    for path, content in new_files.items():
        try:
            with open(path, encoding="utf-8") as stream:
                old: str | None = stream.read()
        except (OSError, UnicodeDecodeError):
            old = None
        try:
            restored[path] = restore_secrets(content, old)
        except RedactionError as exc:
            problems.append(f"{path}:{exc}")
    return restored, problems


def commit_files(config: Config, new_files: Mapping[str, str]) -> list[str]:
    """Validate, then (only if valid) write every file; the problems, or [] when written.

    A secret left as `********` keeps its value on disk (`redact.restore_secrets`).
    """
    remove_stale_temporaries(config)
    new_files, problems = restore_redacted(new_files)
    if problems:
        return problems
    problems = validate_files(config, new_files)
    if problems:
        return problems
    for path, content in new_files.items():
        write_atomically(path, content)
    return []


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode())
    if not values:
        return None
    value = values[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise APIError(400, "Invalid encoding", f"{name} is not UTF-8") from None


def _format(request: IRequest) -> str:
    fmt = _arg(request, "format") or "json"
    if fmt not in ("json", "json-text"):
        raise APIError(400, "Invalid format", "format must be json or json-text")
    return fmt


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
        _format(request)
        op = _arg(request, "op")
        config = self.holder.config
        if op == "listconfigfiles":  # names only: monitor may see them
            return json_response(request, {"status": "success", "data": listed_files(config)})
        if op == "read":
            await require_level(self.access, request, "admin")  # a file may hold secrets
            name = _arg(request, "filename") or ""
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
        _format(request)
        if _arg(request, "op") != "commit":
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
            name = _arg(request, f"file.{index}.name")
            op = _arg(request, f"file.{index}.op") or "write"
            content = _arg(request, f"file.{index}.content")
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
