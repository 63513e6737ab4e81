"""Per-message CPU work (journal framing, DKIM's parse of the message) runs in the pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from mtaserver.config.reload import ConfigHolder
from mtaserver.events import Envelope, Received, Recipient
from mtaserver.smtp.dkim import DkimSigner
from mtaserver.smtp.signing import DkimTransform
from mtaserver.spool import Journal
from mtaserver.spool.testing import ManualThreads


class RecordedReceived(Received):
    """A `Received` event that notes when it is turned into JSON (framed)."""

    framed: list[str] = []

    def to_json(self) -> dict[str, Any]:
        RecordedReceived.framed.append(self.envelope.msg_id)
        return super().to_json()


def test_journal_frames_records_in_the_batch_thread(tmp_path: Path) -> None:
    """append() only queues events; their JSON and CRC are made by the thread's work."""
    threads = ManualThreads()
    journal = Journal(str(tmp_path / "journal"), threads)
    RecordedReceived.framed.clear()
    envelope = Envelope("m1", "s@src.test", (Recipient("r@dst.test"),), 1.0)
    appended = journal.append([RecordedReceived(envelope, 1.0)])
    assert RecordedReceived.framed == [] and not appended.called
    threads.run_all()
    assert RecordedReceived.framed == ["m1"]
    assert appended.result.offset > 0


class RecordingSigner(DkimSigner):
    """A signer that notes each parse of a message for its From domain."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.parsed = 0

    def signing_domain_for(self, message: bytes) -> str | None:
        self.parsed += 1
        return super().signing_domain_for(message)


def test_dkim_signing_domain_is_parsed_in_the_pool(tmp_path: Path) -> None:
    """The transform parses the message for its From domain in run_in_thread, not inline."""
    path = tmp_path / "m.conf"
    path.write_text("<domain *>\n  dkim-sign yes\n</domain>\n")
    holder = ConfigHolder.from_file(str(path))
    threads = ManualThreads()
    signer = RecordingSigner(())
    transform = DkimTransform(holder, threads, signer)
    envelope = Envelope("m1", "s@src.test", (Recipient("r@dst.test"),), 1.0)
    body = b"From: a@brand.test\r\nSubject: s\r\n\r\nbody\r\n"
    settings = holder.config.domain_settings("dst.test")
    done = defer.ensureDeferred(transform(envelope, body, settings))
    assert signer.parsed == 0 and not done.called
    threads.run_all()
    assert signer.parsed == 1
    assert done.result == body  # no key for brand.test: sent as it is
