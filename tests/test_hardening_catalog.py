"""PowerMTA configs carry over: every directive of the 5.0 reference is known.

The reference list is `tests/data/powermta-5.0-directives-toc.txt` (the directive
headings of the PowerMTA 5.0 User's Guide, chapter 3.3, as `SECTION NAME` lines). The
three real configs of `/work/shared/corpus/pmta-configs/` are not copied here (they carry
no licence statement): their tests read them from there and skip when it is absent.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mgmt_client import MgmtServer
from server_process import ServerProcess, free_port
from test_config_values import INVALID

from mtaserver.auth.passwords import verify_password
from mtaserver.config import catalog, doctable
from mtaserver.config import registry as reg
from mtaserver.config.grammar import ConfigError, unquote
from mtaserver.config.load import load_config
from mtaserver.config.model import Config
from mtaserver.config.redact import redact_config_text, restore_secrets
from mtaserver.config.values import parse_cidr, parse_rate, parse_record_types

ROOT = Path(__file__).resolve().parent.parent
TOC = Path(__file__).resolve().parent / "data" / "powermta-5.0-directives-toc.txt"
CORPUS = Path("/work/shared/corpus/pmta-configs")

#: Section of chapter 3.3 -> the scope its directives stand in.
SECTION_SCOPES = {
    "3.3.1": reg.GLOBAL,
    "3.3.2": catalog.SPOOL,
    "3.3.3": catalog.BOUNCE_PROCESSOR,
    "3.3.4": catalog.FBL_PROCESSOR,
    "3.3.5": catalog.ADDRESS_LIST,
    "3.3.6": catalog.EMAIL_PATTERNS,
    "3.3.7": reg.SOURCE,
    "3.3.8": reg.SMTP_USER,
    "3.3.9": catalog.SOURCE_GROUP,
    "3.3.10": reg.DOMAIN,
    "3.3.11": reg.ACCT_FILE,
    "3.3.12": reg.VMTA,
    "3.3.13": reg.VMTA_POOL,
    "3.3.14": catalog.PATTERN_LIST,
    "3.3.15": reg.PATTERN_LIST,
    "3.3.16": catalog.DNS,
    "3.3.17": reg.SMTP_LISTENER,
    "3.3.18": catalog.REWRITE_LIST,
    "3.3.19": catalog.DOMAIN_KEY_LIST,
    "3.3.20": reg.API,
    "3.3.21": reg.API_LISTENER,
}

#: The guide files `always-allow-relaying` under the global "Relaying Control" heading,
#: but its text, example and index put it in `<source>`.
MISFILED = {("always-allow-relaying", reg.GLOBAL): reg.SOURCE}


def reference() -> list[tuple[str, str]]:
    """(directive, scope) for each directive heading of the reference list."""
    pairs = []
    for line in TOC.read_text().splitlines():
        section, _, title = line.partition(" ")
        title = title.removesuffix(" directive")
        if "Directives" in title or "support" in title.lower() or "<" in title:
            continue
        for name in re.split(r",\s*|\s+&\s+", title):
            pairs.append((name.strip(), SECTION_SCOPES[section]))
    return pairs


def test_reference_list_is_read_whole() -> None:
    """The reference list gives about 350 directive headings, in 21 scopes."""
    pairs = reference()
    assert len(pairs) > 340
    assert {scope for _, scope in pairs} == set(SECTION_SCOPES.values())


def test_every_reference_directive_is_known_in_its_scope() -> None:
    """Each directive of the 5.0 reference is known in the scope the guide names."""
    missing = []
    for name, scope in reference():
        scope = MISFILED.get((name, scope), scope)
        if name == "include":
            continue  # the grammar's, in every scope
        if name == "domain" and scope == reg.VMTA_POOL:
            assert reg.VMTA_POOL in catalog.scope_parents(reg.DOMAIN)  # <domain> nests
            continue
        if catalog.lookup(name, scope) is None:
            missing.append(f"{name} in <{scope}>")
    assert missing == []


def test_every_directive_has_a_status_and_a_reason() -> None:
    """Each entry is implemented, no effect or not yet; the last two say why."""
    for entry in doctable.entries():
        assert entry.status in (catalog.IMPLEMENTED, catalog.NO_EFFECT, catalog.NOT_YET)
        if entry.status != catalog.IMPLEMENTED:
            assert entry.reason, entry.name


def test_catalog_does_not_repeat_the_registry() -> None:
    """A directive is defined once: the catalog holds no (name, scope) the registry has."""
    twice = [
        key
        for key in catalog.CATALOG
        if key[0] in reg.DIRECTIVES and key[1] in reg.DIRECTIVES[key[0]].scopes
    ]
    assert twice == []
    assert set(catalog.CATALOG_SCOPES) & set(reg.SCOPES) == set()


def test_docs_table_is_the_generated_one() -> None:
    """docs/config.rst's directive table equals `python -m mtaserver.config.doctable`."""
    text = (ROOT / "docs" / "config.rst").read_text()
    assert doctable.committed(text) == doctable.generate()


