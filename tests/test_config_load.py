"""Loading: validation against the registry, errors with FILE:LINE, and setting resolution."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import attrs
import pytest

from mtaserver.config import ConfigError, load_config
from mtaserver.config import registry as reg
from mtaserver.config.load import SCOPE_RECORDS
from mtaserver.config.model import Config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "mtaserver.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return [str(p).replace(path, "F") for p in info.value.problems]


def test_embedded_default_config_loads() -> None:
    """etc/mtaserver.conf loads and listens on loopback only."""
    config = load_config(str(ROOT / "etc/mtaserver.conf"))
    assert [str(listener.address) for listener in config.settings.smtp_listener] == [
        "127.0.0.1:2525"
    ]
    assert str(config.settings.http_mgmt_port) == "127.0.0.1:8080"
    assert [str(listener.address) for listener in config.api_listeners] == ["127.0.0.1:8585"]
    assert all(listener.is_loopback for listener in config.settings.smtp_listener)
    assert config.settings.spool == "var/spool"


def test_every_directive_has_a_model_field() -> None:
    """Each registry directive lands in a field of its scope's settings record."""
    for name, spec in reg.DIRECTIVES.items():
        for scope in spec.scopes:
            fields = {f.name for f in attrs.fields(SCOPE_RECORDS[scope])}
            assert reg.field_name(name) in fields, (name, scope)


def test_all_errors_of_a_file_are_reported_at_once(tmp_path: Path) -> None:
    """Unknown directive, wrong scope, bad value and unclosed scope each give FILE:LINE."""
    found = errors(
        tmp_path,
        "frobnicate yes\n"
        "max-smtp-out 3\n"
        "<domain *>\n"
        "  max-smtp-out many\n"
        "  postmaster x@y.z\n"
        "</domain>\n"
        "<source 10.0.0.0/8>\n"
        "  smtp-service perhaps\n",
    )
    assert found == [
        "F:1: unknown directive 'frobnicate'",
        "F:2: 'max-smtp-out' is not allowed at top level "
        "(allowed: <domain>, <virtual-mta>, <virtual-mta-pool>)",
        "F:4: max-smtp-out: expected a whole number, e.g. 10, not 'many'",
        "F:5: 'postmaster' is not allowed in <domain> (allowed: global)",
        "F:7: <source> is not closed",
    ]


def test_scope_errors(tmp_path: Path) -> None:
    """Unknown scopes, scopes in the wrong place and bad scope arguments are errors."""
    found = errors(
        tmp_path,
        "<mailbox x>\n</mailbox>\n"
        "<domain a.com>\n<virtual-mta v>\n</virtual-mta>\n</domain>\n"
        "<source 999.1.1.1>\n</source>\n"
        "<transmissions-api x>\n</transmissions-api>\n",
    )
    assert found == [
        "F:1: unknown scope <mailbox>",
        "F:4: <virtual-mta> is not allowed inside <domain>",
        "F:7: <source 999.1.1.1>: expected an address or CIDR such as 10.0.0.0/8, not '999.1.1.1'",
        "F:9: <transmissions-api x>: this scope takes no argument",
    ]


def test_errors_in_included_files_name_that_file(tmp_path: Path) -> None:
    """An error in an included file is reported as that file's name and line."""
    (tmp_path / "domains.conf").write_text("<domain a.com>\n\n  retry-after soon\n</domain>\n")
    path = write(tmp_path, "host-name a\ninclude domains.conf\nbogus 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3: unknown directive 'bogus'",
        f"{tmp_path / 'domains.conf'}:3: retry-after: expected an interval such as 30s, 10m, "
        "4h or 4d12h, not 'soon'",
    ]


def test_cross_references_must_exist(tmp_path: Path) -> None:
    """Pools, pattern lists, ldap and default vmtas must name defined scopes."""
    found = errors(
        tmp_path,
        "<virtual-mta-pool p>\n  virtual-mta ghost\n</virtual-mta-pool>\n"
        "<domain *>\n  smtp-pattern-list nolist\n</domain>\n"
        "<source 0/0>\n  auth-ldap corp\n  default-virtual-mta nowhere\n</source>\n"
        "<smtp-user bob>\n  password x\n  source {nosuch}\n</smtp-user>\n",
    )
    assert found == [
        "F:2: no <virtual-mta ghost> is defined",
        "F:5: no <smtp-pattern-list nolist> is defined",
        "F:8: no <ldap corp> is defined",
        "F:9: no <virtual-mta or virtual-mta-pool nowhere> is defined",
        "F:13: no <source {nosuch}> is defined",
    ]


