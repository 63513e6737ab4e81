"""The accounting webhook batcher against real HTTP(S) receivers on 127.0.0.1: smoke tests.

The batching rules (formats, headers, gzip and HMAC, retries, order, timeouts, restart)
are tested fast in `test_webhook_batcher_fast.py` over StubTreq and a task.Clock; here
stay what needs a real socket: a real post, TLS (trusted, wrong host, untrusted CA,
client certificates), a refused connection, and the acct file's checkpoint and rotation.

The batcher runs on the reactor thread of `reactor_thread` with a real treq client and
real threads; receivers are `http.server` servers in their own threads, failing,
slow or serving HTTPS with trustme certificates as each test needs.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from reactor_thread import run_in_reactor, run_in_thread
from server_process import wait_until
from twisted.internet import reactor
from webhook_receiver import Receiver

from mtaserver.accounting.checkpoint import Checkpoint, checkpoint_path, save_checkpoint
from mtaserver.config.targets import TargetPolicy
from mtaserver.webhooks.batcher import WebhookBatcher
from mtaserver.webhooks.http import PooledClient, policy_from_files
from mtaserver.webhooks.staging import staging_directory


def json_records(start: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"type": "d", "rcpt": f"user{i}@example.com", "n": str(i)}).encode() + b"\n"
        for i in range(start, start + count)
    )


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


#: The receivers listen on loopback, which webhooks may reach only when allow-listed.
LOOPBACK_ALLOWED = functools.partial(TargetPolicy, (ipaddress.ip_network("127.0.0.0/8"),))


class Harness:
    """Builds batchers on the reactor thread and stops them (and their pools) at the end."""

    def __init__(self) -> None:
        self.batchers: list[WebhookBatcher] = []
        self.clients: list[PooledClient] = []

    def start(self, acct: Path, url: str, *, policy: Any = None, **kw: Any) -> WebhookBatcher:
        kw.setdefault("max_delay", 0.2)
        kw.setdefault("poll_interval", 0.05)

        def make() -> Any:
            client = PooledClient(reactor, policy, connect_timeout=5, targets=LOOPBACK_ALLOWED)
            batcher = WebhookBatcher(
                client, reactor, acct_path=str(acct), url=url, run_in_thread=run_in_thread, **kw
            )
            batcher.retry_base = 0.05
            self.clients.append(client)
            self.batchers.append(batcher)
            return batcher.start().addCallback(lambda _: batcher)

        return run_in_reactor(make)  # type: ignore[no-any-return]

    def stop(self) -> None:
        for batcher in self.batchers:
            run_in_reactor(batcher.stop)
        for client in self.clients:
            run_in_reactor(client.close)
        self.batchers.clear()
        self.clients.clear()


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_json_lines_are_posted_as_ndjson_with_a_batch_id(
    tmp_path: Path, harness: Harness, receiver: Receiver
) -> None:
    """JSON-lines records arrive once, in order, as application/x-ndjson with a batch id."""
    acct = tmp_path / "acct.json"
    data = json_records(0, 100)
    acct.write_bytes(data)
    harness.start(acct, receiver.url)
    assert receiver.wait_for(lambda r: len(r.lines()) == 100)
    assert b"".join(receiver.lines()) == data
    post = receiver.posts[0]
    assert post.headers["content-type"] == "application/x-ndjson"
    assert post.headers["x-mtaserver-batch-id"].endswith("-1")
    assert "content-encoding" not in post.headers


def test_only_bytes_before_the_writer_checkpoint_are_sent(
    tmp_path: Path, harness: Harness, receiver: Receiver
) -> None:
    """Bytes after the acct writer's checkpointed size (uncommitted) are not shipped."""
    acct = tmp_path / "acct.json"
    committed = json_records(0, 5)
    acct.write_bytes(committed + json_records(5, 5))
    save_checkpoint(checkpoint_path(str(acct)), Checkpoint("acct.json", (1, 0), len(committed)))
    harness.start(acct, receiver.url)
    assert receiver.wait_for(lambda r: len(r.lines()) == 5)
    time.sleep(0.5)
    assert b"".join(receiver.lines()) == committed
    save_checkpoint(
        checkpoint_path(str(acct)), Checkpoint("acct.json", (1, 0), acct.stat().st_size)
    )
    assert receiver.wait_for(lambda r: len(r.lines()) == 10)


