"""Parsers for the value types of the configuration language.

Each parser takes the text after a directive's name and returns a typed value, or
raises `ValueError` with a message a PowerMTA user understands; the loader adds
`file:line`. They are pure functions so they can be table- and property-tested.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

import attrs

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TRUE = {"yes", "true", "on", "1"}
_FALSE = {"no", "false", "off", "0"}


def parse_bool(text: str) -> bool:
    """`yes no true false` (and `on off`), any case."""
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected yes or no, not {text!r}")


def parse_int(text: str) -> int:
    """A non-negative integer; `unlimited` is 0, PowerMTA's word for no limit."""
    word = text.strip().lower()
    if word == "unlimited":
        return 0
    if not word.isdigit():
        raise ValueError(f"expected a whole number, e.g. 10, not {text!r}")
    return int(word)


def parse_positive_int(text: str) -> int:
    value = parse_int(text)
    if value == 0 and text.strip().lower() != "unlimited":
        raise ValueError(f"expected a number greater than 0, e.g. 10, not {text!r}")
    return value


def parse_workers(text: str) -> int | None:
    """`reception-workers auto` (None: one per core but one) or a count, 0 for one process."""
    word = text.strip().lower()
    if word == "auto":
        return None
    if not word.isdigit() or int(word) > 64:
        raise ValueError(f"expected auto or a number of processes from 0 to 64, not {text!r}")
    return int(word)


def parse_size_mb(text: str) -> int:
    """A size where a bare number is megabytes (`spool-min-free-space 100`, as PowerMTA)."""
    word = text.strip()
    return int(word) * 2**20 if word.isdigit() else parse_size(word)