def test_docs_table_lists_every_reference_directive() -> None:
    """Each directive of the reference has a row naming its scope and status."""
    text = doctable.committed((ROOT / "docs" / "config.rst").read_text())
    for name, scope in reference():
        scope = MISFILED.get((name, scope), scope)
        if name in ("include",) or (name == "domain" and scope == reg.VMTA_POOL):
            continue
        where = "global" if scope == reg.GLOBAL else f"<{scope}>"
        assert re.search(
            rf"^   ``{re.escape(name)}``,{re.escape(where)},(implemented|no effect|not yet),",
            text,
            re.MULTILINE,
        ), f"{name} in {where}"


GUIDE = Path("/work/shared/reference/powermta-5.0-userguide.txt")


def guide_examples() -> list[tuple[str, str, str]]:
    """(section, directive, value) for each example line of chapter 3.3 of the guide.

    Read from the full guide when it is on this machine (it is not copied here).
    """
    if not GUIDE.exists():
        return []
    lines = GUIDE.read_text().splitlines()
    heads = [i for i, line in enumerate(lines) if re.match(r"3\.3\.\d+\.\d+(\.\d+)? ", line)]
    heads = [i for i in heads if i > 1000]  # the body, not the table of contents
    found = []
    for n, start in enumerate(heads):
        end = heads[n + 1] if n + 1 < len(heads) else start + 200
        number, title = lines[start].split(" ", 1)
        names = re.split(r",\s*|\s+&\s+", title.removesuffix(" directive"))
        section = ".".join(number.split(".")[:3])
        in_example = False
        for line in lines[start + 1 : end]:
            if line.startswith("Example"):
                in_example = True
            elif line.startswith(("Syntax:", "Default:", "Note")):
                in_example = False
            elif in_example:
                text = re.sub(r"\s+#.*$", "", line).strip()
                words = text.split(None, 1)
                if words and words[0] in names and "<" not in text:
                    found.append((section, words[0], words[1] if len(words) > 1 else ""))
    return found


def test_guide_examples_are_read() -> None:
    """The guide gives some 370 example lines (skipped without the guide)."""
    if not GUIDE.exists():
        pytest.skip(f"{GUIDE} is absent: the PowerMTA guide is not on this machine")
    assert len(guide_examples()) > 350


@pytest.mark.parametrize(("section", "name", "value"), guide_examples())
def test_every_guide_example_value_parses(section: str, name: str, value: str) -> None:
    """Each example line of the guide's directive reference parses in its scope."""
    scope = SECTION_SCOPES[section]
    scope = MISFILED.get((name, scope), scope)
    if name == "include":
        return
    entry = catalog.lookup(name, scope)
    assert entry is not None, f"{name} in <{scope}>"
    entry.parse(unquote(value))


@pytest.mark.parametrize(
    ("line", "warning"),
    [
        ("smtp-server-tls-certificate {cert} secret\n", "private key password"),
        ("http-access 10/8 operator\n", "operator is not yet implemented"),
        ("http-access 10/8 monitor,deny-logs\n", "deny-logs has no effect"),
        ("<source 0/0>\n default-virtual-mta by-smtp-source-ip\n</source>\n", "by-smtp-source-ip"),
        ("<source 0/0>\n add-date-header override\n</source>\n", "override is not yet"),
        ("domain-key s1,*,{cert}\n", "domain-key for * is not yet"),
    ],
)
def test_partly_implemented_values_load_with_a_warning(
    tmp_path: Path, line: str, warning: str
) -> None:
    """PowerMTA value forms mtaserver does not act on yet load, each with its warning."""
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    config = load(tmp_path, line.format(cert=cert))
    assert [w.message for w in config.warnings if warning in w.message] != []