def test_a_refused_connection_keeps_the_batch_staged(tmp_path: Path, harness: Harness) -> None:
    """With nothing listening, the batch stays on disk and the backlog shows it."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 5))
    receiver = Receiver()
    url = receiver.url
    receiver.close()
    batcher = harness.start(acct, url)
    assert wait_until(lambda: batcher.failures >= 2)
    status = batcher.status()
    assert status["backlog_batches"] == 1
    assert status["last_error"]
    assert any(n.endswith(".batch") for n in os.listdir(staging_directory(str(acct))))


def test_rotated_files_are_followed_to_the_end(
    tmp_path: Path, harness: Harness, receiver: Receiver
) -> None:
    """Records left in a file that was rotated away are sent before the new file's."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 5))
    batcher = harness.start(acct, receiver.url, max_delay=30.0, max_bytes=10**6)
    assert wait_until(lambda: batcher.pending_bytes > 0)  # the live file has been seen
    # Nothing is sent before max_delay: rotate twice and write to the new live file.
    append(acct, json_records(5, 5))
    os.rename(acct, tmp_path / "acct-20250101000000.json")
    acct.write_bytes(json_records(10, 5))
    os.rename(acct, tmp_path / "acct-20250101000000-1.json")
    acct.write_bytes(json_records(15, 5))
    batcher.max_delay = 0.2
    assert receiver.wait_for(lambda r: len(r.lines()) == 20)
    assert b"".join(receiver.lines()) == json_records(0, 20)


def test_restart_resumes_from_the_cursor_without_resending(
    tmp_path: Path, harness: Harness, receiver: Receiver
) -> None:
    """After stop and start, only records written since are sent."""
    acct = tmp_path / "acct.json"
    acct.write_bytes(json_records(0, 10))
    harness.start(acct, receiver.url)
    assert receiver.wait_for(lambda r: len(r.lines()) == 10)
    harness.stop()
    append(acct, json_records(10, 10))
    harness.start(acct, receiver.url)
    assert receiver.wait_for(lambda r: len(r.lines()) == 20)
    time.sleep(0.3)
    assert b"".join(receiver.lines()) == json_records(0, 20)


# -- HTTPS -------------------------------------------------------------------------


def https_receiver(ca: trustme.CA, tmp_path: Path, host: str, **kw: Any) -> Receiver:
    cert = ca.issue_cert(host)
    cert_path, key_path = tmp_path / f"{host}.pem", tmp_path / f"{host}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for blob in cert.cert_chain_pems[1:]:
        blob.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return Receiver(tls=(str(cert_path), str(key_path)), **kw)


def test_https_receiver_with_a_trusted_certificate_gets_the_batch(
    tmp_path: Path, harness: Harness, ca: trustme.CA
) -> None:
    """An HTTPS endpoint whose certificate chains to http-webhook-ca-file is delivered to."""
    receiver = https_receiver(ca, tmp_path, "127.0.0.1")
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        acct = tmp_path / "acct.json"
        acct.write_bytes(json_records(0, 5))
        harness.start(acct, receiver.url, policy=policy_from_files(str(ca_file), None))
        assert receiver.wait_for(lambda r: len(r.lines()) == 5)
    finally:
        receiver.close()


def test_https_receiver_naming_another_host_gets_nothing(
    tmp_path: Path, harness: Harness, ca: trustme.CA
) -> None:
    """A certificate for another host name fails verification: nothing is delivered."""
    receiver = https_receiver(ca, tmp_path, "other.example")
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        acct = tmp_path / "acct.json"
        acct.write_bytes(json_records(0, 5))
        batcher = harness.start(acct, receiver.url, policy=policy_from_files(str(ca_file), None))
        assert wait_until(lambda: batcher.failures >= 2)
        assert receiver.posts == [] and receiver.attempts == []
        assert batcher.backlog == 1
    finally:
        receiver.close()


def test_https_receiver_untrusted_by_the_system_cas_gets_nothing(
    tmp_path: Path, harness: Harness, ca: trustme.CA
) -> None:
    """Without http-webhook-ca-file a private CA is not trusted: nothing is delivered."""
    receiver = https_receiver(ca, tmp_path, "127.0.0.1")
    try:
        acct = tmp_path / "acct.json"
        acct.write_bytes(json_records(0, 5))
        batcher = harness.start(acct, receiver.url)
        assert wait_until(lambda: batcher.failures >= 2)
        assert receiver.attempts == []
    finally:
        receiver.close()


def test_client_certificate_is_presented(tmp_path: Path, harness: Harness, ca: trustme.CA) -> None:
    """http-webhook-certificate is presented to a receiver that requires one."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    receiver = https_receiver(ca, tmp_path, "127.0.0.1", client_ca=str(ca_file))
    try:
        client_pem = tmp_path / "client.pem"
        client = ca.issue_cert("client.example")
        client.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
        acct = tmp_path / "acct.json"
        acct.write_bytes(json_records(0, 5))
        policy = policy_from_files(str(ca_file), str(client_pem))
        harness.start(acct, receiver.url, policy=policy)
        assert receiver.wait_for(lambda r: len(r.lines()) == 5)
    finally:
        receiver.close()