def parse_size(text: str) -> int:
    """`10K 5M 1G` (binary multiples, as PowerMTA), a plain number of bytes, or `unlimited` (0)."""
    word = text.strip()
    if word.lower() == "unlimited":
        return 0
    match = re.fullmatch(r"(\d+)\s*([bkmgtBKMGT]?)[bB]?", word)
    if not match:
        raise ValueError(f"expected a size such as 10K, 5M or 1G, not {text!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def parse_interval(text: str) -> float:
    """`30s 10m 4h 2d 4d12h 1w`; a bare number is seconds. Returns seconds."""
    word = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", word):
        return float(word)
    parts = re.findall(r"(\d+)([smhdw])", word)
    if not parts or "".join(n + u for n, u in parts) != word:
        raise ValueError(f"expected an interval such as 30s, 10m, 4h or 4d12h, not {text!r}")
    return float(sum(int(n) * _INTERVAL_UNITS[u] for n, u in parts))


def parse_interval_or_never(text: str) -> float | None:
    """An interval, or `never` (None): `delete-after never`."""
    if text.strip().lower() == "never":
        return None
    try:
        return parse_interval(text)
    except ValueError:
        raise ValueError(f"expected an interval such as 8d, or never, not {text!r}") from None


def parse_interval_list(text: str) -> tuple[float, ...]:
    """`10m,10m,1h`: retry schedules, where the last interval repeats."""
    items = [item for item in re.split(r"[,\s]+", text.strip()) if item]
    if not items:
        raise ValueError("expected a list of intervals such as 10m,20m,1h")
    return tuple(parse_interval(item) for item in items)


def parse_cidr(text: str) -> IPNetwork:
    """`0/0`, `127.0.0.1`, `10.0.0.0/8`, `10/8`, `::1`, `2001:db8::/32`."""
    word = text.strip()
    address, _, prefix = word.partition("/")
    if re.fullmatch(r"\d+(\.\d+){0,2}", address):  # PowerMTA's short forms: 10/8, 10.1.0/24
        octets = address.split(".")
        address = ".".join(octets + ["0"] * (4 - len(octets)))
    try:
        return ipaddress.ip_network(f"{address}/{prefix}" if prefix else address, strict=False)
    except ValueError:
        raise ValueError(f"expected an address or CIDR such as 10.0.0.0/8, not {text!r}") from None


def parse_cidr_list(text: str) -> tuple[IPNetwork, ...]:
    """`10.0.0.0/8, 127.0.0.1` (commas or spaces): a tuple of networks, may be empty."""
    return tuple(parse_cidr(item) for item in re.split(r"[\s,]+", text.strip()) if item)


def parse_ip(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise ValueError(f"expected an IP address such as 10.0.0.1, not {text!r}") from None


@attrs.frozen
class HostPort:
    """An `IP:PORT` listener or peer address; `host` is a literal IP."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"expected a port number 0-65535, e.g. 25, not {text!r}")
    return int(text)


def parse_host_port(text: str, default_host: str | None = None) -> HostPort:
    """`127.0.0.1:2525`, `[::1]:25`, `0/0:25` (all addresses); `PORT` alone with a default host."""
    word = text.strip()
    if default_host is not None and word.isdigit():
        return HostPort(default_host, _port(word))
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^\[\]]+):(\d+)", word)
    if not match:
        raise ValueError(f"expected IP:PORT such as 127.0.0.1:2525, not {text!r}")
    host, port = (match.group(1), match.group(2)) if match.group(1) else match.group(3, 4)
    if host in ("0/0", "*"):
        host = "0.0.0.0"
    return HostPort(str(parse_ip(host)), _port(port))


def parse_mgmt_port(text: str) -> HostPort:
    """`http-mgmt-port [IP:]PORT`; without an IP it listens on loopback, safe by default."""
    return parse_host_port(text, default_host="127.0.0.1")


def parse_name_server(text: str) -> HostPort:
    word = text.strip()
    if ":" in word and not word.startswith("[") and word.count(":") == 1:
        return parse_host_port(word)
    if word.startswith("["):
        return parse_host_port(word)
    return HostPort(str(parse_ip(word)), 53)


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")


def parse_hostname(text: str) -> str:
    word = text.strip().rstrip(".")
    if not _HOSTNAME.fullmatch(word):
        raise ValueError(f"expected a host name such as mail.example.com, not {text!r}")
    return word.lower()


def parse_domain_pattern(text: str) -> str:
    """A `<domain>` scope argument: a domain name, `*`, or `*.suffix`."""
    word = text.strip().lower()
    if word == "*":
        return word
    if word.startswith("*."):
        return "*." + parse_hostname(word[2:])
    return parse_hostname(word)


@attrs.frozen
class SmtpHost:
    """One entry of `smtp-hosts`: a name, an `[IP]` literal, or `lookup-mx:DOMAIN`."""

    host: str
    port: int | None = None
    literal: bool = False
    lookup_mx: bool = False


SmtpHosts = tuple[tuple[SmtpHost, ...], ...]


def parse_smtp_hosts(text: str) -> SmtpHosts:
    """`h1, h2; [10.1.1.1]:2525; lookup-mx:other.tld`.

    `;` separates preference levels (tried in order), `,` hosts of one level (round robin).
    """
    levels = []
    for level_text in text.split(";"):
        hosts = []
        for item in (part.strip() for part in level_text.split(",")):
            if not item:
                continue
            hosts.append(_parse_smtp_host(item))
        if hosts:
            levels.append(tuple(hosts))
    if not levels:
        raise ValueError("expected at least one host, e.g. mx1.example.com; [10.1.1.1]:2525")
    return tuple(levels)


def _parse_smtp_host(item: str) -> SmtpHost:
    if item.lower().startswith("lookup-mx:"):
        return SmtpHost(parse_hostname(item[len("lookup-mx:") :]), lookup_mx=True)
    literal = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", item)
    if literal:
        port = _port(literal.group(2)) if literal.group(2) else None
        return SmtpHost(str(parse_ip(literal.group(1))), port, literal=True)
    name, sep, port_text = item.rpartition(":")
    if sep and port_text.isdigit():
        return SmtpHost(parse_hostname(name), _port(port_text))
    return SmtpHost(parse_hostname(item))


@attrs.frozen
class Rate:
    """`max-msg-rate 100/h`: `count` messages per `per_seconds`."""

    count: int
    per_seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.per_seconds


#: PowerMTA's rate units: `N/[M]{d|day|h|hr|m|min|s|sec}` (and `hour`).
_RATE_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "hour": 3600}
_RATE_UNITS |= {"d": 86400, "day": 86400}


def parse_rate(text: str) -> Rate | None:
    """`100/h`, `10/s`, `5/min`, `83/10m`, `1000/day`; `unlimited` (and PowerMTA's `0`) is None."""
    word = text.strip().lower()
    if word in ("unlimited", "0"):
        return None
    match = re.fullmatch(r"(\d+)\s*/\s*(\d*)\s*([a-z]+)", word)
    if not match or int(match.group(1)) == 0 or match.group(3) not in _RATE_UNITS:
        raise ValueError(f"expected a rate N/[M]UNIT (s, m, h, d), e.g. 100/h, not {text!r}")
    return Rate(int(match.group(1)), int(match.group(2) or 1) * _RATE_UNITS[match.group(3)])


REPLY_ACTIONS = frozenset(
    {
        "mode=backoff",
        "mode=normal",
        "bounce-rcpt",
        "bounce-queue",
        "defer-queue",
        "skip-mx",
        "disable-source-ip",
    }
)
"""Actions of `reply` patterns; `reenable-after=INTERVAL` comes with `disable-source-ip`."""


@attrs.frozen
class ReplyPattern:
    """`reply /REGEX/ ACTION...` in an `<smtp-pattern-list>`."""

    regex: re.Pattern[str]
    actions: tuple[str, ...]

    def matches(self, reply: str) -> bool:
        return self.regex.search(reply) is not None


def parse_reply_pattern(text: str) -> ReplyPattern:
    """`/421 .* too many/ mode=backoff` or `/TS03/ mode=backoff,disable-source-ip,...`.

    Patterns ignore case, as PowerMTA's guide says they do (`/TRY AGAIN/` matches
    "Please try again later"); a trailing `i` flag is accepted and changes nothing.
    Actions are separated by commas or spaces.
    """
    match = re.fullmatch(r"\s*/((?:[^/\\]|\\.)*)/([i]*)\s+(.+)", text)
    if not match:
        raise ValueError(
            f"expected /REGEX/ ACTION, e.g. /^421 .* too many/ mode=backoff, not {text!r}"
        )
    try:
        regex = re.compile(match.group(1), re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"bad regular expression: {exc}") from None
    actions = tuple(a.lower() for a in re.split(r"[,\s]+", match.group(3).strip()) if a)
    for action in actions:
        if action.startswith("reenable-after="):
            parse_interval(action.partition("=")[2])
        elif action not in REPLY_ACTIONS:
            raise ValueError(
                f"unknown action {action!r}; expected one of "
                f"{', '.join(sorted(REPLY_ACTIONS))} or reenable-after=INTERVAL"
            )
    return ReplyPattern(regex, actions)


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, not {text!r}")
        return word

    return parse


def parse_string(text: str) -> str:
    if not text.strip():
        raise ValueError("a value is required, e.g. a file name or a word")
    return text.strip()


def parse_domain_pattern_or_email(text: str) -> str:
    """`user@example.com`, `*@example.com`, `example.com` or `*.example.com` (lower-cased)."""
    word = text.strip().lower()
    local, at, domain = word.rpartition("@")
    if at and local and all(c.isprintable() and c not in " <>" for c in local):
        return f"{local}@{parse_domain_pattern(domain)}"
    if at:
        raise ValueError(f"expected an address or domain such as *@example.com, not {text!r}")
    return parse_domain_pattern(word)


def parse_email(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", word):
        raise ValueError(f"expected an email address such as postmaster@example.com, not {text!r}")
    return word


def parse_url(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", word):
        raise ValueError(
            f"expected an http:// or https:// URL such as https://hooks.example.com/mta, "
            f"not {text!r}"
        )
    return word


def parse_ldap_uri(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"ldaps?://[^\s/]+/?", word):
        raise ValueError(
            "expected ldap://HOST:PORT or ldaps://HOST:PORT, e.g. ldaps://ldap.example.com:636, "
            f"not {text!r}"
        )
    return word


def parse_user_filter(text: str) -> str:
    word = text.strip()
    if "%u" not in word or not (word.startswith("(") and word.endswith(")")):
        raise ValueError(f"expected an LDAP filter containing %u such as (uid=%u), not {text!r}")
    return word


_API_KEY = re.compile(r"[A-Za-z0-9_]{32,128}")


def parse_api_key(text: str) -> str:
    word = text.strip()
    if not _API_KEY.fullmatch(word):
        raise ValueError(
            "an api-key is 32 to 128 characters of A-Z, a-z, 0-9 and _, "
            "e.g. 14ac5499cfdd2bb2859e4476d2e5b1d2"
        )
    return word


RECORD_TYPES = ("r", "d", "b", "t", "tq", "f", "rb", "rs")
"""Every acct record type, in the order their columns are laid out in a CSV file.

The one list both `test config` and the acct writers check against (accounting
imports it), so a config that passes `test config` always starts."""

ACCT_FIELDS: tuple[str, ...] = (
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
    "totalSecondsQueued",
    "dlvTlsProtocol",
    "dlvTlsCipher",
    "rcvSmtpUser",
)
"""Every standard acct field, in DESIGN.md section 5 order (`header_X` fields aside)."""

USER_STRING_FIELD = "userstring"
"""The `user-string` of the acct file: written only where `record-fields` names it."""

ACCT_HEADER_PREFIX = "header_"

REPORT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "rb": ("dsnReportingMta",),
    "rs": ("dsnReportingMta",),
    "f": ("format", "feedbackType", "userAgent", "reportingMta", "reportedDomain"),
}
"""The fields only the processors' records have, after the standard ones in `*`."""


#: The long names PowerMTA accepts in place of each record type (`records delivery,bounce`).
RECORD_TYPE_NAMES = {
    "delivery": "d",
    "bounce": "b",
    "transient": "t",
    "transient-queue": "tq",
    "receipt": "r",
    "feedback-loop": "f",
    "remote-bounce": "rb",
    "remote-status": "rs",
}


def parse_record_types(text: str) -> frozenset[str]:
    """`d,b,t,tq,r,f`, or the long names (`delivery, feedback-loop`)."""
    words = [t for t in re.split(r"[,\s]+", text.strip().lower()) if t]
    types = [RECORD_TYPE_NAMES.get(t, t) for t in words]
    unknown = [t for t in types if t not in RECORD_TYPES]
    if not types or unknown:
        raise ValueError(
            f"expected record types from {','.join(RECORD_TYPES)}, e.g. d,b, not {text!r}"
        )
    return frozenset(types)


def parse_record_fields(text: str) -> tuple[str, tuple[str, ...]]:
    """`record-fields d timeLogged,rcpt,dsnStatus`, `record-fields * *` or `d *,!orcpt`.

    `!field` leaves a field out of what the list selected before it (PowerMTA's form).
    """
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise ValueError("expected a record type (or *) and a list of fields, e.g. d *,header_x-id")
    kind = parts[0].lower()
    if kind != "*" and kind not in RECORD_TYPES:
        raise ValueError(
            f"unknown record type {parts[0]!r}; expected one of {','.join(RECORD_TYPES)} or *"
        )
    fields = tuple(f for f in re.split(r"[,\s]+", parts[1].strip()) if f)
    for field in fields:
        name = field.removeprefix("!")
        known = (
            name == "*"
            or name in ACCT_FIELDS
            or name == USER_STRING_FIELD
            or any(name in extra for extra in REPORT_FIELDS.values())
            or name.startswith(ACCT_HEADER_PREFIX)
        )
        if not known or field == "!*":
            raise ValueError(
                f"unknown acct field {field!r}; a field is * or one of {', '.join(ACCT_FIELDS)}"
                " (or header_NAME), optionally with ! to leave it out"
            )
    return kind, fields


@attrs.frozen
class HeaderMapping:
    """`map-header-to-field TYPES HEADER [FIELD]`: copy a header into acct records."""

    record_types: frozenset[str]
    header: str
    field: str


def parse_header_mapping(text: str) -> HeaderMapping:
    parts = text.split()
    if len(parts) not in (2, 3):
        raise ValueError("expected RECORD-TYPES HEADER [FIELD], e.g. d,b X-Campaign campaign")
    types = parse_record_types(parts[0])
    header = parts[1].removeprefix(ACCT_HEADER_PREFIX)  # PowerMTA writes `header_x-foo`
    if not re.fullmatch(r"[!-9;-~]+", header):
        raise ValueError(f"bad header name {header!r}; expected e.g. X-Campaign")
    return HeaderMapping(types, header, parts[2] if len(parts) == 3 else f"header_{header}")


@attrs.frozen
class DomainKey:
    selector: str
    domain: str
    key_file: str


def parse_domain_key(text: str) -> DomainKey:
    """`domain-key SELECTOR,DOMAIN,KEYFILE` (the key file is checked by the loader)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(
            f"expected SELECTOR,DOMAIN,KEYFILE, e.g. s1,example.com,/etc/mta/s1.pem, not {text!r}"
        )
    domain = "*" if parts[1] == "*" else parse_hostname(parts[1])  # `*`: see the catalog caveat
    return DomainKey(parts[0], domain, parts[2])


@attrs.frozen
class SourceHost:
    """`smtp-source-host IP HOSTNAME`: bind outgoing connections to IP, EHLO as HOSTNAME."""

    ip: str
    host_name: str


def parse_source_host(text: str) -> SourceHost:
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected IP HOSTNAME, e.g. 10.0.0.5 mta1.example.com, not {text!r}")
    return SourceHost(str(parse_ip(parts[0])), parse_hostname(parts[1]))


ACCESS_LEVELS = ("none", "monitor", "admin")


@attrs.frozen
class HttpAccess:
    network: IPNetwork
    level: str


def parse_http_access(text: str) -> HttpAccess:
    """`CIDR { monitor[,deny-logs] | operator | admin | none }` (PowerMTA's forms).

    `operator` is taken as `monitor` (the lesser right) and `,deny-logs` changes nothing
    (the management port serves no log files); the loader warns about both.
    """
    parts = text.split()
    level = parts[1].lower() if len(parts) == 2 else ""
    level = {"operator": "monitor", "monitor,deny-logs": "monitor"}.get(level, level)
    if len(parts) != 2 or level not in ACCESS_LEVELS:
        raise ValueError(f"expected CIDR none|monitor|admin, e.g. 10.0.0.0/8 monitor, not {text!r}")
    return HttpAccess(parse_cidr(parts[0]), level)


@attrs.frozen
class LdapGroupAccess:
    group_dn: str
    level: str


def parse_ldap_group_access(text: str) -> LdapGroupAccess:
    dn, _, level = text.strip().rpartition(" ")
    if not dn.strip() or level.lower() not in ACCESS_LEVELS:
        raise ValueError(
            "expected GROUP-DN none|monitor|admin, e.g. cn=ops,ou=groups,dc=example,dc=com admin, "
            f"not {text!r}"
        )
    return LdapGroupAccess(dn.strip(), level.lower())


_PASSWORD_SCHEMES = ("PLAIN", "SHA512-CRYPT", "SHA256-CRYPT", "SSHA256", "SSHA512", "SHA256")


#: What an empty `password` stands for: a scheme no password ever matches. A published
#: config's placeholder (`password ## YOUR PASSWORD HERE ##`, all comment) loads, and its
#: user can never log in (the loader warns), rather than logging in with no password.
LOCKED_PASSWORD = "{LOCKED}"


def parse_password(text: str) -> str:
    """A plain password, or `{SCHEME}hash` in Dovecot's notation; empty locks the user."""
    word = text.strip()
    if not word:
        return LOCKED_PASSWORD
    match = re.match(r"\{([A-Z0-9-]+)\}", word)
    if match and match.group(1) not in _PASSWORD_SCHEMES:
        raise ValueError(
            f"unknown password scheme {match.group(1)!r}; "
            f"expected one of {', '.join(_PASSWORD_SCHEMES)}"
        )
    if not word:
        raise ValueError("a password is required")
    return word


def parse_source_name(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"\{[A-Za-z0-9_.-]+\}", word):
        raise ValueError(f"expected a source name in braces such as {{auth}}, not {text!r}")
    return word


def parse_name(text: str) -> str:
    word = text.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", word):
        raise ValueError(f"expected a name of letters, digits and -_.@ such as mta1, not {text!r}")
    return word


Parser = Callable[[str], Any]


#: The placeholders a `dsn-text-file` may use (`$name` or `${name}`; `$$` is a `$`).
DSN_TEXT_FIELDS = frozenset(
    {"sender", "reporting_mta", "postmaster", "recipients", "summary", "envid", "subject"}
)
MAX_DSN_TEXT = 64 * 1024


@attrs.frozen
class DsnText:
    """`dsn-text-file FILE`: the human-readable part of DSNs, read when the config loads."""

    path: str
    text: str


def parse_dsn_text_file(text: str) -> DsnText:
    """Read and check a DSN text template: UTF-8, at most 64 KB, known `$fields` only."""
    path = text.strip()
    if not path:
        raise ValueError("a file name is required")
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_DSN_TEXT + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_DSN_TEXT:
        raise ValueError(f"{path} is larger than {MAX_DSN_TEXT // 1024} KB")
    try:
        body = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", body):
        raise ValueError(f"{path} holds control characters")
    template = string.Template(body)
    unknown = sorted(set(template.get_identifiers()) - DSN_TEXT_FIELDS)
    expected = ", ".join("$" + f for f in sorted(DSN_TEXT_FIELDS))
    if not template.is_valid():
        raise ValueError(f"{path}: a $ that starts no placeholder; expected {expected} ($$ for $)")
    if unknown:
        names = ", ".join("$" + u for u in unknown)
        raise ValueError(f"{path}: unknown placeholder {names}; expected {expected}")
    return DsnText(path, body)
