"""The configuration language: grammar, directive registry, model, loading and reload."""

from mtaserver.config.grammar import ConfigError, ConfigProblem
from mtaserver.config.load import load_config
from mtaserver.config.model import (
    AcctFileSettings,
    Config,
    DomainSettings,
    GlobalSettings,
    LdapSettings,
    Listener,
    SmtpUser,
    SourceSettings,
    TransmissionsApiSettings,
    VirtualMta,
    VirtualMtaPool,
)

__all__ = [
    "AcctFileSettings",
    "Config",
    "ConfigError",
    "ConfigProblem",
    "DomainSettings",
    "GlobalSettings",
    "LdapSettings",
    "Listener",
    "SmtpUser",
    "SourceSettings",
    "TransmissionsApiSettings",
    "VirtualMta",
    "VirtualMtaPool",
    "load_config",
]
