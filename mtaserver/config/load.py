"""Tree to model: validate every directive against the registry and build a `Config`.

All errors of all files are collected and raised together as one `ConfigError`, each
`FILE:LINE: message`. Scopes that appear more than once (two `<domain *>` blocks)
merge, a later value overriding an earlier one. Cross-references (a pool's vmtas, a
source's `auth-ldap`, a domain's `smtp-pattern-list`) and referenced files (TLS
certificates, DKIM keys, CA files) are checked here, so a config that loads can run.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs

from mtaserver.config import catalog
from mtaserver.config import registry as reg
from mtaserver.config.grammar import ConfigError, ConfigProblem, Directive, Node, Scope, parse_file
from mtaserver.config.model import (
    AcctFileSettings,
    AddressList,
    Config,
    DomainSettings,
    GlobalSettings,
    LdapSettings,
    Listener,
    ReportProcessorSettings,
    RewriteList,
    RoutingPatternList,
    SmtpPatternList,
    SmtpUser,
    SourceSettings,
    TransmissionsApiSettings,
    VirtualMta,
    VirtualMtaPool,
    build,
    routing_result,
    tls_policy,
)
from mtaserver.config.targets import check_targets
from mtaserver.config.values import HostPort, parse_cidr, parse_host_port, parse_mgmt_port

ScopeKey = tuple[str, str]


#: Scopes whose nested scopes (`<domain>`, `<address-list>`) belong to them alone.
_PARENT_SCOPES = (reg.VMTA, reg.VMTA_POOL, reg.BOUNCE_PROCESSOR, reg.FBL_PROCESSOR)


@attrs.define
class _Reference:
    """A name used somewhere that must be defined elsewhere (checked after the walk)."""

    kind: str
    name: str
    file: str
    line: int


@attrs.define
class _Loader:
    problems: list[ConfigProblem] = attrs.field(factory=list)
    global_layer: dict[str, Any] = attrs.field(factory=dict)
    layers: dict[ScopeKey, dict[str, Any]] = attrs.field(factory=dict)
    nested_domains: dict[ScopeKey, dict[str, dict[str, Any]]] = attrs.field(factory=dict)
    listener_scopes: list[tuple[str, HostPort, dict[str, Any]]] = attrs.field(factory=list)
    references: list[_Reference] = attrs.field(factory=list)
    files_to_check: list[tuple[str, str, int]] = attrs.field(factory=list)
    #: Directives and scopes accepted without effect (catalog.NO_EFFECT / NOT_YET).
    warnings: list[ConfigProblem] = attrs.field(factory=list)

    def problem(self, node: Node, message: str) -> None:
        self.problems.append(ConfigProblem(node.file, node.line, message))

    def warn(self, node: Node, what: str, status: str, reason: str) -> None:
        """One warning for a directive or scope that is accepted but does nothing here."""
        if status == catalog.NO_EFFECT:
            message = f"{what} has no effect here: {reason}"
        else:
            message = f"{what} is not yet implemented and has no effect here: {reason}"
        self.warnings.append(ConfigProblem(node.file, node.line, message))

    def walk(
        self,
        nodes: tuple[Node, ...] | list[Node],
        scope: str,
        layer: dict[str, Any],
        parent: ScopeKey | None = None,
        quiet: bool = False,
    ) -> None:
        """Check `nodes` in `scope`; `quiet` inside a scope that already warned it does nothing."""
        for node in nodes:
            if isinstance(node, Scope):
                self.open_scope(node, scope, parent, quiet)
            else:
                self.directive(node, scope, layer, quiet)

    def open_scope(
        self, node: Scope, scope: str, parent: ScopeKey | None, quiet: bool = False
    ) -> None:
        parse_arg = catalog.scope_arg(node.name)
        if parse_arg is None:
            self.problem(node, f"unknown scope <{node.name}>")
            return
        if scope not in catalog.scope_parents(node.name):
            where = "at top level" if scope == reg.GLOBAL else f"inside <{scope}>"
            self.problem(node, f"<{node.name}> is not allowed {where}")
            return
        try:
            arg = parse_arg(node.arg)
        except ValueError as exc:
            self.problem(node, f"<{node.name} {node.arg}>: {exc}")
            return
        if node.name == reg.DOMAIN and arg.startswith("$"):
            self.references.append(_Reference("domain-macro", arg[1:], node.file, node.line))
        status, reason = catalog.scope_status(node.name)
        if status != catalog.IMPLEMENTED and not quiet:
            self.warn(node, f"<{node.name}>", status, reason)
        quiet = quiet or status != catalog.IMPLEMENTED
        if node.name in (reg.SMTP_LISTENER, reg.API_LISTENER):
            layer: dict[str, Any] = {}
            self.listener_scopes.append((node.name, parse_host_port(arg), layer))
        elif parent is not None:
            layer = self.nested_domains.setdefault(parent, {}).setdefault(arg, {})
        else:
            layer = self.layers.setdefault((node.name, arg), {})
        key = (node.name, arg)
        self.walk(
            node.children,
            node.name,
            layer,
            parent=key if node.name in _PARENT_SCOPES else None,
            quiet=quiet,
        )

    def directive(
        self, node: Directive, scope: str, layer: dict[str, Any], quiet: bool = False
    ) -> None:
        spec = catalog.lookup(node.name, scope)
        if spec is None:
            allowed_in = catalog.scopes_of(node.name)
            if not allowed_in:
                self.problem(node, f"unknown directive {node.name!r}")
                return
            where = "at top level" if scope == reg.GLOBAL else f"in <{scope}>"
            allowed = ", ".join(s if s == reg.GLOBAL else f"<{s}>" for s in allowed_in)
            self.problem(node, f"{node.name!r} is not allowed {where} (allowed: {allowed})")
            return
        try:
            value = spec.parse(node.value)
        except ValueError as exc:
            self.problem(node, f"{node.name}: {exc}")
            return
        if spec.status != catalog.IMPLEMENTED:
            if not quiet:
                self.warn(node, node.name, spec.status, spec.reason)
            return  # nothing reads it: kept out of the settings
        caveat = spec.caveat(node.value) if spec.caveat else None
        if caveat:
            self.warnings.append(ConfigProblem(node.file, node.line, caveat))
        field = reg.field_name(node.name)
        if spec.repeatable:
            layer[field] = tuple(layer.get(field, ())) + (value,)
        else:
            layer[field] = value
        self.note_references(node, value)

    def note_references(self, node: Directive, value: Any) -> None:
        kinds = {
            "auth-ldap": reg.LDAP,
            "http-auth-ldap": reg.LDAP,
            "smtp-pattern-list": reg.PATTERN_LIST,
            "virtual-mta": reg.VMTA,
            "cold-virtual-mta": reg.VMTA,
            "invalid-virtual-mta-fallback": "vmta-or-pool",
            "default-virtual-mta": "vmta-or-pool",
            "source": reg.SOURCE,
        }
        if node.name == "smtp-listener" and value[1] is not None:
            self.references.append(_Reference(reg.SOURCE, value[1], node.file, node.line))
        if node.name in kinds and value is not None:  # None: default-virtual-mta by-smtp-...
            self.references.append(_Reference(kinds[node.name], value, node.file, node.line))
        files = {
            "tls-certificate",
            "smtp-server-tls-certificate",
            "http-mgmt-tls-certificate",
            "ca-file",
            "http-webhook-ca-file",
            "http-webhook-certificate",
            "http-delivery-extra-headers",
            "http-webhook-extra-headers",
            "address-file",
            "smtp-tls-ca-file",
        }
        if node.name in files:
            self.files_to_check.append((value, node.file, node.line))
        if node.name == "domain-key":
            self.files_to_check.append((value.key_file, node.file, node.line))

    def named(self, kind: str) -> dict[str, dict[str, Any]]:
        return {arg: layer for (name, arg), layer in self.layers.items() if name == kind}

    def check_references(self) -> None:
        vmtas, pools = self.named(reg.VMTA), self.named(reg.VMTA_POOL)
        known = {
            reg.LDAP: set(self.named(reg.LDAP)),
            reg.PATTERN_LIST: set(self.named(reg.PATTERN_LIST)),
            reg.VMTA: set(vmtas),
            "vmta-or-pool": set(vmtas) | set(pools),
            reg.SOURCE: {a for a in self.named(reg.SOURCE) if reg.is_named_source(a)} | {"{auth}"},
        }
        known["domain-macro"] = {name for name, _ in self.global_layer.get("domain_macro", ())}
        labels = {"vmta-or-pool": "virtual-mta or virtual-mta-pool"}
        for ref in self.references:
            if ref.name not in known[ref.kind]:
                label = labels.get(ref.kind, ref.kind)
                self.problems.append(
                    ConfigProblem(ref.file, ref.line, f"no <{label} {ref.name}> is defined")
                )
        for path, file, line in self.files_to_check:
            if not os.path.isfile(path):
                self.problems.append(ConfigProblem(file, line, f"file not found: {path}"))


def load_config(path: str) -> Config:
    """Read, validate and build the config at `path`; raise `ConfigError` listing every error."""
    loader = _Loader()
    files: list[str] = []
    try:
        nodes = parse_file(path, loader.problems, files)
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, 0, f"cannot read: {exc.strerror}")]) from None
    loader.walk(nodes, reg.GLOBAL, loader.global_layer)
    loader.check_references()
    config = _assemble(loader, path, files, nodes)
    config = attrs.evolve(config, ca_pems=_read_ca_files(loader, config))
    check_targets(nodes, config, loader.problems)
    _check_http_listeners(loader, nodes, config)
    order = {name: index for index, name in enumerate([path, *files])}
    if loader.problems:
        loader.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
        raise ConfigError(loader.problems)
    loader.warnings.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
    return attrs.evolve(config, warnings=tuple(loader.warnings))


def _assemble(loader: _Loader, path: str, files: list[str], nodes: list[Node]) -> Config:
    smtp_listeners = [
        Listener(address, source=source)
        for address, source in loader.global_layer.pop("smtp_listener", ())
    ]
    api_listeners: list[Listener] = []
    server_tls = tls_policy([loader.global_layer], "smtp_server_tls_")
    for kind, address, layer in loader.listener_scopes:
        tls = tls_policy([layer], "tls_", server_tls) if kind == reg.SMTP_LISTENER else None
        listener = Listener(address, layer.get("tls_certificate"), tls=tls)
        (smtp_listeners if kind == reg.SMTP_LISTENER else api_listeners).append(listener)
    _spool_scope(loader, nodes)
    settings = build(
        GlobalSettings,
        [loader.global_layer],
        smtp_listener=tuple(smtp_listeners),
        smtp_server_tls=server_tls,
    )
    sources = tuple(
        (parse_cidr(arg), layer)
        for arg, layer in loader.named(reg.SOURCE).items()
        if not reg.is_named_source(arg)
    )
    named_sources = {
        a: lyr for a, lyr in loader.named(reg.SOURCE).items() if reg.is_named_source(a)
    }
    users = {}
    for name, layer in loader.named(reg.SMTP_USER).items():
        if "password" not in layer:
            _missing(loader, nodes, reg.SMTP_USER, name, "password")
            continue
        users[name] = build(SmtpUser, [layer], name=name)
    ldaps = {}
    for name, layer in loader.named(reg.LDAP).items():
        if "uri" not in layer:
            _missing(loader, nodes, reg.LDAP, name, "uri")
            continue
        ldaps[name] = build(LdapSettings, [layer], name=name)
    vmtas = {
        name: build(
            VirtualMta,
            [layer],
            name=name,
            domains=_expand_macros(loader, loader.nested_domains.get((reg.VMTA, name), {})),
        )
        for name, layer in loader.named(reg.VMTA).items()
    }
    pools = {
        name: build(
            VirtualMtaPool,
            [layer],
            name=name,
            domains=_expand_macros(loader, loader.nested_domains.get((reg.VMTA_POOL, name), {})),
        )
        for name, layer in loader.named(reg.VMTA_POOL).items()
    }
    patterns = {
        name: build(SmtpPatternList, [layer], name=name)
        for name, layer in loader.named(reg.PATTERN_LIST).items()
    }
    routing = {
        name: build(RoutingPatternList, [layer], name=name)
        for name, layer in loader.named(catalog.PATTERN_LIST).items()
    }
    _check_routing(loader, nodes, routing)
    rewrites = {
        name: build(RewriteList, [layer], name=name)
        for name, layer in loader.named(catalog.REWRITE_LIST).items()
    }
    acct_files = tuple(
        build(AcctFileSettings, [layer], path=name)
        for name, layer in loader.named(reg.ACCT_FILE).items()
    )
    api = build(TransmissionsApiSettings, [loader.layers.get((reg.API, ""), {})])
    processors = tuple(
        _report_processor(loader, kind)
        for kind in (reg.BOUNCE_PROCESSOR, reg.FBL_PROCESSOR)
        if (kind, "") in loader.layers
    )
    return Config(
        path=os.path.abspath(path),
        files=tuple(files),
        settings=settings,
        sources=sources,
        named_sources=named_sources,
        smtp_users=users,
        ldap=ldaps,
        vmtas=vmtas,
        vmta_pools=pools,
        domains=_expand_macros(loader, loader.named(reg.DOMAIN)),
        pattern_lists=patterns,
        routing_patterns=routing,
        rewrite_lists=rewrites,
        domain_key_lists={
            name: tuple(layer.get("domain_key", ()))
            for name, layer in loader.named(catalog.DOMAIN_KEY_LIST).items()
        },
        bounce_category_patterns=tuple(
            (re.compile(regex.pattern, re.IGNORECASE), category)
            for regex, category in loader.layers.get(
                (catalog.BOUNCE_CATEGORY_PATTERNS, ""), {}
            ).get("pattern", ())
        ),
        acct_files=acct_files,
        api_listeners=tuple(api_listeners),
        api=api,
        report_processors=processors,
    )


def _read_ca_files(loader: _Loader, config: Config) -> dict[str, bytes]:
    """The PEM of each `smtp-tls-ca-file` (a file without a certificate is an error)."""
    layers = list(config.domains.values())
    layers += [layer for vmta in config.vmtas.values() for layer in vmta.domains.values()]
    layers += [layer for pool in config.vmta_pools.values() for layer in pool.domains.values()]
    pems: dict[str, bytes] = {}
    for ca_file in {layer["smtp_tls_ca_file"] for layer in layers if "smtp_tls_ca_file" in layer}:
        try:
            with open(ca_file, "rb") as stream:
                pem = stream.read()
        except OSError:
            continue  # check_references reports it
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            message = f"smtp-tls-ca-file {ca_file}: no PEM certificate in it"
            loader.problems.append(ConfigProblem(config.path, 0, message))
            continue
        pems[ca_file] = pem
    return pems


def _spool_scope(loader: _Loader, nodes: list[Node]) -> None:
    """`<spool DIR>` is PowerMTA's spelling of `spool DIR` (its `min-free-space`, of
    `spool-min-free-space`). mtaserver keeps one spool directory: a second `<spool>`, or
    one naming another directory than `spool`, is a config error."""
    spools = loader.named(catalog.SPOOL)
    if not spools:
        return
    scopes = _find_scopes(nodes, catalog.SPOOL)
    if len(spools) > 1:
        message = "only one spool directory is supported: several <spool> scopes are not (yet)"
        loader.problem(scopes[-1], message)
        return
    ((directory, layer),) = spools.items()
    if loader.global_layer.get("spool", directory) != directory:
        message = f"<spool {directory}> and spool {loader.global_layer['spool']} disagree"
        loader.problem(scopes[0], message)
        return
    loader.global_layer["spool"] = directory
    if "min_free_space" in layer:
        loader.global_layer["spool_min_free_space"] = layer["min_free_space"]
    if "deliver_only" in layer:
        loader.global_layer["deliver_only"] = layer["deliver_only"]


def _report_processor(loader: _Loader, kind: str) -> ReportProcessorSettings:
    """A `<bounce-processor>` or `<feedback-loop-processor>` with its address lists."""
    lists = []
    for name, layer in loader.nested_domains.get((kind, ""), {}).items():
        files = layer.get("address_file", ())
        lists.append(
            build(
                AddressList,
                [layer],
                name=name,
                domain=tuple(d.lower() for d in layer.get("domain", ())),
                file_addresses=frozenset(a for path in files for a in _address_file(path)),
            )
        )
    return build(
        ReportProcessorSettings,
        [loader.layers[(kind, "")]],
        kind=kind,
        address_lists=tuple(lists),
    )


def _address_file(path: str) -> list[str]:
    """An `address-file`: one address or local part a line, `#` comments (lower-cased).

    A file that cannot be read gives nothing here; `check_references` reports it.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return []
    return [w.lower() for w in (line.split("#", 1)[0].strip() for line in lines) if w]


