"""The operator command language: its grammar, shared by `POST /command` and `mtactl`.

The commands are PowerMTA's (`pmta --help`, chapter 6.3 of the 5.0 guide) where they
apply here, with their options; `SPECS` lists each one with its usage line, and
`docs/api.rst` documents them. Queue patterns are `domain/vmta`, a bare `domain`
meaning every vmta, with `*` and `?` wildcards (`sink.test/*`, `*/vmta1`, `*`).

`parse` turns a line into a `Command`, or raises a `CommandError` naming what is
wrong (an unknown option is named, a bad value says what was expected) before
anything runs. Every argument is checked here against its kind (a queue pattern, an
address, a job id, an interval, an IP...): what a client sends can reach a log line,
an acct CSV field or a DSN, so a control character or an over-long value is refused
at the door, not escaped later. Each command states the access level it needs
(`monitor` for reading, `admin` for changing anything or reaching out: `trace`,
`resolve`), so the HTTP layer checks access between parsing and running.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mtaserver.config.values import parse_interval

QUEUE_PATTERN = re.compile(r"[A-Za-z0-9_.*?\-]+(/[A-Za-z0-9_.*?{}\-]+)?")
VMTA_NAME = re.compile(r"[A-Za-z0-9_.*?{}\-]{1,128}")
DOMAIN_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\.?")
#: Longest job id a command takes (the Transmissions API's `campaign_id` limit).
MAX_JOB_ID = 256
#: Longest address (RFC 5321: 64 + @ + 255).
MAX_ADDRESS = 320
#: `list`'s default number of recipients (PowerMTA's 100).
DEFAULT_LIST_MAX = 100
#: `show queues`/`show domains` default number of rows (PowerMTA's 20).
DEFAULT_SHOW_MAX = 20
#: The most rows any command returns.
MAX_ITEMS = 1_000_000
#: `trace`: the longest a trace waits for its delivery to finish.
MAX_TRACE_TIMEOUT = 600


class CommandError(Exception):
    """A command that could not run: unknown, bad arguments, or a failure (HTTP 400)."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


# -- kinds of values -------------------------------------------------------------------


def _queue(text: str) -> str:
    if not QUEUE_PATTERN.fullmatch(text) or ".." in text or text.startswith("."):
        raise ValueError(f"{text!r} is not a queue name (DOMAIN[/VMTA])")
    return text


def _printable(what: str, limit: int) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not text or len(text) > limit or not text.isprintable():
            raise ValueError(f"{what} is 1 to {limit} printable characters")
        return text

    return check


def _address(text: str) -> str:
    if (
        not 0 < len(text) <= MAX_ADDRESS
        or not text.isprintable()
        or any(c in text for c in " <>\"\\")
        or text.count("@") != 1
        or text.startswith("@")
        or text.endswith("@")
    ):
        raise ValueError(f"{text[:80]!r} is not an address (local@domain)")
    return text


def _sender(text: str) -> str:
    """MAIL FROM: an address, or `<>` / empty-looking `""` for the null sender."""
    return "" if text in ("<>", '""') else _address(text)


def _interval(text: str) -> str:
    parse_interval(text)
    return text


def _whole(low: int, high: int, expected: str) -> Callable[[str], str]:
    """A check for a whole number from `low` to `high`; `expected` says so when it fails."""

    def check(text: str) -> str:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"{expected}, not {text[:40]!r}")
        return text

    return check


_count = _whole(1, MAX_ITEMS, f"expected a number from 1 to {MAX_ITEMS}")
_priority = _whole(0, 100, "the priority is 0 to 100")
_timeout = _whole(1, MAX_TRACE_TIMEOUT, f"expected seconds from 1 to {MAX_TRACE_TIMEOUT}")


def _ip(text: str) -> str:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text[:60]!r} is not an IP address") from None
    return text


def _domain(text: str) -> str:
    if text != "*" and not DOMAIN_NAME.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a domain name")
    return text