def test_powermta_value_meanings(tmp_path: Path) -> None:
    """spool-min-free-space N is megabytes; unlimited rcpts; sender-or-from; header_ prefix."""
    config = load(
        tmp_path,
        "spool-min-free-space 100\n"
        "<source 0/0>\n max-rcpt-per-message unlimited\n</source>\n"
        "<source 10/8>\n max-rcpt-per-message 0\n</source>\n"
        "<domain *>\n dkim-identity sender-or-from\n</domain>\n"
        f"<acct-file {tmp_path}/a.csv>\n map-header-to-field b header_x-foo rcpt\n</acct-file>\n",
    )
    assert config.settings.spool_min_free_space == 100 * 2**20
    assert config.source_settings("192.0.2.1").max_rcpt_per_message == 0
    assert config.source_settings("10.1.1.1").max_rcpt_per_message == 0
    assert config.domain_settings("example.com").dkim_identity is None
    mapping = config.acct_files[0].map_header_to_field[0]
    assert (mapping.header, mapping.field) == ("x-foo", "rcpt")


# -- loading -----------------------------------------------------------------------------


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "t.conf"
    path.write_text(text)
    return load_config(str(path))


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [p.message for p in caught.value.problems]


def test_names_with_dots_are_directives(tmp_path: Path) -> None:
    """`smtp-server-tls-allow-tlsv1.2` loads (implemented); an unknown dotted name is unknown."""
    config = load(tmp_path, "smtp-server-tls-allow-tlsv1.2 no\n")
    assert config.warnings == ()
    assert config.settings.smtp_server_tls.allow == frozenset()
    assert errors(tmp_path, "smtp-server-tls-allow-tlsv9.9 yes\n") == [
        "unknown directive 'smtp-server-tls-allow-tlsv9.9'"
    ]


@pytest.mark.parametrize("line", ["foo.bar 1", "= 3", "/spam/ spam-related", "x=y"])
def test_unknown_forms_say_unknown_directive(tmp_path: Path, line: str) -> None:
    """Any line that is not a scope is a directive: an unknown one says so, not "cannot parse"."""
    word = line.split()[0]
    assert errors(tmp_path, line + "\n") == [f"unknown directive {word!r}"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("<domain *>\nmax-msg-rate lots\n</domain>\n", "e.g. 100/h"),
        ("<domain *>\nmax-data-volume-rate lots\n</domain>\n", "such as 1M/1h"),
        ("<source 0/0>\nsmtp-data-timeout soon\n</source>\n", "such as 30s"),
        ("spool-max-recipients many\n", "expected a whole number"),
        ("<domain *>\nmax-cold-virtual-mta-msg x\n</domain>\n", "e.g. 100/h"),
    ],
)
def test_value_errors_say_what_was_expected(tmp_path: Path, line: str, expected: str) -> None:
    """A value that does not parse names the form expected, with an example."""
    [message] = errors(tmp_path, line)
    assert "expected" in message and expected in message


@pytest.mark.parametrize(("parse", "text", "message"), INVALID)
def test_every_value_error_gives_an_example(parse: Any, text: str, message: str) -> None:
    """Each value parser's error shows the form expected: an example or the choices."""
    with pytest.raises(ValueError) as caught:
        parse(text)
    hints = ("e.g.", "such as", "one of", "yes or no", "record types from")
    assert any(hint in str(caught.value) for hint in hints), str(caught.value)


def test_type_pipe_is_refused_saying_why(tmp_path: Path) -> None:
    """`type pipe` (PowerMTA's pipe delivery) is an error naming it, not a silent SMTP queue."""
    [message] = errors(tmp_path, "<domain bounces.test>\n  type pipe\n</domain>\n")
    assert message.startswith("type: type pipe is not yet implemented")


def test_not_yet_and_no_effect_directives_warn_with_file_and_line(tmp_path: Path) -> None:
    """Each accepted-without-effect directive gives one warning naming it and FILE:LINE."""
    config = load(
        tmp_path,
        "run-as-root no\nhost-name mta.test\n<domain *>\n  use-dane yes\n</domain>\n",
    )
    assert [(w.line, w.message.split(" ")[0]) for w in config.warnings] == [
        (1, "run-as-root"),
        (4, "use-dane"),
    ]
    assert "has no effect here" in config.warnings[0].message
    assert "is not yet implemented" in config.warnings[1].message


