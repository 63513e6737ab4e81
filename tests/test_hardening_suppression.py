"""The suppression list in the running server: RCPT, the API, SparkPost's client, mtactl.

The real server (`twistd -n mtaserver`) with an SMTP listener, the Transmissions API
over HTTPS (the unmodified `sparkpost` client trusts the test CA through
`REQUESTS_CA_BUNDLE`), the management port (`mtactl`) and an aiosmtpd MX that answers
550 5.1.1 to `hard...` recipients. A hard bounce must suppress the address
automatically; the next message to it is refused at RCPT and by the API; entries
survive kill -9.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from mgmt_client import run_mtactl
from mx_receiver import Receiver
from server_process import ServerProcess, free_port, read_acct, wait_until
from sparkpost import SparkPost
from sparkpost.exceptions import SparkPostAPIException

from mtaserver.accounting.bounce import CATEGORIES
from mtaserver.config import registry as reg
from mtaserver.events import Envelope, Outcome, Received, Recipient
from mtaserver.suppression import SuppressionSource
from mtaserver.suppression.service import automatic_entries, scopes_for

API_KEY = "test_key_0123456789_0123456789_abcdef"
MGMT_KEY = "s3cret-key"

CONFIG = """
host-name mta.test
postmaster postmaster@mta.test
spool {dir}/spool
smtp-listener 127.0.0.1:{smtp}
http-mgmt-port 127.0.0.1:{mgmt}
http-access 127.0.0.1/32 monitor
http-api-key {mgmt_key}
<transmissions-api-listener 127.0.0.1:{api}>
  tls-certificate {pem}
</transmissions-api-listener>
<transmissions-api>
  api-key {key}
</transmissions-api>
<suppression-list news>
</suppression-list>
<source 127.0.0.1>
  always-allow-relaying yes
  suppression-lists news
  suppressed-recipient-action {action}
</source>
<domain *>
  smtp-hosts [127.0.0.1]:{mx}
  use-starttls no
  retry-after 1s
</domain>
<acct-file {dir}/acct.csv>
  records r,d,b
</acct-file>
"""


@attrs.define
class Server:
    process: ServerProcess
    directory: Path
    smtp: int
    api: int
    mgmt: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt}"

    def sparkpost(self) -> SparkPost:
        return SparkPost(API_KEY, base_uri=f"127.0.0.1:{self.api}")

    def rcpt(self, recipient: str, sender: str = "s@src.test") -> tuple[int, bytes]:
        """The reply to RCPT TO:<recipient> after MAIL FROM:<sender>."""
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            client.ehlo("client.test")
            client.mail(sender)
            return client.rcpt(recipient)

    def send(self, rcpts: list[str], sender: str = "s@src.test") -> dict[str, Any]:
        """Send one message; the refused recipients (smtplib's dict)."""
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=30) as client:
            return dict(client.sendmail(sender, rcpts, b"Subject: t\r\n\r\nbody\r\n"))

    def mtactl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_mtactl("--url", self.url, "--api-key", MGMT_KEY, *args)


def start_server(
    tmp_path: Path,
    ca: trustme.CA,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    action: str = "refuse",
) -> Server:
    pem = tmp_path / "api.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    smtp, api, mgmt = free_port(), free_port(), free_port()
    config = CONFIG.format(
        dir=tmp_path,
        smtp=smtp,
        api=api,
        mgmt=mgmt,
        pem=pem,
        key=API_KEY,
        mgmt_key=MGMT_KEY,
        mx=receiver.port,
        action=action,
    )
    process = ServerProcess(tmp_path, config, wait_ports=(smtp, api, mgmt))
    process.start()
    return Server(process, tmp_path, smtp, api, mgmt)