def _check_routing(
    loader: _Loader, nodes: list[Node], routing: dict[str, RoutingPatternList]
) -> None:
    """Each `<pattern-list>` result names a defined vmta or pool; sources name a list."""
    targets = set(loader.named(reg.VMTA)) | set(loader.named(reg.VMTA_POOL))
    for name, patterns in routing.items():
        results = [r for _, _, r in patterns.header]
        results += [r for _, r in patterns.mail_from + patterns.rcpt_to]
        for result in results:
            target = routing_result(result)
            if target is not None and target not in targets:
                for scope in _find_scopes(nodes, catalog.PATTERN_LIST):
                    if scope.arg.strip() == name:
                        message = f"<pattern-list {name}>: no <virtual-mta {target}> is defined"
                        loader.problem(scope, message)
                        break
    for scope in _find_scopes(nodes, reg.SOURCE):
        for child in scope.children:
            if not isinstance(child, Directive) or child.name != "pattern-list":
                continue
            if child.value.strip() not in routing:
                loader.problem(child, f"no <pattern-list {child.value.strip()}> is defined")
    rewrites = loader.named(catalog.REWRITE_LIST)
    users = [*_find_scopes(nodes, reg.SOURCE), *_find_scopes(nodes, reg.VMTA)]
    for scope in users + _find_scopes(nodes, reg.VMTA_POOL):
        for child in scope.children:
            if not isinstance(child, Directive) or child.name != "rewrite-list":
                continue
            if child.value.strip() not in rewrites:
                loader.problem(child, f"no <rewrite-list {child.value.strip()}> is defined")


