"""Every directive of the PowerMTA 5.0 reference: where it may stand and what it does here.

PowerMTA refuses a directive it does not know, so a PowerMTA config carries over only if
every directive of its reference is known. The registry (`registry.py`) holds the
directives mtaserver implements and builds settings from; this module holds the long
tail: each remaining directive of the 5.0 User's Guide (chapter 3.3, and the Signals,
proxy and bounce-category chapters), in the scopes the guide allows, with its value type,
its PowerMTA default and one of three statuses:

* ``implemented`` - it changes behaviour (and has a test);
* ``no-effect`` - it cannot apply to mtaserver (process priorities, PowerMTA's own
  console, a choice mtaserver always makes one way); accepted, with one warning at start;
* ``not-yet`` - it could apply but mtaserver does not do it yet; accepted (a config
  carries over), with a warning at start and in ``test config`` naming what is missing.

`lookup(name, scope)` is the one place the loader asks what a directive is: the registry
first, then this catalog. `docs/config.rst`'s directive table is generated from both
(`python -m mtaserver.config.doctable`), and a test keeps it equal to the committed text
and complete against the guide's directive list (`tests/data/powermta-5.0-directives-toc.txt`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mtaserver.config import registry as reg
from mtaserver.config import values as v
from mtaserver.config.grammar import RAW_SCOPES

IMPLEMENTED = "implemented"
NO_EFFECT = "no-effect"
NOT_YET = "not-yet"

# Scopes of the reference that the registry does not build settings from.
SPOOL = "spool"
SOURCE_GROUP = "source-group"
PATTERN_LIST = "pattern-list"
REWRITE_LIST = "rewrite-list"
DOMAIN_KEY_LIST = "domain-key-list"
EMAIL_PATTERNS = "email-patterns"
BOUNCE_CATEGORY_PATTERNS = "bounce-category-patterns"
DNS = "dns"
SIGNALS = "signals"
SIGNALS_FILTER = "signals-filter"
PROXY = "proxy"
BOUNCE_PROCESSOR = "bounce-processor"
FBL_PROCESSOR = "feedback-loop-processor"
ADDRESS_LIST = "address-list"
SUPPRESSION_LIST = "suppression-list"

Parser = Callable[[str], Any]


@attrs.frozen
class Entry:
    """One directive in one scope: how its value parses, and what it does here."""

    name: str
    scope: str
    parse: Parser
    value: str  # the value's form, for the docs table
    default: str  # PowerMTA's default, as the guide gives it
    status: str
    reason: str
    repeatable: bool = False
    #: For a directive implemented only in part: the warning a given value deserves.
    caveat: Callable[[str], str | None] | None = None


@attrs.frozen
class ScopeEntry:
    """A scope of the reference: its argument, where it may open, and what it does here."""

    name: str
    parse_arg: Callable[[str], str]
    parents: frozenset[str]
    status: str
    reason: str


# -- value forms -------------------------------------------------------------------------


def _bool_or_interval(text: str) -> bool | float | None:
    """`true`, `false`, an interval or `never` (`bounce-upon-no-mx 30m`)."""
    try:
        return v.parse_bool(text)
    except ValueError:
        pass
    try:
        return v.parse_interval_or_never(text)
    except ValueError:
        message = f"expected yes, no, an interval such as 30m, or never, not {text!r}"
        raise ValueError(message) from None


def _any(text: str) -> str:
    """Any text, even none (`backoff-notify ""`)."""
    return text.strip()


def _emails(text: str) -> tuple[str, ...]:
    """`a@x.com,b@y.com`, or `""` (none: clears an inherited list)."""
    words = [w for w in re.split(r"[,\s]+", text.strip().strip('"').strip()) if w]
    return tuple(v.parse_email(w) for w in words)


def _global_source_host(text: str) -> v.SourceHost | None:
    """`IP HOSTNAME`, or `CIDR HOSTNAME` (None for a range: not expanded yet; warned)."""
    parts = text.split()
    if len(parts) == 2 and "/" in parts[0]:
        network = v.parse_cidr(parts[0])
        v.parse_hostname(parts[1])
        if network.num_addresses > 1:
            return None
        return v.SourceHost(str(network.network_address), v.parse_hostname(parts[1]))
    return v.parse_source_host(text)


def _names(text: str) -> tuple[str, ...]:
    words = tuple(w for w in re.split(r"[,\s]+", text.strip()) if w)
    if not words:
        raise ValueError("expected one or more names, e.g. a,b")
    return words


def _int_or_auto(text: str) -> int | None:
    if text.strip().lower() == "auto":
        return None
    return v.parse_int(text)


def _cidr_rate(text: str) -> tuple[v.IPNetwork, Any]:
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise ValueError(f"expected CIDR RATE, e.g. 1.2.3.4 600/h, not {text!r}")
    return v.parse_cidr(parts[0]), _volume_or_rate(parts[1])


def _cidr_int(text: str) -> tuple[v.IPNetwork, int]:
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected CIDR N, e.g. 173.194/16 50, not {text!r}")
    return v.parse_cidr(parts[0]), v.parse_int(parts[1])


def _host_int(text: str) -> tuple[str, int]:
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"expected MX-NAME N, e.g. *.aspmx.l.google.com 5, not {text!r}")
    return parts[0].lower(), v.parse_int(parts[1])


def _volume_rate(text: str) -> tuple[int, float] | None:
    """`1M/1h`, `6g/10h`, `unlimited` or `0`: bytes per period."""
    word = text.strip().lower()
    if word in ("unlimited", "0"):
        return None
    match = re.fullmatch(r"(\d+)\s*([bkmgt]?)\s*/\s*(\d*)\s*([a-z]+)", word)
    rate = v.parse_rate(f"1/{match.group(3)}{match.group(4)}") if match else None
    if match is None or rate is None:
        raise ValueError(f"expected a volume per period such as 1M/1h, not {text!r}")
    return v.parse_size(match.group(1) + match.group(2)), rate.per_seconds


def _volume_or_rate(text: str) -> Any:
    try:
        return v.parse_rate(text)
    except ValueError:
        return _volume_rate(text)


def _rate_list(text: str) -> tuple[Any, ...]:
    """`400/day` or `1/day,2/day,3/day` (max-cold-virtual-mta-msg)."""
    return tuple(v.parse_rate(item) for item in text.split(",") if item.strip())


def _regex(text: str) -> re.Pattern[str]:
    match = re.fullmatch(r"/(.*)/([i]*)", text.strip())
    if not match:
        raise ValueError(f"expected /REGEX/, e.g. /^bounce@/, not {text!r}")
    try:
        return re.compile(match.group(1), re.IGNORECASE if match.group(2) else 0)
    except re.error as exc:
        raise ValueError(f"bad regular expression {match.group(1)!r}: {exc}") from None


def _address_or_regex(text: str) -> Any:
    word = text.strip()
    return _regex(word) if word.startswith("/") else v.parse_domain_pattern_or_email(word)


def _pattern_result(text: str) -> tuple[re.Pattern[str], str]:
    """`/REGEX/ virtual-mta=NAME` (`mail-from`, `rcpt-to` of a `<pattern-list>`)."""
    match = re.fullmatch(r"\s*(/(?:[^/\\]|\\.)*/[i]*)\s+(\S.*)", text)
    if not match:
        raise ValueError(f"expected /REGEX/ RESULT, e.g. /^abc/ virtual-mta=mta1, not {text!r}")
    return _regex(match.group(1)), match.group(2).strip()


def _routing_pattern(text: str) -> tuple[re.Pattern[str], str]:
    """`/REGEX/ RESULT`: a `<pattern-list>` line (patterns ignore case).

    RESULT is `virtual-mta=NAME`, `recipient-priority=N` (0-100) or both, joined by a
    comma (`virtual-mta=high, recipient-priority=60`); it is kept normalised as
    `virtual-mta=NAME,recipient-priority=N` (see `model.routing_result`).
    """
    regex, result = _pattern_result(text)
    vmta, priority = None, None
    for part in (p.strip() for p in result.split(",")):
        key, _, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "virtual-mta" and value and vmta is None:
            vmta = v.parse_name(value)
        elif key == "recipient-priority" and value.isdigit() and priority is None:
            priority = int(value)
            if priority > 100:
                raise ValueError(f"recipient-priority is 0 to 100, not {priority}")
        else:
            raise ValueError(
                "expected /REGEX/ virtual-mta=NAME and/or recipient-priority=N, e.g. "
                f"/^vip@/ virtual-mta=fast,recipient-priority=90, not {text!r}"
            )
    parts = [f"virtual-mta={vmta}"] if vmta else []
    parts += [f"recipient-priority={priority}"] if priority is not None else []
    return re.compile(regex.pattern, re.IGNORECASE), ",".join(parts)


def _header_pattern(text: str) -> tuple[str, re.Pattern[str], str]:
    """`header HEADER-NAME /REGEX/ virtual-mta=NAME` (patterns ignore case, as mail-from)."""
    name, _, rest = text.strip().partition(" ")
    if not name or not rest.strip():
        raise ValueError(
            f"expected HEADER /REGEX/ RESULT, e.g. from /jsmith/ virtual-mta=x, not {text!r}"
        )
    regex, result = _routing_pattern(rest)
    return name.lower(), regex, result


def _two_words(example: str) -> Parser:
    def parse(text: str) -> tuple[str, str]:
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"expected two values, e.g. {example}, not {text!r}")
        return parts[0], parts[1]

    return parse


def _dkim_headers(text: str) -> str:
    """`dkim-headers foo, /bar/` (or `""`): header names and /regular expressions/."""
    for word in (w.strip().strip('"').strip() for w in text.split(",")):
        if len(word) > 1 and word.startswith("/") and word.endswith("/"):
            try:
                re.compile(word[1:-1])
            except re.error as exc:
                raise ValueError(f"bad regular expression {word!r}: {exc}") from None
        elif word and not re.fullmatch(r"[!-9;-~]+", word):
            raise ValueError(f"expected header names or /REGEX/, not {word!r}")
    return text.strip()


def _rewrite_mail_from(text: str) -> tuple[str, str]:
    """`mail-from SOURCE TARGET` of a `<rewrite-list>` (see model.RewriteList)."""
    source, target = _two_words("foo@* *@bar.com")(text)
    for word in (source, target):
        if word != "<>" and (word.count("@") != 1 or word.startswith("@") or word.endswith("@")):
            raise ValueError(f"expected an address, LOCAL@*, *@DOMAIN or <>, not {word!r}")
    if not target.isascii():
        raise ValueError(f"the target address must be ASCII, not {target!r}")
    if source == "<>" and "*" in target:
        raise ValueError("the target of <> cannot use *: there is no source address")
    if target != "<>" and target != "*@*" and "*" in target.replace("*@", "").replace("@*", ""):
        raise ValueError(f"* stands for a whole local part or domain, not {target!r}")
    return source.lower(), target


def _rewrite_from_domain(text: str) -> tuple[str, str]:
    """`from-domain DOMAIN-PATTERN DOMAIN` of a `<rewrite-list>`."""
    pattern, target = _two_words("*.port25.com bouncedomain.com")(text)
    return v.parse_domain_pattern(pattern), v.parse_hostname(target).lower()


def _category_pattern(text: str) -> tuple[re.Pattern[str], str]:
    """`/REGEX/ CATEGORY`: one line (or several joined) of `<bounce-category-patterns>`."""
    match = re.fullmatch(r"/(.*)/\s*([A-Za-z0-9_-]+)", text.strip(), re.DOTALL)
    if not match:
        raise ValueError(
            f"expected /REGEX/ CATEGORY, e.g. /mailbox +full/ quota-issues, not {text!r}"
        )
    try:
        return re.compile(match.group(1)), match.group(2).lower()
    except re.error as exc:
        raise ValueError(f"bad regular expression {match.group(1)!r}: {exc}") from None


def _domain_list(text: str) -> tuple[str, ...]:
    """`yahoo.com,gmail.com` or `.com,.co.uk` (domain-macro)."""
    names = tuple(w.lower() for w in re.split(r"[,\s]+", text.strip()) if w)
    if not names:
        raise ValueError("expected a list of domains, e.g. yahoo.com,ymail.com")
    for name in names:
        v.parse_hostname(name.lstrip("."))
    return names


def _macro(text: str) -> tuple[str, tuple[str, ...]]:
    """`domain-macro NAME DOMAIN-LIST`."""
    name, _, rest = text.strip().partition(" ")
    if not name or not rest.strip():
        raise ValueError(
            f"expected NAME DOMAIN-LIST, e.g. gmail gmail.com,googlemail.com, not {text!r}"
        )
    return v.parse_name(name), _domain_list(rest)


def _privacy(text: str) -> str:
    word = text.split()[0].lower() if text.split() else ""
    choices = ("retain", "redact", "siphash", "siphash-hexkey", "hmac-sha256", "hmac-sha256-hexkey")
    if word not in choices:
        raise ValueError(
            f"expected one of {', '.join(choices)} [KEY], e.g. siphash secret, not {text!r}"
        )
    key = text.strip()[len(word) :].strip().strip('"')
    if word.endswith("-hexkey"):
        try:
            bytes.fromhex(key)
        except ValueError:
            raise ValueError(f"{word}: the key is not hex: {key!r}") from None
    if word != "retain" and word != "redact" and not key:
        raise ValueError(f"{word} needs a key, e.g. {word} secret")
    size = len(bytes.fromhex(key)) if word.endswith("-hexkey") else len(key.encode())
    if word.startswith("siphash") and size > 16:
        raise ValueError(f"{word}: a SipHash key is at most 16 bytes")
    return text.strip()


def _ciphers(text: str) -> str:
    """An OpenSSL cipher list that selects at least one cipher (`*-tls-ciphers`)."""
    from OpenSSL import SSL  # the only use of OpenSSL in the config package

    word = v.parse_string(text)
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(word.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ValueError(
            f"expected an OpenSSL cipher list, e.g. HIGH:!aNULL, not {text!r}"
        ) from None
    return word


def _http_access_level(text: str) -> str:
    return text.strip()


#: Value form -> (parser, how the docs table names it).
FORMS: Mapping[str, tuple[Parser, str]] = {
    "bool": (v.parse_bool, "yes/no"),
    "int": (v.parse_int, "number"),
    "int-or-auto": (_int_or_auto, "number or auto"),
    "size": (v.parse_size, "size (10K 5M 1G)"),
    "interval": (v.parse_interval, "interval (30s 10m 4h)"),
    "interval-or-never": (v.parse_interval_or_never, "interval or never"),
    "bool-or-interval": (_bool_or_interval, "yes/no, interval or never"),
    "rate": (v.parse_rate, "rate (100/h)"),
    "rate-list": (_rate_list, "rates (400/day or 1/day,2/day)"),
    "volume-rate": (_volume_rate, "volume per period (1M/1h)"),
    "cidr-rate": (_cidr_rate, "CIDR rate (1.2.3.4 600/h)"),
    "cidr-int": (_cidr_int, "CIDR N"),
    "host-int": (_host_int, "MX-NAME N"),
    "text": (v.parse_string, "text"),
    "any": (_any, "text (may be empty)"),
    "name": (v.parse_name, "name"),
    "names": (_names, "names (a,b)"),
    "file": (v.parse_string, "file"),
    "email": (v.parse_email, "email address"),
    "emails": (_emails, 'email addresses (a@x.com,b@y.com) or ""'),
    "address-or-regex": (_address_or_regex, "address, domain or /REGEX/"),
    "domain": (v.parse_domain_pattern, "domain"),
    "domains": (_domain_list, "domains (a.com,b.com)"),
    "host": (v.parse_hostname, "host name"),
    "cidr": (v.parse_cidr, "CIDR"),
    "host-port": (v.parse_host_port, "IP:PORT"),
    "url": (v.parse_url, "URL"),
    "pattern": (_pattern_result, "/REGEX/ RESULT"),
    "smtp-hosts": (v.parse_smtp_hosts, "smtp-hosts value"),
    "routing-pattern": (
        _routing_pattern,
        "/REGEX/ virtual-mta=NAME and/or recipient-priority=N",
    ),
    "header-pattern": (_header_pattern, "HEADER /REGEX/ RESULT"),
    "rewrite": (_two_words("*@a.com *@b.com"), "SOURCE TARGET"),
    "rewrite-mail-from": (_rewrite_mail_from, "SOURCE-ADDRESS TARGET-ADDRESS"),
    "dkim-headers": (_dkim_headers, "header names or /REGEX/ (a, /b/)"),
    "rewrite-from-domain": (_rewrite_from_domain, "DOMAIN-PATTERN DOMAIN"),
    "source-host": (v.parse_source_host, "IP HOSTNAME"),
    "global-source-host": (_global_source_host, "IP HOSTNAME (or CIDR HOSTNAME)"),
    "domain-key": (v.parse_domain_key, "SELECTOR,DOMAIN,KEYFILE"),
    "macro": (_macro, "NAME DOMAIN-LIST"),
    "category-pattern": (_category_pattern, "/REGEX/ CATEGORY"),
    "privacy": (_privacy, "retain|redact|siphash|hmac-sha256... [KEY]"),
    "mgmt-level": (_http_access_level, "text"),
    "ciphers": (_ciphers, "OpenSSL cipher list"),
}

_ENTRIES: list[Entry] = []


def _add(
    names: str,
    scopes: Iterable[str],
    form: str,
    default: str,
    status: str,
    reason: str,
    repeatable: bool = False,
    caveat: Callable[[str], str | None] | None = None,
) -> None:
    """Catalog each of `names` (space-separated) in each of `scopes`."""
    parse, label = FORMS[form] if ":" not in form else _choice(form)
    for name in names.split():
        for scope in scopes:
            _ENTRIES.append(
                Entry(name, scope, parse, label, default, status, reason, repeatable, caveat)
            )


def _choice(form: str) -> tuple[Parser, str]:
    """`choice:a|b|c`."""
    choices = form.split(":", 1)[1].split("|")
    return v.parse_choice(*choices), " | ".join(choices)


G, S, D = (reg.GLOBAL,), (reg.SOURCE,), (reg.DOMAIN,)
VM, POOL, A = (reg.VMTA,), (reg.VMTA_POOL,), (reg.ACCT_FILE,)
LISTENERS = (reg.SMTP_LISTENER, reg.API_LISTENER)
Y, N = NOT_YET, NO_EFFECT

_TLS_VERSIONS_REASON = (
    "the versions allowed: the lowest one allowed is the minimum (TLS 1.3 is always "
    "allowed); the system OpenSSL policy may still refuse SSLv3, TLS 1.0 and 1.1"
)

#: Why the mailmerge directives do nothing (docs/config.rst argues it at length).
_MAILMERGE = (
    "mailmerge (XMRG) is not supported: XMRG, XDFN and XPRT are refused with "
    "502 5.5.1 saying so; submit one message per recipient (or use the Transmissions API)"
)

# -- global ----------------------------------------------------------------------------
_add(
    "run-as-root",
    G,
    "bool",
    "true",
    N,
    "the user is twistd's --uid/--gid or the service manager's; mtaserver never needs root",
)
_add(
    "thread-min-priority thread-max-priority",
    G,
    "int",
    "15 / 0",
    N,
    "Twisted runs one reactor thread; OS thread priorities are not set",
)
_add("thread-reuse", G, "bool", "true", N, "thread pools are Twisted's and always reuse threads")
_add(
    "spool-delete-corrupted",
    G,
    "bool",
    "false",
    N,
    "a torn or corrupt message file is always set aside for inspection, never deleted",
)
_add(
    "spool-max-recipients",
    G,
    "int-or-auto",
    "auto",
    Y,
    "no recipient cap across the spool; spool-min-free-space guards the disk",
)
_add(
    "sync-msg-create sync-msg-update",
    G,
    "bool",
    "true",
    N,
    "the spool always fsyncs before answering 250; durability cannot be turned off",
)
_add("smtp-server-tls-ca-file", G, "file", "", Y, "client certificates are not requested")
_add(
    "smtp-server-tls-allow-sslv3 smtp-server-tls-allow-tlsv1 smtp-server-tls-allow-tlsv1.1 "
    "smtp-server-tls-allow-tlsv1.2",
    G,
    "bool",
    "no / no / no (PowerMTA: yes) / yes",
    IMPLEMENTED,
    _TLS_VERSIONS_REASON,
)
_add(
    "smtp-server-tls-ciphers",
    G,
    "ciphers",
    "OpenSSL's (PowerMTA: HIGH:!ADH:@STRENGTH)",
    IMPLEMENTED,
    "the OpenSSL cipher list STARTTLS offers for TLS 1.2 and older",
)
_add(
    "smtp-source-host",
    G,
    "global-source-host",
    "",
    IMPLEMENTED,
    "the source IP and EHLO name of the {default} queues and of each <virtual-mta> "
    "without its own (in turn); a CIDR range is not yet expanded (a warning)",
    repeatable=True,
    caveat=lambda text: (
        None
        if _global_source_host(text) is not None
        else "smtp-source-host CIDR is not yet implemented: a range is not expanded to the "
        "host's addresses; give each IP on its own line (this line is ignored)"
    ),
)
_add("alias", G, "rewrite", "", Y, "local aliases are not expanded", repeatable=True)
_add(
    "smtp-ip smtp-port",
    G,
    "text",
    "0.0.0.0 / 25",
    Y,
    "deprecated in 5.0; use smtp-listener (without one, nothing listens)",
)
_add("smtp-await-slot", G, "bool", "false", Y, "over total-max-smtp-in, a session gets 421")
_add("host-id", G, "int", "0", N, "message IDs are unique without a host number")
_add("domain-suffix", G, "host", "", Y, "unqualified domains are not completed")
_add("mailmerge-expands-undefined-variables", G, "bool", "true", N, _MAILMERGE)
_add("pmc-acct-min-free-space", G, "size", "unlimited", N, "PowerMTA Management Console only")
_add(
    "relay-address",
    G,
    "address-or-regex",
    "",
    IMPLEMENTED,
    "any client may send to this address (or to addresses /REGEX/ finds, ignoring case)",
    repeatable=True,
)
_add(
    "relay-debug",
    G,
    "bool",
    "false",
    IMPLEMENTED,
    "yes: a recipient refused for relaying gets 450 4.7.1 (retried) instead of 550 5.7.1",
)
_add(
    "invalid-virtual-mta-fallback",
    G,
    "name",
    "",
    IMPLEMENTED,
    "with reject-invalid-virtual-mta no: the vmta an unknown one is replaced by",
)
_add("include-headers-from", G + VM + POOL, "file", "", Y, "no headers are added from a file")
_add(
    "domain-macro",
    G,
    "macro",
    "",
    IMPLEMENTED,
    "<domain $NAME> applies to each domain of the macro",
    repeatable=True,
)
_add("pickup", G, "text", "", Y, "no pickup directory is read", repeatable=True)
_add("pickup-retry-interval", G, "interval", "", Y, "no pickup directory is read")
_add("pickup-remove-dot", G, "bool", "false", Y, "no pickup directory is read")
_add("dummy-smtp-ip", G, "text", "", Y, "no blackhole SMTP server")
_add("dummy-smtp-port", G, "int", "0 (disabled)", Y, "no blackhole SMTP server")
_add(
    "dummy-smtp-await-slot dummy-smtp-has-chunking dummy-smtp-has-pipelining dummy-smtp-has-verp",
    G,
    "bool",
    "false",
    Y,
    "no blackhole SMTP server",
)
_add("dummy-smtp-latency", G, "int", "0", Y, "no blackhole SMTP server")
_add("dummy-smtp-update-stats", G, "bool", "true", Y, "no blackhole SMTP server")
_add(
    "http-redirect-to-https",
    G,
    "bool",
    "true",
    N,
    "the management port serves HTTPS when http-mgmt-tls-certificate is set, else plain "
    "HTTP on loopback only; it never redirects",
)
_add(
    "http-csrf-protection",
    G,
    "bool",
    "true",
    N,
    "state changes are POST only with an API key or session; GET never changes state",
)
_add("http-strict-transport-security-max-age", G, "int", "0", Y, "no HSTS header is sent")
_add("http-mgmt-source no-http-mgmt-source", G, "cidr", "", Y, "use http-access", repeatable=True)
_add(
    "http-tls-allow-sslv3 http-tls-allow-tlsv1 http-tls-allow-tlsv1.1 http-tls-allow-tlsv1.2",
    G,
    "bool",
    "false / false / true / true",
    N,
    "TLS versions follow the system OpenSSL policy (TLS 1.2 and later)",
)
_add("http-tls-ciphers", G, "text", "HIGH:!ADH:@STRENGTH", Y, "ciphers are the OpenSSL defaults")
_add("http-tls-ca-file", G, "file", "", Y, "client certificates are not requested")
_add(
    "http-log-tls http-log-data http-log-requests",
    G,
    "bool",
    "false",
    Y,
    "management requests are logged at the standard level only",
)
_add("http-default-max-items", G, "int", "10", N, "the web console pages its own lists")
_add(
    "http-default-sort-order",
    G,
    "choice:rcpt|name|size",
    "rcpt",
    N,
    "the web console sorts its own lists",
)
_add(
    "mx-connection-limit",
    G,
    "host-int",
    "",
    Y,
    "only per-queue max-smtp-out limits",
    repeatable=True,
)
_add(
    "ip-connection-limit",
    G,
    "cidr-int",
    "",
    Y,
    "only per-queue max-smtp-out limits",
    repeatable=True,
)
_add("use-proxy", G + VM, "names", "none", Y, "no outbound HAProxy protocol")
_add("enable-signals", G, "bool", "false", N, "SparkPost Signals upload is SparkPost's service")

# -- <spool> ---------------------------------------------------------------------------
_add(
    "delete-file-holders",
    (SPOOL,),
    "bool",
    "false",
    N,
    "no file holders are left: a message's files go when it is done",
)
_add(
    "deliver-only",
    (SPOOL,),
    "bool",
    "false",
    IMPLEMENTED,
    "yes: the spool's messages are delivered, new mail is refused (SMTP 451 4.3.2, API 503)",
)
_add("priority", (SPOOL,), "int", "1", Y, "one spool directory (the spool directive)")
_add("min-free-space", (SPOOL,), "size", "0", IMPLEMENTED, "spool-min-free-space")

# -- <bounce-processor>, <feedback-loop-processor> (the registry has the rest) -------------
_PROCESSORS = (BOUNCE_PROCESSOR, FBL_PROCESSOR)
_add(
    "deliver-email",
    _PROCESSORS,
    "bool",
    "",
    N,
    "deprecated: deliver-matched-email and deliver-unmatched-email decide",
)

# -- <email-patterns>, <bounce-category-patterns> ----------------------------------------
_add(
    "body-pattern-file",
    (EMAIL_PATTERNS,),
    "file",
    "",
    Y,
    "report bodies are read by the built-in ARF/DSN parsers only",
    repeatable=True,
)
_add("log-match-info", (EMAIL_PATTERNS,), "bool", "false", Y, "no pattern files are read")
_add(
    "pattern",
    (BOUNCE_CATEGORY_PATTERNS,),
    "category-pattern",
    "",
    IMPLEMENTED,
    "the first matching line gives the category; the built-in rules when none matches",
    repeatable=True,
)

# -- <source> --------------------------------------------------------------------------
_add(
    "date-header-time",
    S,
    "choice:reception|delivery",
    "reception",
    Y,
    "an added Date: is the reception time",
)
_add("bcc", S, "email", "", Y, "no copies are sent", repeatable=True)
_add(
    "allow-auth",
    S,
    "bool",
    "true",
    IMPLEMENTED,
    "no: AUTH is not offered, and the AUTH command gets 502 5.5.1",
)
_add(
    "remove-header",
    S,
    "names",
    "",
    IMPLEMENTED,
    "the named header fields are dropped at reception",
    repeatable=True,
)
_add(
    "remove-received-headers",
    S,
    "bool",
    "false",
    IMPLEMENTED,
    "the message's own Received: fields are dropped",
)
_add("allow-mailmerge", S, "bool", "false", N, _MAILMERGE)
_add("broken-auth-clients", S, "bool", "false", N, "AUTH= with a space is always understood")
_add(
    "verp-default",
    S,
    "bool",
    "false",
    IMPLEMENTED,
    "MAIL FROM sender-rcpt=domain@senderdomain, one recipient a transaction",
)
_add(
    "check-dkim-inbound trace-dkim-check trace-spf-check check-spf-inbound "
    "check-spf-inbound-best-guess check-iprev-inbound trace-iprev-check",
    S,
    "bool",
    "false",
    Y,
    "no inbound DKIM, SPF or iprev checks",
)
_add("check-spf-inbound-max-void-lookups", S, "int", "2", Y, "no inbound SPF checks")
_add(
    "reject-iprev-check-temperror reject-iprev-check-permerror reject-iprev-check-fail",
    S,
    "bool",
    "false",
    Y,
    "no inbound iprev checks",
)
_add(
    "reject-spf-check-temperror reject-spf-check-permerror reject-spf-check-fail",
    S,
    "bool",
    "true",
    Y,
    "no inbound SPF checks",
)
_add(
    "reject-invalid-virtual-mta",
    S,
    "bool",
    "true",
    IMPLEMENTED,
    "no: an unknown virtual MTA is replaced by invalid-virtual-mta-fallback",
)
_add(
    "disconnect-on-transient-error",
    S,
    "bool",
    "false",
    IMPLEMENTED,
    "yes: where a 4xx reply would be sent, the connection is closed instead",
)
_add("hide-message-source", S, "bool", "false", IMPLEMENTED, "Received: without the client")
_add(
    "too-many-rcpts-fails-message",
    S,
    "bool",
    "false",
    Y,
    "recipients over max-rcpt-per-message get 452, the message goes on",
)
_add("pattern-list", S, "name", "", IMPLEMENTED, "chooses the virtual MTA by sender or recipient")
_add("rewrite-list", S, "name", "", IMPLEMENTED, "rewrites MAIL FROM and the From domain")
_add(
    "rewrite-list",
    VM + POOL,
    "name",
    "",
    IMPLEMENTED,
    "rewrites MAIL FROM on the wire and the From domain at delivery (the vmta's, else the "
    "pool's; after the source's)",
)
_add("process-x-envid", S, "bool", "false", IMPLEMENTED, "X-EnvID: gives the envId")
_add(
    "process-x-dkim-options",
    S,
    "bool",
    "false",
    IMPLEMENTED,
    "X-DKIM-Options s=, d=, i= choose the key and identity, key-list= a <domain-key-list>; "
    "q= may only be dns/txt",
)
_add("retain-x-dkim-options", S, "bool", "false", IMPLEMENTED, "else the header is removed")
_add(
    "process-x-dkim-key retain-x-dkim-key",
    S,
    "bool",
    "false",
    Y,
    "DKIM keys come from the config only",
)
_add("jobid-prefix", S, "text", "", Y, "job IDs are taken as given")
_add("jobid-header", S, "text", "x-job", IMPLEMENTED, "the header process-x-job reads")
_add(
    "retain-x-job retain-x-virtual-mta",
    S,
    "bool",
    "false",
    IMPLEMENTED,
    "the processed header stays in the message",
)
_add("retain-x-schedule", S, "bool", "false", Y, "X-Schedule: is not read")
_add("add-x-virtual-mta-header", S, "bool", "false", Y, "no X-Virtual-MTA header is added")
_add("source-group", S, "name", "", Y, "no <source-group> limits yet")
_add("process-x-schedule", S, "bool", "false", Y, "X-Schedule: is not read")
_add("allow-chunking", S, "bool", "true", Y, "CHUNKING is not offered")
_add("allow-empty-x-virtual-mta", S, "bool", "false", Y, "an empty X-Virtual-MTA is refused")
_add("accept-invalid-recipients", S, "bool", "false", Y, "invalid addresses are refused")
_add(
    "always-allow-api-submission",
    S,
    "bool",
    "false",
    N,
    "PowerMTA's allow-mailmerge yes for its submission libraries: " + _MAILMERGE,
)
_add("auto-qualify-domain", S, "bool", "true", Y, "unqualified addresses are refused")

# -- <smtp-user>, <source-group> ------------------------------------------------------------
_add(
    "authentication-method",
    (reg.SMTP_USER,),
    "choice:password|system|certificate",
    "password",
    IMPLEMENTED,
    "password only: system and certificate are not yet",
    caveat=lambda text: (
        None
        if text.strip().lower() == "password"
        else f"authentication-method {text.strip()} is not yet implemented: password only"
    ),
)
_add("tls-certificate", (reg.SMTP_USER,), "file", "", Y, "no certificate authentication")
_add(
    "max-smtp-in reserved-smtp-in",
    (SOURCE_GROUP,),
    "int",
    "unlimited",
    Y,
    "no <source-group> limits yet; max-smtp-in in <source> limits each client IP",
)

# -- <domain> --------------------------------------------------------------------------
_add(
    "max-errors-per-connection",
    D,
    "int",
    "unlimited",
    IMPLEMENTED,
    "after this many 4xx/5xx replies the connection ends",
)
_add("check-spf-outbound", D, "bool", "false", Y, "no outbound SPF check")
_add("max-events-recorded", D, "int", "10", N, "queue events live in the acct records")
_add("disable-acct-records", D, "names", "", Y, "every acct record is written")
_add("bcc-upon-delivery", D, "email", "", Y, "no copies are sent")
_add(
    "allow-priority-interruption allow-priority-interruption-during-transfer",
    D,
    "bool",
    "yes / no",
    N,
    "one priority: queues do not interrupt each other",
)
_add(
    "queue-priority",
    D,
    "int",
    "50",
    IMPLEMENTED,
    "higher-priority queues take freed connection slots first (total-max-smtp-out)",
)
_add("delivery-priority", D, "int", "50", Y, "deprecated; use queue-priority")
_add("track-recipient-events", D, "bool", "false", Y, "recipient events are acct records")
_add("dkim-add-body-limit dkim-add-timestamp", D, "bool", "false", Y, "no l= or t= tags")
_add(
    "dkim-algorithm",
    D,
    "choice:rsa-sha1|rsa-sha256",
    "rsa-sha256",
    IMPLEMENTED,
    "for RSA keys; an Ed25519 key signs ed25519-sha256",
)
_add(
    "dkim-body-canon dkim-headers-canon",
    D,
    "choice:simple|relaxed",
    "relaxed",
    Y,
    "relaxed/relaxed",
)
_add("dkim-expire-after", D, "interval-or-never", "never", Y, "no x= tag")
_add("dkim-query-method", D, "text", "dns/txt", N, "dns/txt is the only method")
_add(
    "dkim-headers",
    D,
    "dkim-headers",
    "",
    IMPLEMENTED,
    "names or /regexes/ signed besides the usual set",
    repeatable=True,
)
_add("dkim-identity-fallback", D, "text", "", Y, "no fallback identity")
_add("dkim-disallow-adding-headers", D, "names", "", Y, "the signed headers are a fixed list")
_add("queue-to", D, "any", "", IMPLEMENTED, "queue this domain's mail in DOMAIN's queue")
_add(
    "source-ip-max-connect-rate",
    D,
    "cidr-rate",
    "unlimited",
    IMPLEMENTED,
    "new connections of the domain per source IP in CIDR",
    repeatable=True,
)
_add(
    "source-ip-max-msg-rate",
    D,
    "cidr-rate",
    "unlimited",
    IMPLEMENTED,
    "messages of the domain per source IP in CIDR",
    repeatable=True,
)
_add(
    "source-ip-max-data-volume-rate",
    D,
    "cidr-rate",
    "unlimited",
    Y,
    "rates are per queue",
    repeatable=True,
)
_add(
    "max-msg-per-hour backoff-max-msg-per-hour",
    D,
    "int",
    "unlimited",
    Y,
    "deprecated; use max-msg-rate",
)
_add(
    "max-data-volume-rate backoff-max-data-volume-rate",
    D,
    "volume-rate",
    "unlimited",
    Y,
    "no data volume limits",
)
_add("retry-recipients-after", D, "interval-or-never", "", Y, "recipients retry with the queue")
_add(
    "backoff-notify",
    D,
    "emails",
    "",
    IMPLEMENTED,
    "mailed (from the postmaster) when a queue of the domain enters or leaves backoff mode",
)
_add(
    "disabled-source-ip-notify",
    D,
    "emails",
    "",
    IMPLEMENTED,
    "mailed when a source of a queue of the domain is disabled and when it is enabled again",
)
_add(
    "backoff-to-normal-after-delivery",
    D,
    "bool",
    "false",
    IMPLEMENTED,
    "a delivery in backoff mode returns the queue to normal",
)
_add(
    "backoff-upon-all-sources-disabled",
    D,
    "bool",
    "false",
    IMPLEMENTED,
    "a queue whose every source is disabled goes into backoff mode",
)
_add(
    "reenable-source-ip-after",
    D,
    "interval-or-never",
    "never",
    IMPLEMENTED,
    "how long disable-source-ip disables a source without reenable-after=",
)
_add(
    "max-cold-virtual-mta-msg",
    D,
    "rate-list",
    "0",
    IMPLEMENTED,
    "the day's first N messages a domain gets from a warm vmta go to its cold one",
)
_add(
    "reroute-to-virtual-mta backoff-reroute-to-virtual-mta",
    D,
    "name",
    "",
    Y,
    "no rerouting to another virtual MTA",
)
_add(
    "allow-cancel-during-transfer",
    D,
    "bool",
    "false",
    N,
    "a delete never cuts a transfer in progress",
)
_add(
    "smtp-data-termination-timeout",
    D,
    "interval",
    "10m",
    IMPLEMENTED,
    "how long to wait for the reply to the final dot (unset: the command timeout)",
)
_add("use-unencrypted-plain-auth", D, "bool", "false", Y, "AUTH only over TLS")
_add(
    "smtp-553-means-invalid-mailbox smtp-421-means-mx-unavailable",
    D,
    "bool",
    "false",
    Y,
    "replies are classified by their codes",
)
_add("replace-smtp-421-service-response", D, "bool", "false", Y, "421 replies are logged as is")
_add(
    "bounce-upon-no-mx",
    D,
    "bool-or-interval",
    "false",
    IMPLEMENTED,
    "a domain without MX: true bounces at once (5.4.4); INTERVAL bounces mail queued "
    "that long and sends the rest to its A record",
)
_add(
    "bounce-upon-5xx-greeting bounce-upon-pix-transfer-failure bounce-upon-transfer-failure",
    D,
    "bool",
    "false",
    Y,
    "these failures are retried",
)
_add(
    "smtp-greeting-timeout",
    D,
    "interval",
    "5m",
    IMPLEMENTED,
    "how long to wait for the server's 220 greeting",
)
_add("data-send-timeout", D, "interval", "", Y, "the command timeouts apply")
_add(
    "ignore-8bitmime ignore-chunking ignore-pipelining ignore-dsn",
    D,
    "bool",
    "false",
    IMPLEMENTED,
    "the extension is used as if the server had not offered it",
)
_add(
    "max-rcpt-per-message",
    D,
    "int",
    "unlimited",
    Y,
    "max-rcpt-per-transaction splits each transaction; a message is not capped per queue",
)
_add(
    "backoff-max-smtp-out",
    D,
    "int",
    "20",
    IMPLEMENTED,
    "the queue's connection limit in backoff mode (unset: one connection)",
)
_add(
    "source-ip-max-smtp-out",
    D,
    "cidr-int",
    "unlimited",
    IMPLEMENTED,
    "connections of the domain at once per source IP in CIDR",
    repeatable=True,
)
_add(
    "max-msg-per-hour backoff-max-msg-per-hour",
    D,
    "int",
    "unlimited",
    IMPLEMENTED,
    "deprecated: N is max-msg-rate (backoff-max-msg-rate) N/h, unless that is set",
)
_add(
    "max-smtp-out-per-source-ip",
    D,
    "cidr-int",
    "unlimited",
    Y,
    "deprecated; use source-ip-max-smtp-out",
)
_add("smtp-out-rampup-interval", D, "interval", "0", Y, "connections open at once")
_add("max-connect-rate", D, "rate", "unlimited", IMPLEMENTED, "new connections per queue")
_add(
    "backoff-max-connect-rate",
    D,
    "rate",
    "max-connect-rate",
    IMPLEMENTED,
    "new connections per queue in backoff mode",
)
_add("connection-idle-timeout", D, "interval", "0", Y, "idle connections close at once")
_add("retry-upon-new-mail", D, "bool", "false", Y, "a queue retries on its schedule")
_add("pix-bug-workaround", D, "bool", "true", N, "no workaround is needed")
_add("route", D, "smtp-hosts", "", IMPLEMENTED, "the deprecated name of smtp-hosts")
_add(
    "assume-delivery-upon-data-termination-timeout",
    D,
    "bool",
    "false",
    IMPLEMENTED,
    "yes: no reply to the final dot in time is taken as delivered (a d record, 250 "
    "assumed); no: retried (the message may arrive twice)",
)
_add("disable-mx-rollup", D, "bool", "false", N, "queues are never rolled up by MX")
_add(
    "use-dane",
    D,
    "bool",
    "true",
    Y,
    "no DANE: TLSA records are not looked up; STARTTLS follows use-starttls and require-starttls",
)
_add(
    "use-mta-sts",
    D,
    "bool",
    "false",
    Y,
    "no MTA-STS (PowerMTA 5.5): policies are not fetched; STARTTLS follows use-starttls "
    "and require-starttls",
)
_add("reuse-ssl-session", D, "bool", "false", Y, "TLS sessions are not resumed")
_add(
    "smtp-tls-allow-tlsv1 smtp-tls-allow-tlsv1.1 smtp-tls-allow-tlsv1.2 smtp-tls-allow-sslv3",
    D,
    "bool",
    "no / no (PowerMTA: yes) / yes / no",
    IMPLEMENTED,
    "STARTTLS to the MX: " + _TLS_VERSIONS_REASON,
)
_add(
    "smtp-tls-ca-file",
    D,
    "file",
    "the system CAs",
    IMPLEMENTED,
    "the CAs (PEM) an MX certificate must chain to under require-starttls",
)
_add(
    "smtp-tls-ciphers",
    D,
    "ciphers",
    "OpenSSL's (PowerMTA: HIGH:!ADH:@STRENGTH)",
    IMPLEMENTED,
    "the OpenSSL cipher list for STARTTLS to the MX (TLS 1.2 and older)",
)
_add("discard-as-bounce", D, "bool", "false", Y, "type discard records d, not b")
_add(
    "file-format",
    D,
    "choice:newfile-plain|newfile-pickup|append-mbox",
    "newfile-plain",
    Y,
    "file delivery writes one plain file a message",
)
_add("file-destination", D, "file", "", Y, "use file-output-directory")
_add("command", D, "text", "", Y, "no pipe delivery (type pipe)")
_add("macro-variables-preserve-case", D, "bool", "false", Y, "no pipe delivery")
_add(
    "add-x-msys-api-header sparkpost-sandbox",
    D,
    "bool",
    "false",
    N,
    "SparkPost traffic redirection is SparkPost's service",
)
_add("sparkpost-ip-pool", D, "text", "", N, "SparkPost traffic redirection is SparkPost's service")

# -- <acct-file> -----------------------------------------------------------------------
_add("move-to", A, "file", "", IMPLEMENTED, "rotated files go to this directory")
_add("queue-filter", A, "names", "", Y, "every queue's records are written")
_add(
    "retry-interval",
    A,
    "interval",
    "5m",
    Y,
    "an acct pipe that dies restarts after 1s, growing to 60s",
)
_add("iso-times", A, "bool", "yes", N, "times are always YYYY-MM-DD HH:MM:SS+0000")
_add("user-string", A, "text", "", IMPLEMENTED, "the userstring field (name it in record-fields)")
_add("write-timeout", A, "interval", "1m", Y, "an acct pipe that stops reading is not timed out")
_add("world-readable", A, "bool", "no", IMPLEMENTED, "files are 0644, else 0640")
_add("count-moved-records", A, "bool", "false", Y, "no record counts")
_add(
    "privacy-policy",
    A,
    "privacy",
    "retain",
    IMPLEMENTED,
    "hides the local part of rcpt, orcpt and the rcpt in dsnDiag (not VERPed orig)",
)
_add(
    "http-webhook-log-verbose",
    A,
    "bool",
    "false",
    IMPLEMENTED,
    "yes: one log line per POST (batch id, records, bytes, accepted or why not, time)",
)

# -- <virtual-mta>, <virtual-mta-pool>, <domain-key-list> ------------------------------
_add("max-smtp-msg-rate", VM + POOL, "rate", "unlimited", Y, "rates are per queue")
_add("max-smtp-data-volume-rate", VM + POOL, "volume-rate", "unlimited", Y, "no volume limits")
_add(
    "cold-virtual-mta",
    VM,
    "name",
    "",
    IMPLEMENTED,
    "takes max-cold-virtual-mta-msg of this vmta's mail (several in turn)",
    repeatable=True,
)
_add(
    "domain-key",
    VM + POOL,
    "domain-key",
    "",
    IMPLEMENTED,
    "the virtual MTA's (then the pool's) keys sign before the global ones",
    repeatable=True,
)
_add(
    "domain-key",
    (DOMAIN_KEY_LIST,),
    "domain-key",
    "",
    IMPLEMENTED,
    "the list's keys: used only for a message whose X-DKIM-Options says key-list=NAME",
    repeatable=True,
    caveat=lambda text: _wildcard_key(text),
)
_add("max-smtp-out", POOL, "int", "", Y, "max-smtp-out applies per queue and virtual MTA")

# -- <pattern-list>, <rewrite-list>, <dns> ---------------------------------------------
_add(
    "mail-from rcpt-to",
    (PATTERN_LIST,),
    "routing-pattern",
    "",
    IMPLEMENTED,
    "the first matching line naming one chooses the virtual MTA or pool; "
    "recipient-priority=N orders a queue's recipients (higher first)",
    repeatable=True,
)
_add(
    "header",
    (PATTERN_LIST,),
    "header-pattern",
    "",
    IMPLEMENTED,
    "header lines are tried before mail-from and rcpt-to lines",
    repeatable=True,
)
_add(
    "mail-from",
    (REWRITE_LIST,),
    "rewrite-mail-from",
    "",
    IMPLEMENTED,
    "the first matching line rewrites the envelope sender",
    repeatable=True,
)
_add(
    "from-domain",
    (REWRITE_LIST,),
    "rewrite-from-domain",
    "",
    IMPLEMENTED,
    "the first matching line rewrites the From header's domain",
    repeatable=True,
)
_add("precached-domains-file", (DNS,), "file", "", Y, "no DNS precaching")
_add("precached-refresh-interval", (DNS,), "interval", "5m", Y, "no DNS precaching")
_add("precached-max-domains", (DNS,), "int", "500", Y, "no DNS precaching")

# -- <smtp-listener>, <transmissions-api-listener>, <transmissions-api> ------------------
_add(
    "await-slot",
    (reg.SMTP_LISTENER,),
    "bool",
    "false",
    Y,
    "over total-max-smtp-in, a session gets 421",
)
_add(
    "immediate-tls", (reg.SMTP_LISTENER,), "bool", "false", Y, "SMTP listeners start in plain text"
)
_add(
    "source",
    (reg.SMTP_LISTENER,),
    "name",
    "",
    Y,
    "sources are chosen by client IP (and {auth}) only",
)
_add(
    "tls-allow-tlsv1.2 tls-allow-tlsv1.1 tls-allow-tlsv1 tls-allow-sslv3",
    (reg.SMTP_LISTENER,),
    "bool",
    "the smtp-server-tls-allow-* values",
    IMPLEMENTED,
    "this listener's STARTTLS: " + _TLS_VERSIONS_REASON,
)
_add(
    "tls-ciphers",
    (reg.SMTP_LISTENER,),
    "ciphers",
    "smtp-server-tls-ciphers",
    IMPLEMENTED,
    "this listener's STARTTLS cipher list (TLS 1.2 and older)",
)
_add(
    "tls-allow-tlsv1.2 tls-allow-tlsv1.1 tls-allow-tlsv1 tls-allow-sslv3",
    (reg.API_LISTENER,),
    "bool",
    "true / true / false / false",
    N,
    "the API port offers TLS 1.2 and 1.3 only",
)
_add(
    "tls-ciphers",
    (reg.API_LISTENER,),
    "text",
    "HIGH:!ADH:@STRENGTH",
    Y,
    "the API port's ciphers are the OpenSSL defaults",
)
_add("tls-ca-file", LISTENERS, "file", "", Y, "client certificates are not requested")

# -- SparkPost Signals, HAProxy (chapter 10) -------------------------------------------
_SIGNALS_REASON = "SparkPost Signals upload is SparkPost's service"
_add("api-key upload-url custom-message-id-header", (SIGNALS,), "any", "", N, _SIGNALS_REASON)
_add(
    "engagement-tracking log-verbose process-x-sp-subaccount-id retain-x-sp-subaccount-id",
    (SIGNALS,),
    "bool",
    "false",
    N,
    _SIGNALS_REASON,
)
_add("min-free-space", (SIGNALS,), "size", "", N, _SIGNALS_REASON)
_add("privacy-policy", (SIGNALS,), "privacy", "retain", N, _SIGNALS_REASON)
_add("sender-or-from", (SIGNALS_FILTER,), "any", "", N, _SIGNALS_REASON, repeatable=True)
_add("server client", (PROXY,), "text", "", Y, "no outbound HAProxy protocol", repeatable=True)


def _no_arg(text: str) -> str:
    if text.strip():
        raise ValueError(f"this scope takes no argument, not {text!r}")
    return ""


def _optional_name(text: str) -> str:
    return v.parse_name(text) if text.strip() else ""


_TOP = frozenset({reg.GLOBAL})

#: The reference's scopes the registry does not define (the registry's own come first).
CATALOG_SCOPES: Mapping[str, ScopeEntry] = {
    s.name: s
    for s in (
        ScopeEntry(SPOOL, v.parse_string, _TOP, IMPLEMENTED, ""),
        ScopeEntry(SOURCE_GROUP, v.parse_name, _TOP, Y, "no <source-group> limits yet"),
        ScopeEntry(PATTERN_LIST, v.parse_name, _TOP, IMPLEMENTED, ""),
        ScopeEntry(REWRITE_LIST, v.parse_name, _TOP, IMPLEMENTED, ""),
        ScopeEntry(DOMAIN_KEY_LIST, v.parse_name, _TOP, IMPLEMENTED, ""),
        ScopeEntry(EMAIL_PATTERNS, _optional_name, _TOP, Y, "no pattern files are read"),
        ScopeEntry(BOUNCE_CATEGORY_PATTERNS, _no_arg, _TOP, IMPLEMENTED, ""),
        ScopeEntry(DNS, _no_arg, _TOP, Y, "no DNS precaching"),
        ScopeEntry(SIGNALS, _optional_name, _TOP, N, _SIGNALS_REASON),
        ScopeEntry(SIGNALS_FILTER, _optional_name, _TOP | {SIGNALS}, N, _SIGNALS_REASON),
        ScopeEntry(PROXY, v.parse_name, _TOP, Y, "no outbound HAProxy protocol"),
    )
}

#: (name, scope) -> entry, for every catalogued directive.
CATALOG: Mapping[tuple[str, str], Entry] = {(e.name, e.scope): e for e in _ENTRIES}


def _domain_arg(text: str) -> str:
    """`<domain example.com>`, `*`, `*.tld`, or a domain macro `$NAME` (`domain-macro`)."""
    word = text.strip()
    if word.startswith("$"):
        return "$" + v.parse_name(word[1:])
    return reg.SCOPES[reg.DOMAIN](word)


def _registry_entry(name: str, scope: str) -> Entry | None:
    spec = reg.DIRECTIVES.get(name)
    if spec is None or scope not in spec.scopes:
        return None
    caveat = CAVEATS.get((name, scope))
    return Entry(name, scope, spec.parse, "", "", IMPLEMENTED, "", spec.repeatable, caveat)


def _empty_password(text: str) -> str | None:
    if not text.strip():
        return "password is empty: this user can never log in"
    return None


def _key_password(text: str) -> str | None:
    if len(text.split()) > 1:
        return (
            "a private key password is not yet implemented: the PEM key must be unencrypted "
            "(the password is ignored)"
        )
    return None


def _access_level(text: str) -> str | None:
    level = text.split()[-1].lower() if text.split() else ""
    if level == "operator":
        return "http-access operator is not yet implemented: it grants monitor here"
    if level.endswith(",deny-logs"):
        return "http-access deny-logs has no effect here: the management port serves no logs"
    return None


def _by_source_ip(text: str) -> str | None:
    if text.strip().lower() == "by-smtp-source-ip":
        return (
            "default-virtual-mta by-smtp-source-ip is not yet implemented: "
            "the default virtual MTA is used"
        )
    return None


def _date_override(text: str) -> str | None:
    if text.strip().lower() == "override":
        return "add-date-header override is not yet implemented: a Date: is added only when missing"
    return None


def _wildcard_key(text: str) -> str | None:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 3 and parts[1] == "*":
        return "domain-key for * is not yet implemented: that key signs nothing"
    return None


#: Registry directives implemented for most values but not all: the warning a value gets.
CAVEATS: Mapping[tuple[str, str], Callable[[str], str | None]] = {
    ("password", reg.SMTP_USER): _empty_password,
    ("smtp-server-tls-certificate", reg.GLOBAL): _key_password,
    ("tls-certificate", reg.SMTP_LISTENER): _key_password,
    ("tls-certificate", reg.API_LISTENER): _key_password,
    ("http-access", reg.GLOBAL): _access_level,
    ("default-virtual-mta", reg.SOURCE): _by_source_ip,
    ("add-date-header", reg.SOURCE): _date_override,
    ("domain-key", reg.GLOBAL): _wildcard_key,
}


def lookup(name: str, scope: str) -> Entry | None:
    """What `name` is in `scope`: the registry's directive, else the catalog's, else None."""
    return _registry_entry(name, scope) or CATALOG.get((name, scope))


def scopes_of(name: str) -> list[str]:
    """Every scope where directive `name` may stand (for "not allowed here" errors)."""
    spec = reg.DIRECTIVES.get(name)
    found = set(spec.scopes) if spec else set()
    found |= {scope for (entry_name, scope) in CATALOG if entry_name == name}
    return sorted(found)


def scope_arg(name: str) -> Callable[[str], str] | None:
    """The argument parser of scope `name`, or None for an unknown scope."""
    if name == reg.DOMAIN:
        return _domain_arg
    if name in reg.SCOPES:
        return reg.SCOPES[name]
    entry = CATALOG_SCOPES.get(name)
    return entry.parse_arg if entry else None


def scope_parents(name: str) -> frozenset[str]:
    if name in reg.SCOPE_PARENTS:
        return reg.SCOPE_PARENTS[name]
    return CATALOG_SCOPES[name].parents


def scope_status(name: str) -> tuple[str, str]:
    """(status, reason) of a scope: the registry's are implemented."""
    if name in reg.SCOPES:
        return IMPLEMENTED, ""
    entry = CATALOG_SCOPES[name]
    return entry.status, entry.reason


assert BOUNCE_CATEGORY_PATTERNS in RAW_SCOPES  # its lines are data: see grammar.RAW_SCOPES
