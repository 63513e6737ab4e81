"""The real `mtactl` console script: PowerMTA's tables, `--json` and `--dom` for every
command, and its bash completion run by bash itself."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from mgmt_client import API_KEY, MgmtServer, run_mtactl, wait_until
from mx_receiver import Receiver

from mtaserver.commands import SPECS

#: One harmless line per command (reading, or acting on a domain no test uses).
LINES = {
    "show status": "show status",
    "show queues": "show queues --paused=yes --maxitems=5",
    "show topqueues": "show topqueues --errors",
    "show domains": "show domains --sort=rcpt",
    "show topdomains": "show topdomains --maxitems=3",
    "show vmtas": "show vmtas --maxitems=2",
    "show jobs": "show jobs --maxitems=2",
    "show settings": "show settings tab.test",
    "show vmta-settings": "show vmta-settings {default}",
    "show version": "show version",
    "show license": "show license",
    "show disabled sources": "show disabled sources",
    "pause queue": "pause queue idle.test",
    "resume queue": "resume queue idle.test",
    "pause job": "pause job idle-job",
    "resume job": "resume job idle-job",
    "schedule": "schedule --retry-recipients idle.test",
    "set queue": "set queue --mode=normal idle.test",
    "set priority": "set priority --jobId=idle-job 10",
    "disable source": "disable source 127.0.0.1 idle.test",
    "enable source": "enable source 127.0.0.1 idle.test",
    "delete": "delete --jobId=idle-job",
    "list": "list --maxitems=3 --priority --schedule",
    "trace": "trace --timeout=1 idle.test",
    "resolve": "resolve localhost",
    "check mfrom": "check mfrom a@b.test 127.0.0.1",
    "check rcpt": "check rcpt --from=a@b.test c@d.test 127.0.0.1",
    "clear dnscache": "clear dnscache *",
    "reload": "reload",
    "test config": "test config",
    "rotate acct": "rotate acct",
    "rotate log": "rotate log",
    "reset counters": "reset counters",
    "reset status": "reset status",
    "suppression show": "suppression show",
    "suppression add": "suppression add tab@nowhere.test",
    "suppression remove": "suppression remove tab@nowhere.test",
    "suppression export": "suppression export",
}
#: Commands whose harmless line is refused: what the error says.
EXPECTED_ERRORS = {
    "trace": "no delivery session",  # nothing waits in idle.test
    "disable source": "is not a source",  # {default} has no smtp-source-host
    "rotate log": "no log-file is configured",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MgmtServer]:
    with Receiver() as receiver:
        mgmt = MgmtServer(tmp_path_factory.mktemp("mtactl-tables"), receiver.port).start()
        yield mgmt
        mgmt.stop()


def mtactl(server: MgmtServer | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = None if server is None else {"MTACTL_URL": server.url, "MTACTL_API_KEY": API_KEY}
    return run_mtactl(*args, env=env, timeout=90)


def test_every_command_answers_json(server: MgmtServer) -> None:
    """`--json` prints the whole reply of every command (status, data, message)."""
    server.send(["a@idle.test"])  # the queue idle.test/{default} exists
    names = {" ".join(spec.words) for spec in SPECS} - {"suppression import"}
    assert names <= set(LINES), names - set(LINES)
    for name in sorted(names):
        result = mtactl(server, "--json", *LINES[name].split())
        reply = json.loads(result.stdout or result.stderr)
        assert set(reply) >= {"status", "data", "message"} or reply["status"] == "error", name
        if name in EXPECTED_ERRORS:  # a JSON error reply, exit status 1
            assert result.returncode == 1 and EXPECTED_ERRORS[name] in reply["message"]
        else:
            assert (result.returncode, reply["status"]) == (0, "success"), (name, reply)


def test_tables_are_shaped_like_pmta(server: MgmtServer) -> None:
    """show status, topqueues, topdomains, vmtas, jobs and list print PowerMTA's columns."""
    mtactl(server, "pause", "queue", "tab.test")
    server.send(["a@tab.test", "b@tab.test"], headers="X-Job: tabjob\r\n")
    assert wait_until(lambda: "tab.test" in mtactl(server, "show", "queues").stdout)
    lines = mtactl(server, "show", "topqueues").stdout.splitlines()
    assert lines[0].split() == ["queue", "#rcpt", "kbytes", "conn", "st", "retry", "last", "error"]
    assert set(lines[1]) == {"-", " "}
    row = next(line.split() for line in lines if line.startswith("tab.test/"))
    assert row[1:3] == ["2", row[2]] and row[4] == "P"
    assert lines[-1].endswith("queues shown.")
    assert mtactl(server, "show", "topdomains").stdout.split()[:5] == [
        "domain", "#rcpt", "kbytes", "conn", "last"]  # fmt: skip
    assert mtactl(server, "show", "vmtas").stdout.split()[:7] == [
        "name", "domains", "#rcpt", "%", "total", "kbytes", "conn"]  # fmt: skip
    jobs = mtactl(server, "show", "jobs").stdout.splitlines()
    assert jobs[0].split()[:3] == ["job-id", "#rcpt", "kbytes"] and jobs[-1] == "Total of 1 job(s)."
    listing = mtactl(server, "list", "--queue=tab.test", "--schedule").stdout.splitlines()
    assert listing[0].split()[:3] == ["queue", "rcpt", "orig"] and "state" in listing[0]
    status = mtactl(server, "show", "status").stdout.splitlines()
    assert status[0].startswith("mtaserver v") and " status on mta.test on " in status[0]
    assert status[2].split()[:2] == ["Traffic", "------------inbound------------"]
    assert [line.split()[0] for line in status[4:7]] == ["Total", "Last", "Last"]
    assert any(line.split()[:2] == ["Status", "running"] for line in status)
    settings = mtactl(server, "show", "settings", "tab.test").stdout
    assert settings.startswith("Virtual MTA Settings") and "\nmax-smtp-out 20\n" in settings


