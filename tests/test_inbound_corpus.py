"""Remote bounces and ARF reports from the real-world corpus (sisimai/set-of-emails).

The 39 messages and sisimai's expected answers are copied in `tests/data/bounces/`
(BSD-2-Clause, see its README.md and LICENSE.set-of-emails), so the test does not depend
on anything outside the checkout; `test_copy_matches_shared_corpus` checks the copy
against the team's shared corpus when that sits beside the checkout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flufl.bounce import all_failures

from mtaserver.inbound import mime
from mtaserver.inbound.arf import parse_arf
from mtaserver.inbound.dsn import parse_bounce

CORPUS = Path(__file__).resolve().parent / "data" / "bounces"
SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "bounces"

MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
DSNS = [e for e in MANIFEST if e["kind"] == "dsn"]
ARFS = [e for e in MANIFEST if e["kind"] == "arf"]

HARD_AGREEMENT = 0.90


def _raw(entry: dict[str, Any]) -> bytes:
    return (CORPUS / entry["file"]).read_bytes()


def test_manifest_shape() -> None:
    """The copied corpus holds the 33 bounces and 6 ARF reports the README describes."""
    assert (len(DSNS), len(ARFS)) == (33, 6)
    assert all((CORPUS / e["file"]).is_file() for e in MANIFEST)


def test_copy_matches_shared_corpus() -> None:
    """tests/data/bounces is a byte-for-byte copy of the shared corpus."""
    if not SHARED_CORPUS.is_dir():
        pytest.skip(f"shared corpus not beside the checkout ({SHARED_CORPUS})")
    names = sorted(p.name for p in SHARED_CORPUS.iterdir() if p.is_file())
    assert names == sorted(p.name for p in CORPUS.iterdir() if p.name != ".gitattributes")
    for name in names:
        assert (CORPUS / name).read_bytes() == (SHARED_CORPUS / name).read_bytes(), name


@pytest.mark.parametrize("entry", DSNS, ids=[e["file"] for e in DSNS])
def test_bounce_names_expected_recipient(entry: dict[str, Any]) -> None:
    """Every bounce yields a report that names sisimai's recipient as failed."""
    report = parse_bounce(_raw(entry))
    assert report is not None
    rcpts = {r.rcpt.lower(): r for r in report.recipients}
    assert entry["recipient"] in rcpts
    found = rcpts[entry["recipient"]]
    assert found.action == "failed"
    if entry["status"]:
        assert found.dsnStatus == entry["status"]
    assert "\r" not in found.dsnDiag and "\n" not in found.dsnDiag
    assert report.orig and "@" in report.orig


def test_bounce_hard_soft_agreement(capsys: pytest.CaptureFixture[str]) -> None:
    """The hard/soft verdict matches sisimai's hardbounce for at least 90 % of bounces."""
    differ: list[str] = []
    for entry in DSNS:
        report = parse_bounce(_raw(entry))
        assert report is not None
        verdicts = [r.hard for r in report.recipients if r.rcpt.lower() == entry["recipient"]]
        if verdicts != [entry["hard"]]:
            differ.append(f"{entry['file']}: ours {verdicts} sisimai {entry['hard']}")
    agreement = (len(DSNS) - len(differ)) / len(DSNS)
    with capsys.disabled():
        print(f"\nhard/soft agreement {len(DSNS) - len(differ)}/{len(DSNS)} = {agreement:.0%}")
        for line in differ:
            print("  differs:", line)
    assert agreement >= HARD_AGREEMENT, differ


@pytest.mark.parametrize("entry", DSNS, ids=[e["file"] for e in DSNS])
def test_bounce_is_not_a_complaint(entry: dict[str, Any]) -> None:
    """No bounce is mistaken for an ARF report."""
    assert parse_arf(_raw(entry)) is None


@pytest.mark.parametrize("entry", ARFS, ids=[e["file"] for e in ARFS])
def test_arf_names_complainer(entry: dict[str, Any]) -> None:
    """Every ARF report yields a feedback report for the expected recipient."""
    report = parse_arf(_raw(entry))
    assert report is not None
    assert report.format == "arf"
    assert report.original_rcpt_to.lower() == entry["recipient"]
    assert report.feedback_type == ("auth-failure" if "authfailure" in entry["file"] else "abuse")
    assert report.user_agent
    assert report.orig and "@" in report.orig
    assert parse_bounce(_raw(entry)) is None