@pytest.fixture
def server(
    tmp_path: Path, ca: trustme.CA, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    running = start_server(tmp_path, ca, receiver, monkeypatch)
    yield running
    running.process.stop()


# -- against the real server ---------------------------------------------------------------


def test_hard_bounce_suppresses_the_recipient_for_smtp_and_the_api(
    server: Server, receiver: Receiver
) -> None:
    """A 550 5.1.1 (b, bad-mailbox) suppresses the address: RCPT 550 5.7.1, API rcpt_to_errors."""
    assert server.send(["hard-gone@dest.test", "ok-1@dest.test"]) == {}
    assert wait_until(lambda: read_acct(server.directory / "acct.csv", "b"))
    bounce = read_acct(server.directory / "acct.csv", "b")[0]
    assert bounce["rcpt"] == "hard-gone@dest.test" and bounce["bounceCat"] == "bad-mailbox"
    assert wait_until(lambda: server.rcpt("hard-gone@dest.test")[0] == 550)
    code, text = server.rcpt("Hard-Gone@DEST.test")
    assert (code, text) == (550, b"5.7.1 recipient is on the suppression list")
    assert server.rcpt("ok-2@dest.test")[0] == 250
    assert server.process.wait_for_log("suppressed hard-gone@dest.test after a b record")
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert "mtaserver_suppression_added_total 1.0" in metrics
    assert "mtaserver_suppression_entries 1.0" in metrics

    result = server.sparkpost().transmissions.send(
        recipients=["hard-gone@dest.test", "ok-3@dest.test"],
        from_email="s@src.test",
        subject="hello",
        text="body",
    )
    assert result["total_rejected_recipients"] == 1
    assert result["total_accepted_recipients"] == 1
    [error] = result["rcpt_to_errors"]
    assert error["code"] == "1902" and "hard-gone@dest.test" in error["description"]
    entry = server.sparkpost().suppression_list.get("hard-gone@dest.test")
    assert {e["source"] for e in entry} == {"Bounce Rule"}
    assert wait_until(lambda: any("ok-3@dest.test" in m.rcpt_tos for m in receiver.messages))
    assert not any("hard-gone@dest.test" in m.rcpt_tos[1:] for m in receiver.messages[1:])


def test_every_recipient_suppressed_is_a_400_from_the_api(server: Server) -> None:
    """A transmission whose only recipient is suppressed is refused (400) and spools nothing."""
    server.sparkpost().suppression_list.create({"email": "only@dest.test"})
    with pytest.raises(SparkPostAPIException) as info:
        server.sparkpost().transmissions.send(
            recipients=["only@dest.test"], from_email="s@src.test", subject="s", text="b"
        )
    assert info.value.status == 400
    assert "only@dest.test" in str(info.value)


def test_sparkpost_client_manages_the_list_unmodified(server: Server) -> None:
    """create/update/get/list/delete of the SparkPost client, and a bulk PUT of 6000 entries."""
    sp = server.sparkpost()
    result = sp.suppression_list.create(
        {
            "email": "one@dest.test",
            "transactional": False,
            "non_transactional": True,
            "description": "asked by phone",
        }
    )
    assert result == {"message": "Suppression List successfully updated"}
    [entry] = sp.suppression_list.get("one@dest.test")
    assert entry["type"] == "non_transactional" and entry["non_transactional"] is True
    assert entry["description"] == "asked by phone" and entry["source"] == "Manually Added"
    assert entry["created"].endswith("+00:00")
    sp.suppression_list.update({"email": "one@dest.test", "transactional": True})
    assert [e["type"] for e in sp.suppression_list.get("one@dest.test")] == ["transactional"]

    # 6,000 entries (over 256 KB: parsed and checked in the thread pool), one fsync
    bulk = [{"recipient": f"bulk{i}@dest.test", "type": "transactional"} for i in range(6000)]
    sp.suppression_list.create(bulk)
    assert sp.suppression_list.get("bulk5999@dest.test")[0]["recipient"] == "bulk5999@dest.test"
    listed = sp.suppression_list.list(types="transactional", limit=10000)
    assert len(listed) == 6001
    assert sp.suppression_list.list(sources="Spam Complaint") == []
    window = sp.suppression_list.list(
        from_date="2000-01-01T00:00:00Z", to_date="2100-01-01T00:00:00", limit=10000
    )
    assert len(window) == 6001
    assert sp.suppression_list.list(from_date="2100-01-01T00:00:00+00:00") == []

    assert sp.suppression_list.delete("one@dest.test") is True
    with pytest.raises(SparkPostAPIException) as info:
        sp.suppression_list.get("one@dest.test")
    assert info.value.status == 404
    with pytest.raises(SparkPostAPIException) as info:
        sp.suppression_list.create([{"recipient": "ok@dest.test"}, {"recipient": "bad"}])
    assert info.value.status == 400 and "recipients[1]" in str(info.value)
    with pytest.raises(SparkPostAPIException):
        sp.suppression_list.get("ok@dest.test")  # all or nothing: the good one is not in
    with pytest.raises(SparkPostAPIException) as info:
        SparkPost("x" * 40, base_uri=f"127.0.0.1:{server.api}").suppression_list.get("a@b.test")
    assert info.value.status == 403


def test_mtactl_suppression_commands(server: Server, tmp_path: Path) -> None:
    """add/show/remove/import/export through mtactl; the source scope applies at RCPT."""
    added = server.mtactl("suppression", "add", "ctl@dest.test", "--description=by hand")
    assert added.returncode == 0, added.stderr
    assert "ctl@dest.test added (global)" in added.stdout
    assert server.rcpt("ctl@dest.test") == (550, b"5.7.1 recipient is on the suppression list")
    shown = server.mtactl("suppression", "show", "ctl@dest.test")
    assert shown.returncode == 0 and "by hand" in shown.stdout and "global" in shown.stdout

    # source:news is the 127.0.0.1 source's list; source:other is not checked there
    server.mtactl("suppression", "add", "news@dest.test", "--scope=source:news")
    server.mtactl("suppression", "add", "other@dest.test", "--scope=source:other")
    assert server.rcpt("news@dest.test")[0] == 550
    assert server.rcpt("other@dest.test")[0] == 250
    # domain:<sender's domain> applies to that sender only
    server.mtactl("suppression", "add", "brand@dest.test", "--scope=domain:brand.test")
    assert server.rcpt("brand@dest.test", sender="x@brand.test")[0] == 550
    assert server.rcpt("brand@dest.test", sender="x@src.test")[0] == 250

    removed = server.mtactl("suppression", "remove", "ctl@dest.test")
    assert removed.returncode == 0 and server.rcpt("ctl@dest.test")[0] == 250
    again = server.mtactl("suppression", "remove", "ctl@dest.test")
    assert again.returncode == 1 and "not on the suppression list" in again.stderr

    csv_file = tmp_path / "list.csv"
    csv_file.write_text(
        "recipient,type,description\nimp1@dest.test,,a\nimp2@dest.test,transactional,b\n"
    )
    imported = server.mtactl("suppression", "import", str(csv_file))
    assert imported.returncode == 0 and "2 entries imported" in imported.stdout
    assert server.rcpt("imp1@dest.test")[0] == 550
    bad = tmp_path / "bad.csv"
    bad.write_text("recipient\nok@dest.test\nnot-an-address\n")
    refused = server.mtactl("suppression", "import", str(bad))
    assert refused.returncode == 1 and "line 3" in refused.stderr
    assert server.rcpt("ok@dest.test")[0] == 250

    exported = server.mtactl("suppression", "export")
    assert exported.returncode == 0
    lines = exported.stdout.splitlines()
    assert lines[0] == "recipient,type,source,description,scope,created,updated"
    assert any(line.startswith("imp2@dest.test,transactional,") for line in lines)
    assert any(line.startswith("news@dest.test,") and "source:news" in line for line in lines)
    status = server.mtactl("suppression", "show", "--json")
    data = json.loads(status.stdout)["data"]
    assert data["entries"] == 5 and data["refused"] >= 3  # news, other, brand, imp1, imp2


def test_entries_survive_kill_9(server: Server) -> None:
    """An entry acknowledged by the API is there after kill -9 and a restart."""
    server.sparkpost().suppression_list.create({"email": "crash@dest.test"})
    server.process.kill9()
    server.process.start()
    assert server.rcpt("crash@dest.test")[0] == 550
    assert server.sparkpost().suppression_list.get("crash@dest.test")[0]["recipient"] == (
        "crash@dest.test"
    )


def test_drop_mode_accepts_and_records_a_b(
    tmp_path: Path, ca: trustme.CA, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`suppressed-recipient-action drop`: RCPT 250, no delivery, a policy-related b record."""
    server = start_server(tmp_path, ca, receiver, monkeypatch, action="drop")
    try:
        server.mtactl("suppression", "add", "dropped@dest.test")
        assert server.rcpt("dropped@dest.test")[0] == 250
        assert server.send(["dropped@dest.test", "kept@dest.test"]) == {}
        assert server.send(["dropped@dest.test"]) == {}  # every recipient dropped
        acct = server.directory / "acct.csv"
        assert wait_until(lambda: len(read_acct(acct, "b")) == 2 and read_acct(acct, "d"))
        for row in read_acct(acct, "b"):
            assert row["rcpt"] == "dropped@dest.test"
            assert row["bounceCat"] == "policy-related"
            assert row["dsnStatus"].startswith("5.7.1")
            assert "suppression list (global)" in row["dsnDiag"]
        assert [m.rcpt_tos for m in receiver.messages] == [["kept@dest.test"]]
        assert [r["rcpt"] for r in read_acct(acct, "r")] == ["kept@dest.test"]
    finally:
        server.process.stop()


def test_unknown_routes_and_bad_requests_are_sparkpost_errors(server: Server) -> None:
    """A wrong path is 404 and a bad JSON body 400, both in SparkPost's errors shape."""
    base = f"https://127.0.0.1:{server.api}/api/v1/suppression-list"
    import ssl

    context = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])

    def call(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Authorization", API_KEY)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, body = call("PUT", f"{base}/a@dest.test", b"{not json")
    assert status == 400 and body["errors"][0]["message"] == "Invalid request"
    status, body = call("GET", f"{base}/a@dest.test/extra")
    assert status == 404 and "errors" in body
    status, body = call("GET", f"{base}?from=yesterday")
    assert status == 400 and "ISO 8601" in body["errors"][0]["description"]
    status, body = call("PUT", base, b'{"recipients": []}')
    assert status == 400

    entries = [{"recipient": f"page{i}@dest.test", "type": "transactional"} for i in range(3)]
    status, _ = call("PUT", base, json.dumps({"recipients": entries}).encode())
    assert status == 200
    seen: list[str] = []
    url = f"{base}?per_page=2"
    for _ in range(3):
        status, body = call("GET", url)
        assert status == 200
        seen += [result["recipient"] for result in body["results"]]
        if not body["links"]:
            break
        url = f"https://127.0.0.1:{server.api}{body['links'][0]['href']}"
    assert sorted(seen) == [f"page{i}@dest.test" for i in range(3)]


# -- pure parts ----------------------------------------------------------------------------


def test_registry_categories_are_the_accounting_categories() -> None:
    """`suppress-on-bounce-categories` accepts exactly the bounce categories acct records use."""
    assert reg.BOUNCE_CATEGORIES == CATEGORIES
    parse = reg.DIRECTIVES["suppress-on-bounce-categories"].parse
    assert parse("bad-mailbox, quota-issues") == {"bad-mailbox", "quota-issues"}
    assert parse("none") == frozenset()
    with pytest.raises(ValueError):
        parse("bad-mailbox,hard")
    assert reg.DIRECTIVES["suppression-lists"].parse("news, promo") == ("news", "promo")


def _outcome(record: str, category: str, rcpt: str = "x@dest.test") -> Outcome:
    envelope = Envelope("m1", "s@src.test", (Recipient(rcpt),), 1000.0)
    return Outcome(record, "m1", (0,), 2000.0, envelope, dsn_status="5.1.1", bounce_cat=category)


@pytest.mark.parametrize(
    ("event", "categories", "expected"),
    [
        (_outcome("b", "bad-mailbox"), {"bad-mailbox"}, ["x@dest.test"]),
        (_outcome("b", "quota-issues"), {"bad-mailbox"}, []),
        (_outcome("b", "quota-issues"), {"quota-issues"}, ["x@dest.test"]),
        (_outcome("t", "bad-mailbox"), {"bad-mailbox"}, []),
        (_outcome("d", ""), {"bad-mailbox"}, []),
        (_outcome("b", "bad-mailbox", "not an address"), {"bad-mailbox"}, []),
        (
            attrs.evolve(
                _outcome("b", "policy-related"),
                dsn_diag="recipient is on the suppression list (source:news)",
            ),
            {"policy-related"},
            [],
        ),
        (Received(Envelope("m", "s@x.test", (Recipient("r@x.test"),), 1.0), 1.0), set(), []),
    ],
)
def test_automatic_entries_follow_the_categories(
    event: Any, categories: set[str], expected: list[str]
) -> None:
    """Only final b records of a configured category suppress, with source Bounce Rule."""
    found = automatic_entries([event], frozenset(categories), complaints=True)
    assert [entry.recipient for entry, _, _ in found] == expected
    for entry, kind, _ in found:
        assert entry.source == SuppressionSource.BOUNCE_RULE and kind == "b"
        assert entry.scope == "global" and entry.created == 2000


def test_scopes_for_sender_and_lists() -> None:
    """Global first, then the sender's domain, then each source list; a null sender has none."""
    assert scopes_for("a@Brand.Test", ["news", "promo"]) == [
        "global",
        "domain:brand.test",
        "source:news",
        "source:promo",
    ]
    assert scopes_for("", []) == ["global"]


def test_compaction_timer_folds_the_log_when_due(tmp_path: Path) -> None:
    """Every COMPACT_INTERVAL the service compacts a store whose log is due, not before."""
    from smtp_helpers import holder_from_text, run_now
    from twisted.internet.task import Clock

    from mtaserver.suppression import Entry, SuppressionStore
    from mtaserver.suppression.service import COMPACT_INTERVAL, SuppressionService

    clock = Clock()
    store = SuppressionStore.open(str(tmp_path / "suppression"), compact_after=10)
    holder = holder_from_text("spool " + str(tmp_path / "spool") + "\n", str(tmp_path))
    service = SuppressionService(holder, store, run_now, clock)
    service.startService()
    store.add([Entry.make(f"u{i}@dest.test", now=1) for i in range(5)])
    clock.advance(COMPACT_INTERVAL)
    assert not any(n.startswith("snapshot.") for n in os.listdir(store.directory))
    store.add([Entry.make(f"v{i}@dest.test", now=1) for i in range(10)])
    assert store.compaction_due()
    clock.advance(COMPACT_INTERVAL)
    assert not store.compaction_due()
    assert any(n.startswith("snapshot.") for n in os.listdir(store.directory))
    assert store.count() == 15 and store.get("global", "v9@dest.test") is not None
    service.stopService()
    with pytest.raises(Exception, match="closed"):
        store.lookup("u1@dest.test")


def test_rcpt_is_a_temporary_failure_when_the_list_cannot_be_read(tmp_path: Path) -> None:
    """A closed or unreadable store gives 451 4.3.0 at RCPT, never an unchecked 250."""
    from smtp_helpers import FakeStore, holder_from_text, run_now
    from twisted.internet.task import Clock

    from mtaserver.message.addresses import Mailbox
    from mtaserver.message.intake import ReceptionStats
    from mtaserver.smtp.reception import ReceptionHandler, Session, Transaction
    from mtaserver.smtp.server_params import MailParams, RcptParams
    from mtaserver.suppression import Entry, SuppressionStore
    from mtaserver.suppression.service import SuppressionService

    holder = holder_from_text("<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n")
    store = SuppressionStore.open(str(tmp_path / "suppression"))
    store.add([Entry.make("gone@dest.test", now=1)])
    service = SuppressionService(holder, store, run_now, Clock())
    handler = ReceptionHandler(
        holder, FakeStore(), lambda envelope: None, ReceptionStats(), Clock(), suppression=service
    )
    session = Session("127.0.0.1", holder.config.source_settings("127.0.0.1"))
    txn = Transaction(Mailbox("s@src.test"), MailParams())
    refused = handler.check_rcpt(session, txn, Mailbox("gone@dest.test"), RcptParams())
    assert (refused.code, refused.status) == (550, "5.7.1")
    store.close()
    reply = handler.check_rcpt(session, txn, Mailbox("gone@dest.test"), RcptParams())
    assert (reply.code, reply.status) == (451, "4.3.0")


def _service_with_journal(tmp_path: Path, clock: Any) -> tuple[Any, Any]:
    from smtp_helpers import holder_from_text, run_now

    from mtaserver.spool.journal import Journal
    from mtaserver.suppression.service import SuppressionService

    journal = Journal(str(tmp_path / "spool" / "journal"), run_now)
    holder = holder_from_text(f"spool {tmp_path}/spool\n", str(tmp_path))
    service = SuppressionService.open(
        holder, str(tmp_path / "spool" / "suppression"), run_now, clock, journal
    )
    return service, journal


def test_automatic_adds_resume_from_the_saved_position_and_survive_a_cut_journal(
    tmp_path: Path,
) -> None:
    """Records journaled while stopped are read at the next start; a journal that ends
    before the saved position (cut or replaced) is followed from its end, not ignored."""
    import shutil

    from twisted.internet.task import Clock

    clock = Clock()
    service, journal = _service_with_journal(tmp_path, clock)
    service.startService()
    journal.append([_outcome("b", "bad-mailbox", "first@dest.test")])
    clock.advance(2)
    assert service.store.get("global", "first@dest.test") is not None
    service.stopService()
    journal.close()

    service, journal = _service_with_journal(tmp_path, clock)  # stopped: journal grows
    journal.append([_outcome("b", "bad-domain", "while-down@dest.test")])
    journal.close()
    service.store.close()
    service, journal = _service_with_journal(tmp_path, clock)
    service.startService()
    clock.advance(2)
    assert service.store.get("global", "while-down@dest.test") is not None
    service.stopService()
    journal.close()

    shutil.rmtree(tmp_path / "spool" / "journal")  # a new, shorter journal
    service, journal = _service_with_journal(tmp_path, clock)
    service.startService()
    journal.append([_outcome("b", "inactive-mailbox", "after-cut@dest.test")])
    clock.advance(2)
    assert service.store.get("global", "after-cut@dest.test") is not None
    assert service.counters.added_automatically == 1
    service.stopService()
    journal.close()
