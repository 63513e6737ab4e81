"""The operator command language: its grammar, shared by `POST /command` and `mtactl`.

    show status | show queues [--paused] | show domains | show vmtas | show jobs
    show settings | show version
    pause queue D/V | resume queue D/V | schedule D/V
    pause job JOBID | resume job JOBID
    set queue --mode=backoff|normal D/V | set priority --queue=D/V N
    show disabled sources [D/V] | enable source D/V
    delete --queue=D/V [--jobId=J] | list --queue=D/V [--max=N]
    reload | test config [FILE] | rotate acct | rotate log | reset counters
    suppression show [RECIPIENT] [--scope=S] | suppression export [--scope=S]
    suppression add RECIPIENT [--scope=S] [--type=T] [--description=TEXT]
    suppression remove RECIPIENT [--scope=S] | suppression import [--scope=S] (CSV input)

`parse` turns a line into a `Command`, or raises a `CommandError` naming what is
wrong, before anything runs. Each command states the access level it needs
(`monitor` for reading, `admin` for changing anything), so the HTTP layer checks
access between parsing and running.

Queue patterns are `domain/vmta`, a bare `domain` meaning every vmta, with `*` and
`?` wildcards (`sink.test/*`, `*/vmta1`, `*`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from typing import Any

import attrs

QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_.*?\-]+(/[A-Za-z0-9_.*?{}\-]+)?")
#: Longest job id a command takes (the Transmissions API's `campaign_id` limit).
MAX_JOB_ID = 256
DEFAULT_LIST_MAX = 1000


class CommandError(Exception):
    """A command that could not run: unknown, bad arguments, or a failure (HTTP 400)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


@attrs.frozen
class Spec:
    """A command's grammar: its options, positional arguments and access level."""

    words: tuple[str, ...]
    level: str
    usage: str
    options: Mapping[str, str] = attrs.field(factory=dict)  # name -> "flag" | "value"
    required: tuple[str, ...] = ()
    positional: tuple[int, int] = (0, 0)  # min, max


SPECS: tuple[Spec, ...] = (
    Spec(("show", "status"), "monitor", "show status"),
    Spec(("show", "queues"), "monitor", "show queues [--paused]", {"paused": "flag"}),
    Spec(("show", "domains"), "monitor", "show domains"),
    Spec(("show", "vmtas"), "monitor", "show vmtas"),
    Spec(("show", "jobs"), "monitor", "show jobs"),
    Spec(("show", "settings"), "monitor", "show settings"),
    Spec(("show", "version"), "monitor", "show version"),
    Spec(("pause", "queue"), "admin", "pause queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("resume", "queue"), "admin", "resume queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("pause", "job"), "admin", "pause job JOBID", positional=(1, 1)),
    Spec(("resume", "job"), "admin", "resume job JOBID", positional=(1, 1)),
    Spec(("schedule",), "admin", "schedule DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(
        ("set", "queue"),
        "admin",
        "set queue --mode=backoff|normal DOMAIN[/VMTA]",
        {"mode": "value"},
        ("mode",),
        (1, 1),
    ),
    Spec(
        ("set", "priority"),
        "admin",
        "set priority --queue=DOMAIN[/VMTA] NUMBER (0-100)",
        {"queue": "value"},
        ("queue",),
        (1, 1),
    ),
    Spec(
        ("show", "disabled", "sources"),
        "monitor",
        "show disabled sources [DOMAIN[/VMTA]]",
        positional=(0, 1),
    ),
    Spec(("enable", "source"), "admin", "enable source DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(
        ("delete",),
        "admin",
        "delete --queue=DOMAIN[/VMTA] [--jobId=JOB]",
        {"queue": "value", "jobId": "value"},
        ("queue",),
    ),
    Spec(
        ("list",),
        "monitor",
        "list --queue=DOMAIN[/VMTA] [--max=N]",
        {"queue": "value", "max": "value"},
        ("queue",),
    ),
    Spec(("reload",), "admin", "reload"),
    Spec(("test", "config"), "monitor", "test config [FILE]", positional=(0, 1)),
    Spec(("rotate", "acct"), "admin", "rotate acct"),
    Spec(("rotate", "log"), "admin", "rotate log"),
    Spec(("reset", "counters"), "admin", "reset counters"),
    # the suppression list (`commands/suppression.py`)
    Spec(
        ("suppression", "show"),
        "monitor",
        "suppression show [RECIPIENT] [--scope=SCOPE]",
        {"scope": "value"},
        positional=(0, 1),
    ),
    Spec(
        ("suppression", "add"),
        "admin",
        "suppression add RECIPIENT [--scope=SCOPE] [--type=transactional|non_transactional]"
        " [--description=TEXT]",
        {"scope": "value", "type": "value", "description": "value"},
        positional=(1, 1),
    ),
    Spec(
        ("suppression", "remove"),
        "admin",
        "suppression remove RECIPIENT [--scope=SCOPE]",
        {"scope": "value"},
        positional=(1, 1),
    ),
    Spec(
        ("suppression", "import"),
        "admin",
        "suppression import [--scope=SCOPE] (the CSV in the form field 'input'; mtactl: FILE)",
        {"scope": "value"},
    ),
    Spec(
        ("suppression", "export"),
        "monitor",
        "suppression export [--scope=SCOPE]",
        {"scope": "value"},
    ),
)