def test_an_unimplemented_scope_warns_once(tmp_path: Path) -> None:
    """A `<signals>` block is one warning, however many directives it holds."""
    config = load(tmp_path, "<signals>\n  log-verbose true\n  api-key\n</signals>\n")
    assert [(w.line, w.message.split(" ")[0]) for w in config.warnings] == [(1, "<signals>")]


def test_implemented_directives_do_not_warn(tmp_path: Path) -> None:
    """A config of implemented directives only loads without warnings."""
    assert (
        load(tmp_path, "host-name a.test\n<domain *>\n max-smtp-out 3\n</domain>\n").warnings == ()
    )


def test_bounce_category_patterns_are_data_lines(tmp_path: Path) -> None:
    """`<bounce-category-patterns>` takes `/REGEX/ CATEGORY` lines, a wrapped one joined."""
    text = (
        "<bounce-category-patterns>\n"
        "    /spam/ spam-related\n"
        "    /(conta|usu.rio) inativ(a|o)\n"
        "    / inactive-mailbox\n"
        "    // other\n"
        "</bounce-category-patterns>\n"
    )
    config = load(tmp_path, text)
    assert [w.line for w in config.warnings] == []  # implemented
    assert config.bounce_category("5.0.0", "smtp;550 conta inativa") == "inactive-mailbox"
    assert config.bounce_category("5.0.0", "smtp;550 anything") == "other"
    bad = "<bounce-category-patterns>\n  /(unclosed/ x\n</bounce-category-patterns>\n"
    assert "bad regular expression" in errors(tmp_path, bad)[0]


def test_named_source_without_braces(tmp_path: Path) -> None:
    """`<source mta1>` is a named source; `smtp-listener ... source=mta1` uses it, no warning."""
    config = load(
        tmp_path,
        "smtp-listener 127.0.0.1:2525 source=mta1\n"
        "<source mta1>\n  max-message-size 1K\n</source>\n"
        "<smtp-user u>\n  password p\n  source mta1\n</smtp-user>\n",
    )
    assert config.named_source("mta1").max_message_size == 1024
    assert config.sources == ()
    assert [w.line for w in config.warnings] == []
    assert config.settings.smtp_listener[0].source == "mta1"
    assert errors(tmp_path, "<smtp-user u>\n  password p\n  source nowhere\n</smtp-user>\n") == [
        "no <source nowhere> is defined"
    ]


def test_empty_password_locks_the_user(tmp_path: Path) -> None:
    """`password ## PLACEHOLDER ##` (all comment) loads; that user can never log in."""
    config = load(tmp_path, "<smtp-user u>\n  password ## YOUR PASSWORD HERE ##\n</smtp-user>\n")
    stored = config.smtp_users["u"].password
    assert not verify_password(stored, "")
    assert not verify_password(stored, stored)
    assert [w.message for w in config.warnings] == ["password is empty: this user can never log in"]


def test_domain_macro_scopes_load(tmp_path: Path) -> None:
    """`domain-macro` and `<domain $NAME>` load, without a warning (implemented)."""
    config = load(
        tmp_path,
        "domain-macro gmail gmail.com,googlemail.com\n"
        "<domain $gmail>\n max-msg-rate 1/min\n</domain>\n",
    )
    assert [w.line for w in config.warnings] == []
    assert config.domain_settings("googlemail.com").max_msg_rate is not None


def test_powermta_value_forms() -> None:
    """PowerMTA's rate units, short CIDRs, long record type names and `0` rates parse."""
    assert parse_rate("1/min") == parse_rate("1/m")
    assert parse_rate("400/day") == parse_rate("400/d")
    assert parse_rate("6/sec") == parse_rate("6/s")
    assert parse_rate("83/10m") is not None and parse_rate("83/10m").per_seconds == 600  # type: ignore[union-attr]
    assert parse_rate("0") is None
    assert str(parse_cidr("10.1.0/24")) == "10.1.0.0/24"
    assert str(parse_cidr("10/8")) == "10.0.0.0/8"
    assert parse_record_types("feedback-loop, remote-bounce,d") == {"f", "rb", "d"}