def test_dom_xml_output_and_errors(server: MgmtServer) -> None:
    """`--dom` prints name="value" lines, `--xml` PowerMTA's document; a bad option exits 1
    naming it on stderr."""
    result = mtactl(server, "--dom", "show", "version")
    assert result.returncode == 0
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert json.loads(lines["product.name"]) == "mtaserver"
    result = mtactl(server, "--xml", "show", "version")
    assert result.returncode == 0 and result.stdout.startswith("<")
    assert "<succ" in result.stdout and "<name>mtaserver</name>" in result.stdout
    result = mtactl(server, "--xml", "show", "nothing")
    assert result.returncode == 1 and "<fail" in result.stdout
    result = mtactl(server, "show", "queues", "--frobnicate")
    assert result.returncode == 1 and "unknown option --frobnicate" in result.stderr


def complete(words: str) -> list[str]:
    """What bash offers after `mtactl WORDS` (a trailing space: a new word)."""
    script = mtactl(None, "completion", "bash").stdout
    program = (
        f"{script}\n"
        f'read -ra W <<< "mtactl {words}"\n'
        f'[[ "{words}" == *" " || -z "{words}" ]] && W+=("")\n'
        'COMP_WORDS=("${W[@]}"); COMP_CWORD=$((${#W[@]} - 1)); _mtactl\n'
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    result = subprocess.run(
        ["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_offers_commands_and_options() -> None:
    """The completion script, run by bash, offers commands, sub-commands and options."""
    assert {"show", "delete", "trace", "resolve", "completion"} <= set(complete(""))
    assert complete("show top") == ["topdomains", "topqueues"]
    assert complete("show disabled ") == ["sources"]
    assert "--older-than=" in complete("delete --queue=a.test --o")
    assert complete("show topqueues --ma") == ["--maxitems="]
    assert "--json" in complete("show status --")
    assert complete("--url http://x show qu") == ["queues"]


def test_completion_script_shells() -> None:
    """`completion bash|zsh` print a script; another shell is a usage error."""
    assert "complete -F _mtactl mtactl" in mtactl(None, "completion", "bash").stdout
    assert mtactl(None, "completion", "zsh").stdout.startswith("autoload -U +X bashcompinit")
    result = mtactl(None, "completion", "fish")
    assert result.returncode == 2 and "completion bash|zsh" in result.stderr
