"""The loaded configuration: frozen records, and how settings resolve.

A `Config` holds one *layer* (directive values as set in one scope) per scope, and
resolves them the way PowerMTA does:

* domains: `<domain *>` < `<domain *.tld>` < `<domain example.com>`, then the same
  order inside the `<virtual-mta-pool>` and then the `<virtual-mta>` the queue uses;
* sources: a client IP gets the most specific (longest prefix) `<source CIDR>`;
  named sources such as `{transmissions-api}` are looked up by name, and `{auth}`
  is laid over the IP's source once a client has authenticated.

Each settings record's fields are the directive names with `_` for `-`, and its
defaults are the defaults a PowerMTA user expects. A `Config` is never modified;
reload builds a new one and swaps it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from mtaserver.config.grammar import ConfigProblem
from mtaserver.config.values import (
    DomainKey,
    DsnText,
    HeaderMapping,
    HostPort,
    HttpAccess,
    IPNetwork,
    LdapGroupAccess,
    Rate,
    ReplyPattern,
    SmtpHosts,
    SourceHost,
)

Layer = Mapping[str, Any]


#: PowerMTA's `*-tls-allow-VERSION` names, oldest first (TLS 1.3 has no switch: always on).
TLS_VERSIONS = ("sslv3", "tlsv1", "tlsv1.1", "tlsv1.2")


@attrs.frozen
class TlsPolicy:
    """The TLS versions and ciphers one side of TLS accepts.

    From `smtp-server-tls-allow-*`/`-ciphers` (STARTTLS served), `tls-allow-*`/
    `tls-ciphers` in an `<smtp-listener>` (over the global ones) and `smtp-tls-allow-*`/
    `smtp-tls-ciphers` in `<domain>` (STARTTLS to MX hosts). mtaserver's default is TLS
    1.2 and 1.3 (PowerMTA's also allows 1.1, which today's OpenSSL policies refuse).
    `ciphers` is an OpenSSL cipher string for TLS 1.2 and older (None: OpenSSL's).
    """

    allow: frozenset[str] = frozenset({"tlsv1.2"})
    ciphers: str | None = None


def tls_policy(layers: Iterable[Layer], prefix: str, base: TlsPolicy | None = None) -> TlsPolicy:
    """The policy that `PREFIXallow_VERSION` / `PREFIXciphers` values of `layers` say.

    The fields carry the directive names (`smtp_tls_allow_tlsv1.2`), dots and all: they
    are read here rather than by `build`, since no attribute can have such a name.
    """
    policy = base or TlsPolicy()
    allow, ciphers = set(policy.allow), policy.ciphers
    for layer in layers:
        for version in TLS_VERSIONS:
            value = layer.get(f"{prefix}allow_{version}")
            if value is True:
                allow.add(version)
            elif value is False:
                allow.discard(version)
        ciphers = layer.get(f"{prefix}ciphers", ciphers)
    return TlsPolicy(frozenset(allow), ciphers)


@attrs.frozen
class SourceSettings:
    """Reception policy for a client (`<source>`)."""

    smtp_service: bool = True
    always_allow_relaying: bool = False
    require_auth: bool = False
    allow_starttls: bool = True
    require_starttls_before_auth: bool = False
    allow_unencrypted_plain_auth: bool = False
    max_message_size: int = 50 * 2**20  # 0 = unlimited
    max_rcpt_per_message: int = 1000
    allow_smtputf8: bool = True
    add_received_header: bool = True
    add_message_id_header: bool = True
    add_date_header: bool = True
    process_x_virtual_mta: bool = False
    process_x_job: bool = False
    default_virtual_mta: str | None = None
    smtp_command_timeout: float = 300.0
    smtp_data_timeout: float = 600.0
    auth_ldap: str | None = None
    bare_newline: str = "normalize"  # normalize | reject (Postfix smtpd_forbid_bare_newline)
    max_auth_failures_per_minute: int = 5
    smtp_max_auth_failure_rate: Rate | None = None  # None: max-auth-failures-per-minute applies
    max_smtp_in: int = 50  # concurrent SMTP connections per client IP
    max_message_hops: int = 100  # Received: headers before a message is a loop (554 5.4.6)
    max_junk_commands: int = 100  # NOOP/RSET/VRFY/HELP... without progress, then 421
    smtp_command_deadline: float = 60.0  # the whole of one command line
    smtp_data_deadline: float = 900.0  # the whole DATA/BDAT phase of one message
    reject_early_talkers: bool = True  # bytes before the 220 greeting: 554 and close
    smtp_greeting_delay: float = 0.0  # wait this long before the 220 (early-talker window)
    max_header_count: int = 1000
    max_header_size: int = 1024 * 1024  # the whole header block
    max_mime_depth: int = 100  # Postfix's mime_nesting_limit
    require_sender_match_login: bool = False  # after AUTH, MAIL FROM must match the login
    pattern_list: str | None = None  # a <pattern-list> choosing the virtual MTA
    rewrite_list: str | None = None  # a <rewrite-list> rewriting MAIL FROM and From domains
    process_x_dkim_options: bool = False  # X-DKIM-Options s=/d=/i= choose the DKIM key
    retain_x_dkim_options: bool = False  # keep that header in the message
    verp_default: bool = False  # VERP return paths (one recipient a transaction)
    process_x_envid: bool = False  # X-EnvID: is the envId (DSN ENVID) when none was given
    jobid_header: str = "x-job"  # the header process-x-job reads
    retain_x_job: bool = False  # keep the job header in the message
    retain_x_virtual_mta: bool = False  # keep X-Virtual-MTA: in the message
    remove_received_headers: bool = False  # drop the message's own Received: fields
    hide_message_source: bool = False  # our Received: does not name the client
    remove_header: tuple[tuple[str, ...], ...] = ()  # header names dropped at reception
    reject_invalid_virtual_mta: bool = True  # no: an unknown vmta becomes the fallback
    suppression_lists: tuple[str, ...] = ()  # checked at RCPT as scopes source:<name>
    allow_auth: bool = True  # no: AUTH is neither offered nor accepted
    disconnect_on_transient_error: bool = False  # close instead of any 4xx reply
    suppressed_recipient_action: str = "refuse"  # refuse (550 5.7.1) | drop (250 and a b record)
    suppress_local_dsn: bool = False  # no DSN of ours (failure, delay, success) for its mail
    dsn_return_default: str = "system"  # RET when MAIL gave none: headers | full | system (HDRS)
    # the mail log (`log-file`): what of this client's sessions it shows
    log_connections: bool = False  # connect and close
    log_commands: bool = False  # the SMTP transcript, AUTH secrets masked
    log_data: bool = False  # the header block of each message received (bounded)
    log_tls: bool = False  # STARTTLS handshakes: version and cipher


@attrs.frozen
class DomainSettings:
    """Delivery policy for one queue (`domain/vmta`), resolved from every layer."""

    type: str = "smtp"
    smtp_hosts: SmtpHosts | None = None
    default_smtp_port: int = 25
    max_smtp_out: int = 20
    max_msg_per_connection: int = 0  # 0 = unlimited
    max_rcpt_per_transaction: int = 100
    max_msg_rate: Rate | None = None
    retry_after: tuple[float, ...] = (600.0,)
    bounce_after: float = 4.5 * 86400
    connect_timeout: float = 60.0
    use_starttls: bool = True
    require_starttls: bool = False
    smtp_pattern_list: str | None = None
    auth_username: str | None = None
    auth_password: str | None = None
    backoff_max_msg_rate: Rate | None = None
    backoff_retry_after: tuple[float, ...] = (1200.0,)
    backoff_to_normal_after: float = 3600.0
    dkim_sign: bool = False
    dkim_identity: str | None = None
    dkim_algorithm: str | None = None  # rsa-sha1 | rsa-sha256 for RSA keys (None: rsa-sha256)
    dkim_headers: tuple[str, ...] = ()  # `dkim-headers` lines: more fields to sign
    #: DSNs to senders at this domain: sent (yes) or not (no); acct records are unchanged.
    deliver_local_dsn: bool = True
    dsn_format: str = "standard"  # DSNs to senders at this domain: standard | plain-text
    dsn_text_file: DsnText | None = None  # + their human-readable part, from a template
    #: A recipient of this queue asking NOTIFY=DELAY gets a delay DSN this often; None: never.
    notify_of_delay_every: float | None = 4 * 3600.0
    http_delivery_url: str | None = None
    http_delivery_extra_headers: str | None = None
    file_output_directory: str | None = None
    mx_allow_private_addresses: bool = False
    mx_rollup: bool = False  # share one queue with the domains of the same best MX host
    queue_to: str = ""  # queue this domain's mail in that domain's queue ("" = its own)
    ignore_8bitmime: bool = False  # use the server as if it had not offered the extension
    ignore_chunking: bool = False
    ignore_pipelining: bool = False
    ignore_dsn: bool = False
    smtp_greeting_timeout: float = 300.0  # waiting for the server's 220
    max_errors_per_connection: int = 0  # 4xx/5xx replies before the session ends; 0 = no limit
    route: SmtpHosts | None = None  # the deprecated name of smtp-hosts
    #: Messages a day (day 1, 2, ...; the last repeats) this domain's mail from a warm vmta
    #: gives to its `cold-virtual-mta`; () or 0 is none.
    max_cold_virtual_mta_msg: tuple[Rate | None, ...] = ()
    #: The queue's virtual MTA's (then pool's) `domain-key`s, tried before the global ones.
    domain_key: tuple[DomainKey, ...] = ()
    backoff_to_normal_after_delivery: bool = False  # a delivery in backoff: back to normal
    #: Sessions a queue may run in backoff mode; None: one (mtaserver's backoff default).
    backoff_max_smtp_out: int | None = None
    max_connect_rate: Rate | None = None  # new connections a queue may open per time unit
    backoff_max_connect_rate: Rate | None = None  # the same in backoff (None: max-connect-rate)
    #: How long `disable-source-ip` (without `reenable-after=`) disables a source; None: never.
    reenable_source_ip_after: float | None = None
    queue_priority: int = 50  # 0-100: higher-priority queues get free connection slots first
    #: A domain without MX: True bounces at once (no A/AAAA fallback); an interval bounces
    #: mail queued that long and sends the rest to the A/AAAA address; False/None: never.
    bounce_upon_no_mx: bool | float | None = False
    #: The reply to the final dot: how long to wait (None: the command timeout), and
    #: whether no reply in that time counts as delivered (PowerMTA's directive names).
    smtp_data_termination_timeout: float | None = None
    assume_delivery_upon_data_termination_timeout: bool = False
    smtp_tls: TlsPolicy = TlsPolicy()  # STARTTLS to the MX: `smtp-tls-allow-*`, ciphers
    smtp_tls_ca_file: str | None = None  # CAs for require-starttls (else the system's)
    smtp_tls_ca: bytes | None = None  # that file's PEM, read when the config was loaded
    #: The queue's virtual MTA's (else pool's) `rewrite-list`: MAIL FROM on the wire and
    #: the From domains, rewritten at delivery.
    rewrite_list: str | None = None
    backoff_notify: tuple[str, ...] = ()  # mailed when a queue enters or leaves backoff
    disabled_source_ip_notify: tuple[str, ...] = ()  # mailed when a source is (re)enabled
    backoff_upon_all_sources_disabled: bool = False  # every source disabled: backoff mode
    #: (CIDR, N): sessions of this domain (all its queues) at once per source IP in CIDR.
    source_ip_max_smtp_out: tuple[tuple[IPNetwork, int], ...] = ()
    #: (CIDR, rate): new connections of this domain per source IP in CIDR.
    source_ip_max_connect_rate: tuple[tuple[IPNetwork, Rate | None], ...] = ()
    #: (CIDR, rate): messages of this domain per source IP in CIDR.
    source_ip_max_msg_rate: tuple[tuple[IPNetwork, Rate | None], ...] = ()
    # the mail log (`log-file`): what of this queue's deliveries it shows
    log_connections: bool = False  # connect and close
    log_commands: bool = False  # the SMTP transcript, AUTH secrets masked
    log_data: bool = False  # the header block of each message sent (bounded)
    log_tls: bool = False  # STARTTLS handshakes: version and cipher
    log_resolution: bool = False  # the MX (or smtp-hosts) routing answer
    log_transfer_failures: bool = False  # failed recipients and sessions, with the reply
    log_disabled_ips: bool = False  # a source disabled by disable-source-ip


@attrs.frozen
class SmtpUser:
    name: str
    password: str
    source: str | None = None  # a named source such as {auth-users}
    mail_from: tuple[str, ...] = ()  # addresses or domain patterns this login may send as


@attrs.frozen
class LdapSettings:
    name: str
    uri: str
    start_tls: bool = False
    bind_dn: str | None = None
    bind_password: str | None = None
    base_dn: str = ""
    user_filter: str = "(uid=%u)"
    ca_file: str | None = None
    cache_ttl: float = 300.0
    timeout: float = 10.0


@attrs.frozen
class VirtualMta:
    name: str
    smtp_source_host: tuple[SourceHost, ...] = ()
    host_name: str | None = None
    max_smtp_out: int | None = None
    domains: Mapping[str, Layer] = attrs.field(factory=dict)
    domain_key: tuple[DomainKey, ...] = ()  # signs this vmta's mail before the global keys
    cold_virtual_mta: tuple[str, ...] = ()  # warm-up: vmtas that take the day's first messages
    rewrite_list: str | None = None  # a <rewrite-list> applied to this vmta's mail at delivery


@attrs.frozen
class VirtualMtaPool:
    name: str
    virtual_mta: tuple[str, ...] = ()
    domains: Mapping[str, Layer] = attrs.field(factory=dict)
    domain_key: tuple[DomainKey, ...] = ()
    rewrite_list: str | None = None  # for its vmtas without a rewrite-list of their own


@attrs.frozen
class SmtpPatternList:
    """`<smtp-pattern-list NAME>`: reply patterns and what a match does to a queue."""

    name: str
    reply: tuple[ReplyPattern, ...] = ()

    def actions_for(self, reply_text: str) -> tuple[str, ...]:
        """The actions of the first pattern matching a remote reply, or none."""
        for pattern in self.reply:
            if pattern.matches(reply_text):
                return pattern.actions
        return ()


@attrs.frozen
class RoutingPatternList:
    """`<pattern-list NAME>`: choose the virtual MTA (or pool) by sender or recipient.

    `header NAME /REGEX/ virtual-mta=NAME`, `mail-from /REGEX/ virtual-mta=NAME` and
    `rcpt-to /REGEX/ virtual-mta=NAME` lines, tried header lines first (against the
    whole field value, folding whitespace included, of the first field of that name),
    then mail-from lines, then rcpt-to lines (against each recipient in turn), each in
    the order written; the first match wins. Patterns ignore case. A source uses one
    with `pattern-list NAME`; X-Virtual-MTA (when processed) comes first and
    `default-virtual-mta` applies when nothing matches.
    """

    name: str
    header: tuple[tuple[str, re.Pattern[str], str], ...] = ()
    mail_from: tuple[tuple[re.Pattern[str], str], ...] = ()
    rcpt_to: tuple[tuple[re.Pattern[str], str], ...] = ()

    @property
    def header_names(self) -> frozenset[str]:
        """The (lower-case) header fields this list looks at: reception captures them."""
        return frozenset(name for name, _, _ in self.header)

    def virtual_mta_for(
        self, sender: str, recipients: Iterable[str], headers: Mapping[str, str] | None = None
    ) -> str | None:
        """The vmta or pool named by the first matching pattern that names one, or None."""
        for field, regex, result in self.header:
            value = (headers or {}).get(field)
            if value is not None and regex.search(value) and routing_result(result):
                return routing_result(result)
        for regex, result in self.mail_from:
            if regex.search(sender) and routing_result(result):
                return routing_result(result)
        for rcpt in recipients:
            for regex, result in self.rcpt_to:
                if regex.search(rcpt) and routing_result(result):
                    return routing_result(result)
        return None

    def recipient_priorities(
        self, sender: str, recipients: Iterable[str], headers: Mapping[str, str] | None = None
    ) -> tuple[int, ...]:
        """Each recipient's `recipient-priority`; () when no line sets one.

        For each recipient, the first matching line that sets a priority: header lines,
        then mail-from lines (both for every recipient), then that recipient's rcpt-to
        lines. A recipient no line gives one has PowerMTA's default, 50.
        """
        found: int | None = None
        for field, regex, result in self.header:
            value = (headers or {}).get(field)
            if value is not None and regex.search(value) and routing_priority(result) is not None:
                found = routing_priority(result)
                break
        if found is None:
            for regex, result in self.mail_from:
                if regex.search(sender) and routing_priority(result) is not None:
                    found = routing_priority(result)
                    break
        priorities = []
        for rcpt in recipients:
            mine = found
            if mine is None:
                for regex, result in self.rcpt_to:
                    if regex.search(rcpt) and routing_priority(result) is not None:
                        mine = routing_priority(result)
                        break
            priorities.append(DEFAULT_PRIORITY if mine is None else mine)
        if all(p == DEFAULT_PRIORITY for p in priorities):
            return ()
        return tuple(priorities)


@attrs.frozen
class RewriteList:
    """`<rewrite-list NAME>`: rewrite the envelope sender and the From header's domain.

    `mail-from SOURCE TARGET`: SOURCE is `a@b.com`, `a@*`, `*@b.com`, `*@*` (any but the
    null sender) or `<>`; TARGET is an address, `a@*` (the source's domain), `*@b.com`
    (the source's local part) or `<>`. `from-domain DOMAIN-PATTERN DOMAIN` rewrites the
    domain of the From header's addresses. The first matching line of each kind wins;
    matching ignores case. A `<source>` applies one with `rewrite-list NAME`.
    """

    name: str
    mail_from: tuple[tuple[str, str], ...] = ()
    from_domain: tuple[tuple[str, str], ...] = ()

    def rewrite_mail_from(self, sender: str) -> str:
        local, _, domain = sender.rpartition("@")
        for source, target in self.mail_from:
            if not _sender_matches(source, sender):
                continue
            if target == "<>":
                return ""
            t_local, _, t_domain = target.rpartition("@")
            new_local = local if t_local == "*" else t_local
            new_domain = domain if t_domain == "*" else t_domain
            return f"{new_local}@{new_domain}"
        return sender

    def rewrite_from_domain(self, domain: str) -> str:
        for pattern, target in self.from_domain:
            if domain_matches(pattern, domain.lower()):
                return target
        return domain


def _sender_matches(source: str, sender: str) -> bool:
    if source == "<>":
        return sender == ""
    if not sender:
        return False
    s_local, _, s_domain = source.lower().rpartition("@")
    local, _, domain = sender.lower().rpartition("@")
    return s_local in ("*", local) and s_domain in ("*", domain)


#: PowerMTA's recipient priority when no `recipient-priority` is given (0-100).
DEFAULT_PRIORITY = 50


def _result_parts(result: str) -> dict[str, str]:
    return {
        k.strip().lower(): val.strip()
        for k, _, val in (p.partition("=") for p in result.split(","))
    }


def routing_result(result: str) -> str | None:
    """`virtual-mta=NAME[,recipient-priority=N]` -> NAME; None for a priority-only line."""
    return _result_parts(result).get("virtual-mta") or None


def routing_priority(result: str) -> int | None:
    """`...recipient-priority=N` -> N; None when the line sets no priority."""
    value = _result_parts(result).get("recipient-priority")
    return int(value) if value is not None and value.isdigit() else None


@attrs.frozen
class AcctFileSettings:
    path: str
    records: frozenset[str] = frozenset({"d", "b"})
    record_fields: tuple[tuple[str, tuple[str, ...]], ...] = ()
    map_header_to_field: tuple[HeaderMapping, ...] = ()
    max_size: int = 0
    move_interval: float | None = None
    delete_after: float | None = None
    sync: bool = False
    http_webhook_url: str | None = None
    http_webhook_extra_headers: str | None = None
    http_webhook_ca_file: str | None = None
    http_webhook_certificate: str | None = None
    http_webhook_max_interval: float = 300.0
    http_webhook_transfer_encoding: str | None = None
    http_webhook_hmac_key: str | None = None
    http_webhook_connect_timeout: float = 30.0
    http_webhook_io_timeout: float = 60.0
    http_webhook_max_size: int = 5 * 1024 * 1024  # the batch limit (max-size rotates the file)
    http_webhook_log_verbose: bool = False  # log every POST: batch, records, bytes, outcome
    move_to: str | None = None  # rotated files go to this directory
    world_readable: bool = False  # files 0644, else 0640
    user_string: str = ""  # the `userstring` field's constant value
    privacy_policy: str = "retain"  # `KIND [KEY]`: how recipients' local parts are hidden


@attrs.frozen
class AddressList:
    """`<address-list>`: which addresses a processor takes (PowerMTA's matching rules).

    `address` is a whole address, a bare local part (any domain), or a `/regex/`
    searched in the address; `domain` takes every address at that domain; the lines
    of each `address-file` (read by the loader into `file_addresses`) are addresses or
    local parts. Everything compares without regard to case.
    """

    name: str = ""
    address: tuple[str, ...] = ()
    domain: tuple[str, ...] = ()
    address_file: tuple[str, ...] = ()
    file_addresses: frozenset[str] = frozenset()

    def matches(self, address: str) -> bool:
        """Whether `address` (an envelope recipient) is on this list."""
        address = address.strip().lower()
        local, _, domain = address.rpartition("@")
        if domain in self.domain:
            return True
        if address in self.file_addresses or (local and local in self.file_addresses):
            return True
        for entry in self.address:
            if len(entry) >= 2 and entry.startswith("/") and entry.endswith("/"):
                if re.search(entry[1:-1], address, re.IGNORECASE):
                    return True
            elif entry.lower() == (address if "@" in entry else local):
                return True
        return False


@attrs.frozen
class ReportProcessorSettings:
    """`<bounce-processor>` or `<feedback-loop-processor>` (PowerMTA's defaults)."""

    kind: str  # bounce-processor | feedback-loop-processor
    deliver_matched_email: bool = False
    deliver_unmatched_email: bool = True
    forward_unmatched_to: tuple[str, ...] = ()
    forward_errors_to: tuple[str, ...] = ()
    address_lists: tuple[AddressList, ...] = ()

    def matches(self, address: str) -> bool:
        return any(lst.matches(address) for lst in self.address_lists)


@attrs.frozen
class Listener:
    """An SMTP or HTTP listener; `tls_certificate` is one PEM file with key and chain."""

    address: HostPort
    tls_certificate: str | None = None
    #: `smtp-listener IP:PORT source=NAME`: its clients get `<source NAME>`, not their IP's.
    source: str | None = None
    #: `tls-allow-*`, `tls-ciphers` of an `<smtp-listener>` scope (over the global policy).
    tls: TlsPolicy | None = None

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address.host).is_loopback


@attrs.frozen
class TransmissionsApiSettings:
    api_key: tuple[str, ...] = ()
    log_requests: bool = False
    log_data: bool = False
    log_tls: bool = False
    max_request_size: int = 20 * 2**20


@attrs.frozen
class GlobalSettings:
    host_name: str = attrs.field(factory=socket.getfqdn)
    postmaster: str | None = None
    custom_dsn_from_header: str | None = None  # the From: field of our DSNs, as written
    spool: str = "var/spool"
    spool_min_free_space: int = 0
    deliver_only: bool = False  # `<spool DIR> deliver-only yes`: deliver, accept nothing new
    smtp_listener: tuple[Listener, ...] = ()
    smtp_server_tls_certificate: str | None = None
    smtp_server_tls: TlsPolicy = TlsPolicy()  # `smtp-server-tls-allow-*`, `-ciphers`
    #: Global `smtp-source-host`: {default}'s sources, and those of vmtas without their own.
    smtp_source_host: tuple[SourceHost | None, ...] = ()
    name_server: tuple[HostPort, ...] = ()
    relay_domain: tuple[str, ...] = ()
    relay_address: tuple[str | re.Pattern[str], ...] = ()  # addresses anyone may send to
    relay_debug: bool = False  # relaying refusals are 450 (retried), not 550
    total_max_smtp_out: int = 1000
    domain_key: tuple[DomainKey, ...] = ()
    http_mgmt_port: HostPort | None = None
    http_mgmt_tls_certificate: str | None = None  # PEM: key and chain
    http_access: tuple[HttpAccess, ...] = ()
    http_api_key: tuple[str, ...] = ()
    http_auth_ldap: str | None = None
    http_auth_ldap_group: tuple[LdapGroupAccess, ...] = ()
    total_max_smtp_in: int = 1000
    # SMTP reception processes: None = auto (cores - 1), 0 = everything in one process
    reception_workers: int | None = None
    max_auth_failures_per_user: int = 10
    auth_lockout_time: float = 900.0
    http_webhook_allow_addresses: tuple[IPNetwork, ...] = ()
    http_max_request_rate: Rate | None = Rate(100, 1.0)  # per client IP; exempt CIDRs aside
    http_rate_limit_exempt: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    http_request_header_timeout: float = 30.0
    http_request_body_timeout: float = 120.0
    http_mgmt_max_request_size: int = 10 * 2**20
    invalid_virtual_mta_fallback: str | None = None  # for reject-invalid-virtual-mta no
    # hard bounces (b, rb) of these categories suppress the recipient (global scope)
    suppress_on_bounce_categories: frozenset[str] = frozenset(
        {"bad-mailbox", "inactive-mailbox", "bad-domain"}
    )
    suppress_on_complaint: bool = True  # every f record suppresses its recipient
    # the mail log (`mtaserver.maillog`); None: its lines go to the service (twistd) log
    log_file: str | None = None
    log_rotate: int = 8  # files kept, the current one included; 0: never rotated
    log_auto_rotation: bool = True  # rotate at local midnight
    log_file_world_readable: bool = False  # 0644, else 0640
    log_max_size: int = 0  # + rotate when the file reaches this size; 0: no limit


def build(cls: type[Any], layers: list[Layer], **fixed: Any) -> Any:
    """Lay `layers` over `cls`'s defaults, later layers winning."""
    names = {f.name for f in attrs.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update((k, val) for k, val in layer.items() if k in names)
    merged.update(fixed)
    return cls(**merged)


def _per_hour(layer: Layer) -> Layer:
    """`max-msg-per-hour N` (deprecated) is `max-msg-rate N/h` where that is not set."""
    extra = {}
    for old, new in (
        ("max_msg_per_hour", "max_msg_rate"),
        ("backoff_max_msg_per_hour", "backoff_max_msg_rate"),
    ):
        if old in layer and new not in layer:
            extra[new] = Rate(layer[old], 3600.0) if layer[old] > 0 else None
    return {**layer, **extra} if extra else layer


def domain_matches(pattern: str, domain: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return domain.endswith(pattern[1:])
    return pattern == domain


def _specificity(pattern: str) -> tuple[int, int]:
    if pattern == "*":
        return (0, 0)
    if pattern.startswith("*."):
        return (1, len(pattern))
    return (2, 0)


def domain_layers(domains: Mapping[str, Layer], domain: str) -> list[Layer]:
    patterns = sorted((p for p in domains if domain_matches(p, domain)), key=_specificity)
    return [domains[p] for p in patterns]


@attrs.frozen
class Config:
    """A whole, valid configuration. Build with `load.load_config`, never by hand."""

    path: str
    files: tuple[str, ...]
    settings: GlobalSettings
    sources: tuple[tuple[IPNetwork, Layer], ...] = ()
    named_sources: Mapping[str, Layer] = attrs.field(factory=dict)
    smtp_users: Mapping[str, SmtpUser] = attrs.field(factory=dict)
    ldap: Mapping[str, LdapSettings] = attrs.field(factory=dict)
    vmtas: Mapping[str, VirtualMta] = attrs.field(factory=dict)
    vmta_pools: Mapping[str, VirtualMtaPool] = attrs.field(factory=dict)
    domains: Mapping[str, Layer] = attrs.field(factory=dict)
    pattern_lists: Mapping[str, SmtpPatternList] = attrs.field(factory=dict)
    routing_patterns: Mapping[str, RoutingPatternList] = attrs.field(factory=dict)
    rewrite_lists: Mapping[str, RewriteList] = attrs.field(factory=dict)
    #: Each `smtp-tls-ca-file`'s PEM certificates, read (in the loading thread) at load.
    ca_pems: Mapping[str, bytes] = attrs.field(factory=dict)
    #: `<domain-key-list NAME>`: keys an X-DKIM-Options `key-list=NAME` signs with.
    domain_key_lists: Mapping[str, tuple[DomainKey, ...]] = attrs.field(factory=dict)
    #: `<bounce-category-patterns>`: (regex, category) tried before the built-in rules.
    bounce_category_patterns: tuple[tuple[re.Pattern[str], str], ...] = ()
    acct_files: tuple[AcctFileSettings, ...] = ()
    api_listeners: tuple[Listener, ...] = ()
    api: TransmissionsApiSettings = TransmissionsApiSettings()
    # `<bounce-processor>` then `<feedback-loop-processor>`, those the config has
    report_processors: tuple[ReportProcessorSettings, ...] = ()
    #: Directives accepted without effect (`FILE:LINE: ...`), logged at start and reload
    #: and shown by `test config`; not part of what the config means (eq=False).
    warnings: tuple[ConfigProblem, ...] = attrs.field(default=(), eq=False)
    _cache: dict[Any, Any] = attrs.field(factory=dict, eq=False, repr=False, alias="_cache")

    def source_layer(self, ip: str) -> Layer:
        """The most specific `<source CIDR>` layer for a client address."""
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        best: tuple[int, Layer] | None = None
        for network, layer in self.sources:
            matches = address.version == network.version and address in network
            if matches and (best is None or network.prefixlen > best[0]):
                best = (network.prefixlen, layer)
        return best[1] if best else {}

    def source_settings(self, ip: str, authenticated: bool = False) -> SourceSettings:
        """The policy for a client IP; after AUTH, `{auth}` is laid over it."""
        key = ("source", ip, authenticated)
        if key not in self._cache:
            layers = [self.source_layer(ip)]
            if authenticated:
                layers.append(self.named_sources.get("{auth}", {}))
            self._cache[key] = build(SourceSettings, layers)
        result: SourceSettings = self._cache[key]
        return result

    def listener_source_settings(self, name: str, authenticated: bool = False) -> SourceSettings:
        """The policy on a `source=NAME` listener: `<source NAME>` (then `{auth}` after AUTH)."""
        key = ("listener-source", name, authenticated)
        if key not in self._cache:
            layers = [self.named_sources.get(name, {})]
            if authenticated:
                layers.append(self.named_sources.get("{auth}", {}))
            self._cache[key] = build(SourceSettings, layers)
        result: SourceSettings = self._cache[key]
        return result

    def named_source(self, name: str) -> SourceSettings:
        """A named source such as `{transmissions-api}`, over the defaults."""
        return build(SourceSettings, [self.named_sources.get(name, {})])

    def domain_settings(
        self, domain: str, vmta: str | None = None, pool: str | None = None
    ) -> DomainSettings:
        """Resolve a queue's settings: global, then pool, then vmta `<domain>` scopes."""
        key = ("domain", domain.lower(), vmta, pool)
        if key not in self._cache:
            domain = domain.lower()
            layers = domain_layers(self.domains, domain)
            if pool and pool in self.vmta_pools:
                layers += domain_layers(self.vmta_pools[pool].domains, domain)
            if vmta and vmta in self.vmtas:
                layers += domain_layers(self.vmtas[vmta].domains, domain)
            vmta_keys = self.vmtas[vmta].domain_key if vmta and vmta in self.vmtas else ()
            pool_keys = self.vmta_pools[pool].domain_key if pool and pool in self.vmta_pools else ()
            keys = vmta_keys + pool_keys
            layers = [_per_hour(layer) for layer in layers]
            # `route` is the deprecated name of smtp-hosts, in the scope that says it
            layers = [
                {**layer, "smtp_hosts": layer["route"]}
                if "route" in layer and "smtp_hosts" not in layer
                else layer
                for layer in layers
            ]
            smtp_tls = tls_policy(layers, "smtp_tls_")
            vmta_rewrites = self.vmtas[vmta].rewrite_list if vmta and vmta in self.vmtas else None
            pool_rewrites = (
                self.vmta_pools[pool].rewrite_list if pool and pool in self.vmta_pools else None
            )
            self._cache[key] = build(
                DomainSettings,
                layers,
                domain_key=keys,
                smtp_tls=smtp_tls,
                rewrite_list=vmta_rewrites or pool_rewrites,
            )
            ca_file = self._cache[key].smtp_tls_ca_file
            if ca_file is not None:
                self._cache[key] = attrs.evolve(
                    self._cache[key], smtp_tls_ca=self.ca_pems.get(ca_file)
                )
        result: DomainSettings = self._cache[key]
        return result

    def source_hosts(self, vmta_name: str | None) -> tuple[SourceHost, ...]:
        """The sources (IP, EHLO name) of a vmta: its own, else the global ones."""
        vmta = self.vmtas.get(vmta_name or "")
        if vmta is not None and vmta.smtp_source_host:
            return vmta.smtp_source_host
        return tuple(h for h in self.settings.smtp_source_host if h is not None)

    def bounce_category(self, status: str, diag: str) -> str:
        """The category the first `<bounce-category-patterns>` line matching gives, or ""."""
        text = f"{status} {diag}"
        for regex, category in self.bounce_category_patterns:
            if regex.search(text):
                return category
        return ""

    def is_relay_address(self, address: str) -> bool:
        """A `relay-address` (the address, or a /REGEX/ finding it; case ignored)."""
        lower = address.lower()
        for entry in self.settings.relay_address:
            if isinstance(entry, str):
                if entry.lower() == lower:
                    return True
            elif re.search(entry.pattern, address, re.IGNORECASE):
                return True
        return False

    def is_relay_domain(self, domain: str) -> bool:
        return any(domain_matches(p, domain.lower()) for p in self.settings.relay_domain)
