"""Which files are the server's config files, and the blocking helpers that read and commit them.

The rules live here, beside the config they describe, so both the Configuration API
(`http/configfile.py`) and the `test config` command use one definition:

* a *config file* is one the running config was read from, or a `*.conf` file under
  the main config's directory (a new file for an `include` glob); keys, certificates,
  accounting and other data files beside it are never readable or writable (refused
  with `PathRefused`);
* a name is checked before use: no absolute names, no `..`, no NUL byte, and no
  symlink that leads outside the config directory;
* a problem found in a file outside the config directory (an `include /etc/shadow`)
  is reported without its text, which could quote that file (`conceal_outside`);
* a commit validates the new set of files as a whole in a mirror directory before
  writing anything, keeps a `********` secret at its value on disk, and writes each
  file atomically through a `.tmp-*` name; `.tmp-*` files a crash left behind are
  removed at start and before each commit (`remove_stale_temporaries`).

These are plain blocking functions: callers on the reactor run them in a thread.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping

from mtaserver.config.grammar import ConfigError
from mtaserver.config.load import load_config
from mtaserver.config.model import Config
from mtaserver.config.redact import RedactionError, redact_config_text, restore_secrets
from mtaserver.fsutil import atomic_write


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
    """`fsutil.atomic_write` through a `.tmp-*` name, so a crash's leftover is found.

    A new file is created 0600 (it may hold secrets); a replaced one keeps its mode.
    """
    directory = os.path.dirname(path)
    temporary = os.path.join(directory, TEMPORARY_PREFIX + secrets.token_hex(8))
    mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o600
    atomic_write(path, content, temporary=temporary, permissions=mode, make_directory=True)


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
