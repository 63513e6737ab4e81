"""Tree to model: validate every directive against the registry and build a `Config`.

All errors of all files are collected and raised together as one `ConfigError`, each
`FILE:LINE: message`. Scopes that appear more than once (two `<domain *>` blocks)
merge, a later value overriding an earlier one. Cross-references (a pool's vmtas, a
source's `auth-ldap`, a domain's `smtp-pattern-list`) and referenced files (TLS
certificates, DKIM keys, CA files) are checked here, so a config that loads can run.
"""

from __future__ import annotations

import os
from typing import Any

import attrs

from mtaserver.config import registry as reg
from mtaserver.config.grammar import ConfigError, ConfigProblem, Directive, Node, Scope, parse_file
from mtaserver.config.model import (
    AcctFileSettings,
    Config,
    DomainSettings,
    GlobalSettings,
    LdapSettings,
    Listener,
    SmtpPatternList,
    SmtpUser,
    SourceSettings,
    TransmissionsApiSettings,
    VirtualMta,
    VirtualMtaPool,
    build,
)
from mtaserver.config.targets import check_targets
from mtaserver.config.values import HostPort, parse_cidr, parse_host_port

ScopeKey = tuple[str, str]


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

    def problem(self, node: Node, message: str) -> None:
        self.problems.append(ConfigProblem(node.file, node.line, message))

    def walk(
        self,
        nodes: tuple[Node, ...] | list[Node],
        scope: str,
        layer: dict[str, Any],
        parent: ScopeKey | None = None,
    ) -> None:
        for node in nodes:
            if isinstance(node, Scope):
                self.open_scope(node, scope, parent)
            else:
                self.directive(node, scope, layer)

    def open_scope(self, node: Scope, scope: str, parent: ScopeKey | None) -> None:
        if node.name not in reg.SCOPES:
            self.problem(node, f"unknown scope <{node.name}>")
            return
        if scope not in reg.SCOPE_PARENTS[node.name]:
            where = "at top level" if scope == reg.GLOBAL else f"inside <{scope}>"
            self.problem(node, f"<{node.name}> is not allowed {where}")
            return
        try:
            arg = reg.SCOPES[node.name](node.arg)
        except ValueError as exc:
            self.problem(node, f"<{node.name} {node.arg}>: {exc}")
            return
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
            parent=key if node.name in (reg.VMTA, reg.VMTA_POOL) else None,
        )

    def directive(self, node: Directive, scope: str, layer: dict[str, Any]) -> None:
        spec = reg.DIRECTIVES.get(node.name)
        if spec is None:
            self.problem(node, f"unknown directive {node.name!r}")
            return
        if scope not in spec.scopes:
            where = "at top level" if scope == reg.GLOBAL else f"in <{scope}>"
            allowed = ", ".join(sorted(s if s == reg.GLOBAL else f"<{s}>" for s in spec.scopes))
            self.problem(node, f"{node.name!r} is not allowed {where} (allowed: {allowed})")
            return
        try:
            value = spec.parse(node.value)
        except ValueError as exc:
            self.problem(node, f"{node.name}: {exc}")
            return
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
            "default-virtual-mta": "vmta-or-pool",
            "source": reg.SOURCE,
        }
        if node.name in kinds:
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
            reg.SOURCE: {a for a in self.named(reg.SOURCE) if a.startswith("{")} | {"{auth}"},
        }
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
    check_targets(nodes, config, loader.problems)
    if loader.problems:
        order = {name: index for index, name in enumerate([path, *files])}
        loader.problems.sort(key=lambda p: (order.get(p.file, len(order)), p.line))
        raise ConfigError(loader.problems)
    return config


def _assemble(loader: _Loader, path: str, files: list[str], nodes: list[Node]) -> Config:
    smtp_listeners = [Listener(a) for a in loader.global_layer.pop("smtp_listener", ())]
    api_listeners: list[Listener] = []
    for kind, address, layer in loader.listener_scopes:
        listener = Listener(address, layer.get("tls_certificate"))
        (smtp_listeners if kind == reg.SMTP_LISTENER else api_listeners).append(listener)
    settings = build(GlobalSettings, [loader.global_layer], smtp_listener=tuple(smtp_listeners))
    sources = tuple(
        (parse_cidr(arg), layer)
        for arg, layer in loader.named(reg.SOURCE).items()
        if not arg.startswith("{")
    )
    named_sources = {a: lyr for a, lyr in loader.named(reg.SOURCE).items() if a.startswith("{")}
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
            VirtualMta, [layer], name=name, domains=loader.nested_domains.get((reg.VMTA, name), {})
        )
        for name, layer in loader.named(reg.VMTA).items()
    }
    pools = {
        name: build(
            VirtualMtaPool,
            [layer],
            name=name,
            domains=loader.nested_domains.get((reg.VMTA_POOL, name), {}),
        )
        for name, layer in loader.named(reg.VMTA_POOL).items()
    }
    patterns = {
        name: build(SmtpPatternList, [layer], name=name)
        for name, layer in loader.named(reg.PATTERN_LIST).items()
    }
    acct_files = tuple(
        build(AcctFileSettings, [layer], path=name)
        for name, layer in loader.named(reg.ACCT_FILE).items()
    )
    api = build(TransmissionsApiSettings, [loader.layers.get((reg.API, ""), {})])
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
        domains=loader.named(reg.DOMAIN),
        pattern_lists=patterns,
        acct_files=acct_files,
        api_listeners=tuple(api_listeners),
        api=api,
    )


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
}
