"""Which directives exist, where they may stand, and how their values parse.

The registry is data: one `Spec` per directive name. Every directive of DESIGN.md
section 3 is here, including those whose behaviour arrives in a later issue, so that a
PowerMTA config is checked completely today. The model (`model.py`) has one field per
directive, named by `field_name`; `tests/test_config_registry.py` keeps the two in step.
"""

from __future__ import annotations

import email.utils
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from mtaserver.config import values as v

GLOBAL = "global"
SOURCE = "source"
SMTP_USER = "smtp-user"
LDAP = "ldap"
VMTA = "virtual-mta"
VMTA_POOL = "virtual-mta-pool"
DOMAIN = "domain"
PATTERN_LIST = "smtp-pattern-list"
ACCT_FILE = "acct-file"
API_LISTENER = "transmissions-api-listener"
API = "transmissions-api"
SMTP_LISTENER = "smtp-listener"
BOUNCE_PROCESSOR = "bounce-processor"
FBL_PROCESSOR = "feedback-loop-processor"
ADDRESS_LIST = "address-list"
SUPPRESSION_LIST = "suppression-list"


@attrs.frozen
class Spec:
    """A directive: its parser, the scopes it may appear in, whether it may repeat."""

    parse: Callable[[str], Any]
    scopes: frozenset[str]
    repeatable: bool = False


def field_name(directive: str) -> str:
    return directive.replace("-", "_")


def _source_arg(text: str) -> str:
    """`10/8` (normalised, always with a `/`), `{auth}`, or a bare name (`<source mta1>`).

    A name is a *named source*: used only where asked for by name (`smtp-listener ...
    source=mta1`, `<smtp-user>`'s `source`), as PowerMTA does; `{...}` names are reserved.
    """
    word = text.strip()
    if word.startswith("{"):
        return v.parse_source_name(word)
    try:
        return str(v.parse_cidr(word))
    except ValueError:
        if any(c in word for c in ".:/") or not word:
            raise
    return v.parse_name(word)


def is_named_source(arg: str) -> bool:
    """A `<source>` argument that names a source rather than an address range."""
    return "/" not in arg


def _source_ref(text: str) -> str:
    """`source {auth-users}` or `source mta1` in `<smtp-user>`: a named source."""
    word = text.strip()
    return v.parse_source_name(word) if word.startswith("{") else v.parse_name(word)


def _listener_arg(text: str) -> tuple[v.HostPort, str | None]:
    """`smtp-listener IP:PORT [source=NAME]`: the listener and its named `<source NAME>`."""
    address, _, option = text.strip().partition(" ")
    option = option.strip()
    if option and not (option.startswith("source=") and v.parse_name(option[7:])):
        raise ValueError(f"expected IP:PORT [source=NAME], e.g. 0/0:25 source=mta1, not {text!r}")
    return v.parse_host_port(address), (option[7:] if option else None)


def _acct_file_arg(text: str) -> str:
    """`<acct-file PATH>` or `<acct-file |COMMAND ARGS>` (a pipe: the command must be there)."""
    path = v.parse_string(text)
    if path.startswith("|"):
        try:
            words = shlex.split(path[1:])
        except ValueError as exc:
            raise ValueError(f"cannot split the command {path[1:]!r}: {exc}") from None
        if not words:
            raise ValueError("expected a command after |, e.g. |/usr/local/bin/acct-etl --x")
    return path


def _host_port_arg(text: str) -> str:
    return str(v.parse_host_port(text))


def _no_arg(text: str) -> str:
    if text.strip():
        raise ValueError("this scope takes no argument")
    return ""


def _path(text: str) -> str:
    return v.parse_string(text)


def _certificate(text: str) -> str:
    """`FILENAME [PASSWORD]`: the PEM file (a password is refused by a catalog caveat)."""
    return v.parse_string(text).split()[0]


def _default_vmta(text: str) -> str | None:
    """A `<virtual-mta>` or pool name; PowerMTA's `by-smtp-source-ip` is None (the default)."""
    word = text.strip()
    return None if word.lower() == "by-smtp-source-ip" else v.parse_name(word)


def _date_header(text: str) -> bool:
    """`yes`, `no`, or PowerMTA's `override` (taken as yes: a Date: is added when missing)."""
    return True if text.strip().lower() == "override" else v.parse_bool(text)