def test_referenced_files_must_exist(tmp_path: Path) -> None:
    """TLS certificates and DKIM key files are checked at load time."""
    found = errors(
        tmp_path,
        "smtp-server-tls-certificate /nonexistent/cert.pem\n"
        "domain-key s1,example.com,/nonexistent/key.pem\n",
    )
    assert found == [
        "F:1: file not found: /nonexistent/cert.pem",
        "F:2: file not found: /nonexistent/key.pem",
    ]


def test_required_directives(tmp_path: Path) -> None:
    """An <ldap> without uri and an <smtp-user> without password are errors."""
    found = errors(
        tmp_path, "<ldap corp>\n  base-dn dc=x\n</ldap>\n<smtp-user bob>\n</smtp-user>\n"
    )
    assert found == [
        "F:1: <ldap corp> needs a 'uri' directive",
        "F:4: <smtp-user bob> needs a 'password' directive",
    ]


RESOLUTION = """
<domain *>
    max-smtp-out 10
    retry-after 5m
    max-msg-rate 100/h
</domain>
<domain *.example.com>
    max-smtp-out 8
</domain>
<domain mx.example.com>
    max-smtp-out 5
</domain>
<virtual-mta-pool pool1>
    virtual-mta v1
    <domain mx.example.com>
        max-msg-per-connection 7
        max-smtp-out 4
    </domain>
</virtual-mta-pool>
<virtual-mta v1>
    smtp-source-host 127.0.0.2 out1.example.net
    <domain mx.example.com>
        max-smtp-out 2
    </domain>
    <domain *>
        connect-timeout 5s
    </domain>
</virtual-mta>
<domain *>
    bounce-after 1d
    max-smtp-out 11
</domain>
"""


def test_domain_settings_resolve_in_powermta_order(tmp_path: Path) -> None:
    """<domain *> < <domain *.x> < <domain x> < pool's <domain x> < vmta's <domain x>."""
    config = load_config(write(tmp_path, RESOLUTION))
    other = config.domain_settings("other.org")
    assert (other.max_smtp_out, other.retry_after, other.bounce_after) == (11, (300.0,), 86400.0)
    assert config.domain_settings("a.example.com").max_smtp_out == 8
    assert config.domain_settings("MX.example.com").max_smtp_out == 5
    pooled = config.domain_settings("mx.example.com", pool="pool1")
    assert (pooled.max_smtp_out, pooled.max_msg_per_connection) == (4, 7)
    via_vmta = config.domain_settings("mx.example.com", vmta="v1", pool="pool1")
    assert (via_vmta.max_smtp_out, via_vmta.max_msg_per_connection) == (2, 7)
    assert via_vmta.connect_timeout == 5.0
    assert via_vmta.max_msg_rate is not None and via_vmta.max_msg_rate.count == 100


def test_repeated_scopes_merge_and_later_values_win(tmp_path: Path) -> None:
    """Two <domain *> blocks merge; the later max-smtp-out overrides the earlier one."""
    config = load_config(write(tmp_path, RESOLUTION))
    settings = config.domain_settings("z.org")
    assert settings.max_smtp_out == 11 and settings.bounce_after == 86400.0


def test_vmta_and_pool_records(tmp_path: Path) -> None:
    """Virtual MTAs keep their source hosts; pools their members."""
    config = load_config(write(tmp_path, RESOLUTION))
    assert config.vmtas["v1"].smtp_source_host[0].ip == "127.0.0.2"
    assert config.vmta_pools["pool1"].virtual_mta == ("v1",)


SOURCES = """
<source 0/0>
    smtp-service yes
    max-message-size 10M
</source>
<source 10.0.0.0/8>
    always-allow-relaying yes
</source>
<source 10.1.0.0/16>
    smtp-service no
</source>
<source ::1>
    require-auth yes
</source>
<source {auth}>
    always-allow-relaying yes
    max-message-size 20M
</source>
<source {transmissions-api}>
    process-x-job yes
</source>
relay-domain inbound.example
relay-domain *.hooks.example
"""


