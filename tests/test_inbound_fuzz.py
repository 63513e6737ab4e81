"""Hostile input: the inbound parsers never raise, and they stay pure.

Bounces and complaints come from anyone. Random bytes, random MIME built from
report-shaped pieces and damaged copies of the real corpus must all give None or a
report, never an exception, and every value in a report must be CR/LF-free (it ends
up in a CSV acct line).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import attrs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtaserver.inbound import arf, dsn, mime
from mtaserver.inbound.arf import FeedbackReport, parse_arf
from mtaserver.inbound.dsn import BounceReport, parse_bounce

CORPUS = Path(__file__).resolve().parent / "data" / "bounces"
SAMPLES = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]
PACKAGE = Path(__file__).resolve().parents[1] / "mtaserver" / "inbound"

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_PIECES = [
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n',
    b"Content-Type: multipart/report; report-type=feedback-report; boundary=B\n",
    b"Content-Type: message/delivery-status\n",
    b"Content-Type: message/global-delivery-status\n",
    b"Content-Type: message/feedback-report\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Type: text/rfc822-headers\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"--B\n",
    b"--B--\n",
    b"\n",
    b"Final-Recipient: rfc822; a@example.org\n",
    b"Original-Recipient: rfc822;\n",
    b"Action: failed\n",
    b"Action: \n",
    b"Status: 5.1.1\n",
    b"Diagnostic-Code: smtp; 550 5.1.1 \xff\xfe user\r\n unknown\n",
    b"Feedback-Type: abuse\n",
    b"Original-Rcpt-To: \x00@\n",
    b"Return-Path: <x-a=b.c@d.e>\n",
    b"From: MAILER-DAEMON@x\n",
    b"<a@b.c>:\n",
    b"--- Below this line is a copy of the message.\n",
    b"=?utf-8?q?=E2=80?=\n",
]


def _check(raw: bytes) -> None:
    """Both parsers answer without raising, and every text value is one line.

    `parse_bounce`/`parse_arf` swallow any exception as a last line of defence, which
    would hide a crash from these tests: so the inner parsers are called as well.
    """
    inner = (dsn._parse(raw, "", ()), arf._parse(raw, ()))
    for report in (parse_bounce(raw), parse_arf(raw), *inner):
        assert report is None or isinstance(report, BounceReport | FeedbackReport)
        if report is None:
            continue
        values: list[object] = list(attrs.asdict(report, recurse=True).values())
        while values:
            value = values.pop()
            if isinstance(value, str):
                assert "\r" not in value and "\n" not in value and "\x00" not in value
            elif isinstance(value, dict):
                values.extend(value.values())
            elif isinstance(value, list | tuple):
                values.extend(value)


@FUZZ
@given(st.binary(max_size=4000))
def test_random_bytes_never_raise(raw: bytes) -> None:
    """Random bytes give None or a report."""
    _check(raw)


@FUZZ
@given(st.lists(st.sampled_from(_PIECES) | st.binary(max_size=40), max_size=60))
def test_report_shaped_junk_never_raises(pieces: list[bytes]) -> None:
    """Random sequences of report-shaped lines give None or a clean report."""
    _check(b"".join(pieces))


@FUZZ
@given(
    sample=st.sampled_from(SAMPLES),
    cut=st.floats(min_value=0, max_value=1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=20),
)
def test_damaged_corpus_never_raises(
    sample: bytes, cut: float, flips: list[tuple[float, int]]
) -> None:
    """Real reports, truncated and with bytes overwritten, give None or a clean report."""
    data = bytearray(sample[: int(len(sample) * cut)] if cut < 0.97 else sample)
    for where, byte in flips:
        if data:
            data[int(where * (len(data) - 1))] = byte
    _check(bytes(data))


def test_deep_nesting_never_raises() -> None:
    """Thousands of nested multiparts (a recursion bomb) give None, not RecursionError."""
    depth = 5000
    head = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    raw = b"From: MAILER-DAEMON@x\n" + head + b"Content-Type: text/plain\n\nhi\n"
    _check(raw)


def test_inbound_imports_no_server_layers() -> None:
    """No module of mtaserver.inbound imports the reactor, SMTP, HTTP or queue layers."""
    forbidden = ("twisted.internet", "mtaserver.smtp", "mtaserver.http", "mtaserver.queue")
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def test_importing_inbound_loads_no_server_layers() -> None:
    """Importing the parsers pulls in none of the SMTP, HTTP or queue modules."""
    code = (
        "import sys, mtaserver.inbound.dsn, mtaserver.inbound.arf;"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('mtaserver.smtp', 'mtaserver.http', 'mtaserver.queue'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_line_of_dashes_does_not_backtrack() -> None:
    """A 200,000-dash line parses at once (the old separator regex was quadratic: minutes)."""
    raw = b"Return-Path: <>\nFrom: MAILER-DAEMON@x.example\n\n" + b"-" * 200_000 + b"\n"
    assert mime.SEPARATOR.search(raw.decode()) is None
    _check(raw)


def test_qsbmf_line_of_at_signs_does_not_backtrack() -> None:
    """A `<a@a@a@...` line parses at once (the old recipient regex was quadratic)."""
    raw = (
        b"Return-Path: <>\nFrom: MAILER-DAEMON@x.example\n\n<"
        + b"a@" * 100_000
        + b"\n\n--- Below this line is a copy of the message.\n\nSubject: hi\n"
    )
    assert dsn._QMAIL_RCPT.search(raw.decode()) is None
    _check(raw)