_QUEUE_TYPES = ("smtp", "discard", "file", "http-delivery")


def _queue_type(text: str) -> str:
    """`type smtp|discard|file|http-delivery`; PowerMTA's `pipe` is refused, saying why.

    Refused rather than accepted with a warning: mail of a `type pipe` domain would
    otherwise go out over SMTP, to a place its operator never meant it to go.
    """
    if text.strip().lower() == "pipe":
        raise ValueError(
            "type pipe is not yet implemented (no pipe delivery); expected one of "
            f"{', '.join(_QUEUE_TYPES)}, e.g. file with file-output-directory"
        )
    return v.parse_choice(*_QUEUE_TYPES)(text)


def _dkim_identity(text: str) -> str | None:
    """An address or domain; PowerMTA's `sender-or-from` is None, the default."""
    word = v.parse_string(text)
    return None if word.lower() == "sender-or-from" else word


def _dsn_from_header(text: str) -> str:
    """`"Postmaster <postmaster@example.com>"`: the whole From: field of our DSNs.

    One address with a domain, in printable ASCII (the field goes into every DSN's
    header as written; a control character there would be a header injection).
    """
    word = v.parse_string(text)
    if not all(32 <= ord(c) <= 126 for c in word):
        raise ValueError(
            f"expected printable ASCII, e.g. Postmaster <pm@example.com>, not {text!r}"
        )
    found = email.utils.getaddresses([word])
    if len(found) != 1 or not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+", found[0][1]):
        raise ValueError(
            f"expected one address, e.g. Postmaster <postmaster@example.com>, not {text!r}"
        )
    return word


def _optional_name(text: str) -> str:
    """`<address-list>` or `<address-list NAME>`: a name is optional."""
    return v.parse_name(text) if text.strip() else ""


def _address_pattern(text: str) -> str:
    """`address`: an address, a local part, or a `/regex/` (checked to compile)."""
    word = v.parse_string(text)
    if len(word) >= 2 and word.startswith("/") and word.endswith("/"):
        try:
            re.compile(word[1:-1])
        except re.error as exc:
            raise ValueError(f"bad regular expression {word}: {exc}") from None
        return word
    if any(c.isspace() or c in "<>" for c in word) or word.count("@") > 1:
        raise ValueError(f"expected an address, a local part or /regex/, not {text!r}")
    return word


def _name_list(text: str) -> tuple[str, ...]:
    """`a,b c`: names separated by commas or spaces (`suppression-lists`)."""
    names = tuple(v.parse_name(word) for word in text.replace(",", " ").split())
    if not names:
        raise ValueError("expected one or more names")
    return names


#: PowerMTA's bounce categories: what `suppress-on-bounce-categories` may name, and the
#: only words `accounting.bounce` classifies into (it imports this set).
BOUNCE_CATEGORIES = frozenset(
    {
        "bad-configuration",
        "bad-connection",
        "bad-domain",
        "bad-mailbox",
        "content-related",
        "inactive-mailbox",
        "invalid-sender",
        "message-expired",
        "no-answer-from-host",
        "other",
        "policy-related",
        "protocol-errors",
        "quota-issues",
        "relaying-issues",
        "routing-errors",
        "spam-related",
        "virus-related",
    }
)


def _category_list(text: str) -> frozenset[str]:
    """`bad-mailbox,inactive-mailbox`, or `none` for no automatic suppression."""
    words = [w.lower() for w in text.replace(",", " ").split()]
    if words == ["none"]:
        return frozenset()
    unknown = [w for w in words if w not in BOUNCE_CATEGORIES]
    if not words or unknown:
        raise ValueError(f"expected bounce categories or none, not {text!r}")
    return frozenset(words)


#: Scope name -> parser of its argument (which also normalises it, so that
#: `<source 10/8>` and `<source 10.0.0.0/8>` are the same scope and merge).
SCOPES: Mapping[str, Callable[[str], str]] = {
    SOURCE: _source_arg,
    SMTP_USER: v.parse_name,
    LDAP: v.parse_name,
    VMTA: v.parse_name,
    VMTA_POOL: v.parse_name,
    DOMAIN: v.parse_domain_pattern,
    PATTERN_LIST: v.parse_name,
    ACCT_FILE: _acct_file_arg,
    API_LISTENER: _host_port_arg,
    API: _no_arg,
    SMTP_LISTENER: _host_port_arg,
    BOUNCE_PROCESSOR: _no_arg,
    FBL_PROCESSOR: _no_arg,
    ADDRESS_LIST: _optional_name,
    SUPPRESSION_LIST: v.parse_name,  # a named list declared; `suppression-lists` uses it
}