#: Commands whose positional arguments are not queue patterns.
_NOT_QUEUES = {
    ("test", "config"),
    ("set", "priority"),
    *(s.words for s in SPECS if s.words[0] == "suppression"),
}
#: Commands whose positional argument is a job id (an `X-Job` header, a `campaign_id`).
_JOBS = {("pause", "job"), ("resume", "job")}
_NOT_QUEUES |= _JOBS


@attrs.frozen
class Command:
    spec: Spec
    options: Mapping[str, str]
    args: tuple[str, ...]
    input: str | None = None  # a command's bulk input (`suppression import`'s CSV)

    @property
    def name(self) -> str:
        return " ".join(self.spec.words)

    @property
    def level(self) -> str:
        return self.spec.level


@attrs.frozen
class CommandResult:
    command: str
    data: Any
    message: str = ""


def usage() -> str:
    return "commands: " + "; ".join(spec.usage for spec in SPECS)


def parse(text: str) -> Command:
    """Parse one command line; `CommandError` with a clear message when it is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"cannot parse the command: {exc}") from None
    if not words:
        raise CommandError("empty command; " + usage())
    spec = next(
        (s for s in SPECS if tuple(w.lower() for w in words[: len(s.words)]) == s.words), None
    )
    if spec is None:
        raise CommandError(f"unknown command {' '.join(words[:2])!r}; " + usage())
    options: dict[str, str] = {}
    args: list[str] = []
    for word in words[len(spec.words) :]:
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            kind = spec.options.get(name)
            if kind is None:
                raise CommandError(f"{spec.usage}: unknown option --{name}")
            if kind == "flag" and has_value:
                raise CommandError(f"{spec.usage}: --{name} takes no value")
            if kind == "value" and not value:
                raise CommandError(f"{spec.usage}: --{name} needs a value (--{name}=...)")
            if name in options:
                raise CommandError(f"{spec.usage}: --{name} given twice")
            options[name] = value
        else:
            args.append(word)
    for name in spec.required:
        if name not in options:
            raise CommandError(f"{spec.usage}: --{name} is required")
    low, high = spec.positional
    if not low <= len(args) <= high:
        if high == 0:
            raise CommandError(f"{spec.usage}: unexpected argument {args[0]!r}")
        if len(args) < low:
            raise CommandError(f"{spec.usage}: missing argument")
        raise CommandError(f"{spec.usage}: too many arguments")
    command = Command(spec, options, tuple(args))
    _check_values(command)
    return command


def _check_values(command: Command) -> None:
    spec = command.spec
    patterns = [] if spec.words in _NOT_QUEUES else list(command.args)
    if spec.words in _JOBS:
        job = command.args[0]
        if not job or not job.isprintable() or len(job) > MAX_JOB_ID:
            raise CommandError(f"{spec.usage}: a job id is 1 to {MAX_JOB_ID} printable characters")
    if "queue" in command.options:
        patterns.append(command.options["queue"])
    for pattern in patterns:
        if not QUEUE_PATTERN.fullmatch(pattern) or ".." in pattern or pattern.startswith("."):
            raise CommandError(f"{spec.usage}: {pattern!r} is not a queue name (DOMAIN[/VMTA])")
    mode = command.options.get("mode")
    if mode is not None and mode not in ("backoff", "normal"):
        raise CommandError(f"{spec.usage}: --mode must be backoff or normal, not {mode!r}")
    if spec.words == ("set", "priority"):
        number = command.args[0]
        if not number.isdigit() or int(number) > 100:
            raise CommandError(f"{spec.usage}: the priority is 0 to 100, not {number!r}")
    limit = command.options.get("max")
    if limit is not None and (not limit.isdigit() or int(limit) < 1):
        raise CommandError(f"{spec.usage}: --max must be a positive number, not {limit!r}")