def _expand_macros(loader: _Loader, domains: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`<domain $NAME>` stands for each domain of `domain-macro NAME a.com,b.com`.

    A macro's settings apply to each of its domains as if each had its own `<domain>`;
    an explicit `<domain a.com>` is laid over them (it is the more specific word). A
    `.com` entry is the pattern `*.com`. An undefined macro is an error.
    """
    macros: dict[str, tuple[str, ...]] = {}
    for name, names in loader.global_layer.get("domain_macro", ()):
        macros[name] = macros.get(name, ()) + names
    expanded: dict[str, dict[str, Any]] = {}
    for pattern, layer in domains.items():
        if not pattern.startswith("$"):
            continue
        for domain in macros.get(pattern[1:], ()):  # an unknown one: check_references
            key = "*" + domain if domain.startswith(".") else domain
            expanded.setdefault(key, {}).update(layer)
    for pattern, layer in domains.items():
        if not pattern.startswith("$"):
            expanded[pattern] = {**expanded.get(pattern, {}), **layer}
    return expanded


def _check_http_listeners(loader: _Loader, nodes: list[Node], config: Config) -> None:
    """Plain HTTP is for loopback only: a management or API port elsewhere needs TLS.

    Checked here, not only when the port is bound, so that `test config` refuses what
    startup refuses (and a reload refuses it too, rather than keeping the old port).
    """
    rule = "(plain HTTP is loopback only)"
    port = config.settings.http_mgmt_port
    tls = config.settings.http_mgmt_tls_certificate
    if port is not None and not tls and not Listener(port).is_loopback:
        for node in _find_directives(nodes, "http-mgmt-port"):
            if parse_mgmt_port(node.value) == port:
                message = f"http-mgmt-port {port} needs http-mgmt-tls-certificate {rule}"
                loader.problem(node, message)
                break
    insecure = {
        listener.address
        for listener in config.api_listeners
        if not listener.tls_certificate and not listener.is_loopback
    }
    for scope in _find_scopes(nodes, reg.API_LISTENER):
        address = parse_host_port(scope.arg) if _is_host_port(scope.arg) else None
        if address in insecure:
            insecure.discard(address)
            loader.problem(scope, f"<{reg.API_LISTENER} {address}> needs tls-certificate {rule}")


def _is_host_port(text: str) -> bool:
    try:
        parse_host_port(text)
    except ValueError:
        return False
    return True


def _find_directives(nodes: list[Node] | tuple[Node, ...], name: str) -> list[Directive]:
    """Every top-level directive `name`, last first (the one that took effect)."""
    return [n for n in reversed(nodes) if isinstance(n, Directive) and n.name == name]


def _missing(loader: _Loader, nodes: list[Node], kind: str, name: str, directive: str) -> None:
    """Report a required directive missing from every `<kind name>` block, at the first."""
    for scope in _find_scopes(nodes, kind):
        if reg.SCOPES[kind](scope.arg) == name:
            loader.problem(scope, f"<{kind} {name}> needs a {directive!r} directive")
            return


def _find_scopes(nodes: list[Node] | tuple[Node, ...], kind: str) -> list[Scope]:
    found = []
    for node in nodes:
        if isinstance(node, Scope):
            if node.name == kind:
                found.append(node)
            found.extend(_find_scopes(node.children, kind))
    return found


#: For tests and docs: the settings record each scope's directives land in.
SCOPE_RECORDS: dict[str, type[Any]] = {
    reg.GLOBAL: GlobalSettings,
    reg.SOURCE: SourceSettings,
    reg.DOMAIN: DomainSettings,
    reg.SMTP_USER: SmtpUser,
    reg.PATTERN_LIST: SmtpPatternList,
    reg.LDAP: LdapSettings,
    reg.VMTA: VirtualMta,
    reg.VMTA_POOL: VirtualMtaPool,
    reg.ACCT_FILE: AcctFileSettings,
    reg.API: TransmissionsApiSettings,
    reg.SMTP_LISTENER: Listener,
    reg.API_LISTENER: Listener,
    reg.BOUNCE_PROCESSOR: ReportProcessorSettings,
    reg.FBL_PROCESSOR: ReportProcessorSettings,
    reg.ADDRESS_LIST: AddressList,
}