#: Where a scope may be opened: top level (GLOBAL) or inside another scope.
SCOPE_PARENTS: Mapping[str, frozenset[str]] = {name: frozenset({GLOBAL}) for name in SCOPES} | {
    DOMAIN: frozenset({GLOBAL, VMTA, VMTA_POOL}),
    ADDRESS_LIST: frozenset({BOUNCE_PROCESSOR, FBL_PROCESSOR}),
}


def _in(*scopes: str) -> frozenset[str]:
    return frozenset(scopes)


_yesno = v.parse_bool
_G, _S, _D, _A = _in(GLOBAL), _in(SOURCE), _in(DOMAIN), _in(ACCT_FILE)
_PROC = _in(BOUNCE_PROCESSOR, FBL_PROCESSOR)

DIRECTIVES: Mapping[str, Spec] = {
    # global
    "host-name": Spec(v.parse_hostname, _in(GLOBAL, VMTA)),
    "postmaster": Spec(v.parse_email, _G),
    "spool": Spec(_path, _G),
    "spool-min-free-space": Spec(v.parse_size_mb, _G),
    "smtp-listener": Spec(_listener_arg, _G, repeatable=True),
    "smtp-server-tls-certificate": Spec(_certificate, _G),
    "name-server": Spec(v.parse_name_server, _G, repeatable=True),
    "relay-domain": Spec(v.parse_domain_pattern, _G, repeatable=True),
    "total-max-smtp-out": Spec(v.parse_positive_int, _G),
    "domain-key": Spec(v.parse_domain_key, _G, repeatable=True),
    "custom-dsn-from-header": Spec(_dsn_from_header, _G),
    "http-mgmt-port": Spec(v.parse_mgmt_port, _G),
    "http-mgmt-tls-certificate": Spec(_path, _G),
    "http-access": Spec(v.parse_http_access, _G, repeatable=True),
    "http-api-key": Spec(v.parse_string, _G, repeatable=True),
    "http-auth-ldap": Spec(v.parse_name, _G),
    "http-auth-ldap-group": Spec(v.parse_ldap_group_access, _G, repeatable=True),
    # limits against hostile peers and clients (global)
    "total-max-smtp-in": Spec(v.parse_positive_int, _G),
    # processes: SMTP reception in worker processes (mtaserver.workers)
    "reception-workers": Spec(v.parse_workers, _G),
    "max-auth-failures-per-user": Spec(v.parse_positive_int, _G),
    "auth-lockout-time": Spec(v.parse_interval, _G),
    "http-webhook-allow-addresses": Spec(v.parse_cidr_list, _G),
    "http-max-request-rate": Spec(v.parse_rate, _G),
    "http-rate-limit-exempt": Spec(v.parse_cidr, _G, repeatable=True),
    "http-request-header-timeout": Spec(v.parse_interval, _G),
    "http-request-body-timeout": Spec(v.parse_interval, _G),
    "http-mgmt-max-request-size": Spec(v.parse_size, _G),
    # the mail log (global; `mtaserver.maillog`)
    "log-file": Spec(_path, _G),
    "log-rotate": Spec(v.parse_int, _G),
    "log-auto-rotation": Spec(_yesno, _G),
    "log-file-world-readable": Spec(_yesno, _G),
    "log-max-size": Spec(v.parse_size, _G),
    # what goes into the mail log, per source, domain and the Transmissions API
    "log-connections": Spec(_yesno, _in(SOURCE, DOMAIN)),
    "log-commands": Spec(_yesno, _in(SOURCE, DOMAIN)),
    "log-data": Spec(_yesno, _in(SOURCE, DOMAIN, API)),
    "log-tls": Spec(_yesno, _in(SOURCE, DOMAIN, API)),
    "log-resolution": Spec(_yesno, _D),
    "log-transfer-failures": Spec(_yesno, _D),
    "log-disabled-ips": Spec(_yesno, _D),
    # the suppression list (global)
    "suppress-on-bounce-categories": Spec(_category_list, _G),
    "suppress-on-complaint": Spec(_yesno, _G),
    # listeners
    "tls-certificate": Spec(_certificate, _in(SMTP_LISTENER, API_LISTENER)),
    # <source>
    "smtp-service": Spec(_yesno, _S),
    "always-allow-relaying": Spec(_yesno, _S),
    "require-auth": Spec(_yesno, _S),
    "allow-starttls": Spec(_yesno, _S),
    "require-starttls-before-auth": Spec(_yesno, _S),
    "allow-unencrypted-plain-auth": Spec(_yesno, _S),
    "max-message-size": Spec(v.parse_size, _S),
    "max-rcpt-per-message": Spec(v.parse_int, _S),  # 0 or unlimited: no limit
    "allow-smtputf8": Spec(_yesno, _S),
    "add-received-header": Spec(_yesno, _S),
    "add-message-id-header": Spec(_yesno, _S),
    "add-date-header": Spec(_date_header, _S),
    "process-x-virtual-mta": Spec(_yesno, _S),
    "process-x-job": Spec(_yesno, _S),
    "default-virtual-mta": Spec(_default_vmta, _S),
    "smtp-command-timeout": Spec(v.parse_interval, _S),
    "smtp-data-timeout": Spec(v.parse_interval, _S),
    "auth-ldap": Spec(v.parse_name, _S),
    "bare-newline": Spec(v.parse_choice("normalize", "reject"), _S),
    "max-auth-failures-per-minute": Spec(v.parse_positive_int, _S),
    "smtp-max-auth-failure-rate": Spec(v.parse_rate, _S),
    "max-smtp-in": Spec(v.parse_positive_int, _S),
    "max-message-hops": Spec(v.parse_positive_int, _S),
    "max-junk-commands": Spec(v.parse_positive_int, _S),
    "smtp-command-deadline": Spec(v.parse_interval, _S),
    "smtp-data-deadline": Spec(v.parse_interval, _S),
    "reject-early-talkers": Spec(_yesno, _S),
    "smtp-greeting-delay": Spec(v.parse_interval, _S),
    "max-header-count": Spec(v.parse_positive_int, _S),
    "max-header-size": Spec(v.parse_size, _S),
    "max-mime-depth": Spec(v.parse_positive_int, _S),
    "require-sender-match-login": Spec(_yesno, _S),
    "suppression-lists": Spec(_name_list, _S),
    "suppressed-recipient-action": Spec(v.parse_choice("refuse", "drop"), _S),
    "suppress-local-dsn": Spec(_yesno, _S),
    "dsn-return-default": Spec(v.parse_choice("headers", "full", "system"), _S),
    # <smtp-user>
    "password": Spec(v.parse_password, _in(SMTP_USER)),
    "source": Spec(_source_ref, _in(SMTP_USER)),
    "mail-from": Spec(v.parse_domain_pattern_or_email, _in(SMTP_USER), repeatable=True),
    # <ldap>
    "uri": Spec(v.parse_ldap_uri, _in(LDAP)),
    "start-tls": Spec(_yesno, _in(LDAP)),
    "bind-dn": Spec(v.parse_string, _in(LDAP)),
    "bind-password": Spec(v.parse_string, _in(LDAP)),
    "base-dn": Spec(v.parse_string, _in(LDAP)),
    "user-filter": Spec(v.parse_user_filter, _in(LDAP)),
    "ca-file": Spec(_path, _in(LDAP)),
    "cache-ttl": Spec(v.parse_interval, _in(LDAP)),
    "timeout": Spec(v.parse_interval, _in(LDAP)),
    # <virtual-mta>, <virtual-mta-pool>
    "smtp-source-host": Spec(v.parse_source_host, _in(VMTA), repeatable=True),
    "virtual-mta": Spec(v.parse_name, _in(VMTA_POOL), repeatable=True),
    # <domain>
    "type": Spec(_queue_type, _D),
    "smtp-hosts": Spec(v.parse_smtp_hosts, _D),
    "default-smtp-port": Spec(v.parse_positive_int, _D),
    "max-smtp-out": Spec(v.parse_positive_int, _in(DOMAIN, VMTA)),
    "max-msg-per-connection": Spec(v.parse_int, _D),
    "max-rcpt-per-transaction": Spec(v.parse_positive_int, _D),
    "max-msg-rate": Spec(v.parse_rate, _D),
    "retry-after": Spec(v.parse_interval_list, _D),
    "bounce-after": Spec(v.parse_interval, _D),
    "connect-timeout": Spec(v.parse_interval, _D),
    "use-starttls": Spec(_yesno, _D),
    "require-starttls": Spec(_yesno, _D),
    "smtp-pattern-list": Spec(v.parse_name, _D),
    "auth-username": Spec(v.parse_string, _D),
    "auth-password": Spec(v.parse_string, _D),
    "backoff-max-msg-rate": Spec(v.parse_rate, _D),
    "backoff-retry-after": Spec(v.parse_interval_list, _D),
    "backoff-to-normal-after": Spec(v.parse_interval, _D),
    "dkim-sign": Spec(_yesno, _D),
    "dkim-identity": Spec(_dkim_identity, _D),
    "deliver-local-dsn": Spec(_yesno, _D),
    "dsn-format": Spec(v.parse_choice("standard", "plain-text"), _D),
    "dsn-text-file": Spec(v.parse_dsn_text_file, _D),
    "notify-of-delay-every": Spec(v.parse_interval_or_never, _D),
    "http-delivery-url": Spec(v.parse_url, _D),
    "http-delivery-extra-headers": Spec(_path, _D),
    "file-output-directory": Spec(_path, _D),
    "mx-allow-private-addresses": Spec(_yesno, _D),
    "mx-rollup": Spec(_yesno, _D),
    # <smtp-pattern-list>
    "reply": Spec(v.parse_reply_pattern, _in(PATTERN_LIST), repeatable=True),
    # <acct-file>
    "records": Spec(v.parse_record_types, _A),
    "record-fields": Spec(v.parse_record_fields, _A, repeatable=True),
    "map-header-to-field": Spec(v.parse_header_mapping, _A, repeatable=True),
    "max-size": Spec(v.parse_size, _A),
    "move-interval": Spec(v.parse_interval, _A),
    "delete-after": Spec(v.parse_interval_or_never, _A),
    "sync": Spec(_yesno, _A),
    "http-webhook-url": Spec(v.parse_url, _A),
    "http-webhook-extra-headers": Spec(_path, _A),
    "http-webhook-ca-file": Spec(_path, _A),
    "http-webhook-certificate": Spec(_path, _A),
    "http-webhook-max-interval": Spec(v.parse_interval, _A),
    "http-webhook-transfer-encoding": Spec(v.parse_choice("gzip", "identity"), _A),
    "http-webhook-hmac-key": Spec(v.parse_string, _A),
    "http-webhook-connect-timeout": Spec(v.parse_interval, _A),
    "http-webhook-io-timeout": Spec(v.parse_interval, _A),
    "http-webhook-max-size": Spec(v.parse_size, _A),
    # <transmissions-api>
    "api-key": Spec(v.parse_api_key, _in(API), repeatable=True),
    "log-requests": Spec(_yesno, _in(API)),
    "max-request-size": Spec(v.parse_size, _in(API)),
    # <bounce-processor>, <feedback-loop-processor>
    "deliver-matched-email": Spec(_yesno, _PROC),
    "deliver-unmatched-email": Spec(_yesno, _PROC),
    "forward-unmatched-to": Spec(v.parse_email, _PROC, repeatable=True),
    "forward-errors-to": Spec(v.parse_email, _PROC, repeatable=True),
    # <address-list> (inside a processor)
    "address": Spec(_address_pattern, _in(ADDRESS_LIST), repeatable=True),
    "domain": Spec(v.parse_hostname, _in(ADDRESS_LIST), repeatable=True),
    "address-file": Spec(_path, _in(ADDRESS_LIST), repeatable=True),
}


#: Directives a reload does not apply: they take effect at the next start, and a
#: reload that changes one says so in its reply and in the log. Every other directive
#: is applied live by `reload` (`kill -HUP`); docs/config.rst marks each one.
RESTART_ONLY: frozenset[str] = frozenset(
    {
        "spool",  # the journal and message files stay where they were opened
        "reception-workers",  # processes are started with the server
    }
)


def directives_for(scope: str) -> dict[str, Spec]:
    return {name: spec for name, spec in DIRECTIVES.items() if scope in spec.scopes}
