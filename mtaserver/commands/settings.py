"""`show settings DOMAIN/VMTA`, `show vmta-settings VMTA`, `show version`: what is in force.

`show settings` answers PowerMTA's question "what settings does this queue run
with?": the virtual MTA's own settings, then every queue setting resolved through the
global, pool and vmta `<domain>` scopes, one `directive value` line each, in the
config's words. Credentials (`auth-password`) show as `********`. `show version`
gives the version, build and platform, like PowerMTA's `show version` and the
product/os/cpu block of its status.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from mtaserver import __version__
from mtaserver.commands.grammar import CommandError
from mtaserver.config.model import Config
from mtaserver.config.redact import REDACTED, SECRET_DIRECTIVES
from mtaserver.queue.routing import DEFAULT_VMTA, split_queue_name


def directive(field: str) -> str:
    """`max_smtp_out` -> `max-smtp-out`: a settings field in the config's words."""
    return field.replace("_", "-")


def setting_text(value: Any) -> str:
    """A setting as a config line would give it: yes/no, lists joined, unset as ""."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return '""'
    if isinstance(value, (tuple, list, frozenset, set)):
        if not value:
            return '""'
        return ",".join(setting_text(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if attrs.has(type(value)) and type(value).__str__ is object.__str__:
        return str(type(value).__name__)
    return str(value)


def settings_lines(settings: Any) -> dict[str, str]:
    """Every field of a settings record as `directive: text`, credentials hidden."""
    lines = {}
    for field in attrs.fields(type(settings)):
        name = directive(field.name)
        value = getattr(settings, field.name)
        if name == "domain-key":
            text = ",".join(f"{k.selector},{k.domain}" for k in value) or '""'
        else:
            text = setting_text(value)
        if name in SECRET_DIRECTIVES and value:
            text = REDACTED
        lines[name] = text
    return lines


def vmta_settings(config: Config, name: str) -> dict[str, Any]:
    """`show vmta-settings VMTA`: a virtual MTA's own settings and its sources."""
    vmta = config.vmtas.get(name)
    if vmta is None:
        if name == DEFAULT_VMTA:
            return {"name": name, "settings": {"host-name": config.settings.host_name}}
        raise CommandError(f"show vmta-settings: no virtual MTA {name!r}")
    pools = sorted(p.name for p in config.vmta_pools.values() if name in p.virtual_mta)
    return {
        "name": name,
        "settings": {
            "host-name": vmta.host_name or config.settings.host_name,
            "max-smtp-out": setting_text(vmta.max_smtp_out) if vmta.max_smtp_out else "unlimited",
            "smtp-source-host": [f"{s.ip} {s.host_name}" for s in vmta.smtp_source_host],
            "cold-virtual-mta": list(vmta.cold_virtual_mta),
            "domain-key": [f"{k.selector},{k.domain}" for k in vmta.domain_key],
            "domains": sorted(vmta.domains),
        },
        "pools": pools,
    }


def queue_settings(config: Config, queue: str) -> dict[str, Any]:
    """`show settings DOMAIN[/VMTA]`: the settings a queue runs with."""
    domain, vmta = split_queue_name(queue)
    wild = any(c in domain for c in "*?") or (vmta != "*" and any(c in vmta for c in "*?"))
    if wild:
        raise CommandError("show settings: name one queue (DOMAIN[/VMTA]), not a pattern")
    vmta = DEFAULT_VMTA if vmta == "*" else vmta
    if vmta != DEFAULT_VMTA and vmta not in config.vmtas:
        raise CommandError(f"show settings: no virtual MTA {vmta!r}")
    settings = config.domain_settings(domain, vmta)
    return {
        "queue": f"{domain}/{vmta}",
        "vmta": vmta_settings(config, vmta)["settings"],
        "settings": settings_lines(settings),
    }


def version_details() -> dict[str, Any]:
    """`show version`: the product, its platform and its libraries."""
    import twisted

    uname = platform.uname()
    return {
        "product": {
            "name": "mtaserver",
            "version": __version__,
            "bits": 64 if sys.maxsize > 2**32 else 32,
        },
        "python": platform.python_version(),
        "pythonImplementation": platform.python_implementation(),
        "twisted": twisted.__version__,
        "os": {"name": uname.system, "version": uname.release},
        "cpu": {"type": uname.machine, "count": os.cpu_count() or 0},
        "fullHostName": platform.node(),
    }


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}` (PowerMTA's DOM style names)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