def _domain_pattern(text: str) -> str:
    if "/" in text:
        raise ValueError(f"{text[:80]!r} is not a domain (use --vmta for the vmta)")
    return _queue(text)


def _vmta(text: str) -> str:
    if not VMTA_NAME.fullmatch(text):
        raise ValueError(f"{text[:80]!r} is not a virtual MTA name")
    return text


def _choice(*words: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text.lower() not in words:
            raise ValueError(f"expected {' or '.join(words)}, not {text[:40]!r}")
        return text.lower()

    return check


def _file(text: str) -> str:
    return _printable("a file name", 4096)(text)


def _text(text: str) -> str:
    return _printable("a value", 1024)(text)


_YES_NO = _choice("yes", "no")

#: Value checks by kind (positional arguments) or option name.
CHECKS: dict[str, Callable[[str], str]] = {
    "queue": _queue,
    "job": _printable("a job id", MAX_JOB_ID),
    "jobId": _printable("a job id", MAX_JOB_ID),
    "envId": _printable("an envelope id", 100),  # RFC 3461's ENVID limit
    "orig": _sender,
    "rcpt": _address,
    "address": _address,
    "sender": _sender,
    "older-than": _interval,
    "reenable-after": _interval,
    "maxitems": _count,
    "max": _count,
    "priority": _priority,
    "timeout": _timeout,
    "ip": _ip,
    "source-ip": _ip,
    "domain": _domain,
    "domains": _domain_pattern,
    "vmta": _vmta,
    "mode": _choice("normal", "backoff"),
    "paused": _YES_NO,
    "connected": _YES_NO,
    "sort": _choice("name", "rcpt", "size"),
    "source": _printable("a source name", 128),
    "from": _sender,
    "file": _file,
    "text": _text,
    "scope": _text,
    "type": _text,
    "description": _text,
}

#: Option kinds: a `flag` takes no value, a `value` needs one, `yesno` is a value of
#: yes or no that may be given alone (`--paused` is `--paused=yes`).
FLAG, VALUE, YESNO = "flag", "value", "yesno"


@attrs.frozen
class Spec:
    """A command's grammar: options, positional arguments (by kind) and access level.

    `args` names the kind of each positional argument (a check in `CHECKS`); the last
    kind repeats. `refused` are PowerMTA options that do not apply here: they are
    recognised and refused with the reason, never silently ignored.
    """

    words: tuple[str, ...]
    level: str
    usage: str
    options: Mapping[str, str] = attrs.field(factory=dict)
    required: tuple[str, ...] = ()
    positional: tuple[int, int] = (0, 0)  # min, max
    args: tuple[str, ...] = ("queue",)
    refused: Mapping[str, str] = attrs.field(factory=dict)
    help: str = ""


_QUEUE_SHOW = {
    "connected": YESNO,
    "paused": YESNO,
    "mode": VALUE,
    "maxitems": VALUE,
    "errors": FLAG,
    "no-rcpt-events": FLAG,
}
_DOMAIN_SHOW = {"vmta": VALUE, "connected": YESNO, "maxitems": VALUE, "errors": FLAG}
_SELECT = {"queue": VALUE, "orig": VALUE, "rcpt": VALUE, "jobId": VALUE, "envId": VALUE}
_DNS_REFUSED = {
    "tcp": "the server's resolver chooses the transport",
    "dumppackets": "packet dumps are not available",
    "server": "the server asks its configured name servers",
}

SPECS: tuple[Spec, ...] = (
    Spec(("show", "status"), "monitor", "show status", help="traffic, connections, queue"),
    Spec(
        ("show", "queues"),
        "monitor",
        "show queues [--connected=yes|no] [--paused=yes|no] [--mode=normal|backoff]"
        " [--maxitems=N] [--errors] [--sort=name|rcpt|size] [--no-rcpt-events] [DOMAIN[/VMTA]]",
        {**_QUEUE_SHOW, "sort": VALUE},
        positional=(0, 1),
        refused={"mode-events": "mode changes are not recorded (the log file has them)"},
        help="the queues (20 by default)",
    ),
    Spec(
        ("show", "topqueues"),
        "monitor",
        "show topqueues [--connected=yes|no] [--paused=yes|no] [--mode=normal|backoff]"
        " [--maxitems=N] [--errors] [--no-rcpt-events] [DOMAIN[/VMTA]]",
        _QUEUE_SHOW,
        positional=(0, 1),
        help="the queues with most recipients",
    ),
    Spec(
        ("show", "domains"),
        "monitor",
        "show domains [--vmta=NAME] [--connected=yes|no] [--maxitems=N] [--errors]"
        " [--sort=name|rcpt|size] [DOMAIN]",
        {**_DOMAIN_SHOW, "sort": VALUE},
        positional=(0, 1),
        args=("domains",),
        help="the queues by destination domain",
    ),
    Spec(
        ("show", "topdomains"),
        "monitor",
        "show topdomains [--vmta=NAME] [--connected=yes|no] [--maxitems=N] [--errors]",
        _DOMAIN_SHOW,
        help="the domains with most recipients",
    ),
    Spec(("show", "vmtas"), "monitor", "show vmtas [--maxitems=N]", {"maxitems": VALUE}),
    Spec(("show", "jobs"), "monitor", "show jobs [--maxitems=N]", {"maxitems": VALUE}),
    Spec(
        ("show", "settings"),
        "monitor",
        "show settings [DOMAIN[/VMTA]]",
        positional=(0, 1),
        help="a queue's settings (without argument: the configuration's summary)",
    ),
    Spec(
        ("show", "vmta-settings"),
        "monitor",
        "show vmta-settings VMTA",
        positional=(1, 1),
        args=("vmta",),
        help="a virtual MTA's settings and sources",
    ),
    Spec(("show", "version"), "monitor", "show version", help="version, build and platform"),
    Spec(("show", "license"), "monitor", "show license", help="the same as show version"),
    Spec(
        ("show", "disabled", "sources"),
        "monitor",
        "show disabled sources [DOMAIN[/VMTA]]",
        positional=(0, 1),
    ),
    Spec(("pause", "queue"), "admin", "pause queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("resume", "queue"), "admin", "resume queue DOMAIN[/VMTA]", positional=(1, 1)),
    Spec(("pause", "job"), "admin", "pause job JOBID", positional=(1, 1), args=("job",)),
    Spec(("resume", "job"), "admin", "resume job JOBID", positional=(1, 1), args=("job",)),
    Spec(
        ("schedule",),
        "admin",
        "schedule [--retry-recipients] DOMAIN[/VMTA]",
        {"retry-recipients": FLAG},
        positional=(1, 1),
    ),
    Spec(
        ("set", "queue"),
        "admin",
        "set queue --mode=backoff|normal DOMAIN[/VMTA]",
        {"mode": VALUE},
        ("mode",),
        (1, 1),
    ),
    Spec(
        ("set", "priority"),
        "admin",
        "set priority [--queue=DOMAIN[/VMTA]] [--orig=ADDR] [--rcpt=ADDR] [--jobId=ID]"
        " [--envId=ID] NUMBER (0-100)",
        _SELECT,
        positional=(1, 1),
        args=("priority",),
    ),
    Spec(
        ("disable", "source"),
        "admin",
        "disable source [--reenable-after=INTERVAL] IP DOMAIN[/VMTA]",
        {"reenable-after": VALUE},
        positional=(2, 2),
        args=("ip", "queue"),
    ),
    Spec(
        ("enable", "source"),
        "admin",
        "enable source [IP] DOMAIN[/VMTA]",
        positional=(1, 2),
        args=("ip", "queue"),
    ),
    Spec(
        ("delete",),
        "admin",
        "delete [--dsn] [--queue=DOMAIN[/VMTA]] [--orig=ADDR] [--rcpt=ADDR] [--jobId=ID]"
        " [--envId=ID] [--older-than=INTERVAL] (--queue or --jobId is required)",
        {**_SELECT, "older-than": VALUE, "dsn": FLAG, "accounting": FLAG},
        refused={
            "no-accounting": "the b record is what makes a deletion durable "
            "(without it a restart would queue the recipients again)"
        },
    ),
    Spec(
        ("list",),
        "monitor",
        "list [--queue=DOMAIN[/VMTA]] [--orig=ADDR] [--rcpt=ADDR] [--jobId=ID] [--envId=ID]"
        " [--maxitems=N] [--older-than=INTERVAL] [--priority] [--schedule]",
        {
            **_SELECT,
            "maxitems": VALUE,
            "max": VALUE,
            "older-than": VALUE,
            "priority": FLAG,
            "schedule": FLAG,
        },
        refused={"pause": "recipients in delivery are not listed; pause the queue instead"},
    ),
    Spec(
        ("trace",),
        "admin",
        "trace [--retry-recipients] [--source-ip=IP] [--timeout=SECONDS] DOMAIN[/VMTA]",
        {"retry-recipients": FLAG, "source-ip": VALUE, "timeout": VALUE},
        positional=(1, 1),
        refused={
            "log-data": "message data is never shown in a trace",
            "log-resolution": "use `resolve DOMAIN` for the DNS answers",
            "to-log": "the transcript is returned to the caller",
        },
        help="a live transcript of the next delivery session of a queue",
    ),
    Spec(
        ("resolve",),
        "admin",
        "resolve DOMAIN",
        positional=(1, 1),
        args=("domain",),
        refused={
            **_DNS_REFUSED,
            "connect": "use `trace` to see a delivery session",
            "interactive": "no interactive sessions through the Command API",
            "use-dane": "DANE is not supported",
            "source": "use `trace --source-ip`",
        },
        help="the domain's MX and address records and the route delivery would take",
    ),
    Spec(
        ("check", "mfrom"),
        "monitor",
        "check mfrom [--source=NAME] MAILFROM IP",
        {"source": VALUE},
        positional=(2, 2),
        args=("sender", "ip"),
        refused=_DNS_REFUSED,
        help="what reception would do with this sender from this client",
    ),
    Spec(
        ("check", "rcpt"),
        "monitor",
        "check rcpt [--from=MAILFROM] [--source=NAME] RCPT IP",
        {"from": VALUE, "source": VALUE},
        positional=(2, 2),
        args=("address", "ip"),
        help="what reception, suppression and routing would do with this recipient",
    ),
    Spec(
        ("clear", "dnscache"),
        "admin",
        "clear dnscache DOMAIN|*",
        positional=(1, 1),
        args=("domain",),
    ),
    Spec(("reload",), "admin", "reload"),
    Spec(("test", "config"), "monitor", "test config [FILE]", positional=(0, 1), args=("file",)),
    Spec(
        ("rotate", "acct"),
        "admin",
        "rotate acct [FILE]",
        positional=(0, 1),
        args=("file",),
        help="start new acct files (FILE: only that one, by path or name)",
    ),
    Spec(("rotate", "log"), "admin", "rotate log"),
    Spec(("reset", "counters"), "admin", "reset counters"),
    Spec(("reset", "status"), "admin", "reset status", help="the same as reset counters"),
    # the suppression list (`commands/suppression.py`)
    Spec(
        ("suppression", "show"),
        "monitor",
        "suppression show [RECIPIENT] [--scope=SCOPE]",
        {"scope": VALUE},
        positional=(0, 1),
        args=("text",),
    ),
    Spec(
        ("suppression", "add"),
        "admin",
        "suppression add RECIPIENT [--scope=SCOPE] [--type=transactional|non_transactional]"
        " [--description=TEXT]",
        {"scope": VALUE, "type": VALUE, "description": VALUE},
        positional=(1, 1),
        args=("text",),
    ),
    Spec(
        ("suppression", "remove"),
        "admin",
        "suppression remove RECIPIENT [--scope=SCOPE]",
        {"scope": VALUE},
        positional=(1, 1),
        args=("text",),
    ),
    Spec(
        ("suppression", "import"),
        "admin",
        "suppression import [--scope=SCOPE] (the CSV in the form field 'input'; mtactl: FILE)",
        {"scope": VALUE},
    ),
    Spec(
        ("suppression", "export"),
        "monitor",
        "suppression export [--scope=SCOPE]",
        {"scope": VALUE},
    ),
)


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

    def option(self, name: str, default: str | None = None) -> str | None:
        return self.options.get(name, default)


@attrs.frozen
class CommandResult:
    command: str
    data: Any
    message: str = ""


def usage() -> str:
    return "commands: " + "; ".join(spec.usage for spec in SPECS)


def find_spec(words: list[str]) -> Spec | None:
    """The longest command whose words start `words` (`show disabled sources` first)."""
    lowered = tuple(w.lower() for w in words)
    best = None
    for spec in SPECS:
        if lowered[: len(spec.words)] == spec.words and (
            best is None or len(spec.words) > len(best.words)
        ):
            best = spec
    return best


def parse(text: str) -> Command:
    """Parse one command line; `CommandError` with a clear message when it is wrong."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise CommandError(f"cannot parse the command: {exc}") from None
    if not words:
        raise CommandError("empty command; " + usage())
    spec = find_spec(words)
    if spec is None:
        shown = " ".join(words[:2])
        if not shown.isprintable() or len(shown) > 80:
            shown = shown[:80].encode("unicode_escape").decode("ascii")
        raise CommandError(f"unknown command {shown!r}; " + usage())
    options: dict[str, str] = {}
    args: list[str] = []
    for word in words[len(spec.words) :]:
        if word.startswith("--"):
            name, has_value, value = word[2:].partition("=")
            shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
            if name in spec.refused:
                why = spec.refused[name]
                raise CommandError(f"{spec.usage}: --{shown} is not supported: {why}")
            kind = spec.options.get(name)
            if kind is None:
                raise CommandError(f"{spec.usage}: unknown option --{shown}")
            if kind == FLAG and has_value:
                raise CommandError(f"{spec.usage}: --{name} takes no value")
            if kind == VALUE and not value:
                raise CommandError(f"{spec.usage}: --{name} needs a value (--{name}=...)")
            if name in options:
                raise CommandError(f"{spec.usage}: --{name} given twice")
            if kind == YESNO and not has_value:
                value = "yes"
            if kind != FLAG:
                try:
                    value = CHECKS[name](value)
                except ValueError as exc:
                    raise CommandError(f"{spec.usage}: --{name}: {exc}") from None
            options[name] = value
        else:
            args.append(word)
    for name in spec.required:
        if name not in options:
            raise CommandError(f"{spec.usage}: --{name} is required")
    low, high = spec.positional
    if not low <= len(args) <= high:
        if high == 0:
            shown = args[0][:80] if args[0].isprintable() else repr(args[0][:80])
            raise CommandError(f"{spec.usage}: unexpected argument {shown!r}")
        if len(args) < low:
            raise CommandError(f"{spec.usage}: missing argument")
        raise CommandError(f"{spec.usage}: too many arguments")
    kinds = spec.args
    if spec.words == ("enable", "source") and len(args) == 1:
        kinds = ("queue",)  # our older form: every disabled source of the queues
    checked = []
    for index, arg in enumerate(args):
        kind = kinds[min(index, len(kinds) - 1)]
        try:
            checked.append(CHECKS[kind](arg))
        except ValueError as exc:
            raise CommandError(f"{spec.usage}: {exc}") from None
    command = Command(spec, options, tuple(checked))
    _check_combinations(command)
    return command


def _check_combinations(command: Command) -> None:
    spec, options = command.spec, command.options
    if spec.words == ("delete",) and "queue" not in options and "jobId" not in options:
        raise CommandError(f"{spec.usage}: give --queue or --jobId (delete everything: --queue=*)")
    if "max" in options and "maxitems" in options:
        raise CommandError(f"{spec.usage}: --max is --maxitems; give one")