def test_delete_after_never(tmp_path: Path) -> None:
    """`delete-after never` in an `<acct-file>` keeps rotated files."""
    config = load(tmp_path, f"<acct-file {tmp_path}/a.csv>\n  delete-after never\n</acct-file>\n")
    assert config.acct_files[0].delete_after is None


# -- the three real configs ----------------------------------------------------------------


def corpus_text(name: str, tmp_path: Path) -> str:
    """A corpus config with only what cannot work on a test machine rewritten.

    Files that must exist (the STARTTLS certificate, DKIM keys) point at files made here;
    nothing else changes (listener ports are already test ports in the corpus).
    """
    path = CORPUS / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the PowerMTA config corpus is not on this machine")
    text = path.read_text()
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    key = tmp_path / "dkim.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n")
    text = text.replace("/etc/pmta/pmtasignalsdemo.pem", str(cert))
    text = re.sub(  # every domain-key's key file (global, <virtual-mta>, ...)
        r"^(\s*domain-key\s+[^,\n]+,[^,\n]+,\s*)\S+",
        lambda m: m.group(1) + str(key),
        text,
        flags=re.MULTILINE,
    )
    return text


def warning_kinds(config: Config) -> Iterator[str]:
    for warning in config.warnings:
        if "has no effect here" in warning.message:
            yield "no effect"
        elif "is not yet implemented" in warning.message:
            yield "not yet"
        else:
            yield warning.message


@pytest.mark.parametrize("name", ["A_guide.conf", "B_tuck1s.conf", "C_kira41.conf"])
def test_corpus_config_loads_unchanged(tmp_path: Path, name: str) -> None:
    """Each real PowerMTA config loads as written, with no-effect and not-yet warnings only."""
    config = load(tmp_path, corpus_text(name, tmp_path))
    kinds = set(warning_kinds(config))
    allowed = {"no effect", "not yet", "password is empty: this user can never log in"}
    allowed.add("smtp-listener source= is not yet implemented: sources are chosen by client IP")
    assert kinds <= allowed


def test_startup_logs_and_test_config_lists_the_warnings(tmp_path: Path) -> None:
    """The server logs each no-effect warning at start; `test config` says valid, with them."""
    server = MgmtServer(tmp_path, mx_port=free_port())
    (tmp_path / "conf.d" / "legacy.conf").write_text("run-as-root no\nthread-reuse yes\n")
    with server.process:
        legacy = os.path.realpath(tmp_path / "conf.d" / "legacy.conf")
        assert server.process.wait_for_log(f"config: {legacy}:1: run-as-root has no effect here")
        assert f"config: {legacy}:2: thread-reuse has no effect here" in server.process.read_log()
        status, reply = server.command("test config")
        assert (status, reply["status"]) == (200, "success")
        warnings = reply["data"]["warnings"]
        assert [w.split(": ")[1].split(" ")[0] for w in warnings] == ["run-as-root", "thread-reuse"]
        broken = tmp_path / "broken.conf"
        broken.write_text("run-as-root no\nmax-smtp-out lots\n")
        status, reply = server.command("test config broken.conf")
        assert status == 400 and len(reply["data"]) == 1  # an error: the verdict is startup's