def test_rfc3464_details_from_postfix() -> None:
    """A Postfix DSN gives status, remote MTA, typed diagnostic, orcpt, orig and Message-ID."""
    report = parse_bounce((CORPUS / "001-postfix-userunknown.eml").read_bytes())
    assert report is not None and report.format == "dsn"
    (rcpt,) = report.recipients
    assert rcpt.rcpt == "kijitora@example.co.jp"
    assert rcpt.orcpt == "kijitora@example.co.jp"
    assert (rcpt.dsnStatus, rcpt.bounceCat, rcpt.hard) == ("5.1.1", "bad-mailbox", True)
    assert rcpt.dsnMta == "mx01.example.co.jp"
    assert rcpt.dsnDiag == "smtp;550 5.1.1 Address rejected kijitora@example.co.jp"
    assert report.dsnReportingMta == "mv-osn-hcb007.ocn.ad.jp"
    assert report.orig == "shironeko@example.ne.jp"
    assert report.message_id.startswith("<A8F82EDD-E518-4F5C-8C70-BC4EF")


def test_nxdomain_reported_as_unable_to_route_is_bad_domain() -> None:
    """Postfix and Amazon SES report NXDOMAIN as 5.4.4; that is a hard bad-domain."""
    for name in ("003-postfix-hostunknown.eml", "019-amazonses-hostunknown.eml"):
        report = parse_bounce((CORPUS / name).read_bytes())
        assert report is not None
        (rcpt,) = report.recipients
        assert (rcpt.dsnStatus, rcpt.bounceCat, rcpt.hard) == ("5.4.4", "bad-domain", True)


def test_plain_text_exim_diagnostic_and_remote_mta() -> None:
    """An Exim text bounce gives the recipient's paragraph as dsnDiag and its remote host."""
    report = parse_bounce((CORPUS / "028-exim-text-userunknown.eml").read_bytes())
    assert report is not None and report.format == "text"
    (rcpt,) = report.recipients
    assert "553 5.1.1 unknown or illegal user" in rcpt.dsnDiag
    assert rcpt.dsnMta == "mx49.neko.example.co.jp [192.0.2.82]"
    assert report.orig == "shironeko@example.org"


def test_gmail_text_diagnostic_after_bare_address() -> None:
    """Gmail's old notice puts the address alone; the reply is taken from a later paragraph."""
    report = parse_bounce((CORPUS / "031-gmail-text-userunknown.eml").read_bytes())
    assert report is not None
    (rcpt,) = report.recipients
    assert "550 5.1.1 <userunknown@example.jp>... User Unknown" in rcpt.dsnDiag


def test_yahoo_failure_notice_needs_our_qsbmf_rule() -> None:
    """flufl.bounce misses Yahoo's "Failure Notice"; our QSBMF rule finds its recipient."""
    raw = (CORPUS / "032-yahoo-text-mailboxfull.eml").read_bytes()
    msg = mime.parse_message(raw)
    assert msg is not None
    assert all_failures(msg) == (frozenset(), frozenset())
    report = parse_bounce(raw)
    assert report is not None
    (rcpt,) = report.recipients
    assert (rcpt.rcpt, rcpt.dsnStatus, rcpt.bounceCat) == (
        "kijitora@example.ed.jp",
        "5.2.2",
        "quota-issues",
    )


def test_arf_fields_from_dmarc_report() -> None:
    """A DMARC auth-failure report gives source IP, reported domain, arrival date, arf_ fields."""
    report = parse_arf((CORPUS / "036-arf-dmarc-authfailure.eml").read_bytes())
    assert report is not None
    assert report.feedback_type == "auth-failure"
    assert report.source_ip == "192.0.2.222"
    assert report.reported_domain == "example.net"
    assert report.arrival_date == "Thu, 29 Apr 2015 23:34:45 +0000"
    assert report.orig == "sironeko@example.org"
    assert report.arf_fields["auth-failure"] == "dmarc"


def test_arf_complainer_from_reported_headers() -> None:
    """Without Original-Rcpt-To, the complainer is the To of the text/rfc822-headers part."""
    report = parse_arf((CORPUS / "037-arf-netease-dmarc-authfailure.eml").read_bytes())
    assert report is not None
    assert "original-rcpt-to" not in report.arf_fields
    assert report.original_rcpt_to == "kijitora@example.org"
    assert report.envId == "eeeeeeeeeeeeeeeeeeee00--.000000"
    assert report.headers["to"] == "<kijitora@example.org>"