def test_most_specific_source_wins(tmp_path: Path) -> None:
    """A client IP gets the longest-prefix <source>, not a merge of all matches."""
    config = load_config(write(tmp_path, SOURCES))
    assert config.source_settings("192.0.2.1").max_message_size == 10 * 2**20
    assert config.source_settings("10.2.3.4").always_allow_relaying is True
    assert config.source_settings("10.2.3.4").max_message_size == 50 * 2**20
    assert config.source_settings("10.1.2.3").smtp_service is False
    assert config.source_settings("10.1.2.3").always_allow_relaying is False
    assert config.source_settings("::1").require_auth is True
    assert config.source_settings("::ffff:10.2.3.4").always_allow_relaying is True


def test_named_sources_and_auth_overlay(tmp_path: Path) -> None:
    """{auth} is laid over the IP's source after AUTH; {transmissions-api} is by name."""
    config = load_config(write(tmp_path, SOURCES))
    authed = config.source_settings("192.0.2.1", authenticated=True)
    assert authed.always_allow_relaying is True and authed.max_message_size == 20 * 2**20
    assert config.named_source("{transmissions-api}").process_x_job is True
    assert config.named_source("{nothing}").process_x_job is False


def test_relay_domains(tmp_path: Path) -> None:
    """relay-domain entries match exactly or by *.suffix."""
    config = load_config(write(tmp_path, SOURCES))
    assert config.is_relay_domain("Inbound.Example")
    assert config.is_relay_domain("a.hooks.example")
    assert not config.is_relay_domain("hooks.example.org")


def test_listener_scopes_and_directives(tmp_path: Path) -> None:
    """smtp-listener works as a directive and as a scope with tls-certificate."""
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    config = load_config(
        write(
            tmp_path,
            (
                "smtp-listener 127.0.0.1:2525\n"
                f"<smtp-listener [::1]:2526>\n  tls-certificate {cert}\n</smtp-listener>\n"
                f"<transmissions-api-listener 0/0:8585>\n  tls-certificate {cert}\n"
                "</transmissions-api-listener>\n"
            ),
        )
    )
    smtp = config.settings.smtp_listener
    assert [(str(s.address), s.tls_certificate) for s in smtp] == [
        ("127.0.0.1:2525", None),
        ("[::1]:2526", str(cert)),
    ]
    (api,) = config.api_listeners
    assert api.address.host == "0.0.0.0" and not api.is_loopback


def test_acct_files_and_pattern_lists(tmp_path: Path) -> None:
    """<acct-file> and <smtp-pattern-list> scopes become records."""
    config = load_config(
        write(
            tmp_path,
            (
                "<acct-file /tmp/acct.csv>\n  records r,d\n  record-fields d *\n"
                "  map-header-to-field d,b X-Campaign campaign\n  http-webhook-max-interval 1s\n"
                "</acct-file>\n"
                "<smtp-pattern-list p>\n  reply /421/ mode=backoff\n"
                "  reply /5\\.7\\.1/ bounce-rcpt\n"
                "</smtp-pattern-list>\n"
            ),
        )
    )
    (acct,) = config.acct_files
    assert acct.records == frozenset({"r", "d"}) and acct.http_webhook_max_interval == 1.0
    assert acct.map_header_to_field[0].field == "campaign"
    patterns = config.pattern_lists["p"]
    assert [p.actions for p in patterns.reply] == [("mode=backoff",), ("bounce-rcpt",)]
    assert patterns.actions_for("550 5.7.1 blocked") == ("bounce-rcpt",)
    assert patterns.actions_for("250 ok") == ()


def test_config_records_are_frozen(tmp_path: Path) -> None:
    """The model cannot be changed in place; reload replaces it."""
    config = load_config(write(tmp_path, SOURCES))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.settings = None  # type: ignore[misc]
    assert isinstance(config, Config)
    assert ipaddress.ip_network("10.0.0.0/8") in [n for n, _ in config.sources]


def test_unreadable_main_file(tmp_path: Path) -> None:
    """A missing main file is one clear error."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(os.fspath(tmp_path / "missing.conf"))
