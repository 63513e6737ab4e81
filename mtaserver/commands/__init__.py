"""The operator commands: grammar (`grammar`), running (`run`), text output (`render`)."""

from mtaserver.commands.grammar import (
    DEFAULT_LIST_MAX,
    SPECS,
    Command,
    CommandError,
    CommandResult,
    Spec,
    parse,
    usage,
)
from mtaserver.commands.render import render_text, table
from mtaserver.commands.run import Commands, version

__all__ = [
    "DEFAULT_LIST_MAX",
    "SPECS",
    "Command",
    "CommandError",
    "CommandResult",
    "Commands",
    "Spec",
    "parse",
    "render_text",
    "table",
    "usage",
    "version",
]