def test_doctable_module_prints_the_table() -> None:
    """`python -m mtaserver.config.doctable` prints the generated table."""
    out = subprocess.run(
        [sys.executable, "-m", "mtaserver.config.doctable"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout == doctable.generate()


def runnable(name: str, tmp_path: Path, ca: trustme.CA) -> tuple[str, int]:
    """The corpus config with the README's allowed rewrites for a real start here.

    Files that must exist (the STARTTLS certificate, DKIM keys) are made here; spool, log
    and acct paths move under `tmp_path`; every listener gets a free loopback port. Returns
    the text and the first SMTP listener's port.
    """
    text = corpus_text(name, tmp_path)
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(tmp_path / "cert.pem")
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "dkim.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    text = text.replace("/var/spool/pmta", str(tmp_path / "spool"))
    text = text.replace("/var/log/pmta", str(tmp_path / "log"))
    # the acct pipe's program must exist: a stand-in that reads its stdin to the end
    (tmp_path / "acct_etl.py").write_text("import sys\nfor _ in sys.stdin:\n    pass\n")
    etl = f"|{sys.executable} {tmp_path / 'acct_etl.py'}"
    text = text.replace("|/usr/local/bin/acct_etl", etl)
    (tmp_path / "log").mkdir()
    ports: list[int] = []

    def new_port(match: re.Match[str]) -> str:
        ports.append(free_port())
        return f"{match.group(1)}127.0.0.1:{ports[-1]}"

    text = re.sub(r"(smtp-listener\s+)\S+:41\d\d\d", new_port, text)
    smtp_port = ports[0]
    text = re.sub(r"(<transmissions-api-listener\s+)\S+:41\d\d\d", new_port, text)
    text = re.sub(
        r"^(http-mgmt-port\s+)41\d\d\d", lambda m: f"{m.group(1)}{free_port()}", text, flags=re.M
    )
    return text, smtp_port


@pytest.mark.parametrize("name", ["A_guide.conf", "B_tuck1s.conf", "C_kira41.conf"])
def test_corpus_config_starts(tmp_path: Path, name: str, ca: trustme.CA) -> None:
    """Each real PowerMTA config starts a server that answers SMTP, logging only warnings."""
    text, smtp_port = runnable(name, tmp_path, ca)
    with ServerProcess(tmp_path, text, wait_ports=(smtp_port,)) as server:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            assert client.ehlo()[0] == 250
        log = server.read_log()
    assert "Traceback" not in log and "#error]" not in log and "#critical]" not in log
    assert "config: " in log  # the no-effect and not-yet warnings are logged


def test_max_rcpt_per_message_unlimited_accepts_recipients(tmp_path: Path) -> None:
    """`max-rcpt-per-message unlimited` (PowerMTA's 0) takes every RCPT, not none."""
    port = free_port()
    text = (
        f"host-name mta.test\nspool {tmp_path}/spool\nsmtp-listener 127.0.0.1:{port}\n"
        "<source 127.0.0.1>\n    always-allow-relaying yes\n"
        "    max-rcpt-per-message unlimited\n</source>\n"
    )
    server = ServerProcess(tmp_path, text, wait_ports=(port,))
    with server, smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail("s@example.com")[0] == 250
        for n in range(3):
            assert client.rcpt(f"r{n}@example.net")[0] == 250


def test_test_config_refuses_what_startup_refuses(tmp_path: Path) -> None:
    """Plain HTTP off loopback: `test config`, startup and reload all refuse it, alike."""
    insecure = (
        f"host-name a.test\nspool {tmp_path}/spool2\nhttp-mgmt-port 0.0.0.0:{free_port()}\n"
        f"<transmissions-api-listener 0.0.0.0:{free_port()}>\n</transmissions-api-listener>\n"
    )
    server = MgmtServer(tmp_path, mx_port=free_port())
    with server.process:
        (tmp_path / "insecure.conf").write_text(insecure)
        status, reply = server.command("test config insecure.conf")
        assert status == 400
        problems = reply["data"]
        assert [p.split(": ", 1)[1].split(" ")[0] for p in problems] == [
            "http-mgmt-port",
            "<transmissions-api-listener",
        ]
        assert all("(plain HTTP is loopback only)" in p for p in problems)
    started = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "mtaserver",
            "--config",
            str(tmp_path / "insecure.conf"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert started.returncode == 1
    for problem in problems:
        assert problem.split(": ", 1)[1] in started.stderr


def test_key_passwords_are_redacted_and_kept() -> None:
    """A certificate's key password (and a privacy-policy key) is hidden, file shown; kept."""
    text = (
        "smtp-server-tls-certificate /etc/mta/c.pem s3cret  # note\n"
        "<smtp-listener 0/0:25>\n  tls-certificate /etc/mta/d.pem\n</smtp-listener>\n"
        '<acct-file a.csv>\n  privacy-policy siphash "k3y"\n</acct-file>\n'
    )
    redacted = redact_config_text(text)
    assert "s3cret" not in redacted and "k3y" not in redacted
    assert "smtp-server-tls-certificate /etc/mta/c.pem ********  # note" in redacted
    assert "tls-certificate /etc/mta/d.pem\n" in redacted  # no password: nothing hidden
    assert restore_secrets(redacted, text) == text
    moved = redacted.replace("/etc/mta/c.pem", "/etc/mta/new.pem")
    assert "smtp-server-tls-certificate /etc/mta/new.pem s3cret" in restore_secrets(moved, text)
